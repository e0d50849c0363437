// The admin page's click path in headless Chromium (run by tests/admin.rs, which starts the
// server): sign in (a wrong token first), see the recent events and each model's real state,
// type and rating, empty tables said so, a signature refusal worded for the dialog, activate
// another version and see the active marker move, see the server's own error for a refused
// change, download a file directly and by a signed URL, see min app versions, register a model
// from the page, sort, search and page the list, set canary 10 %, see an event made by the CLI
// arrive without a reload, roll back, sign out. Screenshots go to SHOTS_DIR.
//
// Environment: PLAYWRIGHT_CORE (the module's directory), CHROMIUM, ADMIN_BASE (http://host:port),
// ADMIN_TOKEN, MODELD_BIN (the CLI), MODELD_DATABASE_URL and MODELD_MODEL_ROOT (for the CLI),
// SHOTS_DIR.
'use strict';

const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const { execFile } = require('node:child_process');
const path = require('node:path');

const base = process.env.ADMIN_BASE;
const token = process.env.ADMIN_TOKEN;
const shots = process.env.SHOTS_DIR;
const taken = [];

function log(msg) {
  console.log(`[click-path] ${msg}`);
}

function cli(args) {
  return new Promise((resolve, reject) => {
    execFile(process.env.MODELD_BIN, args, { env: { ...process.env, MODELD_LOG: 'warn' } }, (err, stdout, stderr) => {
      if (err) reject(new Error(`modeld ${args.join(' ')} failed: ${stderr || err.message}`));
      else resolve(stdout);
    });
  });
}

async function bearer(method, route, body) {
  const r = await fetch(base + route, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: r.status, json: await r.json() };
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function shot(page, name) {
  const file = path.join(shots, name);
  await page.screenshot({ path: file, fullPage: true });
  taken.push(file);
  log(`screenshot ${file}`);
}

const row = (name) => `#models tr[data-model-name="${name}"]`;

async function waitRole(page, name, role) {
  const roles = Array.isArray(role) ? role : [role];
  await page.locator(roles.map((r) => `${row(name)}[data-role="${r}"]`).join(', ')).waitFor();
}

// Once active, then replaced: deprecated, or loaded when this server holds it in memory.
const REPLACED = ['deprecated', 'loaded'];

async function confirm(page, fill = {}) {
  const dialog = page.locator('#confirm');
  await dialog.waitFor();
  for (const [field, value] of Object.entries(fill)) await page.fill(`#field-${field}`, value);
  await page.click('#confirm-ok');
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  const context = await browser.newContext({ viewport: { width: 1500, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e}`));
  page.on('console', (m) => {
    if (/Content.Security.Policy|Refused to/i.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  const urls = [];
  page.on('request', (r) => urls.push(r.url()));

  // Light traffic so the charts have figures: 10 predictions a second on the active model.
  const row64 = new Array(64).fill(0).map((_, i) => (i % 16) / 16);
  let traffic = true;
  const load = (async () => {
    while (traffic) {
      await bearer('POST', '/api/v1/predict', { inputs: [{ name: 'input', shape: [1, 64], datatype: 'FP32', data: row64 }] })
        .catch(() => {});
      await new Promise((r) => setTimeout(r, 100));
    }
  })();

  try {
    log('open the page: the sign-in form');
    await page.goto(`${base}/admin`);
    await page.locator('#signin-form').waitFor();

    log('a wrong token is refused, with the server\'s words');
    await page.fill('#token', 'mdl_not_a_real_token');
    await page.click('#signin-submit');
    await page.locator('#signin-error', { hasText: '401 UNAUTHENTICATED' }).waitFor();
    check(await page.locator('#dashboard').isHidden(), 'no dashboard without a session');

    log('sign in');
    await page.fill('#token', token);
    await page.click('#signin-submit');
    await page.locator('#dashboard').waitFor();
    await waitRole(page, 'digits_v2', 'active');
    await page.locator('#live', { hasText: /^live$/ }).waitFor();
    check(await page.evaluate(() => document.cookie) === '', 'the session cookie is HttpOnly (no script sees it)');
    check(await page.locator('#who').textContent() === 'signed in as ops', 'the token\'s name is shown');
    await page.locator(`${row('digits_v2')} td[data-chart="rate"][data-value]:not([data-value=""]):not([data-value="0"])`).waitFor();
    await shot(page, '01-signed-in.png');

    log('the recent events are there on open, before anything changes');
    await page.locator('#events li[data-kind="registered"]').first().waitFor();
    check(await page.locator('#events li').count() >= 4, 'the seed\'s registrations and activation are listed');

    log('each model\'s real state, type and rating');
    await waitRole(page, 'digits_v1', 'registered');
    await waitRole(page, 'cnn', 'incompatible');
    await page.locator(row('digits_v2'), { hasText: 'classifier' }).waitFor();
    check(await page.locator(`${row('digits_v2')} [data-rating="5"]`).count() === 1, 'digits_v2 (97.2%) has 5 stars');
    check(await page.locator(`${row('digits_v1')} [data-rating="4"]`).count() === 1, 'digits_v1 (90%) has 4 stars');

    log('empty tables say so; a signature refusal is worded for the dialog\'s checkbox');
    await page.click(`${row('cnn')} button[data-details]`);
    await page.locator('#details[data-model-id="3"]').waitFor();
    await page.locator('#history td.empty', { hasText: 'Never activated.' }).waitFor();
    await page.locator('#evaluations td.empty', { hasText: 'Not evaluated yet' }).waitFor();
    await page.click('#act-activate');
    await page.click('#confirm-ok');
    const guard = page.locator('#confirm-error');
    await guard.filter({ hasText: 'Tick "Even if its inputs or outputs differ" below' }).waitFor();
    check(!(await guard.textContent()).includes('--allow-signature-change'), 'no CLI flag in the dialog');
    await shot(page, '02-signature-refused.png');
    await page.click('#confirm-cancel');
    await waitRole(page, 'digits_v2', 'active');

    log('activate digits_v1: the active marker moves');
    await page.click(`${row('digits_v1')} button[data-details]`);
    await page.locator('#details[data-model-id="1"]').waitFor();
    await page.click('#act-activate');
    await page.locator('#confirm-title', { hasText: 'Activate digits_v1' }).waitFor();
    await page.fill('#field-reason', 'from the admin page');
    await shot(page, '03-confirm-activate.png');
    await page.click('#confirm-ok');
    await page.locator('#confirm').waitFor({ state: 'hidden' });
    await waitRole(page, 'digits_v1', 'active');
    await waitRole(page, 'digits_v2', REPLACED);
    await page.locator('#serving', { hasText: 'serving digits_v1' }).waitFor();
    await page.locator('#events li[data-kind="activated"]').first().waitFor();
    await page.locator('#history tbody tr', { hasText: 'from the admin page' }).waitFor();
    // The change returned once the server served it, and says so; the servers panel lists it.
    await page.locator('#served.ok', { hasText: 'Done: served by 1 of 1 server in' }).waitFor();
    await page.locator('#fleet tbody tr.server-live', { hasText: 'digits_v1' }).waitFor();

    log('a refused change shows the server\'s error as it said it, and changes nothing');
    await page.click('#act-delete');
    await page.click('#confirm-ok');
    const refused = page.locator('#confirm-error');
    await refused.filter({ hasText: '409' }).waitFor();
    const direct = await bearer('DELETE', '/api/v1/models/1');
    check(direct.status === 409, `deleting the active model is 409, got ${direct.status}`);
    const said = `409 ${direct.json.error.code}: ${direct.json.error.message}`;
    check(await refused.textContent() === said, `the dialog shows ${JSON.stringify(said)}, not ${JSON.stringify(await refused.textContent())}`);
    await shot(page, '04-refused.png');
    await page.click('#confirm-cancel');
    await waitRole(page, 'digits_v1', 'active');

    log('download digits_v2 directly, and by a signed URL; its min app versions');
    await page.click(`${row('digits_v2')} button[data-details]`);
    await page.locator('#details[data-model-id="2"]').waitFor();
    const record = (await bearer('GET', '/api/v1/models/2')).json;
    const href = await page.getAttribute('#act-download', 'href');
    const direct2 = await page.evaluate(async (h) => {
      const r = await fetch(h);
      return { status: r.status, size: (await r.arrayBuffer()).byteLength };
    }, href);
    check(direct2.status === 200 && direct2.size === record.file_size_bytes, `the direct download is the file: ${JSON.stringify(direct2)}`);
    await page.click('#act-signed-url');
    await page.click('#confirm-ok');
    const signed = await page.locator('#signed-url').inputValue();
    check(signed.startsWith(`${base}/api/v1/models/2/download?expires=`), `a signed URL: ${signed}`);
    const fetched = await fetch(signed);
    check(fetched.status === 200 && (await fetched.arrayBuffer()).byteLength === record.file_size_bytes, 'the signed URL fetches the file, no token');
    await shot(page, '05-signed-url.png');
    await page.click('#confirm-cancel');
    const put = await bearer('PUT', '/api/v1/models/2', { min_app_version: '2.0.0', min_app_versions: { ios: '2.3.0' } });
    check(put.status === 200, `min app versions set: ${put.status}`);
    await page.locator('#details-facts dd', { hasText: '2.0.0; ios 2.3.0' }).waitFor();

    log('register a model from the page');
    await page.click('#act-register');
    await confirm(page, { model_name: 'digits_copy', file_path: 'digits_v1.onnx', version: '1.1', model_type: 'classifier' });
    await page.locator('#confirm').waitFor({ state: 'hidden' });
    await waitRole(page, 'digits_copy', 'registered');
    await page.locator('#details[data-model-id="4"]').waitFor();

    log('sort, search and page the list');
    const names = async () => page.$$eval('#models tbody tr[data-model-name]', (rows) => rows.map((r) => r.dataset.modelName));
    await page.click('#models th[data-sort="name"] button');
    check((await names()).join() === 'cnn,digits_copy,digits_v1,digits_v2', `sorted by name: ${await names()}`);
    await page.click('#models th[data-sort="name"] button');
    check((await names())[0] === 'digits_v2', `then descending: ${await names()}`);
    await page.fill('#search', 'digits_v');
    check((await names()).sort().join() === 'digits_v1,digits_v2', `searched: ${await names()}`);
    await page.fill('#search', '');
    for (let i = 0; i < 24; i++) {
      const r = await bearer('POST', '/api/v1/models', { model_name: `bulk-${String(i).padStart(2, '0')}`, file_path: 'digits_v1.onnx' });
      check(r.status === 201, `bulk registration ${i}: ${r.status}`);
    }
    await page.locator('#page-info', { hasText: '1–25 of 28' }).waitFor();
    await page.click('#page-next');
    await page.locator('#page-info', { hasText: '26–28 of 28' }).waitFor();
    check((await names()).length === 3, 'the second page holds the rest');
    await page.click('#page-prev');
    await page.click('#models th[data-sort="id"] button');
    await page.locator('#page-info', { hasText: '1–25 of 28' }).waitFor();

    log('set digits_v2 as the canary at 10 %');
    await page.click(`${row('digits_v2')} button[data-details]`);
    await page.locator('#details[data-model-id="2"]').waitFor();
    await page.click('#act-canary');
    await confirm(page, { percentage: '10', reason: 'try v2 on 10 %' });
    await page.locator('#confirm').waitFor({ state: 'hidden' });
    await waitRole(page, 'digits_v2', 'canary');
    await page.locator(row('digits_v2'), { hasText: '10%' }).waitFor();
    await page.locator(row('digits_v1'), { hasText: '90%' }).waitFor();
    await page.locator('#events li[data-kind="rollout_changed"]').first().waitFor();
    await shot(page, '06-canary.png');

    log('an event made by the CLI arrives without a reload');
    const before = urls.filter((u) => u.endsWith('/admin')).length;
    await cli(['canary', 'set', 'digits_v2', '--percentage', '25', '--reason', 'from the CLI']);
    await page.locator('#events li[data-kind="rollout_changed"][data-source="cli"]').waitFor();
    await page.locator(row('digits_v2'), { hasText: '25%' }).waitFor();
    check(urls.filter((u) => u.endsWith('/admin')).length === before, 'the page was not reloaded');
    await shot(page, '07-cli-event.png');

    log('roll back: digits_v2 is active again');
    await page.click('#act-rollback');
    await confirm(page, { reason: 'back to v2' });
    await page.locator('#confirm').waitFor({ state: 'hidden' });
    await waitRole(page, 'digits_v2', 'active');
    await waitRole(page, 'digits_v1', REPLACED);
    await page.locator('#serving', { hasText: 'serving digits_v2' }).waitFor();
    await page.locator('#events li[data-kind="rolled_back"]').first().waitFor();
    await page.locator(`${row('digits_v2')} td[data-chart="rate"][data-value]:not([data-value=""])`).waitFor();
    await shot(page, '08-rolled-back.png');

    log('sign out: the admin API refuses the browser');
    await page.click('#sign-out');
    await page.locator('#signin-form').waitFor();
    const after = await page.evaluate(async () => (await fetch('/admin/api/v1/models')).status);
    check(after === 401, `after signing out the admin API answers 401, got ${after}`);

    check(!urls.some((u) => u.includes(token)), 'no request URL carries the token');
    check(problems.length === 0, `no page errors or CSP refusals: ${problems.join('; ')}`);
  } catch (e) {
    await shot(page, 'failure.png').catch(() => {});
    throw e;
  } finally {
    traffic = false;
    await load;
    await browser.close();
  }
  console.log(JSON.stringify({ ok: true, screenshots: taken }));
}

main().catch((e) => {
  console.error(`[click-path] ${e.stack || e}`);
  process.exit(1);
});
