/*
 * pixelfleet operator dashboard: plain JS, no build step.
 * The admin token lives in sessionStorage (this tab only) and goes out as a bearer header;
 * live updates are the server-sent events of ./events, read with fetch (EventSource
 * cannot send a header). window.dashboard holds the last snapshot (the tests read it).
 */
(function () {
  'use strict';
  const KEY = 'pixelfleet-admin-token';
  const API = '../'; // /api/v1/admin/
  const pages = { hosts: 0, sessions: 0 };
  let stream = null; // AbortController of the open event stream
  window.dashboard = { state: null, updates: 0, error: null };

  const $ = (id) => document.getElementById(id);
  const token = () => sessionStorage.getItem(KEY);
  const headers = () => ({ Authorization: 'Bearer ' + token() });
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k == null ? '' : String(k)));
    return e;
  };
  const pct = (x) => Math.round((x || 0) * 100) + '%';
  const bar = (x) => el('span', { class: 'bar', title: pct(x) }, el('i', { style: 'width:' + pct(x) }));
  const secs = (x) => (x == null ? '-' : x.toFixed(1) + ' s');

  function signedIn(yes) {
    $('login').hidden = yes;
    $('main').hidden = !yes;
    $('logout').hidden = !yes;
    $('status').textContent = yes ? 'connecting...' : 'signed out';
  }

  async function admin(method, path, body) {
    const res = await fetch(API + path, {
      method,
      headers: Object.assign({ 'Content-Type': 'application/json' }, headers()),
      body: body ? JSON.stringify(body) : undefined
    });
    if (!res.ok) throw new Error(method + ' ' + path + ': HTTP ' + res.status);
    return res.json();
  }

  async function follow() {
    if (stream) stream.abort();
    const ctl = (stream = new AbortController());
    const q = 'hosts_page=' + pages.hosts + '&sessions_page=' + pages.sessions;
    try {
      const res = await fetch('events?' + q, { headers: headers(), signal: ctl.signal, cache: 'no-store' });
      if (res.status === 401 || res.status === 403) {
        sessionStorage.removeItem(KEY);
        signedIn(false);
        $('status').textContent = 'token refused (HTTP ' + res.status + ')';
        return;
      }
      if (!res.ok || !res.body) throw new Error('HTTP ' + res.status);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const ev = /^event: (.*)$/m.exec(block);
          const data = /^data: (.*)$/m.exec(block);
          if (!ev || !data) continue;
          if (ev[1] === 'state') render(JSON.parse(data[1]));
          else $('status').textContent = 'store problem: ' + JSON.parse(data[1]).message;
        }
      }
    } catch (err) {
      if (ctl.signal.aborted) return;
      window.dashboard.error = String(err);
      $('status').textContent = 'disconnected, retrying...';
    }
    if (stream === ctl) setTimeout(follow, 2000); // the stream ended: reconnect
  }

  function render(s) {
    window.dashboard.state = s;
    window.dashboard.updates += 1;
    $('status').textContent = 'live, ' + new Date(s.now * 1000).toLocaleTimeString();
    const c = s.counts;
    const cards = [
      ['sessions', Object.values(c.sessions).reduce((a, b) => a + b, 0)],
      ['waiting', c.waiting],
      ['ready slots', c.slots.ready || 0],
      ['assigned slots', c.slots.assigned || 0],
      ['hosts live', c.hosts.live || 0],
      ['hosts draining', c.hosts.draining || 0],
      ['hosts dead', c.hosts.dead || 0]
    ];
    $('counts').replaceChildren(...cards.map(([k, v]) => el('div', { class: 'card', 'data-count': k }, el('b', {}, v), k)));
    const j = s.join;
    $('join').replaceChildren(
      el('tr', {}, el('th', {}), el('th', {}, 'p50'), el('th', {}, 'p90'), el('th', {}, 'p99')),
      ...[['queue wait', j.queue_wait_s], ['to first frame', j.first_frame_s]].map(([k, p]) =>
        el('tr', {}, el('td', {}, k), el('td', {}, secs(p.p50)), el('td', {}, secs(p.p90)), el('td', {}, secs(p.p99)))
      )
    );
    chart(s.history);
    $('queues').replaceChildren(
      el('tr', {}, el('th', {}, 'tenant'), el('th', {}, 'app'), el('th', {}, 'waiting'), el('th', {}, 'waits (oldest first)')),
      ...s.queues.map((q) => el('tr', {}, el('td', {}, q.tenant), el('td', {}, q.app), el('td', {}, q.length), el('td', {}, q.waits_s.map(secs).join(', '))))
    );
    $('hosts').replaceChildren(
      el('tr', {}, ...['host', 'state', 'region', 'GPU', 'GPU load', 'NVENC', 'slots', ''].map((h) => el('th', {}, h))),
      ...s.hosts.items.map((h) =>
        el('tr', { class: 'h-' + h.state, 'data-host': h.host_id },
          el('td', {}, h.host_id), el('td', { class: 'state' }, h.state), el('td', {}, h.region), el('td', {}, h.gpu_model),
          el('td', {}, bar(h.gpu_load)), el('td', {}, bar(h.nvenc_load)),
          el('td', {}, ...h.slots.map((x) => el('span', { class: 'chip s-' + x.state, 'data-slot-state': x.state, title: x.slot_id + ' ' + x.app + ': ' + x.state + ', GPU ' + pct(x.gpu_load) + ', NVENC ' + pct(x.nvenc_load) }, x.state))),
          el('td', {}, h.state === 'live' ? el('button', { class: 'drain', onclick: () => act('POST', 'hosts/' + encodeURIComponent(h.host_id) + '/drain', { draining: true }) }, 'Drain') : ''))
      )
    );
    $('sessions').replaceChildren(
      el('tr', {}, ...['session', 'tenant', 'app', 'host', 'region', 'state', 'age', ''].map((h) => el('th', {}, h))),
      ...s.sessions.items.map((x) =>
        el('tr', { 'data-session': x.session_id },
          el('td', {}, x.session_id), el('td', {}, x.tenant), el('td', {}, x.app), el('td', {}, x.host_id), el('td', {}, x.region),
          el('td', {}, x.state), el('td', {}, secs(x.age_s)),
          el('td', {}, el('button', { class: 'end', onclick: () => act('DELETE', 'sessions/' + encodeURIComponent(x.session_id)) }, 'End')))
      )
    );
    for (const p of document.querySelectorAll('.pager')) {
      const list = s[p.dataset.list];
      p.replaceChildren(
        el('button', { onclick: () => turn(p.dataset.list, -1) }, '<'),
        ' page ' + (list.page + 1) + ' of ' + list.pages + ' (' + list.total + ') ',
        el('button', { onclick: () => turn(p.dataset.list, 1) }, '>')
      );
      if (list.page <= 0) p.firstChild.disabled = true;
      if (list.page >= list.pages - 1) p.lastChild.disabled = true;
    }
  }

  function chart(points) {
    const svg = $('chart');
    const NS = 'http://www.w3.org/2000/svg';
    svg.replaceChildren();
    if (points.length < 2) return;
    const t0 = points[0].t, t1 = points[points.length - 1].t;
    const top = Math.max(1, ...points.map((p) => Math.max(p.sessions, p.waiting, p.ready)));
    for (const [key, color] of [['sessions', '#0969da'], ['waiting', '#cf222e'], ['ready', '#2da44e']]) {
      const line = document.createElementNS(NS, 'polyline');
      line.setAttribute('fill', 'none');
      line.setAttribute('stroke', color);
      line.setAttribute('stroke-width', '2');
      line.setAttribute('points', points.map((p) => ((600 * (p.t - t0)) / Math.max(1, t1 - t0)).toFixed(1) + ',' + (155 - (150 * p[key]) / top).toFixed(1)).join(' '));
      svg.append(line);
    }
  }

  function turn(list, by) {
    pages[list] = Math.max(0, pages[list] + by);
    follow();
  }

  async function act(method, path, body) {
    try {
      await admin(method, path, body);
    } catch (err) {
      window.dashboard.error = String(err);
      $('status').textContent = String(err);
    }
  }

  $('login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $('token').value);
    $('token').value = '';
    signedIn(true);
    follow();
  });
  $('logout').addEventListener('click', () => {
    sessionStorage.removeItem(KEY);
    if (stream) stream.abort();
    stream = null;
    signedIn(false);
  });
  if (token()) {
    signedIn(true);
    follow();
  }
})();
