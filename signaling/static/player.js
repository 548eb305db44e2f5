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
 *
 * The page loads player-input.js, player-matchmaker.js and player-view.js first; each
 * adds its part to window.PixelfleetParts.
 */
(function () {
  'use strict';

  const {
    TO_STREAMER, encodeMessage, PlayerInput,
    signallingFromPage, sessionSocketUrl, flag, MatchmakerError, SlotFinder,
    formatEta, PlayerView, PlayerStatus
  } = window.PixelfleetParts;

  const KEEPALIVE_MS = 30000;
  const LIST_RETRY_MS = 2000;
  const RECONNECT_MIN_MS = 2000;
  const RECONNECT_MAX_MS = 15000;
  const STATS_MS = 1000;


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
        firstFrameReported: null, // true once the matchmaker took this slot's first_frame report
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
  }


  // The data channel methods live in player-input.js, stats and status in player-view.js.
  for (const part of [PlayerInput, PlayerStatus]) {
    for (const name of Object.getOwnPropertyNames(part.prototype)) {
      if (name !== 'constructor') {
        Object.defineProperty(PixelfleetPlayer.prototype, name, Object.getOwnPropertyDescriptor(part.prototype, name));
      }
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
