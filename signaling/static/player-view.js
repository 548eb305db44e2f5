/*
 * pixelfleet player page, part 3 of 4: the view (status pills, overlay, queue text, log)
 * that PixelfleetPlayer drives, and the player's stats and status methods, mixed into
 * PixelfleetPlayer by player.js. Loaded before player.js.
 */
(function () {
  'use strict';

  const LOG_MAX = 200;

  /** A wait in words: "under a minute", "about 5 min", "about 1 h 20 min". */
  function formatEta(s) {
    if (!(s >= 0)) return 'unknown';
    if (s < 60) return 'under a minute';
    const min = Math.round(s / 60);
    if (min < 60) return 'about ' + min + ' min';
    return 'about ' + Math.floor(min / 60) + ' h' + (min % 60 ? ' ' + (min % 60) + ' min' : '');
  }

  // ---- the view ---------------------------------------------------------------

  const PILL_LEVEL = {
    open: 'ok', connected: 'ok', completed: 'ok',
    connecting: 'busy', checking: 'busy', new: 'idle', idle: 'idle',
    disconnected: 'busy', closed: 'idle', failed: 'bad'
  };

  class PlayerView {
    constructor(player) {
      this.player = player;
      this.el = (id) => document.getElementById(id);
      this.title = document.title;
      const leave = this.el('queue-leave');
      if (leave) leave.addEventListener('click', () => player.leaveQueue());
      const toggle = this.el('toggle-panel');
      if (toggle) {
        toggle.addEventListener('click', () => {
          const panel = this.el('panel');
          panel.hidden = !panel.hidden;
          toggle.setAttribute('aria-expanded', String(!panel.hidden));
        });
      }
      const sound = this.el('toggle-sound');
      if (sound) {
        sound.addEventListener('click', () => {
          const muted = !player.video.muted;
          player.video.muted = muted;
          player.audio.muted = muted;
          if (!muted) player.video.play().catch(() => {});
          sound.textContent = muted ? 'Unmute' : 'Mute';
          sound.setAttribute('aria-pressed', String(!muted));
        });
      }
      const button = this.el('overlay-button');
      if (button) {
        button.addEventListener('click', () => {
          button.hidden = true;
          if (this.retrying) {
            this.retrying = false;
            player.start();
          } else {
            player.play();
          }
        });
      }
      const video = this.el('video');
      if (video) {
        video.addEventListener('playing', () => {
          if (player.info.state !== 'error') this.hideOverlay();
        });
      }
    }

    text(id, value) {
      const node = this.el(id);
      if (node) node.textContent = value;
    }

    fact(name, value) {
      this.text('fact-' + name, value);
    }

    pill(name, state) {
      const node = this.el('pill-' + name);
      if (!node) return;
      node.dataset.level = PILL_LEVEL[state] || 'idle';
      node.querySelector('b').textContent = state;
    }

    overlay(text, kind) {
      const o = this.el('overlay');
      if (!o) return;
      const panel = this.el('queue');
      if (panel && kind !== 'queue') panel.hidden = true;
      o.dataset.visible = 'true';
      o.dataset.kind = kind;
      this.text('overlay-text', text);
      this.el('overlay-spinner').hidden = kind === 'error';
      if (kind !== 'error') this.el('overlay-button').hidden = true;
    }

    hideOverlay() {
      const o = this.el('overlay');
      if (o) o.dataset.visible = 'false';
    }

    askToPlay() {
      this.overlay('Click to start the video', 'info');
      this.el('overlay-spinner').hidden = true;
      const b = this.el('overlay-button');
      b.textContent = 'Play';
      b.hidden = false;
    }

    offerRetry(label) {
      this.retrying = true;
      const b = this.el('overlay-button');
      if (!b) return;
      b.textContent = label || 'Try again';
      b.hidden = false;
    }

    /** The queue panel in the overlay: position and ETA; null hides it. */
    queue(position, etaS) {
      const panel = this.el('queue');
      if (!panel) return;
      this.overlay('All slots are busy. You will be connected as soon as one is free.', 'queue');
      this.el('overlay-spinner').hidden = true;
      panel.hidden = false;
      this.text('queue-position', position === null ? '–' : String(position));
      this.text('queue-ahead', position === null ? '' : position === 1 ? 'You are next.'
        : (position - 1) + (position === 2 ? ' player is' : ' players are') + ' ahead of you.');
      this.text('queue-eta', etaS === null ? 'unknown' : formatEta(etaS));
      document.title = (position === null ? 'Queued' : '#' + position + ' in queue') + ' · ' + this.title;
    }

    hideQueue() {
      const panel = this.el('queue');
      if (panel) panel.hidden = true;
      document.title = this.title;
    }

    inputCount(n) {
      this.fact('input', String(n));
    }

    stats(s) {
      const show = (id, v) => this.text(id, v === undefined || v === null ? '—' : String(v));
      show('stat-bitrate', s.bitrateKbps !== undefined ? s.bitrateKbps.toLocaleString() : undefined);
      show('stat-fps', s.fps);
      show('stat-frames', s.framesDecoded !== undefined ? s.framesDecoded.toLocaleString() : undefined);
      show('stat-rtt', s.rttMs);
      show('stat-lost', s.packetsLost);
      show('stat-resolution', s.width && s.height ? s.width + '×' + s.height : undefined);
      show('stat-codec', s.codec);
      show('stat-route', s.route);
    }

    log(text, level) {
      const list = this.el('log');
      if (!list) return;
      const item = document.createElement('li');
      item.dataset.level = level;
      const time = document.createElement('time');
      time.textContent = new Date().toLocaleTimeString([], { hour12: false });
      item.appendChild(time);
      item.appendChild(document.createTextNode(text));
      list.insertBefore(item, list.firstChild);
      while (list.children.length > LOG_MAX) list.removeChild(list.lastChild);
    }
  }

  // ---- the player's stats and status (methods of PixelfleetPlayer, see player.js) ----

  class PlayerStatus {
    // -- stats --

    async pollStats(pc) {
      if (pc !== this.pc) return;
      let report;
      try {
        report = await pc.getStats();
      } catch (err) {
        return;
      }
      let inbound = null;
      let transport = null;
      const pairs = [];
      report.forEach((s) => {
        if (s.type === 'inbound-rtp' && (s.kind || s.mediaType) === 'video') inbound = s;
        else if (s.type === 'transport') transport = s;
        else if (s.type === 'candidate-pair') pairs.push(s);
      });
      let pair = transport && transport.selectedCandidatePairId ? report.get(transport.selectedCandidatePairId) : null;
      if (!pair) pair = pairs.find((p) => p.nominated && p.state === 'succeeded') || null;

      const stats = {};
      if (inbound) {
        stats.framesDecoded = inbound.framesDecoded || 0;
        stats.packetsLost = inbound.packetsLost || 0;
        stats.width = inbound.frameWidth || this.video.videoWidth || 0;
        stats.height = inbound.frameHeight || this.video.videoHeight || 0;
        const prev = this.prevStats;
        if (prev && inbound.timestamp > prev.timestamp) {
          const ms = inbound.timestamp - prev.timestamp;
          stats.bitrateKbps = Math.max(0, Math.round(((inbound.bytesReceived - prev.bytesReceived) * 8) / ms));
          stats.fps =
            typeof inbound.framesPerSecond === 'number'
              ? Math.round(inbound.framesPerSecond)
              : Math.round(((stats.framesDecoded - prev.framesDecoded) * 1000) / ms);
        }
        this.prevStats = {
          timestamp: inbound.timestamp,
          bytesReceived: inbound.bytesReceived || 0,
          framesDecoded: stats.framesDecoded
        };
        const codec = inbound.codecId ? report.get(inbound.codecId) : null;
        if (codec && codec.mimeType) stats.codec = codec.mimeType.split('/')[1];
      }
      if (pair) {
        if (typeof pair.currentRoundTripTime === 'number') stats.rttMs = Math.round(pair.currentRoundTripTime * 1000);
        const local = report.get(pair.localCandidateId);
        if (local) stats.route = (local.candidateType || '?') + '/' + (local.protocol || '?');
      }
      this.info.stats = stats;
      if (typeof stats.framesDecoded === 'number') {
        this.info.framesDecoded = stats.framesDecoded;
        if (stats.framesDecoded > 0 && this.info.state !== 'streaming' && pc.connectionState === 'connected') {
          this.setState('streaming', null);
          this.log('Video is playing', 'ok');
          if (this.slots) this.slots.reportFirstFrame(); // time to first frame, the end of the join trace
        }
      }
      this.ui.stats(stats);
    }

    // -- state and reporting --

    setState(state, overlayText) {
      this.info.state = state;
      document.body.dataset.state = state;
      if (state === 'streaming') this.ui.hideOverlay();
      else if (overlayText) this.ui.overlay(overlayText, 'info');
    }

    setSignalling(s) {
      this.info.signallingState = s;
      this.ui.pill('signalling', s);
    }

    recordError(text) {
      this.info.errors.push(text);
      this.log(text, 'error');
    }

    fail(text) {
      this.info.state = 'error';
      document.body.dataset.state = 'error';
      this.recordError(text);
      this.ui.overlay(text, 'error');
    }

    log(text, level) {
      this.ui.log(text, level || 'info');
    }
  }

  window.PixelfleetParts = Object.assign(window.PixelfleetParts || {}, {
    formatEta,
    PlayerView,
    PlayerStatus
  });
})();
