/*
 * pixelfleet player page, part 1 of 4: Epic's data channel input protocol (encoding, the
 * default ToStreamer table, pointer and key mapping) and the player's data channel methods,
 * mixed into PixelfleetPlayer by player.js. Loaded before player.js.
 */
(function () {
  'use strict';

  // ---- Epic's data channel input protocol ---------------------------------------
  // Default "ToStreamer" table of Epic's frontend (ids and field layouts, little-endian).
  // A streamer may send its own table as a Protocol message (id 255); ids are updated
  // from it (see applyProtocol).
  const TO_STREAMER = {
    IFrameRequest: { id: 0, structure: [] },
    RequestQualityControl: { id: 1, structure: [] },
    RequestInitialSettings: { id: 7, structure: [] },
    KeyDown: { id: 60, structure: ['uint8', 'uint8'] }, // keyCode, isRepeat
    KeyUp: { id: 61, structure: ['uint8'] }, // keyCode
    KeyPress: { id: 62, structure: ['uint16'] }, // charCode
    MouseEnter: { id: 70, structure: [] },
    MouseLeave: { id: 71, structure: [] },
    MouseDown: { id: 72, structure: ['uint8', 'uint16', 'uint16'] }, // button, x, y
    MouseUp: { id: 73, structure: ['uint8', 'uint16', 'uint16'] }, // button, x, y
    MouseMove: { id: 74, structure: ['uint16', 'uint16', 'int16', 'int16'] }, // x, y, dx, dy
    MouseWheel: { id: 75, structure: ['int16', 'uint16', 'uint16'] }, // delta, x, y
    MouseDouble: { id: 76, structure: ['uint8', 'uint16', 'uint16'] } // button, x, y
  };

  const FROM_STREAMER = {
    0: 'QualityControlOwnership',
    1: 'Response',
    2: 'Command',
    3: 'FreezeFrame',
    4: 'UnfreezeFrame',
    5: 'VideoEncoderAvgQP',
    6: 'LatencyTest',
    7: 'InitialSettings',
    8: 'FileExtension',
    9: 'FileMimeType',
    10: 'FileContents',
    11: 'TestEcho',
    12: 'InputControlOwnership',
    13: 'GamepadResponse',
    14: 'DataChannelLatencyTest',
    255: 'Protocol'
  };

  const FIELD_SIZE = { uint8: 1, uint16: 2, int16: 2, float: 4, double: 8 };

  /** Encodes one input message: a uint8 id, then the fields, little-endian. */
  function encodeMessage(def, values) {
    const structure = def.structure || [];
    if (values.length !== structure.length) {
      throw new Error('expected ' + structure.length + ' fields, got ' + values.length);
    }
    let size = 1;
    structure.forEach((type, i) => {
      size += type === 'string' ? 2 + 2 * String(values[i]).length : FIELD_SIZE[type];
    });
    const view = new DataView(new ArrayBuffer(size));
    view.setUint8(0, def.id);
    let at = 1;
    structure.forEach((type, i) => {
      const v = values[i];
      switch (type) {
        case 'uint8': view.setUint8(at, v); break;
        case 'uint16': view.setUint16(at, v, true); break;
        case 'int16': view.setInt16(at, v, true); break;
        case 'float': view.setFloat32(at, v, true); break;
        case 'double': view.setFloat64(at, v, true); break;
        case 'string': {
          const s = String(v);
          view.setUint16(at, s.length, true);
          for (let k = 0; k < s.length; k++) view.setUint16(at + 2 + 2 * k, s.charCodeAt(k), true);
          at += 2 + 2 * s.length;
          return;
        }
        default: throw new Error('unknown field type ' + type);
      }
      at += FIELD_SIZE[type];
    });
    return view.buffer;
  }

  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));


  /**
   * Maps a point on the video element to Epic's 0..65535 range over the picture
   * itself (object-fit: contain letterboxes it), like Epic's InputCoordTranslator.
   * Outside the picture Epic sends 65535, 65535; so do we.
   */
  function normalisePoint(video, clientX, clientY) {
    const box = contentBox(video);
    const nx = (clientX - box.left) / box.width;
    const ny = (clientY - box.top) / box.height;
    if (!(nx >= 0 && nx <= 1 && ny >= 0 && ny <= 1)) {
      return { x: 65535, y: 65535, inside: false };
    }
    return {
      x: clamp(Math.floor(nx * 65536), 0, 65535),
      y: clamp(Math.floor(ny * 65536), 0, 65535),
      inside: true
    };
  }

  /** Signed movement scaled as Epic does: half the picture size is 32767. */
  function normaliseDelta(video, dx, dy) {
    const box = contentBox(video);
    return {
      x: clamp(Math.round((dx / (0.5 * box.width)) * 32767), -32768, 32767),
      y: clamp(Math.round((dy / (0.5 * box.height)) * 32767), -32768, 32767)
    };
  }

  function contentBox(video) {
    const rect = video.getBoundingClientRect();
    const vw = video.videoWidth || rect.width || 1;
    const vh = video.videoHeight || rect.height || 1;
    const scale = Math.min(rect.width / vw, rect.height / vh) || 1;
    const width = vw * scale;
    const height = vh * scale;
    return {
      left: rect.left + (rect.width - width) / 2,
      top: rect.top + (rect.height - height) / 2,
      width: width || 1,
      height: height || 1
    };
  }

  /** Browser keyCode as Epic's KeyboardController sends it (UE's JavaScriptKeyCodeToFKey). */
  function ueKeyCode(event) {
    if (event.keyCode === 16 && event.code === 'ShiftRight') return 253;
    if (event.keyCode === 17 && event.code === 'ControlRight') return 254;
    if (event.keyCode === 18 && event.code === 'AltRight') return 255;
    if (event.code === 'MetaLeft' || event.code === 'OSLeft') return 91;
    if (event.code === 'MetaRight' || event.code === 'OSRight') return 92;
    return event.keyCode;
  }

  // ---- the player's data channel (methods of PixelfleetPlayer, see player.js) ----

  class PlayerInput {
    adoptChannel(channel) {
      channel.binaryType = 'arraybuffer';
      this.requestedSettings = false;
      this.channel = channel;
      const opened = () => {
        if (channel !== this.channel || this.info.dataChannelOpen) return;
        this.info.dataChannelOpen = true;
        this.ui.pill('data', 'open');
        this.log('Data channel "' + channel.label + '" open', 'ok');
      };
      channel.onopen = opened;
      channel.onclose = () => {
        if (channel !== this.channel) return;
        this.info.dataChannelOpen = false;
        this.ui.pill('data', 'closed');
        this.log('Data channel closed');
      };
      channel.onmessage = (ev) => this.onChannelMessage(ev.data);
      if (channel.readyState === 'open') opened();
    }

    onChannelMessage(data) {
      if (!(data instanceof ArrayBuffer) || data.byteLength === 0) return;
      const id = new Uint8Array(data)[0];
      const name = FROM_STREAMER[id] || 'id' + id;
      const seen = this.info.received[name] || 0;
      this.info.received[name] = seen + 1;
      if (seen === 0) this.log('Streamer sent ' + name);
      if (name === 'Protocol') {
        this.applyProtocol(data);
        // As Epic's frontend does once it has the streamer's protocol.
        if (!this.requestedSettings) {
          this.requestedSettings = true;
          this.sendInput('RequestInitialSettings', []);
          this.sendInput('RequestQualityControl', []);
        }
      }
    }

    /** A streamer's Protocol message (UTF-16 JSON) may move message ids; follow it. */
    applyProtocol(data) {
      try {
        const table = JSON.parse(new TextDecoder('utf-16le').decode(data.slice(1)));
        if (table.Direction !== 0) return; // 0 = ToStreamer
        Object.keys(table).forEach((name) => {
          const entry = table[name];
          if (name === 'Direction' || !this.toStreamer[name] || !entry || typeof entry.id !== 'number') return;
          this.toStreamer[name].id = entry.id;
          if (Array.isArray(entry.structure) && entry.structure.length) {
            this.toStreamer[name].structure = entry.structure;
          }
        });
      } catch (err) {
        this.log('Malformed Protocol message from streamer', 'error');
      }
    }

    sendInput(type, values) {
      const ch = this.channel;
      if (!ch || ch.readyState !== 'open') return false;
      const def = this.toStreamer[type];
      if (!def) return false;
      try {
        ch.send(encodeMessage(def, values));
      } catch (err) {
        this.log('Could not send ' + type + ': ' + err.message, 'error');
        return false;
      }
      this.info.inputSent += 1;
      this.ui.inputCount(this.info.inputSent);
      if (this.slots) this.slots.noteActivity();
      return true;
    }

    bindInput() {
      const v = this.video;
      const point = (e) => normalisePoint(v, e.clientX, e.clientY);
      v.addEventListener('mousemove', (e) => {
        const p = point(e);
        const d = normaliseDelta(v, e.movementX || 0, e.movementY || 0);
        this.sendInput('MouseMove', [p.x, p.y, d.x, d.y]);
      });
      v.addEventListener('mousedown', (e) => {
        const p = point(e);
        v.focus({ preventScroll: true });
        this.sendInput('MouseDown', [e.button, p.x, p.y]);
        e.preventDefault();
      });
      v.addEventListener('mouseup', (e) => {
        const p = point(e);
        this.sendInput('MouseUp', [e.button, p.x, p.y]);
        e.preventDefault();
      });
      v.addEventListener('dblclick', (e) => {
        const p = point(e);
        this.sendInput('MouseDouble', [e.button, p.x, p.y]);
        // UE treats MouseDouble as a press; release it as Epic's frontend does.
        this.sendInput('MouseUp', [e.button, p.x, p.y]);
      });
      v.addEventListener(
        'wheel',
        (e) => {
          const p = point(e);
          const delta = typeof e.wheelDelta === 'number' ? e.wheelDelta : -e.deltaY;
          this.sendInput('MouseWheel', [clamp(Math.round(delta), -32768, 32767), p.x, p.y]);
          e.preventDefault();
        },
        { passive: false }
      );
      v.addEventListener('mouseenter', () => this.sendInput('MouseEnter', []));
      v.addEventListener('mouseleave', () => this.sendInput('MouseLeave', []));
      v.addEventListener('contextmenu', (e) => e.preventDefault());

      const typing = (e) => {
        const t = e.target;
        return t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName));
      };
      document.addEventListener('keydown', (e) => {
        if (typing(e)) return;
        const code = ueKeyCode(e);
        if (!code || code === 229) return; // 229: IME composition
        const sent = this.sendInput('KeyDown', [code & 0xff, e.repeat ? 1 : 0]);
        // Keep Tab and F1-F12 for the stream while it has focus, as Epic's
        // SuppressBrowserKeys does. Nothing else: cancelling keydown would also
        // cancel the keypress that carries the character.
        if (sent && e.target === v && (code === 9 || (code >= 112 && code <= 123))) e.preventDefault();
      });
      document.addEventListener('keyup', (e) => {
        if (typing(e)) return;
        const code = ueKeyCode(e);
        if (!code) return;
        this.sendInput('KeyUp', [code & 0xff]);
      });
      document.addEventListener('keypress', (e) => {
        if (typing(e)) return;
        const ch = e.charCode || e.keyCode;
        if (ch) this.sendInput('KeyPress', [ch & 0xffff]);
      });
    }
  }

  window.PixelfleetParts = Object.assign(window.PixelfleetParts || {}, {
    TO_STREAMER,
    encodeMessage,
    PlayerInput
  });
})();
