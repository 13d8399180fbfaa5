// Drives the operator console (/console) in a real browser against a real `portico serve`: the
// same steps in headless Chromium (Debian's `chromium`, through playwright-core) and in headless
// Firefox (Debian's `firefox-esr`, through puppeteer-core over WebDriver BiDi). Each browser gets
// its own suite: its own SQLite file, free ports, two fake OpenAI-compatible providers (alpha and
// beta, each answering with its own name), an admin made with `portico users grant-admin`.
// Chromium's run writes the screenshots of every page to docs/console/. Prints "N passed, N
// failed, N skipped" and exits non-zero on a failure.
//
//   cargo build --bin portico && (cd tools/console-e2e && npm ci && node console.test.mjs)
//
// PORTICO_BIN (default target/debug/portico), CHROMIUM (default /usr/bin/chromium), FIREFOX
// (default /usr/bin/firefox-esr) and BROWSERS (default "chromium,firefox") override.

import { spawn, execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..');
const bin = process.env.PORTICO_BIN || join(repo, 'target', 'debug', 'portico');
const docsShots = join(repo, 'docs', 'console');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FIREFOX = process.env.FIREFOX || '/usr/bin/firefox-esr';
const BROWSERS = (process.env.BROWSERS || 'chromium,firefox').split(',').map((b) => b.trim()).filter(Boolean);
const ADMIN_KEY = 'console-e2e-admin-key-0123456789abcdef';
const ADMIN = { email: 'ops@example.com', password: 'correct horse battery' };
const LOCKED = { email: 'locked@example.com', password: 'locked out for a while' };
const CHATTER = { email: 'chatter@example.com', password: 'chatty but polite' };
const PAGES = ['overview', 'providers', 'accounts', 'ratelimits', 'content'];

const sleep = (ms) => new Promise((ok) => { setTimeout(ok, ms); });

function check(condition, message) {
  if (!condition) throw new Error(message);
}

// ------------------------------------------------------------------ fakes and the suite

/** A fake OpenAI-compatible provider that says its own name. */
async function fakeProvider(name) {
  const server = createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => { body += chunk; });
    request.on('end', () => {
      if (request.method !== 'POST' || !request.url.endsWith('/chat/completions')) {
        response.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"message":"no"}}');
        return;
      }
      server.calls += 1;
      const asked = JSON.parse(body || '{}');
      response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({
        id: `chatcmpl-${name}-${server.calls}`,
        object: 'chat.completion',
        created: Math.floor(Date.now() / 1000),
        model: asked.model || 'fake-model',
        choices: [{ index: 0, message: { role: 'assistant', content: `answer from ${name}` }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 },
      }));
    });
  });
  server.calls = 0;
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  return server;
}

/** A fresh `portico serve` with its fakes, accounts and helpers to call its API directly. */
async function startSuite() {
  const dir = await mkdtemp(join(tmpdir(), 'portico-console-e2e-'));
  const alpha = await fakeProvider('alpha');
  const beta = await fakeProvider('beta');
  await writeFile(join(dir, 'providers.yaml'), `providers:
  - name: alpha
    base_url: http://127.0.0.1:${alpha.address().port}/v1
    model: fake-model
    priority: 0
  - name: beta
    base_url: http://127.0.0.1:${beta.address().port}/v1
    model: fake-model
    priority: 10
`);
  const env = {
    PATH: process.env.PATH,
    HOME: process.env.HOME || dir,
    APP_ENV: 'development',
    EDGE_ADDR: '127.0.0.1:0',
    AUTH_ADDR: '127.0.0.1:0',
    CONTENT_ADDR: '127.0.0.1:0',
    CHAT_ADDR: '127.0.0.1:0',
    RATELIMIT_ADDR: '127.0.0.1:0',
    DATABASE_URL: `sqlite://${join(dir, 'portico.db')}?mode=rwc`,
    ADMIN_API_KEY: ADMIN_KEY,
    LLM_PROVIDERS_FILE: join(dir, 'providers.yaml'),
    // Room for the test's own traffic; the chat bucket is small and barely refills, so the
    // rate-limit step can watch it drain, empty it and see a reset let it through.
    RATE_LIMIT_GLOBAL_MAX: '100000',
    RATE_LIMIT_AUTH_MAX: '1000',
    RATE_LIMIT_CAPACITY: '3',
    RATE_LIMIT_REFILL_RATE: '0.001',
    AUTH_LOGIN_MAX_ATTEMPTS: '3',
    // A short access token, so the console renews it (5 s after sign-in) during the run.
    JWT_ACCESS_TTL: '65s',
    LOG_FORMAT: 'json',
    LOG_LEVEL: process.env.TEST_LOG ? 'info' : 'warn',
  };
  const portico = spawn(bin, ['serve'], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const suite = { dir, logs: '', alpha, beta, portico };
  portico.stderr.on('data', (chunk) => { suite.logs += chunk; if (process.env.TEST_LOG) process.stderr.write(chunk); });
  suite.base = await new Promise((ok, fail) => {
    let out = '';
    const timer = setTimeout(() => fail(new Error(`portico did not start in 60 s:\n${out}\n${suite.logs}`)), 60_000);
    portico.stdout.on('data', (chunk) => {
      out += chunk;
      const up = /Portico is up: edge (http:\/\/\S+)/.exec(out);
      if (up) { clearTimeout(timer); ok(up[1]); }
    });
    portico.on('exit', (code) => fail(new Error(`portico exited with ${code}:\n${out}\n${suite.logs}`)));
  });
  suite.api = async (method, path, { body, token, headers = {} } = {}) => {
    const h = { ...headers };
    if (body !== undefined) h['content-type'] = 'application/json';
    if (token) h.authorization = `Bearer ${token}`;
    const response = await fetch(suite.base + path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await response.text();
    let json = null;
    try { json = JSON.parse(text); } catch { /* not JSON */ }
    return { status: response.status, json, text, headers: response.headers };
  };
  suite.chat = (token) => suite.api('POST', '/api/v1/chat', { token, body: { messages: [{ role: 'user', content: 'which provider are you?' }] } });
  const register = async (account) => {
    const r = await suite.api('POST', '/api/v1/auth/register', { body: account });
    if (r.status !== 201) throw new Error(`register ${account.email}: ${r.status} ${r.text}`);
    return r.json.userId;
  };
  await register(ADMIN);
  await promisify(execFile)(bin, ['users', 'grant-admin', ADMIN.email], { cwd: dir, env });
  await register(LOCKED);
  suite.chatterId = await register(CHATTER);
  suite.chatterToken = (await suite.api('POST', '/api/v1/auth/login', { body: CHATTER })).json.accessToken;
  suite.stop = async (keepDir) => {
    portico.kill('SIGTERM');
    await new Promise((ok) => { portico.once('exit', ok); setTimeout(ok, 15_000); });
    alpha.close();
    beta.close();
    if (!keepDir) await rm(dir, { recursive: true, force: true });
  };
  return suite;
}

// ------------------------------------------------------------------ the browsers
//
// One small driver per automation library, so every step below runs unchanged in both.

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** Headless Chromium through playwright-core (the DevTools protocol). */
async function chromiumDriver() {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  return {
    page,
    goto: async (url) => ({ headers: (await page.goto(url)).headers() }),
    click: (selector) => page.locator(selector).click(),
    fill: (selector, value) => page.locator(selector).fill(value),
    value: (selector) => page.locator(selector).inputValue(),
    text: async (selector) => (await page.locator(selector).innerText()).trim(),
    visible: (selector) => page.locator(selector).first().waitFor({ state: 'visible' }),
    hidden: (selector) => page.locator(selector).first().waitFor({ state: 'hidden' }),
    until: (fn, arg, timeout = 15_000) => page.waitForFunction(fn, arg, { timeout }),
    eval: (fn, arg) => page.evaluate(fn, arg),
    press: (key) => page.keyboard.press(key),
    type: (text) => page.keyboard.type(text),
    response: (suffix, timeout) => page.waitForResponse((r) => r.url().endsWith(suffix), { timeout }),
    viewport: (width, height) => page.setViewportSize({ width, height }),
    screenshot: (path) => page.screenshot({ path, fullPage: true }),
    cookies: () => context.cookies(),
    close: () => browser.close(),
  };
}

/** Headless Firefox through puppeteer-core (WebDriver BiDi, no patched browser build). */
async function firefoxDriver() {
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    headless: true,
    defaultViewport: { width: 1280, height: 900 },
  });
  const page = await browser.newPage();
  page.setDefaultTimeout(15_000);
  const visible = (selector) => page.waitForSelector(selector, { visible: true });
  return {
    page,
    goto: async (url) => ({ headers: (await page.goto(url)).headers() }),
    click: async (selector) => (await visible(selector)).click(),
    fill: (selector, value) => page.locator(selector).fill(value),
    value: (selector) => page.$eval(selector, (input) => input.value),
    text: async (selector) => { await page.waitForSelector(selector); return page.$eval(selector, (node) => node.innerText.trim()); },
    visible,
    hidden: (selector) => page.waitForSelector(selector, { hidden: true }),
    until: (fn, arg, timeout = 15_000) => page.waitForFunction(fn, { timeout }, arg),
    eval: (fn, arg) => page.evaluate(fn, arg),
    press: (key) => page.keyboard.press(key),
    type: (text) => page.keyboard.type(text),
    response: (suffix, timeout) => page.waitForResponse((r) => r.url().endsWith(suffix), { timeout }),
    viewport: (width, height) => page.setViewport({ width, height }),
    screenshot: (path) => page.screenshot({ path, fullPage: true }),
    cookies: () => browser.cookies(),
    close: () => browser.close(),
  };
}

const DRIVERS = { chromium: { executable: CHROMIUM, start: chromiumDriver }, firefox: { executable: FIREFOX, start: firefoxDriver } };

// ------------------------------------------------------------------ helpers over a driver

/**
 * In the page: marks the visible button whose accessible name (aria-label, else its text) is
 * `query.name` (or matches `query.pattern`) with `data-e2e-target`; false while there is none.
 * Self-contained, since it is sent to the page as source.
 */
function markButton(query) {
  for (const old of document.querySelectorAll('[data-e2e-target]')) old.removeAttribute('data-e2e-target');
  const matches = (label) => (query.pattern ? new RegExp(query.pattern).test(label) : label === query.name);
  const button = [...document.querySelectorAll('button')].find((candidate) => {
    const label = (candidate.getAttribute('aria-label') || candidate.textContent).trim();
    return matches(label) && candidate.getClientRects().length > 0 && !candidate.closest('[hidden]');
  });
  if (button) button.setAttribute('data-e2e-target', '');
  return Boolean(button);
}

/** Clicks the button named `name` (a string, or a RegExp), waiting for it to appear. */
async function pressButton(d, name) {
  await d.until(markButton, name instanceof RegExp ? { pattern: name.source } : { name });
  await d.click('[data-e2e-target]');
}

const countButtons = (d, prefix) => d.eval((start) => [...document.querySelectorAll('button')]
  .filter((b) => (b.getAttribute('aria-label') || b.textContent).trim().startsWith(start)).length, prefix);

/** Rows of `table` (a selector) whose header or first cell's text matches `pattern`. */
const rowsMatching = (d, table, pattern) => d.eval(({ table, pattern }) => [...document.querySelectorAll(`${table} tbody tr`)]
  .filter((row) => new RegExp(pattern).test(row.firstElementChild ? row.firstElementChild.textContent : '')).length, { table, pattern });

const activeId = (d) => d.eval(() => document.activeElement && document.activeElement.id);
const nav = (d, page) => d.click(`nav a[data-page="${page}"]`);

// ------------------------------------------------------------------ steps

const steps = [];
const step = (name, run) => steps.push({ name, run });

step('the page is served with a strict CSP and an admin signs in with the keyboard alone (Tab, Enter)', async ({ d, s, shot }) => {
  const response = await d.goto(`${s.base}/console`);
  const csp = response.headers['content-security-policy'] || '';
  check(csp.includes("default-src 'self'") && csp.includes("frame-ancestors 'none'") && !csp.includes('unsafe-inline'), `CSP: ${csp}`);
  await d.until(() => document.activeElement && document.activeElement.id === 'signin-email');
  await d.type(ADMIN.email);
  await d.press('Tab');
  check(await activeId(d) === 'signin-password', 'Tab moves from the email to the password');
  await d.type(ADMIN.password);
  await d.press('Tab');
  check(await d.eval(() => document.activeElement.matches('#signin-form button[type="submit"]')), 'Tab reaches the Sign in button');
  await shot('signin');
  await d.press('Enter');
  await d.visible('#page-overview');
  check((await d.text('#who-email')).includes(ADMIN.email), 'signed-in email shown');
});

step('the access token is renewed with the refresh token before it expires', async ({ d, s, state }) => {
  const first = state.lastBearer;
  const renewed = await d.response('/api/v1/auth/refresh', 20_000);
  check(renewed.status() === 200, `refresh: ${renewed.status()}`);
  await nav(d, 'providers');
  await d.visible('#priority-alpha');
  check(state.lastBearer && state.lastBearer !== first, 'the next admin call carries the renewed token');
  check((await s.api('GET', '/api/v1/auth/me', { token: state.lastBearer })).status === 200, 'the renewed token works');
  await nav(d, 'overview');
});

step('nothing is stored in the browser: no localStorage, sessionStorage or cookies', async ({ d }) => {
  const stored = await d.eval(() => localStorage.length + sessionStorage.length + document.cookie.length);
  check(stored === 0, `found ${stored} stored items`);
  check((await d.cookies()).length === 0, 'no cookies');
});

step('the overview shows readiness with its correlation ID, circuits and 5xx/429 rates', async ({ d, shot }) => {
  await d.visible('#ready-table tbody tr');
  const summary = await d.text('#ready-summary');
  check(/Portico is (ok|degraded)/.test(summary), summary);
  check(/correlation ID [0-9a-f-]{36}/.test(summary), `correlation ID in: ${summary}`);
  for (const name of ['auth', 'content', 'chat', 'ratelimit', 'cache']) {
    check(await rowsMatching(d, '#ready-table', `^${name}$`) === 1, `readiness row ${name}`);
  }
  check(await rowsMatching(d, '#circuit-table', 'alpha') === 1, 'alpha circuit row');
  await sleep(1200);
  await d.click('#ready-refresh');
  await d.until(() => document.querySelectorAll('#rates-table tbody tr').length === 3);
  await d.until(() => /over the last/.test(document.getElementById('rates-note').textContent));
  check((await d.text('#rates-table')).includes('429'), 'the 429 row');
  await shot('overview');
});

step('changing a provider\'s priority moves the next chat request to it', async ({ d, s, shot }) => {
  const before = await s.chat(s.chatterToken);
  check(before.status === 200 && before.json.provider === 'alpha', `before: ${before.status} ${before.text}`);
  await nav(d, 'providers');
  await d.visible('#priority-beta');
  check((await d.text('#providers-table tbody tr:first-child th')) === 'alpha', 'alpha first');
  await d.fill('#priority-beta', '-5');
  await pressButton(d, 'Save priority of beta');
  await d.visible('#providers-result.ok');
  const result = await d.text('#providers-result');
  check(result.includes('beta now has priority -5') && /correlation ID [0-9a-f-]{36}/.test(result), result);
  await d.until(() => document.querySelector('#providers-table tbody tr:first-child th')?.textContent === 'beta');
  const after = await s.chat(s.chatterToken);
  check(after.status === 200 && after.json.provider === 'beta', `after: ${after.status} ${after.text}`);
  check(after.json.message.content === 'answer from beta', after.text);
  await d.click('#providers-refresh');
  await d.until(() => /ok 1/.test(document.querySelector('#providers-table tbody tr:first-child')?.textContent || ''));
  await shot('providers');
});

step('a locked-out account is listed with its remaining time, unlocked from the list and can log in', async ({ d, s, shot }) => {
  let locked = null;
  for (let i = 0; i < 6 && !locked; i += 1) {
    const wrong = await s.api('POST', '/api/v1/auth/login', { body: { email: LOCKED.email, password: 'not the password' } });
    if (wrong.status === 429) locked = wrong;
  }
  check(locked, 'the account got locked');
  const refused = await s.api('POST', '/api/v1/auth/login', { body: LOCKED });
  check(refused.status === 429, `the right password is refused while locked: ${refused.status}`);
  await nav(d, 'accounts');
  // The page lists every lockout in force when it opens.
  await d.until((email) => [...document.querySelectorAll('#lockouts-table tbody th')].some((th) => th.textContent === email), LOCKED.email);
  const row = await d.eval((email) => {
    const tr = [...document.querySelectorAll('#lockouts-table tbody tr')].find((r) => r.querySelector('th')?.textContent === email);
    return [...tr.children].map((cell) => cell.textContent.trim());
  }, LOCKED.email);
  check(row[1] === '127.0.0.1', `the network: ${row}`);
  check(/^1[45] min( \d+ s)?$/.test(row[3]), `about 15 minutes remaining: ${row}`);
  check(/correlation ID/.test(await d.text('#lockouts-note')), 'the listing names its correlation ID');
  await shot('accounts-lockouts');
  // Listing by email finds it too.
  await d.fill('#lockouts-email', LOCKED.email);
  await pressButton(d, 'List lockouts');
  await d.until(() => /1 lockout\(s\) in force/.test(document.getElementById('lockouts-note').textContent));
  await pressButton(d, `Unlock ${LOCKED.email} from 127.0.0.1`);
  await d.visible('#lockouts-result.ok');
  const result = await d.text('#lockouts-result');
  check(/cleared/.test(result) && /correlation ID/.test(result), result);
  await d.until((email) => document.querySelector('#lockouts-table tbody td')?.textContent === `${email} is not locked out.`, LOCKED.email);
  const login = await s.api('POST', '/api/v1/auth/login', { body: LOCKED });
  check(login.status === 200 && login.json.accessToken, `login after unlock: ${login.status} ${login.text}`);
  await d.fill('#lockouts-email', '');
});

step('an account is found by email and its sessions listed (when the edge has the admin sessions route)', async ({ d, s, shot }) => {
  const spec = await s.api('GET', '/api/openapi.json');
  const route = spec.json.paths['/api/v1/admin/auth/users/{user}/sessions'];
  if (!route || !route.get) {
    const said = await d.text('#lookup-area');
    check(said.includes('Not available'), `the console says lookup is not available: ${said}`);
    return;
  }
  await d.fill('#lookup-user', LOCKED.email);
  await pressButton(d, 'Find sessions');
  await d.visible('#lookup-result.ok');
  const result = await d.text('#lookup-result');
  check(/[1-9]\d* live session\(s\)/.test(result) && /correlation ID/.test(result), result);
  await shot('accounts');
  const sessions = await countButtons(d, 'End session ');
  await pressButton(d, /^End session /);
  await d.visible('#confirm');
  await d.click('#confirm-ok');
  await d.until(() => /Session ended/.test(document.getElementById('lookup-result').textContent));
  check(await countButtons(d, 'End session ') === sessions - 1, 'the ended session left the table');
});

step('an account\'s API keys are listed, one created (its secret shown once) and revoked after confirmation', async ({ d, s, shot }) => {
  await nav(d, 'accounts');
  await d.visible('#apikeys-form');
  await d.fill('#apikeys-user', CHATTER.email);
  await pressButton(d, 'List keys');
  await d.until(() => /0 key\(s\)/.test(document.getElementById('apikeys-result').textContent));
  await d.fill('#apikey-name', 'nightly-report');
  await pressButton(d, 'Create key');
  await d.visible('#apikey-secret');
  const secret = await d.text('#apikey-secret-value');
  check(/^pk_[A-Za-z0-9_-]{43}$/.test(secret), `the secret: ${secret}`);
  const me = await s.api('GET', '/api/v1/auth/me', { token: secret });
  check(me.status === 200 && me.json.email === CHATTER.email, `the key acts for its owner: ${me.status} ${me.text}`);
  await d.until(() => /1 key\(s\)/.test(document.getElementById('apikeys-result').textContent));
  const row = await d.text('#apikeys-table tbody tr');
  check(row.includes('nightly-report') && row.includes(`${secret.slice(0, 9)}…`) && row.includes('live') && !row.includes(secret), `the listed key: ${row}`);
  await shot('accounts-apikeys');
  await pressButton(d, 'Revoke key nightly-report');
  await d.visible('#confirm');
  check((await d.text('#confirm-text')).includes('nightly-report'), 'the dialog names the key');
  await d.click('#confirm-ok');
  // The page re-lists the keys after the revocation, whose result may replace "revoked." before
  // a slower browser is looked at: the row's status is what must change.
  await d.until(() => /revoked/.test(document.querySelector('#apikeys-table tbody tr')?.textContent || ''));
  // Refused everywhere within a second (verifiers cache a key at most that long).
  const deadline = Date.now() + 5000;
  let refused = await s.api('GET', '/api/v1/auth/me', { token: secret });
  while (refused.status !== 401 && Date.now() < deadline) {
    await sleep(200);
    refused = await s.api('GET', '/api/v1/auth/me', { token: secret });
  }
  check(refused.status === 401, `the revoked key: ${refused.status}`);
  await d.click('#sign-out');
  await d.visible('#page-signin');
  check(await d.eval(() => document.getElementById('apikey-secret').hidden && !document.getElementById('apikey-secret-value')), 'the secret is forgotten on sign-out');
  await d.fill('#signin-email', ADMIN.email);
  await d.fill('#signin-password', ADMIN.password);
  await d.click('#signin-form button[type="submit"]');
  // Signed in again on the page the address names (still Accounts).
  await d.visible('#page-accounts');
  check(await d.eval(() => !document.getElementById('nav').hidden), 'signed in again');
});

/** Looks a bucket up on the Rate limits page (typing its name, Enter) and returns what it shows. */
async function lookUpBucket(d, name, expectedRemaining) {
  await d.fill('#bucket-value', name);
  await d.eval(() => { const old = document.getElementById('bucket-remaining'); if (old) old.id = ''; });
  await d.click('#bucket-value');
  await d.press('Enter');
  await d.until((remaining) => document.getElementById('bucket-remaining')?.textContent === remaining, String(expectedRemaining));
  return d.text('#bucket-result');
}

step('a rate-limit bucket is looked up as requests drain it, then reset after a keyboard confirmation', async ({ d, s, shot }) => {
  await nav(d, 'ratelimits');
  const full = await lookUpBucket(d, 'chat:127.0.0.1', 3);
  check(full.includes('3 of 3 token(s) left') && /correlation ID/.test(full) && full.includes('ratelimit:chat:127.0.0.1'), full);
  check((await s.chat(null)).status === 200, 'one anonymous chat request');
  const one = await lookUpBucket(d, 'chat:127.0.0.1', 2);
  check(one.includes('2 of 3 token(s) left'), `remaining dropped by the request: ${one}`);
  await lookUpBucket(d, 'chat:127.0.0.1', 2);
  let limited = null;
  for (let i = 0; i < 8 && !limited; i += 1) {
    const r = await s.chat(null);
    if (r.status === 429) limited = r;
  }
  check(limited, 'anonymous chat got limited');
  const empty = await lookUpBucket(d, 'chat:127.0.0.1', 0);
  check(empty.includes('callers are refused') && /Next token\s*in /.test(empty), empty);
  await shot('ratelimits-bucket');
  await d.fill('#reset-value', 'chat:127.0.0.1');
  await pressButton(d, 'Reset…');
  await d.visible('#confirm');
  check((await d.text('#confirm-text')).includes('chat:127.0.0.1'), 'the dialog names the key');
  check(await activeId(d) === 'confirm-cancel', 'Cancel has the focus');
  await shot('ratelimits-confirm');
  await d.press('Tab');
  check(await activeId(d) === 'confirm-ok', 'Tab reaches Confirm');
  await d.press('Enter');
  await d.visible('#reset-result.ok');
  const result = await d.text('#reset-result');
  check(/1 bucket\(s\) removed/.test(result) && /correlation ID/.test(result), result);
  await lookUpBucket(d, 'chat:127.0.0.1', 3);
  const through = await s.chat(null);
  check(through.status === 200, `after the reset: ${through.status} ${through.text}`);
  await d.click('#page-ratelimits h1');
  await pressButton(d, 'Reset…');
  await d.visible('#confirm');
  await d.press('Escape');
  await d.hidden('#confirm');
  check((await d.text('#reset-result')).includes('1 bucket(s) removed'), 'Escape cancelled: nothing new was sent');
  await shot('ratelimits');
});

step('a draft is created and edited', async ({ d, s }) => {
  await nav(d, 'content');
  await d.click('#content-new');
  await d.fill('#content-slug', 'release-notes');
  await d.fill('#content-title-input', 'Release notes');
  await d.fill('#content-tags', 'news, ops');
  await d.fill('#content-body', '# 0.1\nFirst draft.');
  await d.click('#content-save');
  await d.visible('#content-result.ok');
  check((await d.text('#content-result')).includes('release-notes created as draft'), await d.text('#content-result'));
  await pressButton(d, 'Edit release-notes');
  await d.fill('#content-title-input', 'Release notes, second draft');
  await d.click('#content-save');
  await d.until(() => /now version 2/.test(document.getElementById('content-result').textContent));
  const stored = await s.api('GET', '/api/v1/admin/content', { headers: { 'x-admin-key': ADMIN_KEY } });
  const item = stored.json.items.find((i) => i.slug === 'release-notes');
  check(item && item.title === 'Release notes, second draft' && item.status === 'draft' && item.version === 2, JSON.stringify(item));
});

step('losing an If-Match race is explained, and the edit can be redone on the new version', async ({ d, s, shot }) => {
  await pressButton(d, 'Edit release-notes');
  await d.fill('#content-body', '# 0.1\nMy wording.');
  // Someone else saves first.
  const theirs = await s.api('PUT', '/api/v1/admin/content/release-notes', {
    headers: { 'x-admin-key': ADMIN_KEY, 'if-match': '"2"' },
    body: { title: 'Release notes (their edit)', body: 'their wording', tags: ['news'], status: 'draft' },
  });
  check(theirs.status === 200 && theirs.json.version === 3, `their edit: ${theirs.status} ${theirs.text}`);
  await d.click('#content-save');
  await d.visible('#content-conflict');
  const explained = await d.text('#content-conflict');
  check(explained.includes('Not saved') && explained.includes('You edited version 2') && explained.includes('now version 3')
    && explained.includes('Release notes (their edit)') && /correlation ID/.test(explained), explained);
  check(await d.value('#content-body') === '# 0.1\nMy wording.', 'my text is kept');
  await shot('content-conflict');
  await d.click('#conflict-keep');
  await d.click('#content-save');
  await d.until(() => /now version 4/.test(document.getElementById('content-result').textContent));
  const stored = await s.api('GET', '/api/v1/admin/content', { headers: { 'x-admin-key': ADMIN_KEY } });
  const item = stored.json.items.find((i) => i.slug === 'release-notes');
  check(item.version === 4 && item.body === '# 0.1\nMy wording.', JSON.stringify(item));
});

step('a draft is published and another item deleted after confirmation', async ({ d, s, shot }) => {
  await pressButton(d, 'Publish release-notes');
  await d.until(() => /release-notes is published/.test(document.getElementById('content-result').textContent));
  const published = await s.api('GET', '/api/v1/content/release-notes');
  check(published.status === 200 && published.json.title === 'Release notes, second draft' && published.json.body === '# 0.1\nMy wording.', `${published.status} ${published.text}`);
  await s.api('POST', '/api/v1/admin/content', { headers: { 'x-admin-key': ADMIN_KEY }, body: { slug: 'old-notice', title: 'Old notice', body: 'gone soon', status: 'draft' } });
  await d.click('#content-refresh');
  await pressButton(d, 'Delete old-notice');
  await d.visible('#confirm');
  await d.click('#confirm-ok');
  await d.until(() => /old-notice deleted/.test(document.getElementById('content-result').textContent));
  const gone = await s.api('GET', '/api/v1/admin/content', { headers: { 'x-admin-key': ADMIN_KEY } });
  check(!gone.json.items.some((i) => i.slug === 'old-notice'), 'old-notice is gone');
  await shot('content');
});

/** Shows each page and returns how far it scrolls sideways (0: it does not). */
async function sidewaysScroll(d, name) {
  await d.eval((hash) => { location.hash = hash; }, name);
  await d.visible(`#page-${name}`);
  await sleep(300);
  return d.eval(() => {
    window.scrollTo(100000, window.scrollY);
    const scrolled = window.scrollX;
    window.scrollTo(0, window.scrollY);
    return Math.max(scrolled, document.documentElement.scrollWidth - document.documentElement.clientWidth);
  });
}

step('every page fits a 640 px wide window without sideways scrolling', async ({ d, shot }) => {
  await d.viewport(640, 900);
  for (const name of PAGES) {
    const overflow = await sidewaysScroll(d, name);
    check(overflow <= 1, `${name} overflows by ${overflow} px`);
  }
  await d.eval(() => { location.hash = 'overview'; });
  await shot('overview-narrow');
  await d.viewport(1280, 900);
});

step('at 200% zoom (a 1280 px window, CSS zoom 2) no page scrolls sideways', async ({ d, shot }) => {
  await d.viewport(1280, 900);
  await d.eval(() => { document.documentElement.style.zoom = '2'; });
  try {
    check(await d.eval(() => getComputedStyle(document.documentElement).zoom) === '2', 'the page is zoomed');
    for (const name of PAGES) {
      const overflow = await sidewaysScroll(d, name);
      check(overflow <= 1, `${name} overflows by ${overflow} px at 200%`);
    }
    await d.eval(() => { location.hash = 'accounts'; });
    await shot('accounts-zoom');
  } finally {
    await d.eval(() => { document.documentElement.style.zoom = ''; location.hash = 'overview'; });
  }
});

step('signing out revokes the session', async ({ d, s, state }) => {
  const token = state.lastBearer;
  check(token, 'the console sent a bearer token');
  check((await s.api('GET', '/api/v1/auth/me', { token })).status === 200, 'the token works before sign-out');
  await d.click('#sign-out');
  await d.visible('#page-signin');
  const result = await d.text('#signin-result');
  check(result.includes('Signed out') && /correlation ID/.test(result), result);
  // The token the logout call itself carried: the one the console held when it signed out (a
  // renewal may have replaced the earlier one, which then stays valid until it expires).
  const held = state.lastBearer;
  const after = await s.api('GET', '/api/v1/auth/me', { token: held });
  check(after.status === 401, `the console's access token after sign-out: ${after.status}`);
  check(await d.eval(() => document.getElementById('nav').hidden), 'navigation hidden');
});

step('a non-admin is refused clearly', async ({ d, shot }) => {
  await d.fill('#signin-email', LOCKED.email);
  await d.fill('#signin-password', LOCKED.password);
  await d.click('#signin-form button[type="submit"]');
  await d.visible('#page-refused');
  const text = await d.text('#page-refused');
  check(text.includes(LOCKED.email) && text.includes('portico users grant-admin'), text);
  check(await d.eval(() => document.getElementById('nav').hidden), 'no navigation for a non-admin');
  await shot('refused');
});

step('the page logged no script errors (CSP violations included)', async ({ state }) => {
  check(state.consoleErrors.length === 0, state.consoleErrors.join('\n'));
});

// ------------------------------------------------------------------ run

let passed = 0;
let failed = 0;
let skipped = 0;
for (const name of BROWSERS) {
  const driver = DRIVERS[name];
  if (!driver) throw new Error(`BROWSERS: unknown browser ${name} (chromium or firefox)`);
  if (!existsSync(driver.executable)) {
    // CI installs both (see .ci/run); a developer without one still runs the other.
    skipped += steps.length;
    console.log(`- skipped: every ${name} step (${driver.executable} is not installed)`);
    continue;
  }
  const s = await startSuite();
  const d = await driver.start();
  // Chromium's screenshots are the documentation's; Firefox's stay with its run.
  const shots = name === 'chromium' ? docsShots : join(s.dir, 'screenshots');
  await mkdir(shots, { recursive: true });
  const shot = (file) => d.screenshot(join(shots, `${file}.png`));
  const state = { lastBearer: null, consoleErrors: [] };
  // Script errors and CSP violations ("Refused to …"); an HTTP error status the console asked
  // for on purpose (409 in the race, 404 for a favicon) is not one.
  d.page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) state.consoleErrors.push(message.text());
  });
  d.page.on('pageerror', (error) => state.consoleErrors.push(String(error)));
  d.page.on('request', (request) => {
    const auth = request.headers().authorization;
    if (auth) state.lastBearer = auth.replace(/^Bearer /, '');
  });
  let failedHere = 0;
  for (const { name: stepName, run } of steps) {
    const label = `[${name}] ${stepName}`;
    if (failedHere) {
      skipped += 1;
      console.log(`- skipped: ${label}`);
      continue;
    }
    try {
      await run({ d, s, shot, state });
      passed += 1;
      console.log(`ok: ${label}`);
    } catch (error) {
      failed += 1;
      failedHere += 1;
      console.log(`not ok: ${label}\n  ${String(error.stack || error).split('\n').join('\n  ')}`);
      const failure = join(s.dir, `failure-${name}.png`);
      await d.screenshot(failure).catch(() => {});
      console.log(`  (screenshot of the failure: ${failure})`);
    }
  }
  await d.close().catch(() => {});
  if (failedHere) console.log(`portico's log under ${name} (warnings and errors):\n${s.logs.slice(-4000)}`);
  await s.stop(failedHere > 0);
}
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed ? 1 : 0);
