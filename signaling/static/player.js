/*
 * pixelfleet player page: a small, dependency-free Pixel Streaming client.
 *
 * Signalling follows Epic's frontend (UE5.5+, see docs/protocol.md in the repository):
 * on open send listStreamers, subscribe to the wanted (or only) streamer, answer
 * the streamer's offer, trickle ICE both ways, answer pings and ping every 30 s.
 * Input goes over the data channel the streamer creates, encoded with Epic's binary
 * input protocol (Frontend/library/src/UeInstanceMessage/StreamMessageController.ts).
 *
 * Where the signalling URL comes from is pluggable: set window.pixelfleetOptions before
 * this script loads, e.g. {resolveSignalling: async () => ({url, streamerId})};
 * {autoStart: false} to call pixelfleetPlayer.start() later. The hook is called before
 * every (re)connect.
 *
 * Default: ask the page's server for a slot first (POST /api/v1/sessions, ?app= picks
 * the app), waiting in its queue if all slots are busy, then connect with the session
 * token. A server without a matchmaker (a 404/405 that is not a matchmaker's JSON
 * error) is used directly, as is ?ss=ws://host:port/: ?StreamerId= picks the streamer.
 * ?ForceTURN=1 forces TURN relay.
 *
 * Tests read window.pixelfleet (plain data, updated in place).
 */
(function () {
  'use strict';

  const KEEPALIVE_MS = 30000;
  const LIST_RETRY_MS = 2000;
  const RECONNECT_MIN_MS = 2000;
  const RECONNECT_MAX_MS = 15000;
  const STATS_MS = 1000;
  const LOG_MAX = 200;

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

  /** A wait in words: "under a minute", "about 5 min", "about 1 h 20 min". */
  function formatEta(s) {
    if (!(s >= 0)) return 'unknown';
    if (s < 60) return 'under a minute';
    const min = Math.round(s / 60);
    if (min < 60) return 'about ' + min + ' min';
    return 'about ' + Math.floor(min / 60) + ' h' + (min % 60 ? ' ' + (min % 60) + ' min' : '');
  }

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

  // ---- where to connect -------------------------------------------------------

  /** Default signalling target: ?ss= or the page's own host and port, ?StreamerId=. */
  function signallingFromPage(loc) {
    const params = new URLSearchParams(loc.search);
    let url = params.get('ss');
    if (!url && loc.host) {
      url = (loc.protocol === 'https:' ? 'wss://' : 'ws://') + loc.host + '/';
    }
    return { url: url, streamerId: params.get('StreamerId') || null };
  }

  const isLoopback = (host) => /^(localhost|127\.\d+\.\d+\.\d+|\[::1\]|::1)$/i.test(host || '');

  /**
   * The WebSocket URL for a matchmaker session: its signalling URL with the token.
   * A loopback signalling URL given to a page that did not come from loopback (a
   * one-box setup serving the network) cannot work from here; use the page's origin.
   */
  function sessionSocketUrl(signalingUrl, token, loc) {
    let url = new URL(signalingUrl);
    if (isLoopback(url.hostname) && loc.host && !isLoopback(loc.hostname)) {
      url = new URL(url.pathname + url.search, (loc.protocol === 'https:' ? 'wss://' : 'ws://') + loc.host);
    }
    url.searchParams.set('token', token);
    return url.href;
  }

  function flag(params, name) {
    const v = params.get(name);
    return v !== null && v !== '0' && v.toLowerCase() !== 'false';
  }

  // ---- the matchmaker ---------------------------------------------------------

  const CLIENT_KEY = 'pixelfleet.clientKey';

  /**
   * This tab's key for the matchmaker. sessionStorage keeps it across reloads of the
   * tab (the matchmaker gives a returning key its slot back within the grace period)
   * and apart from other tabs.
   */
  function tabClientKey() {
    let key = null;
    try {
      key = window.sessionStorage.getItem(CLIENT_KEY);
    } catch (err) {
      // storage disabled: a key for this page's lifetime only
    }
    if (!key) {
      const bytes = new Uint8Array(16);
      window.crypto.getRandomValues(bytes); // also where randomUUID is not (plain http)
      key = 'tab-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
      try {
        window.sessionStorage.setItem(CLIENT_KEY, key);
      } catch (err) {
        // as above
      }
    }
    return key;
  }

  /** A matchmaker outcome other than a slot. Not retryable ones are shown and wait for the user. */
  class MatchmakerError extends Error {
    constructor(code, message, retryable) {
      super(message);
      this.code = code;
      this.retryable = !!retryable;
    }
  }

  /** What the player is told for each matchmaker error code (others: the server's message). */
  function refusal(status, body, app) {
    const server = body.message ? ' (' + body.message + ')' : '';
    switch (body.error) {
      case 'unknown_app':
        return new MatchmakerError(body.error, 'There is no app "' + app + '" here. Check the ?app= in the address.', false);
      case 'queue_full':
        return new MatchmakerError(body.error, 'All slots are busy and the queue is full. Please try again in a few minutes.', false);
      case 'unauthorized':
      case 'invalid_token':
      case 'token_expired':
        return new MatchmakerError(body.error, 'The matchmaker did not accept this page' + server + '.', false);
      default:
        return new MatchmakerError(body.error, 'The matchmaker refused a slot' + server + '.', status >= 500);
    }
  }

  /** Gets this tab a slot from the matchmaker at `base` (an http(s) origin). */
  class SlotFinder {
    constructor(player, base, app) {
      this.player = player;
      this.base = base.replace(/\/+$/, '');
      this.app = app;
      this.clientKey = tabClientKey();
      this.ticketId = null;
      this.events = null;
      this.abandonWait = null;
      this.detachWait = null;
      this.activity = null; // {sessionId, token, periodMs, lastMs} of the current slot
    }

    /**
     * {url, streamerId, sessionId} of a slot, after queueing if need be; null where the
     * server has no matchmaker. Throws MatchmakerError.
     */
    async acquire() {
      let res;
      try {
        res = await fetch(this.base + '/api/v1/sessions', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
          body: JSON.stringify({ app: this.app, client_key: this.clientKey }),
          cache: 'no-store'
        });
      } catch (err) {
        throw new MatchmakerError('unreachable', 'Cannot reach the server for a slot.', true);
      }
      let body = null;
      if (/json/i.test(res.headers.get('Content-Type') || '')) {
        try {
          body = await res.json();
        } catch (err) {
          body = null;
        }
      }
      if (!body || typeof body !== 'object') {
        if (res.status === 404 || res.status === 405) return null; // no matchmaker here
        throw new MatchmakerError('http_' + res.status, 'The server answered HTTP ' + res.status + ' for a slot.', true);
      }
      this.player.setMode('matchmaker');
      if (body.error) throw refusal(res.status, body, this.app);
      if (body.status === 'waiting') body = await this.wait(body);
      if (body.status !== 'assigned' || !body.signaling_url || !body.token) {
        throw new MatchmakerError('bad_reply', 'Unexpected answer from the matchmaker: ' + JSON.stringify(body), true);
      }
      this.activity = {
        sessionId: body.session_id || null,
        token: body.token,
        // Report at least three times per idle timeout (the matchmaker ends a session
        // whose player sent no input for that long); nothing when the timeout is off.
        periodMs: body.idle_timeout_s > 0 ? Math.min(60000, Math.max(1000, (body.idle_timeout_s * 1000) / 3)) : 0,
        lastMs: Date.now() // allocating counts as activity
      };
      return {
        url: sessionSocketUrl(body.signaling_url, body.token, window.location),
        streamerId: body.streamer_id || null,
        sessionId: body.session_id || null
      };
    }

    /** The player sent input: tell the matchmaker, at most once per period. */
    noteActivity() {
      const a = this.activity;
      if (!a || !a.periodMs || !a.sessionId) return;
      const now = Date.now();
      if (now - a.lastMs < a.periodMs) return;
      a.lastMs = now;
      fetch(this.base + '/api/v1/sessions/' + encodeURIComponent(a.sessionId) + '/events', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + a.token },
        body: JSON.stringify({ event: 'activity' }),
        cache: 'no-store'
      })
        .then((res) => {
          this.player.info.activityReports += 1;
          if (!res.ok) this.player.log('Activity report refused: HTTP ' + res.status, 'error');
        })
        .catch(() => this.player.log('Could not report activity to the matchmaker', 'error'));
    }

    /** Follows the ticket's event stream until it is assigned (resolves) or not (rejects). */
    wait(ticket) {
      this.abandon();
      return new Promise((resolve, reject) => {
        const id = ticket.ticket_id;
        const url = new URL(ticket.events || '/api/v1/queue/' + encodeURIComponent(id) + '/events', this.base + '/');
        const es = new EventSource(url.href);
        this.ticketId = id;
        this.events = es;
        this.player.queued(ticket);
        const finish = (settle, value) => {
          es.close();
          if (this.events === es) {
            this.events = null;
            this.ticketId = null;
            this.abandonWait = null;
            this.detachWait = null;
          }
          this.player.unqueued();
          settle(value);
        };
        const data = (ev) => {
          try {
            return JSON.parse(ev.data);
          } catch (err) {
            return {};
          }
        };
        es.addEventListener('waiting', (ev) => {
          if (this.events === es) this.player.queued(Object.assign({ ticket_id: id }, data(ev)));
        });
        es.addEventListener('assigned', (ev) => finish(resolve, data(ev)));
        es.addEventListener('expired', () =>
          finish(reject, new MatchmakerError('queue_expired', 'You waited longer than the queue allows, sorry. Please try again.', false)));
        es.addEventListener('cancelled', () =>
          finish(reject, new MatchmakerError('queue_cancelled', 'The matchmaker cancelled our place in the queue.', true)));
        // A dropped stream means queueing again (after the usual reconnect delay), not
        // EventSource's own retry: posting again with this tab's client key gets the same
        // ticket and place back while the server still keeps it (its rejoin grace).
        const lost = () => finish(reject, new MatchmakerError('queue_lost', 'Lost the connection to the queue.', true));
        es.onerror = lost;
        this.detachWait = lost;
        this.abandonWait = () => finish(reject, new MatchmakerError('left_queue', 'You left the queue.', false));
      });
    }

    /**
     * Stops following the queue but keeps the ticket (the page is going away): a reload
     * of this tab posts again with the same client key and gets the same place back.
     */
    detach() {
      if (this.detachWait) this.detachWait();
    }

    /** Leaves the queue, if waiting: the ticket is cancelled, the pending acquire rejects. */
    abandon() {
      const id = this.ticketId;
      if (id) {
        fetch(this.base + '/api/v1/queue/' + encodeURIComponent(id), { method: 'DELETE', keepalive: true })
          .catch(() => {});
      }
      if (this.abandonWait) this.abandonWait();
    }
  }

  // ---- the player -------------------------------------------------------------

  class PixelfleetPlayer {
    constructor(options) {
      const opts = options || {};
      const params = new URLSearchParams(window.location.search);
      this.app = opts.app || params.get('app') || 'default';
      // Direct mode: a signalling address given (?ss=, options), or nowhere to ask.
      const base = opts.matchmakerUrl || (window.location.host ? window.location.origin : null);
      const direct = !!(opts.signallingUrl || params.get('ss')) || opts.matchmaker === false || !base;
      this.slots = opts.resolveSignalling || direct ? null : new SlotFinder(this, base, this.app);
      this.resolveSignalling =
        opts.resolveSignalling ||
        (async () => {
          const target = signallingFromPage(window.location);
          if (opts.signallingUrl) target.url = opts.signallingUrl;
          if (opts.streamerId) target.streamerId = opts.streamerId;
          if (this.slots && this.info.mode !== 'direct') {
            this.setState('matchmaking', 'Getting a slot…');
            const slot = await this.slots.acquire();
            if (slot) {
              this.setMode('matchmaker');
              return slot;
            }
            this.setMode('direct');
            this.log('No matchmaker on this server: connecting directly');
          }
          return target;
        });
      this.keepaliveMs = Number(opts.keepaliveMs || params.get('KeepaliveDelay')) || KEEPALIVE_MS;
      this.forceTurn = opts.forceTurn !== undefined ? !!opts.forceTurn : flag(params, 'ForceTURN');
      this.video = document.getElementById('video');
      this.audio = document.createElement('audio');
      this.audio.autoplay = true;
      this.ui = new PlayerView(this);
      this.toStreamer = JSON.parse(JSON.stringify(TO_STREAMER));

      // Everything tests and tooling may look at; plain data only.
      this.info = {
        state: 'idle',
        mode: opts.resolveSignalling ? 'hook' : this.slots ? null : 'direct', // null: not known yet
        app: this.slots ? this.app : null,
        clientKey: this.slots ? this.slots.clientKey : null,
        sessionId: null,
        activityReports: 0, // input activity reported to the matchmaker (idle timeout)
        queue: null, // {ticketId, position, etaS} while waiting for a slot
        signallingState: 'idle',
        iceState: 'new',
        peerState: 'new',
        dataChannelOpen: false,
        framesDecoded: 0,
        playerId: null,
        streamerId: null,
        signallingUrl: null,
        stats: {},
        inputSent: 0,
        pongs: 0,
        received: {}, // data channel messages from the streamer, by type name
        errors: [],
        closeCodes: []
      };
      window.pixelfleet = this.info;
      if (this.info.mode) this.ui.fact('mode', this.info.mode);

      this.ws = null;
      this.pc = null;
      this.channel = null;
      this.stopped = true;
      this.terminal = false;
      this.attempt = 0;
      this.reconnectDelay = RECONNECT_MIN_MS;
      this.timers = {};
      this.pendingCandidates = [];
      this.peerConnectionOptions = {};
      this.lastPingSent = null;
      this.prevStats = null;
      this.bindInput();
    }

    // -- lifecycle --

    async start() {
      const attempt = ++this.attempt;
      if (this.slots) this.slots.abandon(); // an earlier start still queueing
      this.clearTimers();
      this.stopped = false;
      this.terminal = false;
      this.setState('connecting', 'Connecting…');
      let target;
      try {
        target = await this.resolveSignalling();
      } catch (err) {
        if (attempt !== this.attempt || this.stopped) return;
        if (err instanceof MatchmakerError) {
          if (err.retryable) {
            this.recordError(err.message);
            // The server keeps a dropped place for its rejoin grace (5 s by default): come
            // back within it, whatever the backoff of earlier failures.
            if (err.code === 'queue_lost') this.reconnectDelay = RECONNECT_MIN_MS;
            this.scheduleReconnect(err.code === 'queue_lost' ? 'Lost our place in the queue.' : 'No slot yet.');
          } else if (err.code === 'left_queue') {
            this.terminal = true;
            this.log(err.message);
            this.setState('stopped', err.message);
            this.ui.el('overlay-spinner').hidden = true;
            this.ui.offerRetry('Join the queue again');
          } else {
            this.terminal = true;
            this.fail(err.message);
            this.ui.offerRetry('Try again');
          }
          return;
        }
        this.recordError('Could not get a signalling address: ' + (err && err.message ? err.message : err));
        this.scheduleReconnect('No signalling address yet.');
        return;
      }
      if (attempt !== this.attempt || this.stopped) return; // stopped or restarted meanwhile
      if (!target || !target.url) {
        this.fail('No signalling address: open this page from the signalling server or add ?ss=ws://host:port/');
        return;
      }
      if (target.sessionId !== undefined) {
        this.info.sessionId = target.sessionId || null;
        this.ui.fact('session', target.sessionId || '—');
      }
      this.connect(target.url, target.streamerId || null);
    }

    /** Leave the queue (the Leave button); the page then offers to join again. */
    leaveQueue() {
      if (this.slots) this.slots.abandon();
    }

    setMode(mode) {
      if (this.info.mode === mode) return;
      this.info.mode = mode;
      this.ui.fact('mode', mode === 'matchmaker' ? 'matchmaker, app ' + this.app : mode);
    }

    /** A queue update: {ticket_id, position, eta_s}. */
    queued(t) {
      const before = this.info.queue;
      const position = typeof t.position === 'number' ? t.position : null;
      const etaS = typeof t.eta_s === 'number' ? t.eta_s : null;
      this.info.queue = { ticketId: t.ticket_id || null, position: position, etaS: etaS };
      if (!before) this.log('All slots are busy: waiting in the queue');
      if (!before || before.position !== position || before.etaS !== etaS) {
        this.log('Queue position ' + (position === null ? '?' : position) + (etaS === null ? '' : ', ETA ' + formatEta(etaS)));
      }
      this.info.state = 'queued';
      document.body.dataset.state = 'queued';
      this.ui.queue(position, etaS);
    }

    unqueued() {
      if (!this.info.queue) return;
      this.info.queue = null;
      this.ui.hideQueue();
    }

    stop() {
      this.stopped = true;
      this.attempt += 1;
      if (this.slots) this.slots.abandon();
      this.clearTimers();
      this.closePeer();
      if (this.ws) {
        const ws = this.ws;
        this.ws = null;
        ws.close(1000, 'player stopped');
      }
      this.setSignalling('closed');
      this.setState('stopped', 'Stopped.');
    }

    connect(url, wantedStreamerId) {
      this.clearTimers();
      if (this.ws) {
        const old = this.ws;
        this.ws = null; // its close event is ignored from here on
        old.close(1000, 'reconnecting');
      }
      this.closePeer();
      this.wantedStreamerId = wantedStreamerId;
      this.subscribedTo = null;
      this.info.signallingUrl = url;
      this.ui.fact('url', url.replace(/([?&]token=)[^&]+/, '$1…'));
      this.setSignalling('connecting');
      this.log('Connecting to ' + url.replace(/([?&]token=)[^&]+/, '$1…'));

      let ws;
      try {
        ws = new WebSocket(url);
      } catch (err) {
        this.fail('Bad signalling address ' + url + ': ' + err.message);
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        if (ws !== this.ws) return;
        this.reconnectDelay = RECONNECT_MIN_MS;
        this.setSignalling('open');
        this.log('Signalling connected', 'ok');
        // Like Epic's frontend: ask for streamers at once, without waiting for config.
        this.send({ type: 'listStreamers' });
        this.timers.keepalive = setInterval(() => this.keepalive(), this.keepaliveMs);
      };
      ws.onmessage = (ev) => {
        if (ws !== this.ws) return;
        if (typeof ev.data === 'string') {
          this.onSignallingText(ev.data);
        } else {
          // Binary frames carrying UTF-8 JSON are legal too.
          new Response(ev.data).text().then((text) => {
            if (ws === this.ws) this.onSignallingText(text);
          });
        }
      };
      ws.onerror = () => {
        if (ws !== this.ws) return;
        this.log('Signalling socket error', 'error');
      };
      let opened = false;
      ws.addEventListener('open', () => { opened = true; });
      ws.onclose = (ev) => {
        if (ws !== this.ws) return;
        this.ws = null;
        this.onSignallingClosed(ev.code, ev.reason, opened);
      };
    }

    onSignallingClosed(code, reason, opened) {
      this.info.closeCodes.push(code);
      this.clearTimers();
      this.closePeer();
      this.setSignalling('closed');
      const text = 'Signalling closed (' + code + (reason ? ' ' + reason : '') + ')';
      if (this.stopped) return;
      // 4500-4999: the server says do not come back; 1008: policy (e.g. refused).
      if ((code >= 4500 && code <= 4999) || code === 1008) this.terminal = true;
      if (this.terminal) {
        this.fail(text);
        this.ui.offerRetry();
        return;
      }
      // Normal close, server restarting (1001), streamer gone (Wilbur: 1005, no status;
      // pixelfleet: 4100): not errors, just come back.
      const benign = [1000, 1001, 1005, 4100].indexOf(code) >= 0;
      if (benign) this.log(text);
      else this.recordError(text);
      let why = opened ? 'Connection lost.' : 'Cannot reach the signalling server.';
      if (code === 4100 || code === 1005) why = 'The streamer left.';
      else if (code === 1001) why = 'The server is restarting.';
      this.scheduleReconnect(why);
    }

    scheduleReconnect(why) {
      if (this.stopped || this.terminal) return;
      const delay = this.reconnectDelay;
      this.reconnectDelay = Math.min(RECONNECT_MAX_MS, Math.round(this.reconnectDelay * 1.5));
      this.setState('reconnecting', (why || 'Connection lost.') + ' Retrying in ' + Math.round(delay / 1000) + ' s…');
      this.timers.reconnect = setTimeout(() => this.start(), delay);
    }

    clearTimers() {
      clearInterval(this.timers.keepalive);
      clearTimeout(this.timers.list);
      clearTimeout(this.timers.reconnect);
      this.timers = {};
    }

    // -- signalling --

    send(msg) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify(msg));
        return true;
      }
      return false;
    }

    keepalive() {
      if (this.lastPingSent !== null) {
        this.log('No pong for the last ping', 'error');
      }
      this.lastPingSent = Date.now();
      this.send({ type: 'ping', time: this.lastPingSent });
    }

    onSignallingText(text) {
      let msg;
      try {
        msg = JSON.parse(text);
      } catch (err) {
        this.log('Unparseable signalling message ignored', 'error');
        return;
      }
      if (!msg || typeof msg.type !== 'string') return;
      switch (msg.type) {
        case 'config':
          this.onConfig(msg);
          break;
        case 'streamerList':
          this.onStreamerList(Array.isArray(msg.ids) ? msg.ids : []);
          break;
        case 'subscribeFailed':
          this.terminal = true;
          this.fail('Could not join streamer: ' + (msg.message || 'subscribe failed'));
          this.ui.offerRetry();
          break;
        case 'streamerIdChanged':
        case 'streamerIDChanged':
          this.setStreamer(msg.newID);
          break;
        case 'offer':
          this.onOffer(msg).catch((err) => this.fail('Could not answer the offer: ' + err.message));
          break;
        case 'iceCandidate':
          this.onRemoteCandidate(msg.candidate);
          break;
        case 'ping':
          this.send({ type: 'pong', time: msg.time });
          break;
        case 'pong':
          this.info.pongs += 1;
          if (this.lastPingSent !== null && msg.time === this.lastPingSent) {
            this.info.signallingRttMs = Date.now() - this.lastPingSent;
          }
          this.lastPingSent = null;
          break;
        case 'error':
          this.recordError('Server error: ' + (msg.message || JSON.stringify(msg)));
          this.ui.overlay('Server error: ' + (msg.message || 'unknown'), 'error');
          break;
        case 'playerCount':
          break;
        default:
          // Unknown types are ignored, as Epic's frontend does.
          break;
      }
    }

    onConfig(msg) {
      const opts = msg.peerConnectionOptions;
      this.peerConnectionOptions = opts && typeof opts === 'object' ? opts : {};
    }

    onStreamerList(ids) {
      if (this.subscribedTo) return;
      clearTimeout(this.timers.list);
      let pick = null;
      if (this.wantedStreamerId) {
        if (ids.indexOf(this.wantedStreamerId) >= 0) pick = this.wantedStreamerId;
      } else if (ids.length > 0) {
        pick = ids[0];
      }
      if (!pick) {
        const waitingFor = this.wantedStreamerId ? 'streamer ' + this.wantedStreamerId : 'a streamer';
        if (this.info.state !== 'waiting') this.log('Waiting for ' + waitingFor);
        this.setState('waiting', 'Waiting for ' + waitingFor + '…');
        this.timers.list = setTimeout(() => this.send({ type: 'listStreamers' }), LIST_RETRY_MS);
        return;
      }
      this.subscribedTo = pick;
      this.setStreamer(pick);
      this.log('Subscribing to ' + pick);
      this.setState('subscribing', 'Joining ' + pick + '…');
      this.send({ type: 'subscribe', streamerId: pick });
    }

    setStreamer(id) {
      this.info.streamerId = id || null;
      this.ui.text('streamer-id', id || '—');
    }

    // -- WebRTC --

    createPeer() {
      const config = Object.assign({}, this.peerConnectionOptions);
      if (this.forceTurn) config.iceTransportPolicy = 'relay';
      const pc = new RTCPeerConnection(config);
      this.pc = pc;
      this.pendingCandidates = [];
      this.prevStats = null;

      pc.onicecandidate = (ev) => {
        if (pc !== this.pc || !ev.candidate || !ev.candidate.candidate) return;
        const c = ev.candidate;
        const candidate = { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex };
        if (c.usernameFragment) candidate.usernameFragment = c.usernameFragment;
        this.send({ type: 'iceCandidate', candidate: candidate });
      };
      pc.oniceconnectionstatechange = () => {
        if (pc !== this.pc) return;
        this.info.iceState = pc.iceConnectionState;
        this.ui.pill('ice', pc.iceConnectionState);
      };
      pc.onconnectionstatechange = () => {
        if (pc !== this.pc) return;
        const s = pc.connectionState;
        this.info.peerState = s;
        this.ui.pill('peer', s);
        this.log('Peer connection ' + s, s === 'failed' ? 'error' : s === 'connected' ? 'ok' : 'info');
        if (s === 'connected' && this.info.state !== 'streaming') {
          this.setState('connected', 'Connected. Waiting for video…');
        } else if (s === 'failed') {
          this.fail('Media connection failed (no ICE route to the streamer; TURN may be needed)');
        } else if (s === 'disconnected') {
          this.setState('interrupted', 'Media connection interrupted…');
        }
      };
      pc.ontrack = (ev) => {
        if (pc !== this.pc) return;
        const stream = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
        if (ev.track.kind === 'video') {
          this.video.srcObject = stream;
          this.play();
        } else if (!(this.video.srcObject && this.video.srcObject.getTracks().indexOf(ev.track) >= 0)) {
          // Audio in a stream of its own gets its own element; it follows the mute button.
          this.audio.srcObject = stream;
          this.audio.muted = this.video.muted;
          this.audio.play().catch(() => {});
        }
      };
      pc.ondatachannel = (ev) => this.adoptChannel(ev.channel);
      this.statsTimer = setInterval(() => this.pollStats(pc), STATS_MS);
      return pc;
    }

    closePeer() {
      clearInterval(this.statsTimer);
      if (this.channel) {
        this.channel.onopen = this.channel.onclose = this.channel.onmessage = null;
        this.channel = null;
      }
      this.info.dataChannelOpen = false;
      this.ui.pill('data', 'closed');
      if (this.pc) {
        const pc = this.pc;
        this.pc = null;
        pc.close();
      }
      if (this.video.srcObject) this.video.srcObject = null;
      if (this.audio.srcObject) this.audio.srcObject = null;
      this.info.iceState = 'new';
      this.info.peerState = 'new';
      this.ui.pill('ice', 'new');
      this.ui.pill('peer', 'new');
    }

    async onOffer(msg) {
      if (msg.playerId !== undefined && msg.playerId !== '') {
        this.info.playerId = String(msg.playerId);
        this.ui.fact('player', this.info.playerId);
      }
      if (!this.pc || this.pc.connectionState === 'failed' || this.pc.connectionState === 'closed') {
        this.closePeer();
        this.createPeer();
      }
      const pc = this.pc;
      this.setState('negotiating', 'Negotiating media…');
      await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
      const queued = this.pendingCandidates;
      this.pendingCandidates = [];
      for (const c of queued) await this.addCandidate(pc, c);
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      if (pc !== this.pc) return;
      this.send({ type: 'answer', sdp: pc.localDescription.sdp, minBitrateBps: 0, maxBitrateBps: 0 });
      this.log('Answer sent');
    }

    onRemoteCandidate(candidate) {
      if (!candidate || !candidate.candidate) return;
      const pc = this.pc;
      if (!pc || !pc.remoteDescription) {
        this.pendingCandidates.push(candidate);
        return;
      }
      this.addCandidate(pc, candidate);
    }

    async addCandidate(pc, c) {
      const init = { candidate: c.candidate };
      if (c.sdpMid !== undefined && c.sdpMid !== null) init.sdpMid = c.sdpMid;
      if (typeof c.sdpMLineIndex === 'number') init.sdpMLineIndex = c.sdpMLineIndex;
      if (c.usernameFragment) init.usernameFragment = c.usernameFragment;
      if (init.sdpMid === undefined && init.sdpMLineIndex === undefined) init.sdpMLineIndex = 0;
      try {
        await pc.addIceCandidate(init);
      } catch (err) {
        // Epic's frontend forces the bundle's first m-line; try that before giving up.
        try {
          await pc.addIceCandidate({ candidate: c.candidate, sdpMLineIndex: 0 });
        } catch (err2) {
          this.log('Remote ICE candidate rejected: ' + err2.message, 'error');
        }
      }
    }

    play() {
      this.video.muted = true;
      const p = this.video.play();
      if (p && p.catch) {
        p.catch(() => this.ui.askToPlay());
      }
    }

    // -- data channel --

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

  // ---- bootstrap --------------------------------------------------------------

  PixelfleetPlayer.encodeMessage = encodeMessage;
  PixelfleetPlayer.TO_STREAMER = TO_STREAMER;
  PixelfleetPlayer.signallingFromPage = signallingFromPage;
  PixelfleetPlayer.sessionSocketUrl = sessionSocketUrl;
  PixelfleetPlayer.formatEta = formatEta;
  window.PixelfleetPlayer = PixelfleetPlayer;

  const options = window.pixelfleetOptions || {};
  const player = new PixelfleetPlayer(options);
  window.pixelfleetPlayer = player;
  // Leaving the page while queued only closes the event stream: a reload of this tab
  // takes the same place back, and the server gives the place up within a few seconds
  // (its rejoin grace) when nobody comes back. The Leave button cancels at once.
  window.addEventListener('pagehide', () => {
    if (player.slots) player.slots.detach();
  });
  if (options.autoStart !== false) {
    player.start();
  }
})();
