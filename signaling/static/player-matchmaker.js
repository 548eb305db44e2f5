/*
 * pixelfleet player page, part 2 of 4: where to connect (page URL, ?ss=, session socket
 * URLs) and the matchmaker client (a slot, or a place in its queue). Loaded before player.js.
 */
(function () {
  'use strict';

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

    /** The first video frame of this slot is decoded: tell the matchmaker, once per slot. */
    reportFirstFrame() {
      const a = this.activity;
      if (!a || !a.sessionId || a.firstFrameSent) return;
      a.firstFrameSent = true;
      fetch(this.base + '/api/v1/sessions/' + encodeURIComponent(a.sessionId) + '/events', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + a.token },
        body: JSON.stringify({ event: 'first_frame' }),
        cache: 'no-store'
      })
        .then((res) => {
          this.player.info.firstFrameReported = res.ok;
          if (!res.ok) this.player.log('First-frame report refused: HTTP ' + res.status, 'error');
        })
        .catch(() => this.player.log('Could not report the first frame to the matchmaker', 'error'));
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

  window.PixelfleetParts = Object.assign(window.PixelfleetParts || {}, {
    signallingFromPage,
    sessionSocketUrl,
    flag,
    MatchmakerError,
    SlotFinder
  });
})();
