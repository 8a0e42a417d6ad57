// meshd dashboard. Reads the coordinators' JSON API with an admin
// credential held in this tab's sessionStorage and sent as the admin CLI
// sends it (Authorization: Bearer), never in a URL. Follows changes with a
// long poll on GET /v1/changes, which answers as soon as the cluster state
// moves past the index the page last saw.
'use strict';

(() => {
  const KEY = 'meshd.admin-token';
  const POLL_WAIT = 20; // seconds a long poll may wait on the server
  const REFRESH_ANYWAY = 15000; // ms: online windows and expiries move with time too
  const CLUSTER_EVERY = 5000; // ms between cluster status reads

  const $ = (sel) => document.querySelector(sel);
  let token = sessionStorage.getItem(KEY) || '';
  let session = null; // {abort: AbortController} while signed in
  let index = 0;
  let lastRefresh = 0;
  let vnets = [];
  let lookupQuery = '';

  // el builds an element; children are nodes or strings (set as text, so
  // nothing from the API is ever parsed as HTML).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'title') e.title = v;
      else e.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  class APIError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, signal) {
    const r = await fetch(path, {
      headers: { Authorization: 'Bearer ' + token, Accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
      signal,
    });
    let body = null;
    try { body = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) {
      const err = body && body.error;
      throw new APIError(r.status, err ? err.code : '', err ? err.message : r.status + ' ' + r.statusText);
    }
    return body;
  }

  const sleep = (ms, signal) => new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    if (signal) signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });

  // ago says how long ago t was, in words.
  function ago(t) {
    const ms = Date.now() - Date.parse(t);
    if (!isFinite(ms) || Date.parse(t) <= 0) return '-';
    if (ms < 5000) return 'just now';
    const s = Math.round(ms / 1000);
    if (s < 90) return s + ' s ago';
    if (s < 5400) return Math.round(s / 60) + ' min ago';
    if (s < 129600) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' d ago';
  }

  // until says how far off t is, in words.
  function until(t) {
    const s = Math.round((Date.parse(t) - Date.now()) / 1000);
    if (!isFinite(s)) return '-';
    if (s <= 0) return 'expired';
    if (s < 5400) return 'in ' + Math.max(1, Math.round(s / 60)) + ' min';
    if (s < 129600) return 'in ' + Math.round(s / 3600) + ' h';
    return 'in ' + Math.round(s / 86400) + ' d';
  }

  // gwState is a gateway's state in the words package gateway uses.
  // gwState is a gateway's state for a route in the coordinators' own
  // word (active, standby, drained, unhealthy, offline: package gateway);
  // a coordinator that predates the words sends only healthy and drained.
  function gwState(g) {
    if (g.state) return g.state;
    if (!g.healthy) return 'unhealthy';
    return g.drained ? 'drained' : 'healthy';
  }

  // why says why a route's active gateway carries it, in the reason the
  // coordinators give (the rule lives in package gateway, not here).
  function why(r) {
    if (r.why) return r.why;
    const gs = r.gateways || [];
    if (gs.length === 0) return 'no gateway announces it';
    const a = gs.find((g) => g.name === r.active_gateway);
    if (a && a.reason) return a.state + ': ' + a.reason;
    return r.active_gateway ? 'active' : 'no gateway can carry it';
  }

  function gwClass(g) {
    switch (gwState(g)) {
      case 'active': case 'standby': case 'healthy': return 'ok';
      case 'drained': return 'warn';
      default: return 'bad';
    }
  }

  function gatewayList(gs, active) {
    return (gs || []).map((g) => el('span', {
      class: 'gw ' + (g.name === active ? 'active ' : '') + gwClass(g),
      'data-gateway': g.name, 'data-state': gwState(g),
      title: g.reason || '',
    }, `${g.name} (${g.priority}, ${gwState(g)})`));
  }

  function setRows(table, rows, cols, emptyText) {
    const tb = $(table + ' tbody');
    if (rows.length === 0) rows = [el('tr', {}, el('td', { colspan: cols, class: 'empty' }, emptyText))];
    tb.replaceChildren(...rows);
  }

  function peerPath(p) {
    if (p.role === 'device') return 'through the active gateways (a device config)';
    const parts = [];
    if (p.endpoints && p.endpoints.length) parts.push('direct: ' + p.endpoints.join(', '));
    if (p.relay) parts.push('relay: ' + p.relay);
    return parts.length ? parts.join('; ') : '-';
  }

  function peerStatus(p) {
    if (p.role === 'device') return el('span', { class: 'badge muted', 'data-status': 'unknown' }, 'not watched');
    const s = [el('span', { class: 'badge ' + (p.online ? 'ok' : 'bad'), 'data-status': p.online ? 'online' : 'offline' }, p.online ? 'online' : 'offline')];
    if (p.drained) s.push(' ', el('span', { class: 'badge warn' }, 'drained'));
    return s;
  }

  function renderNetworks(vs, peers, routes) {
    const active = new Map(); // vnet/prefix -> active gateway
    for (const r of routes) active.set(r.vnet + ' ' + r.prefix, r.active_gateway);
    const blocks = vs.map((v) => {
      const ps = peers.filter((p) => p.vnet === v.name);
      const rows = ps.map((p) => {
        const routes = (p.routes || []).map((r) => {
          const carries = active.get(p.vnet + ' ' + r.prefix) === p.name;
          return el('div', { class: 'mono' }, `${r.prefix} (${r.priority})`, carries ? el('span', { class: 'ok' }, ' active') : ' standby');
        });
        return el('tr', { 'data-peer': p.name, 'data-vnet': p.vnet },
          el('td', { class: 'peer-name' }, p.name),
          el('td', {}, p.role),
          el('td', { class: 'mono' }, p.overlay_ip),
          el('td', {}, peerStatus(p)),
          el('td', { class: 'mono', title: 'where the other peers reach it: its direct endpoints, and its relayed address for those that cannot reach them' }, peerPath(p)),
          el('td', {}, routes.length ? routes : '-'),
          el('td', { title: p.last_seen }, p.online ? 'now' : ago(p.last_seen)),
          el('td', {}, (p.tags || []).join(', ') || '-'));
      });
      if (rows.length === 0) rows.push(el('tr', {}, el('td', { colspan: 8, class: 'empty' }, 'no peers yet')));
      const online = ps.filter((p) => p.online).length;
      return el('div', { class: 'vnet', 'data-vnet': v.name },
        el('h3', {}, v.name, el('span', { class: 'meta muted mono' }, `${v.overlay} · ${ps.length} peers, ${online} online`)),
        el('table', {},
          el('thead', {}, el('tr', {}, ['Peer', 'Role', 'Overlay IP', 'Status', 'Path', 'Routes', 'Last seen', 'Tags'].map((h) => el('th', {}, h)))),
          el('tbody', {}, rows)));
    });
    $('#vnets').replaceChildren(...(blocks.length ? blocks : [el('p', { class: 'empty' }, 'no vnets')]));
  }

  function renderRoutes(routes, overlaps) {
    setRows('#routes-table', routes.map((r) => el('tr', { 'data-route': r.prefix, 'data-vnet': r.vnet },
      el('td', {}, r.vnet),
      el('td', { class: 'mono' }, r.prefix),
      el('td', { class: 'active-gw ' + (r.active_gateway ? 'ok' : 'bad'), 'data-active': r.active_gateway || '' }, r.active_gateway || 'none'),
      el('td', { class: 'why' }, why(r)),
      el('td', {}, gatewayList(r.gateways, r.active_gateway)))), 5, 'no routes announced');
    setRows('#overlaps-table', overlaps.map((o) => {
      let carries = '-';
      if (o.more_specific) {
        const p = o.more_specific === 'a' ? o.a : o.b;
        carries = `${p.prefix} (more specific): ` + (o.specific_gateways || []).map((g) => g.name + (g.allowed_exactly ? '' : ' (not allowed exactly)')).join(', ');
        if (o.unauthorized) carries = 'UNAUTHORIZED ' + carries;
      }
      return el('tr', {},
        el('td', { class: 'mono' }, `${o.a.prefix} in ${o.a.vnet}`),
        el('td', { class: 'mono' }, `${o.b.prefix} in ${o.b.vnet}`),
        el('td', {}, o.same_vnet ? 'same vnet (longest prefix wins)' : 'separate vnets'),
        el('td', { class: o.unauthorized ? 'bad' : '' }, carries));
    }), 4, 'no overlapping prefixes');
  }

  function renderTokens(tokens, admins) {
    setRows('#tokens-table', tokens.map((t) => {
      const state = t.revoked ? 'revoked' : t.expired ? 'expired' : t.uses_left <= 0 ? 'used up' : 'valid';
      return el('tr', { 'data-token': t.id },
        el('td', { class: 'mono' }, t.id),
        el('td', {}, t.vnet),
        el('td', {}, `${t.uses_left} of ${t.uses}`),
        el('td', { title: t.expires }, until(t.expires)),
        el('td', {}, (t.tags || []).join(', ') || '-'),
        el('td', { class: 'mono' }, (t.allow_routes || []).join(', ') || '-'),
        el('td', { class: state === 'valid' ? 'ok' : 'muted' }, state + (t.ephemeral ? ', ephemeral' : '')),
        el('td', {}, t.created_by || '-'));
    }), 8, 'no join tokens');
    setRows('#admins-table', admins.map((a) => el('tr', { 'data-admin': a.name },
      el('td', {}, a.name + (a.bootstrap ? ' (bootstrap)' : '')),
      el('td', { class: 'mono' }, a.id),
      el('td', {}, a.read_only ? 'read-only' : 'full'),
      el('td', {}, a.created_at ? ago(a.created_at) + (a.created_by ? ' by ' + a.created_by : '') : '-'),
      el('td', { class: a.revoked ? 'bad' : 'ok' }, a.revoked ? 'revoked' + (a.revoked_by ? ' by ' + a.revoked_by : '') : 'valid'))),
    5, 'no admin credentials');
  }

  function showError(err) {
    const e = $('#error');
    if (!err) { e.hidden = true; return; }
    e.textContent = err.message || String(err);
    e.hidden = false;
  }

  async function refresh(signal, at) {
    const [vs, peers, routes, overlaps, tokens, admins] = await Promise.all([
      api('/v1/vnets', signal), api('/v1/peers', signal), api('/v1/routes', signal),
      api('/v1/routes/overlaps', signal), api('/v1/tokens', signal), api('/v1/admin/tokens', signal),
    ]);
    vnets = vs || [];
    renderNetworks(vnets, peers || [], routes || []);
    renderRoutes(routes || [], overlaps || []);
    renderTokens(tokens || [], admins || []);
    lastRefresh = Date.now();
    document.body.dataset.index = String(at);
    $('#index').textContent = 'index ' + at;
    if (lookupQuery) await lookup(lookupQuery, signal);
  }

  // lookup asks the coordinators which gateway carries q (an address or
  // a CIDR) in every vnet that has a route for it, as `meshd route lookup
  // --all-vnets` does.
  async function lookup(q, signal) {
    const out = $('#lookup-result');
    let results;
    try {
      const key = q.includes('/') ? 'prefix' : 'ip';
      results = await api('/v1/routes/lookup?' + new URLSearchParams({ [key]: q, all_vnets: '1' }), signal);
    } catch (e) {
      if (e.name === 'AbortError') return;
      if (e.status === 401) throw e;
      out.replaceChildren(el('p', { class: 'error', 'data-lookup': 'error' }, e.message));
      return;
    }
    results = results || [];
    if (results.length === 0) {
      out.replaceChildren(el('p', { class: 'answer', 'data-lookup': 'none' }, `${q}: no route in any vnet (${vnets.map((v) => v.name).join(', ')})`));
      return;
    }
    out.replaceChildren(...results.map((r) => el('div', { class: 'answer', 'data-lookup': r.vnet, 'data-prefix': r.prefix || '', 'data-active': r.active_gateway || '' },
      r.prefix
        ? el('div', {}, `${r.ip} in vnet ${r.vnet}: `, el('span', { class: 'mono' }, r.prefix), ' via ',
          el('strong', { class: r.active_gateway ? 'ok' : 'bad' }, r.active_gateway || 'no gateway'))
        : el('div', {}, `${r.ip} in vnet ${r.vnet}: no route covers all of it`),
      r.prefix ? el('div', { class: 'muted' }, 'why: ' + why(r)) : null,
      r.prefix ? el('div', {}, 'gateways: ', gatewayList(r.gateways, r.active_gateway)) : null,
      ...(r.inside || []).map((i) => el('div', {}, 'inside it: ', el('span', { class: 'mono' }, i.prefix), ' via ',
        el('strong', {}, i.active_gateway || 'no gateway'), ' ', gatewayList(i.gateways, i.active_gateway))))));
  }

  async function clusterLoop(signal) {
    while (!signal.aborted) {
      try {
        const st = await api('/v1/cluster/status', signal);
        const up = (st.members || []).length;
        $('#cluster').textContent = `coordinator ${st.server || '?'} · leader ${st.leader || 'none'} · ${up} members`;
      } catch (e) {
        if (signal.aborted) return;
        $('#cluster').textContent = 'cluster status: ' + e.message;
      }
      await sleep(CLUSTER_EVERY, signal);
    }
  }

  async function pollLoop(signal) {
    let failures = 0;
    while (!signal.aborted) {
      try {
        const c = await api(`/v1/changes?after=${index}&wait=${POLL_WAIT}`, signal);
        if (c.index !== index || Date.now() - lastRefresh > REFRESH_ANYWAY) {
          await refresh(signal, c.index);
          index = c.index; // only once shown: a failed read is tried again
        }
        failures = 0;
        showError(null);
        $('#live').classList.remove('stale');
      } catch (e) {
        if (signal.aborted) return;
        if (e.status === 401) { signOut('Signed out: ' + e.message); return; }
        failures++;
        $('#live').classList.add('stale');
        showError(new Error('Not updating: ' + e.message + ' (retrying)'));
        await sleep(Math.min(5000, 250 * 2 ** Math.min(failures, 5)), signal);
      }
    }
  }

  function showView() {
    const name = (location.hash || '#networks').slice(1);
    const view = ['networks', 'routes', 'tokens'].includes(name) ? name : 'networks';
    for (const v of document.querySelectorAll('.view')) v.hidden = !session || v.id !== 'view-' + view;
    for (const a of document.querySelectorAll('#tabs a')) a.classList.toggle('current', a.dataset.view === view);
    document.body.dataset.view = view;
  }

  function start() {
    session = { abort: new AbortController() };
    index = 0;
    $('#signin').hidden = true;
    $('#tabs').hidden = false;
    $('#signout').hidden = false;
    $('#live').hidden = false;
    showView();
    pollLoop(session.abort.signal);
    clusterLoop(session.abort.signal);
  }

  function signOut(message) {
    if (session) session.abort.abort();
    session = null;
    token = '';
    sessionStorage.removeItem(KEY);
    $('#signin').hidden = false;
    $('#tabs').hidden = true;
    $('#signout').hidden = true;
    $('#live').hidden = true;
    $('#cluster').textContent = '';
    $('#index').textContent = '';
    showError(null);
    showView();
    $('#signin-error').textContent = message || '';
    $('#token').value = '';
    $('#token').focus();
  }

  $('#signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const candidate = $('#token').value.trim();
    if (!candidate) return;
    token = candidate;
    try {
      await api('/v1/vnets'); // checks the credential (read-only ones pass)
    } catch (e) {
      token = '';
      $('#signin-error').textContent = e.message;
      return;
    }
    sessionStorage.setItem(KEY, candidate);
    $('#token').value = '';
    $('#signin-error').textContent = '';
    start();
  });

  $('#signout').addEventListener('click', () => signOut(''));

  $('#lookup-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    lookupQuery = $('#lookup').value.trim();
    if (!lookupQuery || !session) return;
    try {
      await lookup(lookupQuery, session.abort.signal);
    } catch (e) {
      if (e.status === 401) signOut('Signed out: ' + e.message);
    }
  });

  window.addEventListener('hashchange', showView);

  if (token) start(); else signOut('');
})();
