// Drives the operator console (/console) in headless Chromium against a real `portico serve`:
// its own SQLite file, free ports, two fake OpenAI-compatible providers (alpha and beta, each
// answering with its own name), an admin made with `portico users grant-admin`. Screenshots of
// every page go to docs/console/. Prints "N passed, N failed" and exits non-zero on a failure.
//
//   cargo build --bin portico && (cd tools/console-e2e && npm ci && node console.test.mjs)
//
// PORTICO_BIN (default target/debug/portico) and CHROMIUM (default /usr/bin/chromium) override.

import { spawn, execFile } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..');
const bin = process.env.PORTICO_BIN || join(repo, 'target', 'debug', 'portico');
const shots = join(repo, 'docs', 'console');
const ADMIN_KEY = 'console-e2e-admin-key-0123456789abcdef';
const ADMIN = { email: 'ops@example.com', password: 'correct horse battery' };
const LOCKED = { email: 'locked@example.com', password: 'locked out for a while' };
const CHATTER = { email: 'chatter@example.com', password: 'chatty but polite' };

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
  // rate-limit step can empty it and see a reset let it through.
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
let logs = '';
portico.stderr.on('data', (chunk) => { logs += chunk; if (process.env.TEST_LOG) process.stderr.write(chunk); });
const base = await new Promise((ok, fail) => {
  let out = '';
  const timer = setTimeout(() => fail(new Error(`portico did not start in 60 s:\n${out}\n${logs}`)), 60_000);
  portico.stdout.on('data', (chunk) => {
    out += chunk;
    const up = /Portico is up: edge (http:\/\/\S+)/.exec(out);
    if (up) { clearTimeout(timer); ok(up[1]); }
  });
  portico.on('exit', (code) => fail(new Error(`portico exited with ${code}:\n${out}\n${logs}`)));
});

async function api(method, path, { body, token, headers = {} } = {}) {
  const h = { ...headers };
  if (body !== undefined) h['content-type'] = 'application/json';
  if (token) h.authorization = `Bearer ${token}`;
  const response = await fetch(base + path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: response.status, json, text, headers: response.headers };
}

async function register(account) {
  const r = await api('POST', '/api/v1/auth/register', { body: account });
  if (r.status !== 201) throw new Error(`register ${account.email}: ${r.status} ${r.text}`);
  return r.json.userId;
}

await register(ADMIN);
await promisify(execFile)(bin, ['users', 'grant-admin', ADMIN.email], { cwd: dir, env });
await register(LOCKED);
await register(CHATTER);
const chatterToken = (await api('POST', '/api/v1/auth/login', { body: CHATTER })).json.accessToken;

// ------------------------------------------------------------------ the browser

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
page.setDefaultTimeout(15_000);
const consoleErrors = [];
// Script errors and CSP violations ("Refused to …"); an HTTP error status the console asked for
// on purpose (409 in the race, 404 for a favicon) is not one.
page.on('console', (message) => {
  if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) consoleErrors.push(message.text());
});
page.on('pageerror', (error) => consoleErrors.push(String(error)));
let lastBearer = null;
page.on('request', (request) => {
  const auth = request.headers().authorization;
  if (auth) lastBearer = auth.replace(/^Bearer /, '');
});
await mkdir(shots, { recursive: true });
const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

function check(condition, message) {
  if (!condition) throw new Error(message);
}
async function textOf(selector) {
  return (await page.locator(selector).innerText()).trim();
}
async function chat(token) {
  return api('POST', '/api/v1/chat', { token, body: { messages: [{ role: 'user', content: 'which provider are you?' }] } });
}

// ------------------------------------------------------------------ steps

const steps = [];
const step = (name, run) => steps.push({ name, run });

step('the page is served with a strict CSP and signs in an admin from the keyboard', async () => {
  const response = await page.goto(`${base}/console`);
  const csp = response.headers()['content-security-policy'] || '';
  check(csp.includes("default-src 'self'") && csp.includes("frame-ancestors 'none'") && !csp.includes('unsafe-inline'), `CSP: ${csp}`);
  await page.locator('#signin-email').focus();
  await page.keyboard.type(ADMIN.email);
  await page.keyboard.press('Tab');
  await page.keyboard.type(ADMIN.password);
  await shot('signin');
  await page.keyboard.press('Enter');
  await page.locator('#page-overview').waitFor({ state: 'visible' });
  check((await textOf('#who-email')).includes(ADMIN.email), 'signed-in email shown');
});

step('the access token is renewed with the refresh token before it expires', async () => {
  const first = lastBearer;
  const renewed = await page.waitForResponse((r) => r.url().endsWith('/api/v1/auth/refresh'), { timeout: 20_000 });
  check(renewed.status() === 200, `refresh: ${renewed.status()}`);
  await page.locator('nav a', { hasText: 'LLM providers' }).click();
  await page.locator('#priority-alpha').waitFor();
  check(lastBearer && lastBearer !== first, 'the next admin call carries the renewed token');
  check((await api('GET', '/api/v1/auth/me', { token: lastBearer })).status === 200, 'the renewed token works');
  await page.locator('nav a', { hasText: 'Overview' }).click();
});

step('nothing is stored in the browser: no localStorage, sessionStorage or cookies', async () => {
  const stored = await page.evaluate(() => localStorage.length + sessionStorage.length + document.cookie.length);
  check(stored === 0, `found ${stored} stored items`);
  check((await context.cookies()).length === 0, 'no cookies');
});

step('the overview shows readiness with its correlation ID, circuits and 5xx/429 rates', async () => {
  await page.locator('#ready-table tbody tr').first().waitFor();
  const summary = await textOf('#ready-summary');
  check(/Portico is (ok|degraded)/.test(summary), summary);
  check(/correlation ID [0-9a-f-]{36}/.test(summary), `correlation ID in: ${summary}`);
  for (const name of ['auth', 'content', 'chat', 'ratelimit', 'database', 'cache']) {
    check(await page.locator('#ready-table tbody th', { hasText: new RegExp(`^${name}$`) }).count() === 1, `readiness row ${name}`);
  }
  check(await page.locator('#circuit-table tbody th', { hasText: 'alpha' }).count() === 1, 'alpha circuit row');
  await page.waitForTimeout(1200);
  await page.locator('#ready-refresh').click();
  await page.locator('#rates-table tbody tr').nth(2).waitFor();
  await page.waitForFunction(() => /over the last/.test(document.getElementById('rates-note').textContent));
  check((await textOf('#rates-table')).includes('429'), 'the 429 row');
  await shot('overview');
});

step('changing a provider\'s priority moves the next chat request to it', async () => {
  const before = await chat(chatterToken);
  check(before.status === 200 && before.json.provider === 'alpha', `before: ${before.status} ${before.text}`);
  await page.locator('nav a', { hasText: 'LLM providers' }).click();
  await page.locator('#priority-beta').waitFor();
  check((await textOf('#providers-table tbody tr:first-child th')) === 'alpha', 'alpha first');
  await page.locator('#priority-beta').fill('-5');
  await page.getByRole('button', { name: 'Save priority of beta' }).click();
  await page.locator('#providers-result.ok').waitFor();
  const result = await textOf('#providers-result');
  check(result.includes('beta now has priority -5') && /correlation ID [0-9a-f-]{36}/.test(result), result);
  await page.waitForFunction(() => document.querySelector('#providers-table tbody tr:first-child th')?.textContent === 'beta');
  const after = await chat(chatterToken);
  check(after.status === 200 && after.json.provider === 'beta', `after: ${after.status} ${after.text}`);
  check(after.json.message.content === 'answer from beta', after.text);
  await page.locator('#providers-refresh').click();
  await page.waitForFunction(() => /ok 1/.test(document.querySelector('#providers-table tbody tr:first-child').textContent));
  await shot('providers');
});

step('a locked-out account is unlocked from the console and can log in', async () => {
  let locked = null;
  for (let i = 0; i < 6 && !locked; i += 1) {
    const wrong = await api('POST', '/api/v1/auth/login', { body: { email: LOCKED.email, password: 'not the password' } });
    if (wrong.status === 429) locked = wrong;
  }
  check(locked, 'the account got locked');
  const refused = await api('POST', '/api/v1/auth/login', { body: LOCKED });
  check(refused.status === 429, `the right password is refused while locked: ${refused.status}`);
  await page.locator('nav a', { hasText: 'Accounts' }).click();
  await page.locator('#unlock-email').fill(LOCKED.email);
  await page.getByRole('button', { name: 'Unlock' }).click();
  await page.locator('#unlock-result.ok').waitFor();
  const result = await textOf('#unlock-result');
  check(/cleared/.test(result) && /correlation ID/.test(result), result);
  const login = await api('POST', '/api/v1/auth/login', { body: LOCKED });
  check(login.status === 200 && login.json.accessToken, `login after unlock: ${login.status} ${login.text}`);
  await shot('accounts');
});

step('an account is found by email and its sessions listed (when the edge has the admin sessions route)', async () => {
  const spec = await api('GET', '/api/openapi.json');
  const route = spec.json.paths['/api/v1/admin/auth/users/{user}/sessions'];
  if (!route || !route.get) {
    const said = await textOf('#lookup-area');
    check(said.includes('Not available'), `the console says lookup is not available: ${said}`);
    return;
  }
  await page.locator('#lookup-user').fill(LOCKED.email);
  await page.getByRole('button', { name: 'Find sessions' }).click();
  await page.locator('#lookup-result.ok').waitFor();
  const result = await textOf('#lookup-result');
  check(/[1-9]\d* live session\(s\)/.test(result) && /correlation ID/.test(result), result);
  await shot('accounts');
  const end = page.getByRole('button', { name: /^End session / }).first();
  await end.click();
  await page.locator('#confirm').waitFor({ state: 'visible' });
  await page.locator('#confirm-ok').click();
  await page.waitForFunction(() => /Session ended/.test(document.getElementById('lookup-result').textContent));
  check(await end.count() === 0, 'the ended session left the table');
});

step('a rate-limit key is reset after a keyboard confirmation and the caller gets through', async () => {
  let limited = null;
  for (let i = 0; i < 8 && !limited; i += 1) {
    const r = await chat(null);
    if (r.status === 429) limited = r;
  }
  check(limited, 'anonymous chat got limited');
  await page.locator('nav a', { hasText: 'Rate limits' }).click();
  await page.locator('#reset-value').fill('chat:127.0.0.1');
  await page.getByRole('button', { name: 'Reset…' }).click();
  const dialog = page.locator('#confirm');
  await dialog.waitFor({ state: 'visible' });
  check((await textOf('#confirm-text')).includes('chat:127.0.0.1'), 'the dialog names the key');
  check(await page.evaluate(() => document.activeElement.id) === 'confirm-cancel', 'Cancel has the focus');
  await shot('ratelimits-confirm');
  await page.keyboard.press('Tab');
  check(await page.evaluate(() => document.activeElement.id) === 'confirm-ok', 'Tab reaches Confirm');
  await page.keyboard.press('Enter');
  await page.locator('#reset-result.ok').waitFor();
  const result = await textOf('#reset-result');
  check(/1 bucket\(s\) removed/.test(result) && /correlation ID/.test(result), result);
  const through = await chat(null);
  check(through.status === 200, `after the reset: ${through.status} ${through.text}`);
  await page.locator('#page-ratelimits h1').click();
  await page.getByRole('button', { name: 'Reset…' }).click();
  await dialog.waitFor({ state: 'visible' });
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });
  check((await textOf('#reset-result')).includes('1 bucket(s) removed'), 'Escape cancelled: nothing new was sent');
  await shot('ratelimits');
});

step('a draft is created and edited', async () => {
  await page.locator('nav a', { hasText: 'Content' }).click();
  await page.locator('#content-new').click();
  await page.locator('#content-slug').fill('release-notes');
  await page.locator('#content-title-input').fill('Release notes');
  await page.locator('#content-tags').fill('news, ops');
  await page.locator('#content-body').fill('# 0.1\nFirst draft.');
  await page.locator('#content-save').click();
  await page.locator('#content-result.ok').waitFor();
  check((await textOf('#content-result')).includes('release-notes created as draft'), await textOf('#content-result'));
  await page.getByRole('button', { name: 'Edit release-notes' }).click();
  await page.locator('#content-title-input').fill('Release notes, second draft');
  await page.locator('#content-save').click();
  await page.waitForFunction(() => /now version 2/.test(document.getElementById('content-result').textContent));
  const stored = await api('GET', '/api/v1/admin/content', { headers: { 'x-admin-key': ADMIN_KEY } });
  const item = stored.json.items.find((i) => i.slug === 'release-notes');
  check(item && item.title === 'Release notes, second draft' && item.status === 'draft' && item.version === 2, JSON.stringify(item));
});

step('losing an If-Match race is explained, and the edit can be redone on the new version', async () => {
  await page.getByRole('button', { name: 'Edit release-notes' }).click();
  await page.locator('#content-body').fill('# 0.1\nMy wording.');
  // Someone else saves first.
  const theirs = await api('PUT', '/api/v1/admin/content/release-notes', {
    headers: { 'x-admin-key': ADMIN_KEY, 'if-match': '"2"' },
    body: { title: 'Release notes (their edit)', body: 'their wording', tags: ['news'], status: 'draft' },
  });
  check(theirs.status === 200 && theirs.json.version === 3, `their edit: ${theirs.status} ${theirs.text}`);
  await page.locator('#content-save').click();
  await page.locator('#content-conflict').waitFor({ state: 'visible' });
  const explained = await textOf('#content-conflict');
  check(explained.includes('Not saved') && explained.includes('You edited version 2') && explained.includes('now version 3')
    && explained.includes('Release notes (their edit)') && /correlation ID/.test(explained), explained);
  check(await page.locator('#content-body').inputValue() === '# 0.1\nMy wording.', 'my text is kept');
  await shot('content-conflict');
  await page.locator('#conflict-keep').click();
  await page.locator('#content-save').click();
  await page.waitForFunction(() => /now version 4/.test(document.getElementById('content-result').textContent));
  const stored = await api('GET', '/api/v1/admin/content', { headers: { 'x-admin-key': ADMIN_KEY } });
  const item = stored.json.items.find((i) => i.slug === 'release-notes');
  check(item.version === 4 && item.body === '# 0.1\nMy wording.', JSON.stringify(item));
});

step('a draft is published and another item deleted after confirmation', async () => {
  await page.getByRole('button', { name: 'Publish release-notes' }).click();
  await page.waitForFunction(() => /release-notes is published/.test(document.getElementById('content-result').textContent));
  const published = await api('GET', '/api/v1/content/release-notes');
  check(published.status === 200 && published.json.title === 'Release notes, second draft' && published.json.body === '# 0.1\nMy wording.', `${published.status} ${published.text}`);
  await api('POST', '/api/v1/admin/content', { headers: { 'x-admin-key': ADMIN_KEY }, body: { slug: 'old-notice', title: 'Old notice', body: 'gone soon', status: 'draft' } });
  await page.locator('#content-refresh').click();
  await page.getByRole('button', { name: 'Delete old-notice' }).click();
  await page.locator('#confirm').waitFor({ state: 'visible' });
  await page.locator('#confirm-ok').click();
  await page.waitForFunction(() => /old-notice deleted/.test(document.getElementById('content-result').textContent));
  const gone = await api('GET', '/api/v1/admin/content', { headers: { 'x-admin-key': ADMIN_KEY } });
  check(!gone.json.items.some((i) => i.slug === 'old-notice'), 'old-notice is gone');
  await shot('content');
});

step('every page fits a 640 px wide window (1280 px at 200% zoom) without sideways scrolling', async () => {
  await page.setViewportSize({ width: 640, height: 900 });
  for (const name of ['overview', 'providers', 'accounts', 'ratelimits', 'content']) {
    await page.evaluate((hash) => { location.hash = hash; }, name);
    await page.locator(`#page-${name}`).waitFor({ state: 'visible' });
    await page.waitForTimeout(300);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    check(overflow <= 1, `${name} overflows by ${overflow} px`);
  }
  await page.evaluate(() => { location.hash = 'overview'; });
  await shot('overview-narrow');
  await page.setViewportSize({ width: 1280, height: 900 });
});

step('signing out revokes the session', async () => {
  const token = lastBearer;
  check(token, 'the console sent a bearer token');
  check((await api('GET', '/api/v1/auth/me', { token })).status === 200, 'the token works before sign-out');
  await page.locator('#sign-out').click();
  await page.locator('#page-signin').waitFor({ state: 'visible' });
  const result = await textOf('#signin-result');
  check(result.includes('Signed out') && /correlation ID/.test(result), result);
  const after = await api('GET', '/api/v1/auth/me', { token });
  check(after.status === 401, `the console's access token after sign-out: ${after.status}`);
  check(await page.locator('#nav').isHidden(), 'navigation hidden');
});

step('a non-admin is refused clearly', async () => {
  await page.locator('#signin-email').fill(LOCKED.email);
  await page.locator('#signin-password').fill(LOCKED.password);
  await page.locator('#signin-form button[type="submit"]').click();
  await page.locator('#page-refused').waitFor({ state: 'visible' });
  const text = await textOf('#page-refused');
  check(text.includes(LOCKED.email) && text.includes('portico users grant-admin'), text);
  check(await page.locator('#nav').isHidden(), 'no navigation for a non-admin');
  await shot('refused');
});

step('the page logged no script errors (CSP violations included)', async () => {
  check(consoleErrors.length === 0, consoleErrors.join('\n'));
});

// ------------------------------------------------------------------ run

let passed = 0;
let failed = 0;
let skipped = 0;
for (const { name, run } of steps) {
  if (failed) {
    skipped += 1;
    console.log(`- skipped: ${name}`);
    continue;
  }
  try {
    await run();
    passed += 1;
    console.log(`ok: ${name}`);
  } catch (error) {
    failed += 1;
    console.log(`not ok: ${name}\n  ${String(error.stack || error).split('\n').join('\n  ')}`);
    await page.screenshot({ path: join(dir, 'failure.png'), fullPage: true }).catch(() => {});
    console.log(`  (screenshot of the failure: ${join(dir, 'failure.png')})`);
  }
}

await browser.close();
portico.kill('SIGTERM');
await new Promise((ok) => { portico.once('exit', ok); setTimeout(ok, 15_000); });
alpha.close();
beta.close();
if (failed) {
  console.log(`portico's log (warnings and errors):\n${logs.slice(-4000)}`);
} else {
  await rm(dir, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed ? 1 : 0);
