// The modeld admin page: plain DOM, no framework, no build step. It reads and changes the
// registry through the REST routes under /admin/api/v1 (the same handlers as /api/v1), with
// the session cookie and the CSRF token; live events come from /admin/api/v1/events.
'use strict';

const API = '/admin/api/v1';
const EVENT_KINDS = ['registered', 'updated', 'activated', 'rolled_back', 'deleted', 'reloaded',
  'reload_failed', 'evaluated', 'rollout_changed'];
const STATS_EVERY_MS = 2000;
const POINTS = 60;
const PAGE_SIZE = 25;
const RECENT_EVENTS = 50;

const state = {
  csrf: '',
  name: '',
  models: [],
  status: null,
  fleet: null,
  latest: new Map(),  // model_id -> latest evaluation
  selected: null,     // model_id
  history: new Map(), // "name\u0000version" -> [{t, total, fail, cumulative, sum}]
  buckets: [],
  events: null,
  statsTimer: null,
  sort: { key: 'id', dir: 1 },
  filter: '',
  page: 0,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// One call to the REST API. Errors carry the server's own message, shown as it was said.
async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET') headers['x-csrf-token'] = state.csrf;
  const r = await fetch(API + path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!r.ok) {
    const err = json && json.error;
    const e = new ApiError(r.status, err && err.code ? err.code : String(r.status),
      err && err.message ? err.message : (text || r.statusText));
    if (r.status === 401) signedOut(e.message);
    throw e;
  }
  // A change says how the servers serve it ("served by 3 of 3 servers in 14 ms").
  const served = r.headers.get('x-modeld-served');
  if (served) showServed(served, json && json.served);
  return json;
}

function showServed(summary, detail) {
  const box = $('served');
  const incomplete = detail && (detail.failed.length > 0 || detail.pending.length > 0);
  box.textContent = `Done: ${summary}`;
  box.className = incomplete ? 'warn' : 'ok';
  box.hidden = false;
}

function errorText(e) {
  return e instanceof ApiError ? `${e.status} ${e.code}: ${e.message}` : String(e && e.message ? e.message : e);
}

function notice(message) {
  const n = $('notice');
  n.textContent = message || '';
  n.hidden = !message;
}

// ---- session ----------------------------------------------------------------------------

async function session(method, body) {
  const init = { method, credentials: 'same-origin', headers: { accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method === 'DELETE') init.headers['x-csrf-token'] = state.csrf;
  const r = await fetch('/admin/session', init);
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!r.ok) {
    const err = json && json.error;
    throw new ApiError(r.status, err && err.code ? err.code : String(r.status), err ? err.message : text);
  }
  return json;
}

function signedOut(message) {
  stopLive();
  state.csrf = '';
  $('dashboard').hidden = true;
  $('signin').hidden = false;
  $('sign-out').hidden = true;
  $('who').textContent = '';
  $('signin-error').textContent = message || '';
  $('token').focus();
}

function signedIn(s) {
  state.csrf = s.csrf;
  state.name = s.name;
  $('signin').hidden = true;
  $('dashboard').hidden = false;
  $('who').textContent = s.name ? `signed in as ${s.name}` : 'tokens off';
  $('sign-out').hidden = !s.tokens_required;
  startLive();
  refresh();
}

async function start() {
  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const token = $('token').value.trim();
    $('signin-error').textContent = '';
    try {
      const s = await session('POST', { token });
      $('token').value = '';
      signedIn(s);
    } catch (e) {
      $('signin-error').textContent = errorText(e);
    }
  });
  $('sign-out').addEventListener('click', async () => {
    try { await session('DELETE'); } catch (_) { /* the cookie is cleared either way */ }
    signedOut('Signed out.');
  });
  wireActions();
  try {
    const s = await session('GET');
    if (s.signed_in) signedIn(s); else signedOut('');
  } catch (e) {
    signedOut(errorText(e));
  }
}

// ---- data -------------------------------------------------------------------------------

let refreshing = null;
let again = false;

// Reads models, status and latest evaluations; coalesces bursts of events into one read.
async function refresh() {
  if (refreshing) { again = true; return refreshing; }
  refreshing = (async () => {
    try {
      const [list, status, evals, fleet] = await Promise.all([
        api('GET', '/models?order_by=id'),
        api('GET', '/status'),
        api('GET', '/evaluations'),
        api('GET', '/servers'),
      ]);
      state.models = list.models;
      state.status = status;
      state.fleet = fleet;
      state.latest = new Map(evals.evaluations.map((e) => [e.model_id, e]));
      render();
      if (state.selected !== null) await renderDetails();
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) notice(errorText(e));
    }
  })();
  await refreshing;
  refreshing = null;
  if (again) { again = false; await refresh(); }
}

// Whether a model can take the active model's requests as they are sent: every input the
// active model takes, with its datatype and rank, and every output it gives (the server's
// signature guard checks more; this is what the page shows).
function compatible(m, active) {
  const a = active && active.signature;
  const c = m.signature;
  if (!a || !a.inputs || !c || !c.inputs) return true;
  const same = (x, y) => x && x.datatype === y.datatype && (x.shape || []).length === (y.shape || []).length;
  const find = (list, name) => (list || []).find((t) => t.name === name);
  return a.inputs.every((t) => same(find(c.inputs, t.name), t))
    && c.inputs.every((t) => find(a.inputs, t.name))
    && (a.outputs || []).every((t) => same(find(c.outputs, t.name), t));
}

// What a model does now: active, canary, shadow; and for the others whether it can take the
// active model's clients, is in this server's memory, or was once active.
function stateOf(m) {
  if (m.is_active) return 'active';
  if (m.status === 'canary') return 'canary';
  if (m.status === 'shadow') return 'shadow';
  const active = state.models.find((x) => x.is_active);
  if (!compatible(m, active)) return 'incompatible';
  const loaded = state.status && state.status.candidates.some((c) => c.model_id === m.model_id && !c.loading);
  if (loaded) return 'loaded';
  if (m.status === 'deprecated') return 'deprecated';
  return 'registered';
}

function traffic(m, st) {
  const canary = state.models.find((x) => x.status === 'canary');
  if (st === 'active') return `${100 - (canary ? canary.rollout_percentage : 0)}%`;
  if (st === 'canary') return `${m.rollout_percentage}%`;
  if (st === 'shadow') return `${m.shadow_percentage}% mirrored`;
  if (st === 'incompatible') return 'by name, with its own inputs';
  if (st === 'loaded') return 'by name';
  return 'by name (loads on the first request)';
}

// 1-5 stars from the latest evaluation's accuracy, else the registered accuracy.
function rating(m) {
  const ev = state.latest.get(m.model_id);
  const acc = ev ? ev.accuracy : m.accuracy;
  if (acc === null || acc === undefined) return 0;
  if (acc >= 0.95) return 5;
  if (acc >= 0.9) return 4;
  if (acc >= 0.8) return 3;
  if (acc >= 0.6) return 2;
  return 1;
}

function stars(n) {
  return n ? el('span', { class: 'stars', title: `${n} of 5`, 'data-rating': n, text: '★'.repeat(n) + '☆'.repeat(5 - n) })
    : el('span', { 'data-rating': 0, text: '—' });
}

const STATE_ORDER = ['active', 'canary', 'shadow', 'loaded', 'registered', 'deprecated', 'incompatible'];

function sortKey(m, key) {
  switch (key) {
    case 'name': return m.model_name.toLowerCase();
    case 'version': return m.version.toLowerCase();
    case 'type': return m.model_type.toLowerCase();
    case 'state': return STATE_ORDER.indexOf(stateOf(m));
    case 'accuracy': return m.accuracy === null ? -1 : m.accuracy;
    case 'rating': return rating(m);
    default: return m.model_id;
  }
}

// The models shown: filtered by the search, sorted by the chosen column, one page of them.
function shownModels() {
  const q = state.filter.trim().toLowerCase();
  const matching = state.models.filter((m) => !q
    || [m.model_name, m.version, m.model_type, m.description, String(m.model_id)].some((f) => (f || '').toLowerCase().includes(q)));
  const { key, dir } = state.sort;
  matching.sort((a, b) => {
    const x = sortKey(a, key);
    const y = sortKey(b, key);
    return (x < y ? -1 : x > y ? 1 : a.model_id - b.model_id) * dir;
  });
  const pages = Math.max(1, Math.ceil(matching.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  return { rows: matching.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE), total: matching.length, pages };
}

const pct = (x) => (x === null || x === undefined ? '—' : `${(x * 100).toFixed(1)}%`);
const when = (t) => (t ? new Date(t).toLocaleString() : '—');

function renderFleet() {
  const f = state.fleet;
  const body = $('fleet').querySelector('tbody');
  if (!f) return;
  const held = (h, role) => (h ? `${role}${h.model_name} v${h.version}${h.percentage !== undefined ? ` ${h.percentage}%` : ''}` : null);
  const rows = f.servers.map((s) => {
    const state = s.gone ? 'gone' : (s.problem || s.degraded ? 'degraded' : 'live');
    const serves = [held(s.serving.active, ''), held(s.serving.canary, 'canary '), held(s.serving.shadow, 'shadow ')]
      .filter(Boolean).join('; ') || 'nothing';
    const problems = [s.problem ? `cannot apply generation ${s.problem_generation}: ${s.problem}` : '', s.degraded]
      .filter(Boolean).join('; ');
    return el('tr', { class: `server-${state}` },
      el('td', { text: s.server_name, title: s.server_id }),
      el('td', { text: s.host, title: [s.grpc_address, s.http_address].filter(Boolean).join(', ') }),
      el('td', {}, el('span', { class: `badge ${state === 'live' ? 'on' : 'bad'}`, text: state })),
      el('td', { text: `${s.applied_generation} / ${s.lag}` }),
      el('td', { text: `${(s.heartbeat_age_ms / 1000).toFixed(1)} s ago` }),
      el('td', { text: serves }),
      el('td', { text: problems || '—' }));
  });
  body.replaceChildren(...(rows.length ? rows
    : [el('tr', {}, el('td', { colspan: 7, class: 'empty', text: 'No server has joined this registry.' }))]));
}

function render() {
  renderFleet();
  const s = state.status;
  $('server').textContent = s ? s.server : '';
  $('serving').textContent = s && s.serving ? `serving ${s.serving.model_name} v${s.serving.version}` : 'serving nothing yet';
  const health = $('health');
  health.hidden = !s;
  if (s) {
    health.textContent = s.degraded ? 'degraded' : 'healthy';
    health.className = `badge ${s.degraded ? 'bad' : 'on'}`;
    const d = $('degraded');
    d.hidden = !s.degraded;
    d.textContent = s.degradations.map((x) => `${x.reason}: ${x.message}`).join('\n');
  }
  const body = $('models').tBodies[0];
  const { rows, total, pages } = shownModels();
  for (const th of document.querySelectorAll('#models th[data-sort]')) {
    if (th.dataset.sort === state.sort.key) th.setAttribute('aria-sort', state.sort.dir > 0 ? 'ascending' : 'descending');
    else th.removeAttribute('aria-sort');
  }
  $('page-info').textContent = `${total === 0 ? 0 : state.page * PAGE_SIZE + 1}–${state.page * PAGE_SIZE + rows.length} of ${total}`;
  $('page-prev').disabled = state.page === 0;
  $('page-next').disabled = state.page >= pages - 1;
  if (!rows.length) {
    body.replaceChildren(el('tr', {}, el('td', {
      colspan: 13, class: 'empty',
      text: state.models.length ? `No model matches "${state.filter}".` : 'No model is registered yet: Register… adds one.',
    })));
  } else body.replaceChildren(...rows.map((m) => {
    const st = stateOf(m);
    const ev = state.latest.get(m.model_id);
    const key = `${m.model_name}\u0000${m.version}`;
    return el('tr', {
      'data-model-id': m.model_id, 'data-model-name': m.model_name, 'data-role': st,
      class: state.selected === m.model_id ? 'selected' : undefined,
    },
    el('td', { class: 'num', text: m.model_id }),
    el('td', { text: m.model_name }),
    el('td', { text: m.version }),
    el('td', { text: m.model_type || '—' }),
    el('td', {}, el('span', { class: `badge role-${st}`, 'data-role-badge': st, text: st })),
    el('td', { text: traffic(m, st) }),
    el('td', { class: 'num', text: pct(m.accuracy) }),
    el('td', {}, stars(rating(m))),
    el('td', { text: ev ? `${pct(ev.accuracy)} on ${ev.dataset_name}, ${when(ev.evaluated_at)}` : '—' }),
    chartCell(key, 'rate'),
    chartCell(key, 'err'),
    chartCell(key, 'latency'),
    el('td', {}, el('button', {
      type: 'button', 'data-details': m.model_id, text: 'Details',
      onclick: () => { state.selected = m.model_id; render(); renderDetails(); },
    })));
  }));
  const canary = state.models.find((x) => x.status === 'canary');
  $('act-promote').disabled = !canary;
  $('act-clear-canary').disabled = !canary;
  $('act-clear-shadow').disabled = !state.models.some((x) => x.status === 'shadow');
}

function fact(dl, name, value) {
  dl.append(el('dt', { text: name }), el('dd', { text: value === '' || value === null || value === undefined ? '—' : value }));
}

function signatureText(sig) {
  if (!sig || !sig.inputs) return '—';
  const t = (x) => `${x.name}: ${x.datatype} [${(x.shape || []).join(', ')}]`;
  return `inputs ${sig.inputs.map(t).join('; ')} → outputs ${(sig.outputs || []).map(t).join('; ')}`;
}

async function renderDetails() {
  const id = state.selected;
  const m = state.models.find((x) => x.model_id === id);
  const panel = $('details');
  if (!m) { panel.hidden = true; state.selected = null; return; }
  panel.hidden = false;
  panel.dataset.modelId = String(id);
  $('details-title').textContent = `${m.model_name} v${m.version} (#${m.model_id}, ${stateOf(m)})`;
  $('act-activate').disabled = m.is_active;
  $('act-download').href = `${API}/models/${m.model_id}/file`;
  const dl = $('details-facts');
  dl.replaceChildren();
  fact(dl, 'File', m.file_path);
  fact(dl, 'Checksum (sha256)', m.checksum_sha256);
  fact(dl, 'Size', `${m.file_size_bytes.toLocaleString()} bytes`);
  fact(dl, 'Signature', signatureText(m.signature));
  fact(dl, 'Type', m.model_type);
  fact(dl, 'Description', m.description);
  fact(dl, 'Rating', rating(m) ? `${'★'.repeat(rating(m))}${'☆'.repeat(5 - rating(m))} (${pct((state.latest.get(m.model_id) || m).accuracy)})` : '—');
  const perPlatform = Object.entries(m.min_app_versions || {}).map(([p, v]) => `${p} ${v}`).join(', ');
  fact(dl, 'Min app version', [m.min_app_version, perPlatform].filter(Boolean).join('; '));
  fact(dl, 'Registered', `${when(m.created_at)} by ${m.created_by || '—'}`);
  fact(dl, 'Rollback policy', m.rollback_threshold === null ? 'none'
    : `error rate > ${m.rollback_threshold} over ${m.rollback_window_secs}s (at least ${m.rollback_min_samples} requests)`);
  try {
    const [acts, evals] = await Promise.all([
      api('GET', `/models/${id}/activations`),
      api('GET', `/models/${id}/evaluations`),
    ]);
    if (state.selected !== id) return;
    const none = (cols, text) => el('tr', {}, el('td', { colspan: cols, class: 'empty', text }));
    $('history').tBodies[0].replaceChildren(...(acts.activations.length ? [] : [none(6, 'Never activated.')]), ...acts.activations.map((a) => el('tr', {},
      el('td', { class: 'num', text: a.activation_id }),
      el('td', { text: when(a.activated_at) }),
      el('td', { text: `${a.model_name}${a.is_rollback ? ' (rollback)' : ''}` }),
      el('td', { text: a.previous_name || '—' }),
      el('td', { text: a.activated_by }),
      el('td', { text: a.reason || '' }))));
    $('evaluations').tBodies[0].replaceChildren(...(evals.evaluations.length ? [] : [none(9, 'Not evaluated yet: Evaluate runs it on a labelled dataset.')]), ...evals.evaluations.map((e) => el('tr', {},
      el('td', { class: 'num', text: e.log_id }),
      el('td', { text: when(e.evaluated_at) }),
      el('td', { text: e.dataset_name }),
      el('td', { class: 'num', text: e.sample_size }),
      el('td', { class: 'num', text: pct(e.accuracy) }),
      el('td', { class: 'num', text: pct(e.top3_accuracy) }),
      el('td', { class: 'num', text: `${e.latency_p50_us.toFixed(0)} / ${e.latency_p99_us.toFixed(0)}` }),
      el('td', { text: e.evaluated_by }),
      el('td', { text: e.notes }))));
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) notice(errorText(e));
  }
}

// ---- actions ----------------------------------------------------------------------------

// Opens the confirmation; `run(fields)` does the change. The dialog stays open with the
// server's error until it succeeds or is cancelled.
function confirmAction({ title, text, fields = [], run, keepOpen = false }) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-error').textContent = '';
  const box = $('confirm-fields');
  box.replaceChildren();
  const inputs = {};
  for (const f of fields) {
    const input = el('input', {
      id: `field-${f.name}`, name: f.name, type: f.type || 'text', value: f.value ?? '',
      min: f.min, max: f.max, step: f.step, placeholder: f.placeholder, required: f.required,
    });
    if (f.type === 'checkbox') {
      input.checked = Boolean(f.value);
      box.append(el('label', { class: 'check', for: input.id }, input, f.label));
    } else {
      box.append(el('label', { for: input.id, text: f.label }), input);
    }
    inputs[f.name] = input;
  }
  const ok = $('confirm-ok');
  ok.disabled = false;
  ok.hidden = false;
  $('confirm-cancel').textContent = 'Cancel';
  dialog.onsubmit = async (ev) => {
    ev.preventDefault();
    ok.disabled = true;
    $('confirm-error').textContent = '';
    const values = {};
    for (const [k, input] of Object.entries(inputs)) values[k] = input.type === 'checkbox' ? input.checked : input.value;
    try {
      await run(values);
      if (!keepOpen) dialog.close();
      notice('');
      await refresh();
    } catch (e) {
      $('confirm-error').textContent = errorText(e);
    } finally {
      ok.disabled = false;
    }
  };
  $('confirm-cancel').onclick = () => dialog.close();
  dialog.showModal();
  const first = Object.values(inputs)[0];
  if (first) first.focus();
}

const BY = 'admin page';
const reasonField = { name: 'reason', label: 'Reason (kept in the history)', placeholder: 'why' };

function selectedModel() {
  return state.models.find((x) => x.model_id === state.selected);
}

function percentage(values) {
  const raw = String(values.percentage).trim();
  const p = Number(raw);
  if (raw === '' || !Number.isInteger(p)) throw new Error('the percentage is a whole number, 0 to 100');
  return p;
}

function wireActions() {
  $('details-close').addEventListener('click', () => { state.selected = null; $('details').hidden = true; render(); });
  $('act-activate').addEventListener('click', () => {
    const m = selectedModel();
    if (!m) return;
    const active = state.models.find((x) => x.is_active);
    confirmAction({
      title: `Activate ${m.model_name} v${m.version}?`,
      text: `Every server of the registry loads, verifies and warms it, then serves it${active ? ` instead of ${active.model_name} v${active.version}` : ''}.`,
      fields: [reasonField, { name: 'allow', label: 'Even if its inputs or outputs differ from the active model\'s', type: 'checkbox' }],
      run: async (v) => {
        try {
          await api('POST', `/models/${m.model_id}/activate`, { reason: v.reason, activated_by: BY, allow_signature_change: v.allow });
        } catch (e) {
          // The server words it for the CLI and the API; here it is the box below.
          e.message = e.message.replace(/Pass --allow-signature-change \(allow_signature_change\) to do it anyway/,
            'Tick "Even if its inputs or outputs differ" below to do it anyway');
          throw e;
        }
      },
    });
  });
  $('act-register').addEventListener('click', () => confirmAction({
    title: 'Register a model',
    text: 'The file must be in the server\'s model root (or a path from the server\'s working directory that lands in it). It is checked, loaded and verified before it is recorded.',
    fields: [
      { name: 'model_name', label: 'Name', required: true, placeholder: 'digits_v3' },
      { name: 'file_path', label: 'File (under the model root)', required: true, placeholder: 'digits_v3.onnx' },
      { name: 'version', label: 'Version', placeholder: '3.0.0' },
      { name: 'model_type', label: 'Type', placeholder: 'classifier' },
      { name: 'accuracy', label: 'Accuracy (0-1, optional)', type: 'number', step: 'any', min: 0, max: 1 },
      { name: 'description', label: 'Description' },
      { name: 'activate', label: 'Activate it now', type: 'checkbox' },
    ],
    run: async (v) => {
      const body = { model_name: v.model_name, file_path: v.file_path, version: v.version, model_type: v.model_type,
        description: v.description, activate: v.activate, created_by: BY };
      if (String(v.accuracy).trim() !== '') body.accuracy = Number(v.accuracy);
      const m = await api('POST', '/models', body);
      state.selected = m.model_id;
    },
  }));
  $('act-signed-url').addEventListener('click', () => {
    const m = selectedModel();
    if (!m) return;
    confirmAction({
      title: `A download URL for ${m.model_name} v${m.version}`,
      text: 'A signed URL anyone holding it can fetch the file with, until it expires (a device, a colleague); the server needs --signing-key-file.',
      fields: [{ name: 'expires', label: 'Valid for (seconds)', type: 'number', min: 1, value: 3600, required: true }],
      keepOpen: true,
      run: async (v) => {
        const u = await api('POST', `/models/${m.model_id}/download-url`, { expires_in_secs: Number(v.expires) });
        $('confirm-fields').replaceChildren(
          el('label', { for: 'signed-url', text: `Expires ${when(u.expires_at)}; sha256 ${u.sha256}` }),
          el('input', { id: 'signed-url', type: 'url', readonly: true, value: u.url }));
        $('confirm-ok').hidden = true;
        $('confirm-cancel').textContent = 'Close';
      },
    });
  });
  const table = $('models');
  for (const th of table.querySelectorAll('th[data-sort]')) {
    th.querySelector('button').addEventListener('click', () => {
      const key = th.dataset.sort;
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
      render();
    });
  }
  $('search').addEventListener('input', (ev) => { state.filter = ev.target.value; state.page = 0; render(); });
  $('page-prev').addEventListener('click', () => { state.page = Math.max(0, state.page - 1); render(); });
  $('page-next').addEventListener('click', () => { state.page += 1; render(); });
  const role = (which) => () => {
    const m = selectedModel();
    if (!m) return;
    const current = which === 'canary' ? m.rollout_percentage : m.shadow_percentage;
    confirmAction({
      title: `Make ${m.model_name} v${m.version} the ${which}?`,
      text: which === 'canary'
        ? 'It answers this share of the requests for the active model (by routing key, the same on every server).'
        : 'This share of the active model\'s requests is also run on it, and the outputs compared; callers get the active model\'s answer.',
      fields: [{ name: 'percentage', label: 'Percentage (0-100)', type: 'number', min: 0, max: 100, value: current || 10, required: true }, reasonField],
      run: (v) => api('PUT', `/rollout/${which}`, { model_id: m.model_id, percentage: percentage(v), reason: v.reason, changed_by: BY }),
    });
  };
  $('act-canary').addEventListener('click', role('canary'));
  $('act-shadow').addEventListener('click', role('shadow'));
  $('act-evaluate').addEventListener('click', () => {
    const m = selectedModel();
    if (!m) return;
    confirmAction({
      title: `Evaluate ${m.model_name} v${m.version}?`,
      text: 'Runs it on a labelled dataset under the model root and stores accuracy, per-class figures and latency in its history.',
      fields: [
        { name: 'path', label: 'Dataset (under the model root)', placeholder: 'eval/digits_x.npy', required: true },
        { name: 'notes', label: 'Notes' },
      ],
      run: (v) => api('POST', `/models/${m.model_id}/evaluate`, { dataset: { path: v.path }, notes: v.notes, evaluated_by: BY }),
    });
  });
  $('act-delete').addEventListener('click', () => {
    const m = selectedModel();
    if (!m) return;
    confirmAction({
      title: `Delete ${m.model_name} v${m.version}?`,
      text: 'Removes its record (its history and evaluations stay). The active model cannot be deleted.',
      run: async () => {
        await api('DELETE', `/models/${m.model_id}`);
        state.selected = null;
        $('details').hidden = true;
      },
    });
  });
  $('act-rollback').addEventListener('click', () => {
    const active = state.models.find((x) => x.is_active);
    confirmAction({
      title: 'Roll back?',
      text: `Makes the model that was active before ${active ? `${active.model_name} v${active.version}` : 'the current one'} active again, on every server.`,
      fields: [reasonField],
      run: (v) => api('POST', '/models/rollback', { reason: v.reason, activated_by: BY, from_model_id: active ? active.model_id : undefined }),
    });
  });
  $('act-promote').addEventListener('click', () => {
    const canary = state.models.find((x) => x.status === 'canary');
    confirmAction({
      title: `Promote ${canary ? `${canary.model_name} v${canary.version}` : 'the canary'}?`,
      text: 'The canary becomes the active model for every request.',
      fields: [reasonField],
      run: (v) => api('POST', '/rollout/promote', { reason: v.reason, activated_by: BY }),
    });
  });
  const clear = (which) => () => confirmAction({
    title: `Clear the ${which}?`,
    text: which === 'canary' ? 'Every request goes to the active model again.' : 'Requests are no longer mirrored.',
    fields: [reasonField],
    run: (v) => api('DELETE', `/rollout/${which}`, { reason: v.reason, changed_by: BY }),
  });
  $('act-clear-canary').addEventListener('click', clear('canary'));
  $('act-clear-shadow').addEventListener('click', clear('shadow'));
}

// ---- live events ------------------------------------------------------------------------

function live(on, text) {
  const b = $('live');
  b.textContent = text;
  b.className = `badge ${on ? 'on' : 'off'}`;
}

function startLive() {
  stopLive();
  // The most recent events first, then live (a reconnect resumes after the last one seen).
  const es = new EventSource(`${API}/events?recent=${RECENT_EVENTS}`, { withCredentials: true });
  state.events = es;
  live(false, 'connecting');
  es.onopen = () => { live(true, 'live'); refresh(); };
  es.onerror = async () => {
    if (es.readyState === EventSource.CLOSED) {
      live(false, 'offline');
      // Closed for good: the session may have ended. Ask, then sign in or reconnect.
      try {
        const s = await session('GET');
        if (!s.signed_in) { signedOut('The session ended (token revoked or expired); sign in again.'); return; }
      } catch (_) { /* the server is away: try again below */ }
      setTimeout(() => { if (state.events === es) startLive(); }, 3000);
    } else {
      live(false, 'reconnecting');
    }
  };
  for (const kind of EVENT_KINDS) es.addEventListener(kind, onEvent);
  es.addEventListener('error', (ev) => {
    if (!ev.data) return;
    let said = ev.data;
    try { said = JSON.parse(ev.data).error.message || said; } catch (_) { /* not JSON: show it as sent */ }
    notice(`event stream: ${said}`);
  });
  pollStats();
  state.statsTimer = setInterval(pollStats, STATS_EVERY_MS);
}

function stopLive() {
  if (state.events) state.events.close();
  state.events = null;
  if (state.statsTimer) clearInterval(state.statsTimer);
  state.statsTimer = null;
}

function onEvent(ev) {
  let e;
  try { e = JSON.parse(ev.data); } catch (_) { return; }
  const list = $('events');
  list.prepend(el('li', { 'data-event-id': e.event_id, 'data-kind': e.kind, 'data-source': e.source },
    el('span', { text: `${new Date(e.created_at).toLocaleTimeString()} ` }),
    el('span', { class: `kind kind-${e.kind}`, text: e.kind }),
    el('span', { text: ` ${e.model_name || ''}${e.model_id ? ` (#${e.model_id})` : ''} — ${e.source} on ${e.server}${e.detail ? `: ${e.detail}` : ''}` })));
  while (list.children.length > 200) list.lastElementChild.remove();
  refresh();
}

// ---- charts -----------------------------------------------------------------------------

async function pollStats() {
  let s;
  try { s = await api('GET', '/stats'); } catch (_) { return; }
  state.buckets = s.latency_buckets_seconds;
  const t = Date.parse(s.taken_at);
  for (const m of s.models) {
    const key = `${m.model_name}\u0000${m.version}`;
    const point = { t, total: 0, fail: 0, cumulative: null, sum: 0 };
    for (const r of m.roles) {
      point.total += r.success + r.failure + r.rejected + r.expired;
      point.fail += r.failure + r.rejected + r.expired;
      point.cumulative = point.cumulative
        ? point.cumulative.map((c, i) => c + r.latency_cumulative[i])
        : r.latency_cumulative.slice();
      point.sum += r.latency_sum_seconds;
    }
    const h = state.history.get(key) || [];
    h.push(point);
    while (h.length > POINTS + 1) h.shift();
    state.history.set(key, h);
  }
  for (const cell of document.querySelectorAll('td[data-chart]')) drawChart(cell);
}

// A quantile from the difference of two cumulative histograms, interpolated within its bucket
// (as Prometheus' histogram_quantile does); null when no request finished between them.
function quantile(q, a, b) {
  const d = b.map((c, i) => c - (a ? a[i] : 0));
  const n = d[d.length - 1];
  if (!n) return null;
  const rank = q * n;
  for (let i = 0; i < d.length; i++) {
    if (d[i] >= rank) {
      const lo = i === 0 ? 0 : state.buckets[i - 1];
      const hi = i < state.buckets.length ? state.buckets[i] : state.buckets[state.buckets.length - 1];
      const below = i === 0 ? 0 : d[i - 1];
      const inBucket = d[i] - below;
      return inBucket ? lo + (hi - lo) * ((rank - below) / inBucket) : hi;
    }
  }
  return null;
}

function series(key) {
  const h = state.history.get(key) || [];
  const out = [];
  for (let i = 1; i < h.length; i++) {
    const a = h[i - 1];
    const b = h[i];
    const dt = (b.t - a.t) / 1000;
    const n = b.total - a.total;
    out.push({
      rate: dt > 0 ? n / dt : 0,
      err: n > 0 ? (b.fail - a.fail) / n : null,
      p50: b.cumulative ? quantile(0.5, a.cumulative, b.cumulative) : null,
      p99: b.cumulative ? quantile(0.99, a.cumulative, b.cumulative) : null,
    });
  }
  return out;
}

function chartCell(key, kind) {
  const td = el('td', { 'data-chart': kind, 'data-key': key });
  drawChart(td);
  return td;
}

const SVG = 'http://www.w3.org/2000/svg';
const W = 90;
const H = 22;

function line(values, max, cls) {
  const pts = [];
  values.forEach((v, i) => {
    if (v === null || v === undefined) return;
    // The newest point at the right edge, one step per read.
    const x = W - (values.length - 1 - i) * (W / (POINTS - 1));
    const y = H - 1 - (max > 0 ? (v / max) * (H - 2) : 0);
    pts.push(`${x.toFixed(1)},${y.toFixed(1)}`);
  });
  const p = document.createElementNS(SVG, 'polyline');
  p.setAttribute('points', pts.join(' '));
  p.setAttribute('class', cls);
  return p;
}

function fmtTime(s) {
  if (s === null || s === undefined) return '—';
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)}µs`;
  if (s < 1) return `${(s * 1e3).toFixed(1)}ms`;
  return `${s.toFixed(2)}s`;
}

function drawChart(td) {
  const kind = td.dataset.chart;
  const data = series(td.dataset.key);
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('width', W);
  svg.setAttribute('height', H);
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const last = data.length ? data[data.length - 1] : null;
  let label = '—';
  if (kind === 'rate') {
    const v = data.map((d) => d.rate);
    svg.append(line(v, Math.max(...v, 1), 'rate'));
    if (last) label = `${last.rate.toFixed(1)}/s`;
    td.dataset.value = last ? String(last.rate) : '';
  } else if (kind === 'err') {
    const v = data.map((d) => d.err);
    svg.append(line(v, Math.max(...v.filter((x) => x !== null), 0.01), 'err'));
    const lastErr = [...v].reverse().find((x) => x !== null);
    label = lastErr === undefined ? '—' : pct(lastErr);
    td.dataset.value = lastErr === undefined ? '' : String(lastErr);
  } else {
    const p50 = data.map((d) => d.p50);
    const p99 = data.map((d) => d.p99);
    const max = Math.max(...p99.filter((x) => x !== null), 1e-4);
    svg.append(line(p50, max, 'p50'), line(p99, max, 'p99'));
    const l50 = [...p50].reverse().find((x) => x !== null);
    const l99 = [...p99].reverse().find((x) => x !== null);
    label = l50 === undefined ? '—' : `${fmtTime(l50)} / ${fmtTime(l99)}`;
  }
  const title = document.createElementNS(SVG, 'title');
  title.textContent = { rate: 'requests per second', err: 'error rate', latency: 'p50 (green) and p99 (amber) latency' }[kind];
  svg.prepend(title);
  td.replaceChildren(svg, el('span', { class: 'spark-value', text: label }));
}

document.addEventListener('DOMContentLoaded', start);
