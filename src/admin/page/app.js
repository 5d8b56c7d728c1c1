// The presence page: reads GET /v1/events (server-sent events) with fetch, so the admin
// token travels in the Authorization header, and draws the hub from a snapshot plus events.
// Every string from the hub or a peer is rendered with textContent: never as HTML.
'use strict';
(() => {
  const TOKEN_KEY = 'p2ppi-hub-admin-token';
  const RECENT_KEPT = 100;
  const $ = (id) => document.getElementById(id);

  const state = {
    hub: null,           // {version, started_at, uptime_secs, sessions, certificate_expires}
    uptimeAt: 0,         // performance.now() when uptime_secs was received
    peers: new Map(),    // peer_name -> row (the newest session of each peer)
    hubObjects: [],
    recent: [],
    heartbeatSecs: 15,
  };

  // ---- DOM helpers: text only ----
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null) continue;
        if (key === 'class') node.className = value;
        else if (key === 'text') node.textContent = value;
        else if (key === 'title') node.title = value;
        else if (key === 'data') Object.assign(node.dataset, value);
        else if (key === 'onclick') node.addEventListener('click', value);
        else node.setAttribute(key, value);
      }
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // ---- token ----
  const token = () => sessionStorage.getItem(TOKEN_KEY);
  function authHeaders() {
    const t = token();
    return t ? { Authorization: 'Bearer ' + t } : {};
  }

  function setStatus(kind, text) {
    const s = $('status');
    s.className = 'status status-' + kind;
    s.textContent = text;
  }

  function showLogin(message) {
    $('live').hidden = true;
    $('login').hidden = false;
    $('logout').hidden = true;
    $('login-error').textContent = message || '';
    setStatus('off', 'locked');
    $('token-input').focus();
  }

  function showLive() {
    $('login').hidden = true;
    $('live').hidden = false;
    $('logout').hidden = !token();
  }

  // ---- the stream ----
  let controller = null;
  let retryMs = 500;

  async function connect() {
    if (controller) controller.abort();
    const own = new AbortController();
    controller = own;
    setStatus('wait', 'connecting');
    let response;
    try {
      response = await fetch('/v1/events', { headers: authHeaders(), cache: 'no-store', signal: own.signal });
    } catch (e) {
      return retry(own);
    }
    if (response.status === 401) {
      own.abort();
      showLogin(token() ? 'The hub refused this token.' : '');
      return;
    }
    if (!response.ok || !response.body) {
      $('notice').textContent = 'event stream: HTTP ' + response.status;
      return retry(own);
    }
    showLive();
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      // Three heartbeats without a byte: the stream is dead, start again.
      watchdog = setTimeout(() => own.abort(), state.heartbeatSecs * 3000 + 2000);
    };
    arm();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        buffer += value.replace(/\r\n?/g, '\n');
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          dispatch(block);
        }
      }
    } catch (e) {
      // aborted or the connection broke: reconnect below
    } finally {
      clearTimeout(watchdog);
    }
    retry(own);
  }

  function retry(own) {
    if (controller !== own) return; // a newer connection took over
    setStatus('wait', 'reconnecting');
    setTimeout(() => { if (controller === own) connect(); }, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  }

  function dispatch(block) {
    let name = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') name = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length === 0) return;
    let payload;
    try {
      payload = JSON.parse(data.join('\n'));
    } catch (e) {
      return;
    }
    apply(name, payload);
  }

  // ---- state ----
  function upsert(row) {
    const old = state.peers.get(row.peer_name);
    if (!old || old.session_id <= row.session_id) state.peers.set(row.peer_name, row);
  }

  function apply(name, data) {
    switch (name) {
      case 'snapshot':
        state.hub = data.hub;
        state.uptimeAt = performance.now();
        state.heartbeatSecs = data.heartbeat_secs || 15;
        state.peers = new Map();
        for (const row of data.peers) upsert(row);
        state.hubObjects = data.hub_objects;
        state.recent = data.recent.slice(-RECENT_KEPT);
        retryMs = 500;
        setStatus('live', 'live');
        break;
      case 'session_started':
      case 'objects_changed':
      case 'flags_changed':
        upsert(data);
        break;
      case 'session_ended': {
        const old = state.peers.get(data.peer_name);
        if (old && old.session_id === data.session_id) state.peers.delete(data.peer_name);
        break;
      }
      case 'hub_objects_changed':
        state.hubObjects = data.objects;
        break;
      case 'heartbeat':
        state.hub = data;
        state.uptimeAt = performance.now();
        break;
      case 'dropped':
        $('notice').textContent = 'fell behind the hub; resynchronising';
        break;
      case 'invitation_routed':
      case 'invitation_answered':
      case 'invitation_refused':
      case 'message_routed':
      case 'message_dropped':
      case 'hub_message':
        state.recent.push(data);
        if (state.recent.length > RECENT_KEPT) state.recent.shift();
        break;
      default:
        return;
    }
    schedule();
  }

  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; render(); }, 30);
  }

  // ---- rendering ----
  function duration(secs) {
    secs = Math.max(0, Math.floor(secs));
    const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
    const m = Math.floor(secs / 60) % 60, s = secs % 60;
    if (d) return d + 'd ' + h + 'h';
    if (h) return h + 'h ' + m + 'm';
    if (m) return m + 'm ' + s + 's';
    return s + 's';
  }

  function since(rfc3339) {
    const t = Date.parse(rfc3339);
    if (Number.isNaN(t)) return rfc3339;
    const date = new Date(t);
    const time = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
    if (date.toDateString() === new Date().toDateString()) return time;
    return date.toLocaleDateString([], { month: 'short', day: 'numeric' }) + ' ' + time;
  }

  // A certificate's expiry: "in 12d" (marked when under 14 days), "expired".
  const EXPIRY_WARNING_DAYS = 14;
  function expiry(cell, rfc3339) {
    const t = Date.parse(rfc3339 || '');
    if (Number.isNaN(t)) {
      cell.textContent = '—';
      return cell;
    }
    const days = (t - Date.now()) / 86400000;
    cell.textContent = days <= 0 ? 'expired' : days < 1 ? 'in ' + duration(days * 86400) : 'in ' + Math.floor(days) + 'd';
    cell.title = 'expires ' + rfc3339;
    cell.classList.toggle('expiring', days < EXPIRY_WARNING_DAYS);
    return cell;
  }

  function renderHeader() {
    const hub = state.hub;
    if (!hub) return;
    expiry($('hub-cert'), hub.certificate_expires);
    $('version').textContent = 'v' + hub.version;
    $('uptime').textContent = duration(hub.uptime_secs + (performance.now() - state.uptimeAt) / 1000);
    $('sessions').textContent = String(state.peers.size);
  }

  function meshesOf() {
    const meshes = new Map();
    for (const row of state.peers.values()) {
      if (!meshes.has(row.mesh)) meshes.set(row.mesh, []);
      meshes.get(row.mesh).push(row);
    }
    return [...meshes.entries()].sort((a, b) => a[0].localeCompare(b[0]));
  }

  function label(row) {
    return row.display_name || row.nickname || row.common_name || '(no name)';
  }

  function matches(row, filter) {
    if (!filter) return true;
    return [row.display_name, row.nickname, row.common_name, row.peer_name, row.presence]
      .some((s) => typeof s === 'string' && s.toLowerCase().includes(filter));
  }

  function flag(on, letter, meaning) {
    return el('span', { class: 'flag ' + (on ? 'on' : 'off'), title: meaning + (on ? ': yes' : ': no') }, letter);
  }

  async function disconnect(row) {
    if (!window.confirm('Disconnect ' + label(row) + ' (' + row.peer_name + ')?')) return;
    try {
      const response = await fetch('/v1/sessions/' + encodeURIComponent(row.peer_name), {
        method: 'DELETE', headers: authHeaders(),
      });
      if (response.status === 401) return showLogin('The hub refused this token.');
      $('notice').textContent = response.ok || response.status === 404
        ? 'disconnected ' + label(row)
        : 'disconnect failed: HTTP ' + response.status;
    } catch (e) {
      $('notice').textContent = 'disconnect failed: ' + e;
    }
  }

  function peerRow(row) {
    const name = el('td', { class: 'name' },
      el('div', { class: 'primary', text: label(row) }),
      row.nickname && row.nickname !== label(row) ? el('div', { class: 'secondary', text: row.nickname }) : null,
      row.common_name && row.common_name !== label(row) && row.common_name !== row.nickname
        ? el('div', { class: 'secondary', text: 'CN ' + row.common_name }) : null);
    const caps = el('div', { class: 'caps' });
    for (const cap of row.capabilities) {
      caps.append(el('span', { class: 'cap mono', title: cap.guid, text: cap.name || cap.guid.slice(0, 8) + '…' }));
    }
    return el('tr', { class: 'peer', data: { peer: row.peer_name, session: String(row.session_id) } },
      name,
      el('td', null, el('code', { class: 'peername', title: row.peer_name, text: row.peer_name })),
      el('td', { class: 'presence', text: row.presence ?? '—' }),
      el('td', null, row.capabilities.length ? caps : el('span', { class: 'muted', text: '—' })),
      el('td', { class: 'mono nowrap', text: row.remote_address }),
      el('td', { class: 'nowrap', title: row.connected_since, text: since(row.connected_since) }),
      expiry(el('td', { class: 'cert nowrap' }), row.certificate_expires),
      el('td', { class: 'flags' },
        flag(row.neighbor_subscribed, 'N', 'neighbor subscribed (the peer is subscribed to the hub)'),
        flag(row.local_subscribed, 'L', 'local subscribed (the hub is subscribed to the peer)'),
        flag(row.response_pending, 'R', 'response pending (the hub awaits a RESPONSE)')),
      el('td', { class: 'watch', text: row.watch_list == null ? '—' : String(row.watch_list) }),
      el('td', { class: 'sight nowrap', title: 'VISIBILITY, and PeerNames in the BLOCK_LIST (DESIGN 5.5)',
        text: (row.visibility ?? 'mesh') + (row.block_count ? ' · ' + row.block_count + ' blocked' : '') }),
      el('td', null, el('button', { class: 'disconnect', type: 'button', onclick: () => disconnect(row) }, 'disconnect')));
  }

  function renderPeers() {
    const filter = $('filter').value.trim().toLowerCase();
    const chips = [];
    const tables = [];
    for (const [mesh, rows] of meshesOf()) {
      chips.push(el('span', { class: 'chip' }, mesh + ' ', el('b', { text: String(rows.length) })));
      const shown = rows.filter((row) => matches(row, filter))
        .sort((a, b) => label(a).localeCompare(label(b)) || a.peer_name.localeCompare(b.peer_name));
      const body = el('tbody', null, ...shown.map(peerRow));
      tables.push(el('section', { class: 'mesh', data: { mesh } },
        el('h2', null, 'mesh ', el('span', { class: 'mono', text: mesh }),
          el('span', { class: 'count', text: rows.length + (rows.length === 1 ? ' peer' : ' peers') +
            (shown.length !== rows.length ? ', ' + shown.length + ' shown' : '') })),
        el('table', { class: 'grid' },
          el('thead', null, el('tr', null, ...['Name', 'PeerName', 'Presence', 'Capabilities', 'Address',
            'Connected', 'Certificate', 'Flags', 'Watch', 'Sight', ''].map((h) => el('th', { text: h })))),
          body)));
    }
    $('meshes').replaceChildren(...chips);
    $('mesh-tables').replaceChildren(...tables);
    $('no-peers').hidden = state.peers.size !== 0;
  }

  function renderHubObjects() {
    const rows = state.hubObjects.map((o) => el('tr', null,
      el('td', { class: 'mono nowrap', title: o.name, text: o.label || o.name }),
      el('td', { class: 'value', text: o.value })));
    if (rows.length === 0) rows.push(el('tr', null, el('td', { class: 'muted', colspan: '2', text: 'none' })));
    $('hub-objects').replaceChildren(...rows);
  }

  function shortName(name) {
    return name && /^[0-9a-f]{40}$/.test(name) ? name.slice(0, 8) + '…' : (name || '—');
  }

  function whoIs(name) {
    const row = name && state.peers.get(name);
    return row ? label(row) + ' (' + shortName(name) + ')' : shortName(name);
  }

  function renderRecent() {
    const good = new Set(['delivered', 'accepted', 'received']);
    const rows = state.recent.slice().reverse().map((m) => el('tr', null,
      el('td', { class: 'nowrap', title: m.at, text: since(m.at) }),
      el('td', null, el('span', { class: 'kind', text: m.kind.replace(/_/g, ' ') })),
      el('td', { class: 'nowrap', title: m.from, text: whoIs(m.from) }),
      el('td', { class: 'nowrap', title: m.to || '', text: whoIs(m.to) }),
      el('td', null, el('span', { class: 'kind ' + (good.has(m.outcome) ? 'ok' : 'bad'), text: m.outcome })),
      el('td', { class: 'value', text: m.text ?? '' })));
    if (rows.length === 0) rows.push(el('tr', null, el('td', { class: 'muted', colspan: '6', text: 'none yet' })));
    $('recent').replaceChildren(...rows);
  }

  function render() {
    renderHeader();
    renderPeers();
    renderHubObjects();
    renderRecent();
  }

  // ---- wiring ----
  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = $('token-input').value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $('token-input').value = '';
    connect();
  });
  $('logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    if (controller) controller.abort();
    controller = null;
    state.peers = new Map();
    connect();
  });
  $('filter').addEventListener('input', renderPeers);
  setInterval(renderHeader, 1000);
  connect();
})();
