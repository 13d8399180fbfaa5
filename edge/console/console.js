// Portico operator console. Plain JavaScript, no build step, standard DOM APIs only (Chromium and
// Firefox). Every action is one of the edge's REST routes on this same origin.
//
// Tokens live in this closure only: never in localStorage, sessionStorage or cookies (every fetch
// says credentials: 'omit'). Data from the API is put on the page with textContent, never parsed
// as HTML; the Content-Security-Policy forbids inline script as a second line of defence.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);

  /** Builds an element: el('td', {class: 'x'}, 'text', childNode, …). */
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === false || value === null || value === undefined) continue;
      if (name === 'text') node.textContent = value;
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  /** A table cell holding buttons (and inputs) side by side, wrapping when narrow. */
  const actionsCell = (...children) => el('td', {}, el('div', { class: 'actions' }, ...children));

  const time = (date = new Date()) => date.toLocaleTimeString([], { hour12: false });

  /** A duration for people: "14 min 58 s", "2 h 5 min", "0.4 s". */
  function duration(ms) {
    const total = Number(ms) || 0;
    if (total < 1000) return total <= 0 ? 'none' : `${(total / 1000).toFixed(1)} s`;
    const seconds = Math.ceil(total / 1000);
    const [h, m, s] = [Math.floor(seconds / 3600), Math.floor((seconds % 3600) / 60), seconds % 60];
    if (h) return `${h} h ${m} min`;
    if (m) return s ? `${m} min ${s} s` : `${m} min`;
    return `${s} s`;
  }

  // ---------------------------------------------------------------- session (memory only)

  const session = {
    access: null,
    refresh: null,
    expiresAt: 0,
    me: null,
    timer: null,
    refreshing: null,
  };
  let metricsSecret = null;
  let apiPaths = null; // the paths of /api/openapi.json: which routes this Portico has

  function setTokens(pair) {
    session.access = pair.accessToken;
    session.refresh = pair.refreshToken;
    const lifetime = Number(pair.expiresIn) || 60;
    session.expiresAt = Date.now() + lifetime * 1000;
    clearTimeout(session.timer);
    // Refresh ahead of expiry: a minute early, or at 80% of a short lifetime.
    const ahead = Math.max(5, Math.min(lifetime - 60, lifetime * 0.8));
    session.timer = setTimeout(() => { refreshNow(); }, ahead * 1000);
  }

  function clearSession() {
    clearTimeout(session.timer);
    session.access = null;
    session.refresh = null;
    session.expiresAt = 0;
    session.me = null;
    session.timer = null;
    metricsSecret = null;
  }

  /** One refresh at a time: a refresh token is single-use (a second use revokes the family). */
  function refreshNow() {
    if (!session.refresh) return Promise.resolve(false);
    if (!session.refreshing) {
      session.refreshing = (async () => {
        const result = await call('POST', '/api/v1/auth/refresh', {
          auth: false,
          body: { refreshToken: session.refresh },
        });
        if (result.ok && result.json) {
          setTokens(result.json);
          return true;
        }
        endSession(`Your session could not be renewed (HTTP ${result.status}); sign in again.`, result);
        return false;
      })().finally(() => { session.refreshing = null; });
    }
    return session.refreshing;
  }

  // ---------------------------------------------------------------- HTTP

  /**
   * One call to the edge. Returns {ok, status, json, text, headers, correlationId, code, message}.
   * With `auth`, the bearer token goes along, renewed first when close to expiry, and a 401 is
   * retried once after a refresh.
   */
  async function call(method, path, options = {}) {
    const { body, headers = {}, auth = true, accept = 'application/json' } = options;
    if (auth && session.refresh && session.expiresAt - Date.now() < 30_000) await refreshNow();
    const send = async () => {
      const h = { accept, ...headers };
      if (body !== undefined) h['content-type'] = 'application/json';
      if (auth && session.access) h.authorization = `Bearer ${session.access}`;
      return fetch(path, {
        method,
        headers: h,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: 'omit',
        cache: 'no-store',
        redirect: 'error',
      });
    };
    let response;
    try {
      response = await send();
      if (response.status === 401 && auth && session.refresh && options.retry !== false) {
        if (await refreshNow()) response = await send();
      }
    } catch (error) {
      return { ok: false, status: 0, json: null, text: '', headers: new Headers(), correlationId: null, code: 'NETWORK', message: `the edge could not be reached (${error.message})` };
    }
    const text = await response.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { json = null; }
    return {
      ok: response.ok,
      status: response.status,
      json,
      text,
      headers: response.headers,
      correlationId: response.headers.get('x-correlation-id'),
      code: json && json.error ? json.error.code : null,
      message: json && json.error ? json.error.message : null,
    };
  }

  /** A sentence for a failed call, with what to do about the common cases. */
  function failure(result) {
    if (result.status === 0) return result.message;
    const said = result.message ? `${result.code}: ${result.message}` : `HTTP ${result.status}`;
    const retry = result.headers.get('retry-after');
    switch (result.status) {
      case 401: return `${said}. Your session is no longer valid; sign in again.`;
      case 403: return `${said}. This needs the admin role (or the action is refused for this caller).`;
      case 404: return `${said}. Nothing by that name exists.`;
      case 429: return `${said}. Rate limited${retry ? `: retry in ${retry} s` : ''}.`;
      case 503: return `${said}. A backend is unavailable${retry ? `; retry in ${retry} s` : ''}.`;
      default: return said;
    }
  }

  // ---------------------------------------------------------------- results and the activity log

  function cidNode(result) {
    return el('code', { class: 'cid' }, result.correlationId || 'none');
  }

  /** Shows an action's outcome (text on success, the error otherwise) with its correlation ID. */
  function report(container, action, result, successText, extra) {
    container.className = `result ${result.ok ? 'ok' : 'bad'}`;
    container.replaceChildren(
      el('p', {}, el('strong', {}, result.ok ? '✓ ' : '✗ ', action), ' — ', result.ok ? successText : failure(result)),
      el('p', {}, `HTTP ${result.status || 'no answer'} · correlation ID `, cidNode(result)),
      ...(extra ? [extra] : []),
    );
    log(action, result);
  }

  function log(action, result) {
    const entry = el('li', {}, `${time()} — ${action} → `,
      el('span', { class: result.ok ? 'badge ok' : 'badge bad' }, String(result.status || 'no answer')),
      ' · correlation ID ', cidNode(result));
    $('log').prepend(entry);
    while ($('log').children.length > 100) $('log').lastChild.remove();
  }

  // ---------------------------------------------------------------- confirmation dialog

  /** Resolves true when the operator confirms. Escape and Cancel refuse; focus comes back. */
  function confirmAction(title, text, okLabel) {
    const dialog = $('confirm');
    const opener = document.activeElement;
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = okLabel;
    dialog.returnValue = '';
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => {
        if (opener && typeof opener.focus === 'function' && document.contains(opener)) opener.focus();
        resolve(dialog.returnValue === 'confirm');
      }, { once: true });
      dialog.showModal();
      $('confirm-cancel').focus();
    });
  }

  // ---------------------------------------------------------------- pages

  const PAGES = ['overview', 'providers', 'accounts', 'ratelimits', 'content'];
  const loaders = {};

  function showOnly(id) {
    for (const page of document.querySelectorAll('.page')) page.hidden = page.id !== id;
    const heading = document.querySelector(`#${id} h1`);
    if (heading) heading.focus();
  }

  function route() {
    if (!session.me) {
      stopLive();
      return;
    }
    let name = location.hash.replace(/^#/, '');
    if (!PAGES.includes(name)) name = 'overview';
    for (const link of document.querySelectorAll('nav a')) {
      if (link.dataset.page === name) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    showOnly(`page-${name}`);
    document.title = `${document.querySelector(`#page-${name} h1`).textContent} · Portico console`;
    if (name === 'overview') startLive(); else stopLive();
    loaders[name]();
  }

  function signedInChrome(on) {
    $('nav').hidden = !on;
    $('who').hidden = !on;
    $('who-email').textContent = on && session.me ? `${session.me.email} (admin)` : '';
  }

  function endSession(message, result) {
    clearSession();
    hideSecret();
    signedInChrome(false);
    stopLive();
    showOnly('page-signin');
    if (message) {
      const box = $('signin-result');
      box.className = 'result bad';
      box.replaceChildren(el('p', {}, message), result ? el('p', {}, 'correlation ID ', cidNode(result)) : '');
    }
  }

  // ---------------------------------------------------------------- sign-in / sign-out

  $('signin-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const email = $('signin-email').value.trim();
    const password = $('signin-password').value;
    const box = $('signin-result');
    const login = await call('POST', '/api/v1/auth/login', { auth: false, body: { email, password } });
    if (!login.ok) {
      report(box, `Sign in as ${email}`, login, '');
      return;
    }
    $('signin-password').value = '';
    setTokens(login.json);
    const me = await call('GET', '/api/v1/auth/me');
    if (!me.ok) {
      report(box, 'Read the signed-in account', me, '');
      clearSession();
      return;
    }
    if (!me.json || me.json.role !== 'admin') {
      // Not an admin: end the session we just opened and say why.
      await call('POST', '/api/v1/auth/logout', { body: { refreshToken: session.refresh }, retry: false });
      clearSession();
      box.replaceChildren();
      $('refused-email').textContent = me.json ? me.json.email : email;
      showOnly('page-refused');
      log(`Sign in as ${email}: refused, not an admin`, me);
      return;
    }
    session.me = me.json;
    box.replaceChildren();
    box.className = 'result';
    log(`Signed in as ${session.me.email}`, login);
    signedInChrome(true);
    apiPaths = null;
    route();
  });

  $('refused-back').addEventListener('click', () => {
    showOnly('page-signin');
    $('signin-email').focus();
  });

  $('sign-out').addEventListener('click', async () => {
    // A renewal in flight would spend the refresh token this logout names: let it finish first.
    clearTimeout(session.timer);
    if (session.refreshing) await session.refreshing;
    const result = await call('POST', '/api/v1/auth/logout', { body: { refreshToken: session.refresh }, retry: false });
    const who = session.me ? session.me.email : '';
    clearSession();
    hideSecret();
    signedInChrome(false);
    stopLive();
    showOnly('page-signin');
    report($('signin-result'), `Sign out ${who}`, result, 'Signed out: the session is revoked on the server and its tokens are gone from this tab.');
  });

  window.addEventListener('hashchange', route);

  async function paths() {
    if (!apiPaths) {
      const spec = await call('GET', '/api/openapi.json', { auth: false });
      apiPaths = spec.ok && spec.json ? spec.json.paths || {} : {};
    }
    return apiPaths;
  }

  // ---------------------------------------------------------------- metrics

  /** Parses Prometheus text 0.0.4 into [{name, labels, value}]. */
  function parseMetrics(text) {
    const samples = [];
    for (const line of text.split('\n')) {
      if (!line || line.startsWith('#')) continue;
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
      if (!match) continue;
      const labels = {};
      if (match[3]) {
        for (const label of match[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
          labels[label[1]] = label[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
        }
      }
      samples.push({ name: match[1], labels, value: Number(match[4]) });
    }
    return samples;
  }

  const sum = (samples, name, keep = () => true) =>
    samples.filter((s) => s.name === name && keep(s.labels)).reduce((total, s) => total + s.value, 0);

  /** Reads /metrics: {ok, samples} or {ok: false, result} (guarded, disabled, unreachable). */
  async function readMetrics() {
    const headers = metricsSecret ? { 'x-metrics-secret': metricsSecret } : {};
    const result = await call('GET', '/metrics', { auth: false, headers, accept: 'text/plain' });
    if (!result.ok) return { ok: false, result };
    return { ok: true, samples: parseMetrics(result.text), result };
  }

  /** What an operator can do when /metrics is refused, rendered into `container`. */
  function metricsRefused(container, result, onSecret) {
    container.className = 'notice bad';
    if (result.status === 404) {
      container.replaceChildren(el('p', {}, 'Metrics are disabled on this edge (METRICS_ENABLED=false), so no rates can be shown.'));
      return;
    }
    if (result.status !== 403) {
      container.replaceChildren(el('p', {}, `Metrics could not be read: ${failure(result)}`));
      return;
    }
    const input = el('input', { id: 'metrics-secret', type: 'password', autocomplete: 'off' });
    const button = el('button', { type: 'submit' }, 'Use this secret');
    const form = el('form', { class: 'stack narrow' },
      el('label', { for: 'metrics-secret' }, 'Metrics secret (kept in this tab’s memory only)'), input, button);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      metricsSecret = input.value || null;
      onSecret();
    });
    container.replaceChildren(
      el('p', {}, '/metrics refused this browser (METRICS_GUARD). With METRICS_GUARD=secret, enter the secret below; with METRICS_GUARD=cidr, open the console from an address in METRICS_GUARD_ALLOWLIST. Admin tokens do not open /metrics.'),
      el('p', {}, 'correlation ID ', cidNode(result)),
      form,
    );
  }

  // ---------------------------------------------------------------- overview

  let liveTimer = null;
  let previous = null; // the last metrics sample, for rates

  function startLive() {
    stopLive();
    if ($('ready-live').checked) liveTimer = setInterval(() => { if (!document.hidden) refreshOverview(); }, 5000);
  }
  function stopLive() {
    clearInterval(liveTimer);
    liveTimer = null;
  }
  $('ready-live').addEventListener('change', startLive);
  $('ready-refresh').addEventListener('click', () => refreshOverview());

  function stateBadge(state) {
    const s = String(state || 'unknown');
    const kind = ['ok', 'closed', 'up', 'memory'].includes(s) ? 'ok' : ['degraded', 'half_open', 'half-open'].includes(s) ? 'warn' : 'bad';
    return el('span', { class: `badge ${kind}` }, s);
  }

  async function refreshOverview() {
    const ready = await call('GET', '/readyz', { auth: false });
    const summary = $('ready-summary');
    if (ready.json && ready.json.checks) {
      summary.replaceChildren('Portico is ', stateBadge(ready.json.status), ` (HTTP ${ready.status}), checked at ${time()} · correlation ID `, cidNode(ready));
      const rows = Object.entries(ready.json.checks).sort(([a], [b]) => a.localeCompare(b)).map(([name, check]) => {
        const details = Object.entries(check)
          .filter(([key]) => !['status', 'latencyMs', 'providers'].includes(key))
          .map(([key, value]) => `${key}: ${typeof value === 'object' ? JSON.stringify(value) : value}`)
          .join('; ');
        return el('tr', {}, el('th', { scope: 'row' }, name), el('td', {}, stateBadge(check.status)),
          el('td', {}, check.latencyMs === undefined ? '—' : `${check.latencyMs} ms`), el('td', {}, details || '—'));
      });
      $('ready-table').tBodies[0].replaceChildren(...rows);
      const providers = (ready.json.checks.chat && ready.json.checks.chat.providers) || {};
      const circuits = Object.entries(providers).map(([name, state]) =>
        el('tr', {}, el('th', { scope: 'row' }, name), el('td', {}, stateBadge(state))));
      $('circuit-table').tBodies[0].replaceChildren(...(circuits.length ? circuits : [el('tr', {}, el('td', { colspan: 2 }, 'The chat gateway reported no providers.'))]));
    } else {
      summary.replaceChildren(`Readiness could not be read at ${time()}: ${failure(ready)} · correlation ID `, cidNode(ready));
    }

    const metrics = await readMetrics();
    const access = $('metrics-access');
    if (!metrics.ok) {
      metricsRefused(access, metrics.result, refreshOverview);
      $('rates-table').tBodies[0].replaceChildren();
      $('rates-note').textContent = '';
      return;
    }
    access.replaceChildren();
    access.className = '';
    const requests = (keep) => sum(metrics.samples, 'http_requests_total', keep);
    const now = {
      at: Date.now(),
      all: requests(() => true),
      server: requests((l) => l.status && l.status.startsWith('5')),
      limited: requests((l) => l.status === '429'),
    };
    const row = (label, key) => {
      let perMinute = 'after the next check';
      let share = '—';
      if (previous) {
        const minutes = (now.at - previous.at) / 60000;
        const delta = now[key] - previous[key];
        const all = now.all - previous.all;
        perMinute = (delta / minutes).toFixed(1);
        share = all > 0 ? `${((100 * delta) / all).toFixed(1)} %` : '—';
      }
      return el('tr', {}, el('th', { scope: 'row' }, label), el('td', {}, String(now[key])), el('td', {}, perMinute), el('td', {}, key === 'all' ? '—' : share));
    };
    $('rates-table').tBodies[0].replaceChildren(row('all', 'all'), row('5xx', 'server'), row('429', 'limited'));
    $('rates-note').textContent = `From http_requests_total at ${time()}${previous ? `, over the last ${Math.round((now.at - previous.at) / 1000)} s` : ''}; they include this console's own checks. Correlation ID of the scrape: ${metrics.result.correlationId}.`;
    previous = now;
  }
  loaders.overview = refreshOverview;

  // ---------------------------------------------------------------- LLM providers

  /** Empties a table while it reloads, so nobody edits or acts on a row about to be replaced. */
  function loading(body, columns) {
    body.replaceChildren(el('tr', {}, el('td', { colspan: columns }, 'Loading…')));
  }

  async function loadProviders() {
    const body = $('providers-table').tBodies[0];
    loading(body, 9);
    const list = await call('GET', '/api/v1/admin/llm/providers');
    if (!list.ok) {
      report($('providers-result'), 'List providers', list, '');
      body.replaceChildren();
      return;
    }
    const metrics = await readMetrics();
    const stats = (name) => {
      if (!metrics.ok) return ['—', '—'];
      const calls = metrics.samples.filter((s) => s.name === 'llm_requests_total' && s.labels.provider === name && s.value > 0)
        .map((s) => `${s.labels.outcome} ${s.value}`).join(', ') || 'none';
      const count = sum(metrics.samples, 'llm_request_duration_seconds_count', (l) => l.provider === name);
      const seconds = sum(metrics.samples, 'llm_request_duration_seconds_sum', (l) => l.provider === name);
      return [calls, count > 0 ? `${((1000 * seconds) / count).toFixed(0)} ms` : '—'];
    };
    $('providers-metrics-note').textContent = metrics.ok
      ? 'Calls and latency: llm_requests_total and llm_request_duration_seconds of this edge’s process, since it started.'
      : 'Calls and latency need /metrics, which refused this browser (see the Overview).';
    const providers = list.json.providers || [];
    body.replaceChildren(...providers.map((p, index) => {
      const priority = el('input', { type: 'number', id: `priority-${p.name}`, value: p.priority, step: 1, 'aria-label': `Priority of ${p.name}` });
      const save = el('button', { type: 'button', 'aria-label': `Save priority of ${p.name}` }, 'Save');
      save.addEventListener('click', () => setPriority(p, Number(priority.value)));
      priority.addEventListener('keydown', (event) => { if (event.key === 'Enter') setPriority(p, Number(priority.value)); });
      const toggle = el('button', { type: 'button', class: p.enabled ? 'danger' : '', 'aria-label': `${p.enabled ? 'Disable' : 'Enable'} ${p.name}` }, p.enabled ? 'Disable…' : 'Enable');
      toggle.addEventListener('click', () => setEnabled(p, !p.enabled));
      const [calls, latency] = stats(p.name);
      return el('tr', {},
        el('td', {}, String(index + 1)), el('th', { scope: 'row' }, p.name), el('td', {}, p.model), el('td', {}, el('code', {}, p.baseUrl)),
        actionsCell(priority, save),
        actionsCell(p.enabled ? 'yes' : 'no', toggle),
        el('td', {}, stateBadge(p.circuitState)), el('td', {}, calls), el('td', {}, latency));
    }));
  }

  async function setPriority(provider, priority) {
    if (!Number.isInteger(priority)) {
      report($('providers-result'), `Priority of ${provider.name}`, { ok: false, status: 0, message: 'the priority must be a whole number', headers: new Headers() }, '');
      return;
    }
    const result = await call('PUT', `/api/v1/admin/llm/providers/${encodeURIComponent(provider.name)}`, { body: { priority } });
    report($('providers-result'), `Set the priority of ${provider.name} to ${priority}`, result,
      `${provider.name} now has priority ${result.json ? result.json.priority : priority}; the next request uses the new order.`);
    if (result.ok) await loadProviders();
  }

  async function setEnabled(provider, enabled) {
    if (!enabled && !(await confirmAction(`Disable ${provider.name}?`,
      `No call will go to ${provider.name} until it is enabled again; traffic moves to the next enabled provider by priority.`, `Disable ${provider.name}`))) return;
    const result = await call('PUT', `/api/v1/admin/llm/providers/${encodeURIComponent(provider.name)}`, { body: { enabled } });
    report($('providers-result'), `${enabled ? 'Enable' : 'Disable'} ${provider.name}`, result, `${provider.name} is ${enabled ? 'enabled' : 'disabled'}.`);
    if (result.ok) await loadProviders();
  }

  $('providers-refresh').addEventListener('click', loadProviders);
  loaders.providers = loadProviders;

  // ---------------------------------------------------------------- accounts

  const SESSIONS_ROUTE = '/api/v1/admin/auth/users/{user}/sessions';
  const SESSION_ROUTE = '/api/v1/admin/auth/users/{user}/sessions/{session_id}';

  async function loadAccounts() {
    const known = await paths();
    const area = $('lookup-area');
    if (known[SESSIONS_ROUTE] && known[SESSIONS_ROUTE].get) {
      if (!$('lookup-form')) {
        const input = el('input', { id: 'lookup-user', type: 'text', required: true, autocomplete: 'off' });
        const form = el('form', { id: 'lookup-form', class: 'stack narrow' },
          el('label', { for: 'lookup-user' }, 'Email or user ID'), input, el('button', { type: 'submit' }, 'Find sessions'));
        const result = el('div', { id: 'lookup-result', class: 'result', role: 'status', 'aria-live': 'polite' });
        form.addEventListener('submit', (event) => { event.preventDefault(); lookup(input.value.trim()); });
        area.replaceChildren(form, result);
      }
    } else {
      area.replaceChildren(el('p', { class: 'hint' },
        'Not available: this Portico has no admin route that finds an account by email (none is listed in /api/openapi.json). ',
        'Unlock works by email below; revoking needs the user ID, which the user can read from GET /api/v1/auth/me (id).'));
    }
    const keys = Boolean(known[API_KEYS_ROUTE] && known[API_KEYS_ROUTE].get && known[API_KEY_ROUTE] && known[API_KEY_ROUTE].delete);
    $('apikeys-area').hidden = !keys;
    $('apikeys-note').textContent = keys ? ''
      : 'Not available: this Portico has no API-key routes (none in /api/openapi.json).';
  }

  // ---------------------------------------------------------------- API keys (Accounts page)

  const API_KEYS_ROUTE = '/api/v1/api-keys';
  const API_KEY_ROUTE = '/api/v1/api-keys/{id}';

  /** Forgets a secret shown after a creation (on sign-out, or when another account is listed). */
  function hideSecret() {
    $('apikey-secret').hidden = true;
    $('apikey-secret').replaceChildren();
  }

  async function listKeys(user = $('apikeys-user').value.trim()) {
    const body = $('apikeys-table').tBodies[0];
    if (!user) {
      body.replaceChildren();
      return;
    }
    loading(body, 8);
    const result = await call('GET', `${API_KEYS_ROUTE}?${new URLSearchParams({ user })}`);
    const keys = (result.ok && result.json && result.json.keys) || [];
    const rows = keys.map((key) => {
      const status = key.revokedAt ? 'revoked' : key.expiresAt && Date.parse(key.expiresAt) <= Date.now() ? 'expired' : 'live';
      const actions = [];
      if (status === 'live') {
        const revoke = el('button', { type: 'button', class: 'danger', 'aria-label': `Revoke key ${key.name}` }, 'Revoke…');
        revoke.addEventListener('click', async () => {
          if (!(await confirmAction(`Revoke ${key.name}?`, `The key ${key.prefix}… (“${key.name}”) of ${user} is refused everywhere within a second. This cannot be undone.`, 'Revoke key'))) return;
          const done = await call('DELETE', API_KEY_ROUTE.replace('{id}', encodeURIComponent(key.id)));
          report($('apikeys-result'), `Revoke key ${key.name} of ${user}`, done, `${key.prefix}… revoked.`);
          if (done.ok) await listKeys(user);
        });
        actions.push(revoke);
      }
      return el('tr', {},
        el('th', { scope: 'row' }, key.name), el('td', {}, el('code', {}, `${key.prefix}…`)), el('td', {}, (key.scopes || []).join(', ')),
        el('td', {}, key.createdAt || '—'), el('td', {}, key.lastUsedAt || 'never'), el('td', {}, key.expiresAt || 'never'),
        el('td', {}, el('span', { class: `badge ${status === 'live' ? 'ok' : 'bad'}` }, status)), actionsCell(...actions));
    });
    body.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { colspan: 8 }, result.ok ? `${user} has no API keys.` : '—'))]));
    report($('apikeys-result'), `List API keys of ${user}`, result, `${keys.length} key(s).`);
  }

  $('apikeys-form').addEventListener('submit', (event) => {
    event.preventDefault();
    hideSecret();
    listKeys();
  });

  $('apikey-new-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const user = $('apikeys-user').value.trim();
    const name = $('apikey-name').value.trim();
    const scopes = [...document.querySelectorAll('input[name="apikey-scope"]:checked')].map((box) => box.value);
    const expiresIn = $('apikey-expires').value.trim();
    if (!user || !scopes.length) {
      report($('apikeys-result'), 'Create an API key', { ok: false, status: 0, message: !user ? 'give the account (email or user ID) above first' : 'choose at least one scope', headers: new Headers() }, '');
      return;
    }
    const body = { user, name, scopes, ...(expiresIn ? { expiresIn } : {}) };
    const result = await call('POST', API_KEYS_ROUTE, { body });
    report($('apikeys-result'), `Create key ${name} for ${user}`, result, `Key ${name} created (${scopes.join(', ')}).`);
    if (!result.ok || !result.json) return;
    const box = $('apikey-secret');
    box.replaceChildren(
      el('p', {}, el('strong', {}, `The secret of ${name}, shown this once:`)),
      el('p', {}, el('code', { id: 'apikey-secret-value' }, result.json.secret)),
      el('p', {}, 'Copy it now into the program that uses it: Portico keeps only a hash and cannot show it again. It is forgotten by this page when you sign out or list another account.'));
    box.hidden = false;
    $('apikey-name').value = '';
    await listKeys(user);
    box.focus();
  });

  async function lookup(user) {
    const box = $('lookup-result');
    const path = SESSIONS_ROUTE.replace('{user}', encodeURIComponent(user));
    const result = await call('GET', path);
    const sessions = (result.ok && result.json && result.json.sessions) || [];
    let table = null;
    // The outcome of ending sessions goes below the table, which stays in place.
    const actionBox = el('div', { class: 'result', role: 'status', 'aria-live': 'polite' });
    if (result.ok) {
      const known = await paths();
      const rows = sessions.map((s) => {
        const actions = el('div', { class: 'actions' });
        if (known[SESSION_ROUTE] && known[SESSION_ROUTE].delete) {
          const end = el('button', { type: 'button', class: 'danger', 'aria-label': `End session ${s.id}` }, 'End…');
          end.addEventListener('click', async () => {
            if (!(await confirmAction('End this session?', `Session ${s.id} of ${user} (last used ${s.lastUsedAt || 'never'}, from ${s.ip || 'unknown'}) ends; its tokens are refused.`, 'End session'))) return;
            const ended = await call('DELETE', SESSION_ROUTE.replace('{user}', encodeURIComponent(user)).replace('{session_id}', encodeURIComponent(s.id)));
            report(actionBox, `End session ${s.id} of ${user}`, ended, 'Session ended.');
            if (ended.ok) end.closest('tr').remove();
          });
          actions.append(end);
        }
        return el('tr', {}, el('td', {}, el('code', {}, s.id)), el('td', {}, s.createdAt || '—'), el('td', {}, s.lastUsedAt || '—'), el('td', {}, s.ip || '—'), el('td', {}, s.userAgent || '—'), el('td', {}, actions));
      });
      table = el('div', { class: 'scroll' }, el('table', {},
        el('caption', { class: 'visually-hidden' }, `Sessions of ${user}`),
        el('thead', {}, el('tr', {}, ...['Session', 'Created', 'Last used', 'IP', 'User agent', 'Actions'].map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', {}, ...rows)));
      if (known[SESSIONS_ROUTE].delete && sessions.length) {
        const all = el('button', { type: 'button', class: 'danger' }, 'End every session…');
        all.addEventListener('click', async () => {
          if (!(await confirmAction(`End every session of ${user}?`, `Every session of ${user} ends at once; they must sign in again.`, 'End every session'))) return;
          const ended = await call('DELETE', path);
          report(actionBox, `End every session of ${user}`, ended, `${ended.json ? ended.json.sessionsRevoked : ''} session(s) ended.`);
        });
        table.append(all);
      }
      table.append(actionBox);
    }
    report(box, `Find ${user}`, result, `${sessions.length} live session(s).`, table);
  }

  const LOCKOUTS_ROUTE = '/api/v1/admin/auth/lockouts';

  /** Lists the lockouts in force (of one email, or of every email when empty). */
  async function loadLockouts(email = $('lockouts-email').value.trim()) {
    const body = $('lockouts-table').tBodies[0];
    loading(body, 5);
    const query = new URLSearchParams(email ? { email } : {});
    const result = await call('GET', `${LOCKOUTS_ROUTE}${email ? `?${query}` : ''}`);
    if (!result.ok) {
      body.replaceChildren();
      $('lockouts-note').textContent = '';
      report($('lockouts-result'), `List lockouts${email ? ` of ${email}` : ''}`, result, '');
      return;
    }
    const lockouts = (result.json && result.json.lockouts) || [];
    const rows = lockouts.map((lockout) => {
      const everywhere = lockout.scope === 'account';
      const from = everywhere ? 'every network' : lockout.network;
      const unlock = el('button', { type: 'button', 'aria-label': `Unlock ${lockout.email} from ${from}` }, 'Unlock');
      unlock.addEventListener('click', async () => {
        // A network's lockout is cleared by one of its addresses (an IPv6 /64 by its prefix).
        const ip = everywhere ? null : lockout.network.replace(/\/64$/, '');
        const done = await call('POST', '/api/v1/admin/auth/unlock', { body: ip ? { email: lockout.email, ip } : { email: lockout.email } });
        const cleared = done.json ? done.json.cleared : 0;
        report($('lockouts-result'), `Unlock ${lockout.email} from ${from}`, done, `${cleared} lockout entr${cleared === 1 ? 'y' : 'ies'} cleared.`);
        if (done.ok) await loadLockouts();
      });
      return el('tr', {},
        el('th', { scope: 'row' }, el('code', {}, lockout.email)),
        el('td', {}, everywhere ? 'every network (the account’s back-off)' : el('code', {}, lockout.network)),
        el('td', {}, lockout.lockedUntil),
        el('td', { class: 'remaining' }, duration(lockout.remainingMs)),
        actionsCell(unlock));
    });
    body.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { colspan: 5 }, email ? `${email} is not locked out.` : 'No account is locked out.'))]));
    $('lockouts-note').replaceChildren(`${lockouts.length} lockout(s) in force; remaining times as of ${time()} (list again to update)`,
      result.json && result.json.truncated ? '; more matched than shown (give an email)' : '', ' · correlation ID ', cidNode(result));
    log(`List lockouts${email ? ` of ${email}` : ''}`, result);
  }

  $('lockouts-form').addEventListener('submit', (event) => {
    event.preventDefault();
    loadLockouts();
  });

  $('unlock-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const email = $('unlock-email').value.trim();
    const ip = $('unlock-ip').value.trim();
    const body = ip ? { email, ip } : { email };
    const result = await call('POST', '/api/v1/admin/auth/unlock', { body });
    const cleared = result.json ? result.json.cleared : 0;
    report($('unlock-result'), `Unlock ${email}${ip ? ` from ${ip}` : ''}`, result,
      cleared ? `${cleared} lockout entr${cleared === 1 ? 'y' : 'ies'} cleared: ${email} can sign in again.` : `Nothing to clear: ${email} was not locked out${ip ? ` from ${ip}` : ''}.`);
    if (result.ok) await loadLockouts();
  });

  $('revoke-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const kind = document.querySelector('input[name="revoke-kind"]:checked').value;
    const value = $('revoke-value').value.trim();
    const what = kind === 'userId' ? `every session of user ${value}` : `access token ${value}`;
    if (!(await confirmAction('Revoke?', `Revoke ${what}? This cannot be undone; the user must sign in again.`, 'Revoke'))) return;
    const result = await call('POST', '/api/v1/admin/auth/revoke', { body: { [kind]: value } });
    report($('revoke-result'), `Revoke ${what}`, result,
      kind === 'userId' ? `${result.json ? result.json.familiesRevoked : 0} session famil${result.json && result.json.familiesRevoked === 1 ? 'y' : 'ies'} revoked.` : 'Token revoked.');
  });
  loaders.accounts = () => Promise.all([loadAccounts(), loadLockouts()]);

  // ---------------------------------------------------------------- rate limits

  async function loadRateLimits() {
    const metrics = await readMetrics();
    const body = $('refusals-table').tBodies[0];
    if (!metrics.ok) {
      body.replaceChildren(el('tr', {}, el('td', { colspan: 2 }, 'Needs /metrics, which refused this browser (see the Overview).')));
      return;
    }
    const rows = metrics.samples.filter((s) => s.name === 'rate_limit_exceeded_total')
      .map((s) => el('tr', {}, el('th', { scope: 'row' }, s.labels.policy || '—'), el('td', {}, String(s.value))));
    body.replaceChildren(...rows);
  }

  /** Resets one bucket (`key`) or every bucket with a prefix, after a confirmation. */
  async function resetBuckets(kind, value) {
    if (kind === 'key' && !value) {
      report($('reset-result'), 'Reset', { ok: false, status: 0, message: 'give the key of the bucket, e.g. chat:203.0.113.7', headers: new Headers() }, '');
      return;
    }
    const what = kind === 'key' ? `the bucket ${value}` : value ? `every bucket starting with “${value}”` : 'EVERY bucket of every policy';
    if (!(await confirmAction('Reset rate limits?', `Reset ${what}? The callers get full buckets at once.`, 'Reset'))) return;
    const result = await call('POST', '/api/v1/admin/ratelimit/reset', { body: { [kind]: value } });
    const removed = result.json ? result.json.removed : 0;
    report($('reset-result'), `Reset ${what}`, result,
      removed ? `${removed} bucket(s) removed: the next request starts from a full bucket.` : 'No bucket matched (a full bucket is not stored; check the key).');
    loadRateLimits();
  }

  $('reset-form').addEventListener('submit', (event) => {
    event.preventDefault();
    resetBuckets(document.querySelector('input[name="reset-kind"]:checked').value, $('reset-value').value.trim());
  });

  /** Reads one bucket ({policy}:{key}) without spending from it. */
  async function lookupBucket(name) {
    const box = $('bucket-result');
    const split = name.indexOf(':');
    if (split < 1 || split === name.length - 1) {
      report(box, 'Look up a bucket', { ok: false, status: 0, message: 'give the bucket as {policy}:{key}, e.g. chat:203.0.113.7', headers: new Headers() }, '');
      return;
    }
    const query = new URLSearchParams({ policy: name.slice(0, split), key: name.slice(split + 1) });
    const result = await call('GET', `/api/v1/admin/ratelimit/buckets?${query}`);
    const b = result.json || {};
    let details = null;
    if (result.ok) {
      const reset = el('button', { type: 'button', class: 'danger', 'aria-label': `Reset bucket ${name}` }, 'Reset this bucket…');
      reset.addEventListener('click', () => resetBuckets('key', name));
      const row = (label, value) => el('tr', {}, el('th', { scope: 'row' }, label), el('td', {}, value));
      details = el('div', {}, el('div', { class: 'scroll' }, el('table', { id: 'bucket-table' },
        el('caption', { class: 'visually-hidden' }, `Bucket ${name}`),
        el('tbody', {},
          row('Stored as', el('code', {}, b.bucket)),
          row('Limit', String(b.limit)),
          row('Remaining', el('span', { id: 'bucket-remaining' }, String(b.remaining))),
          row('Full again in', duration(b.resetAfterMs)),
          row('Next token', b.retryAfterMs > 0 ? `in ${duration(b.retryAfterMs)}` : 'available now')))), reset);
    }
    report(box, `Look up ${name}`, result,
      `${b.remaining} of ${b.limit} token(s) left${b.remaining === 0 ? ': callers are refused' : ''}; read at ${time()} without spending from it.`, details);
  }

  $('bucket-form').addEventListener('submit', (event) => {
    event.preventDefault();
    lookupBucket($('bucket-value').value.trim());
  });
  loaders.ratelimits = loadRateLimits;

  // ---------------------------------------------------------------- content

  let contentCursor = null;
  let editing = null; // {slug, version} while an existing item is edited; null for a new one

  function contentPath(slug) {
    return `/api/v1/admin/content/${encodeURIComponent(slug)}`;
  }

  async function loadContent(more = false) {
    if (!more) contentCursor = null;
    const query = new URLSearchParams({ limit: '50' });
    if (more && contentCursor) query.set('cursor', contentCursor);
    const body = $('content-table').tBodies[0];
    if (!more) loading(body, 6);
    const result = await call('GET', `/api/v1/admin/content?${query}`);
    if (!result.ok) {
      report($('content-result'), 'List content', result, '');
      return;
    }
    const rows = (result.json.items || []).map((item) => {
      const edit = el('button', { type: 'button', 'aria-label': `Edit ${item.slug}` }, 'Edit');
      edit.addEventListener('click', () => openEditor(item));
      const publish = el('button', { type: 'button', 'aria-label': `${item.status === 'published' ? 'Unpublish' : 'Publish'} ${item.slug}` }, item.status === 'published' ? 'Unpublish' : 'Publish');
      publish.addEventListener('click', () => setStatus(item, item.status === 'published' ? 'draft' : 'published'));
      const remove = el('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${item.slug}` }, 'Delete…');
      remove.addEventListener('click', () => deleteItem(item));
      return el('tr', { 'data-slug': item.slug },
        el('th', { scope: 'row' }, el('code', {}, item.slug)), el('td', {}, item.title),
        el('td', {}, el('span', { class: `badge ${item.status === 'published' ? 'ok' : 'warn'}` }, item.status)),
        el('td', {}, String(item.version)), el('td', {}, item.updatedAt || '—'),
        actionsCell(edit, publish, remove));
    });
    if (more) body.append(...rows); else body.replaceChildren(...rows);
    if (!body.children.length) body.replaceChildren(el('tr', {}, el('td', { colspan: 6 }, 'No content yet.')));
    contentCursor = result.json.nextCursor || null;
    $('content-more').hidden = !contentCursor;
  }

  function openEditor(item) {
    editing = item ? { slug: item.slug, version: item.version } : null;
    $('content-form').hidden = false;
    $('content-conflict').hidden = true;
    $('content-form-title').textContent = item ? `Edit ${item.slug}` : 'New item';
    $('content-slug').value = item ? item.slug : '';
    $('content-slug').readOnly = Boolean(item);
    $('content-title-input').value = item ? item.title : '';
    $('content-tags').value = item ? (item.tags || []).join(', ') : '';
    $('content-status').value = item ? item.status : 'draft';
    $('content-body').value = item ? item.body : '';
    $('content-version-note').textContent = item ? `Editing version ${item.version}; saving sends If-Match: "${item.version}", so a change made by someone else meanwhile is never overwritten.` : '';
    $('content-form-title').focus();
  }

  function closeEditor() {
    editing = null;
    $('content-form').hidden = true;
  }

  function formFields() {
    return {
      title: $('content-title-input').value,
      body: $('content-body').value,
      tags: $('content-tags').value.split(',').map((t) => t.trim()).filter(Boolean),
      status: $('content-status').value,
    };
  }

  /** 409 (or 412): explains that someone else saved first, and offers both ways on. */
  async function explainConflict(slug, version, result, fields) {
    const current = await call('GET', `/api/v1/content/${encodeURIComponent(slug)}`);
    const box = $('content-conflict');
    const now = current.ok && current.json ? current.json : null;
    const keep = el('button', { type: 'button', id: 'conflict-keep' }, now ? `Keep my text and edit version ${now.version}` : 'Keep my text');
    const theirs = el('button', { type: 'button', id: 'conflict-theirs', class: 'secondary' }, 'Discard my text and load theirs');
    keep.addEventListener('click', () => {
      if (now) {
        editing = { slug, version: now.version };
        $('content-version-note').textContent = `Editing version ${now.version} with your text; Save overwrites the other change.`;
      }
      box.hidden = true;
      $('content-save').focus();
    });
    theirs.addEventListener('click', () => { if (now) openEditor(now); });
    box.replaceChildren(
      el('p', {}, el('strong', {}, 'Not saved: this item changed after you opened it.')),
      el('p', {}, `You edited version ${version}, but someone else saved ${slug} since`,
        now ? ` — it is now version ${now.version} (updated ${now.updatedAt || 'just now'}, title “${now.title}”).` : '.',
        ' Saving would have overwritten their change, so Portico refused it (HTTP ', String(result.status), ', If-Match did not match). Your text is still in the form below.'),
      el('p', {}, 'correlation ID ', cidNode(result)),
      el('div', { class: 'toolbar' }, keep, theirs),
    );
    box.hidden = false;
    log(`Save ${slug} (version ${version}): conflict`, result);
    keep.focus();
    return fields;
  }

  $('content-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const fields = formFields();
    if (!editing) {
      const slug = $('content-slug').value.trim();
      const result = await call('POST', '/api/v1/admin/content', { body: { slug, ...fields } });
      report($('content-result'), `Create ${slug}`, result, `${slug} created as ${fields.status} (version ${result.json ? result.json.version : 1}).`);
      if (result.ok) { closeEditor(); await loadContent(); }
      return;
    }
    const { slug, version } = editing;
    const result = await call('PUT', contentPath(slug), { body: fields, headers: { 'if-match': `"${version}"` } });
    if (result.status === 409 || result.status === 412) {
      await explainConflict(slug, version, result, fields);
      return;
    }
    report($('content-result'), `Save ${slug}`, result, `${slug} saved: now version ${result.json ? result.json.version : '?'} (${fields.status}).`);
    if (result.ok) { closeEditor(); await loadContent(); }
  });

  async function setStatus(item, status) {
    const fields = { title: item.title, body: item.body, tags: item.tags || [], status };
    const result = await call('PUT', contentPath(item.slug), { body: fields, headers: { 'if-match': `"${item.version}"` } });
    const action = `${status === 'published' ? 'Publish' : 'Unpublish'} ${item.slug}`;
    if (result.status === 409 || result.status === 412) {
      report($('content-result'), action, result, '', el('p', {}, `Not changed: ${item.slug} was modified after this list was loaded (you saw version ${item.version}). Reload the list and try again.`));
    } else {
      report($('content-result'), action, result, `${item.slug} is ${status === 'published' ? 'published' : 'a draft again'} (version ${result.json ? result.json.version : '?'}).`);
    }
    await loadContent();
  }

  async function deleteItem(item) {
    if (!(await confirmAction(`Delete ${item.slug}?`, `“${item.title}” (${item.status}, version ${item.version}) is deleted for good; readers get 404.`, `Delete ${item.slug}`))) return;
    const result = await call('DELETE', contentPath(item.slug));
    report($('content-result'), `Delete ${item.slug}`, result, `${item.slug} deleted.`);
    if (editing && editing.slug === item.slug) closeEditor();
    await loadContent();
  }

  $('content-refresh').addEventListener('click', () => loadContent());
  $('content-more').addEventListener('click', () => loadContent(true));
  $('content-new').addEventListener('click', () => openEditor(null));
  $('content-cancel').addEventListener('click', closeEditor);
  loaders.content = () => loadContent();

  // ---------------------------------------------------------------- start

  showOnly('page-signin');
  $('signin-email').focus();
})();
