// tests/browser/notify.test.js
// Issue 5 in a real browser: notify_server's page in two browser contexts (two cookie jars),
// an admin and a customer. The customer places an order; the admin's page shows the toast.
// The customer's export-ready toast and a message an admin sends through the API reach only
// the customer's page. Issue 16 item 8: another site's form and fetch() cannot act with the
// customer's session (SameSite=Strict cookie, JSON-only state changes).
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { env, check, equal, startServer, launchChromium, watchPage, tempDir, run } = require('./lib.js');

async function metrics(url) {
  const text = await (await fetch(`${url}metrics`)).text();
  return Object.fromEntries(text.trim().split('\n').map(l => l.split(' ')).map(([k, v]) => [k, Number(v)]));
}

// Polls `f` until it returns true, at most `ms`.
async function eventually(f, ms, what) {
  const deadline = Date.now() + ms;
  while (!(await f())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise(r => setTimeout(r, 20));
  }
}

// A session outside the browser: its cookie ("session=...").
async function apiLogin(url, user, role) {
  const res = await fetch(`${url}api/login`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ user, role }),
  });
  equal(res.status, 200, `login of ${user}`);
  const cookie = res.headers.get('set-cookie');
  check(/SameSite=Strict/.test(cookie) && /HttpOnly/.test(cookie), `session cookie attributes: ${cookie}`);
  return cookie.split(';')[0];
}

async function logIn(page, url, user, role) {
  await page.goto(url);
  equal(await page.title(), 'Shop notifications', 'page title');
  await page.fill('#user', user);
  await page.selectOption('#role', role);
  await page.click('#signin');
  await page.waitForSelector('#actions:not([hidden])', { timeout: 5000 });
  equal(await page.textContent('#me'), `${user} (${role})`, 'who is logged in');
}

run('browser notifications', 90000, async ({ cleanup }) => {
  const shots = env('SSEPP_SCREENSHOT_DIR');
  fs.mkdirSync(shots, { recursive: true });
  const dir = tempDir();
  cleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
  const server = await startServer(env('SSEPP_NOTIFY_SERVER'), ['--db', path.join(dir, 'notify.db'), '--export-ms', '100']);
  cleanup(async () => equal((await server.stop()).code, 0, 'notify_server exit code after SIGTERM'));

  const browser = await launchChromium();
  cleanup(() => browser.close());
  const problems = [];
  const viewport = { width: 900, height: 640 };
  const admin = await (await browser.newContext({ viewport })).newPage();
  const customer = await (await browser.newContext({ viewport })).newPage();
  watchPage(admin, 'admin page', problems);
  watchPage(customer, 'customer page', problems);

  await logIn(admin, server.url, 'alice', 'admin');
  await logIn(customer, server.url, 'bob', 'customer');
  // Both pages' EventSources are connected.
  await eventually(async () => (await metrics(server.url)).ssepp_open_connections === 2, 5000, 'two open streams');

  // Another site, in the customer's browser, tries to order for bob with a form (text/plain
  // shaped like JSON, the classic trick): the browser sends it without the session cookie, and
  // not as JSON; it is refused, nothing is ordered. (The admin's first order toast below is
  // "Order #1": no order was stored before it.) A fetch() from there cannot claim JSON
  // without a CORS preflight, which this server never grants.
  const evil = 'http://attacker.test/';
  const target = `${server.url}api/orders`;
  await customer.context().route(`${evil}**`, route => route.fulfill({
    contentType: 'text/html',
    body: `<!doctype html><form method="post" enctype="text/plain" action="${target}">
      <input type="hidden" name='{"customer":"bob","items":[{"sku":"EVIL","qty":1}],"x":"' value='"}'>
      <button id="go">win a prize</button></form>`,
  }));
  const attacker = await customer.context().newPage();
  await attacker.goto(evil);
  const [formAnswer] = await Promise.all([attacker.waitForNavigation({ timeout: 5000 }), attacker.click('#go')]);
  equal(formAnswer.status(), 415, 'the cross-site form post is refused');
  check(typeof JSON.parse(await attacker.textContent('body')).error === 'string', 'with a JSON reason');
  await attacker.close();

  // The customer orders; the admin's page shows it.
  await customer.fill('#sku', 'SKU-42');
  await customer.fill('#qty', '3');
  await customer.click('#order');
  const toast = admin.locator('#toasts .toast');
  await toast.first().waitFor({ timeout: 5000 });
  equal(await toast.count(), 1, 'toasts on the admin page');
  equal(await toast.first().locator('b').textContent(), 'Order #1', 'toast title');
  equal(await toast.first().locator('span').textContent(), 'bob ordered 3 × SKU-42', 'toast text');
  equal(await admin.textContent('#unread'), '1', 'unread count');
  equal(await admin.locator('#log li').count(), 1, 'admin log');
  await admin.screenshot({ path: path.join(shots, 'notify-admin.png') });

  // The customer asks for an export: only their page gets export-ready. Then a message sent
  // through the API to bob: it is the customer's second toast, so no order toast came before.
  await customer.click('#export');
  const ctoast = customer.locator('#toasts .toast');
  await ctoast.first().waitFor({ timeout: 5000 });
  equal(await ctoast.first().locator('b').textContent(), 'Export ready', 'export toast title');
  const exportLink = ctoast.first().locator('a');
  const exportUrl = await exportLink.evaluate(a => a.href);
  check(new RegExp(`^${server.url}api/exports/[0-9a-f]{32}/file$`).test(exportUrl), `export url: ${exportUrl}`);
  check(/^orders-[0-9a-f]{32}\.csv$/.test(await exportLink.textContent()), 'export link text');
  // Publishing needs a session: an admin's (one outside the browser here).
  const message = JSON.stringify({ data: 'Your parcel is on its way 📦' });
  const anonymous = await fetch(`${server.url}api/notifications/bob`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: message,
  });
  equal(anonymous.status, 401, 'notification without a session');
  const ops = await apiLogin(server.url, 'ops', 'admin');
  const res = await fetch(`${server.url}api/notifications/bob`, {
    method: 'POST', headers: { 'Content-Type': 'application/json', Cookie: ops }, body: message,
  });
  equal(res.status, 202, 'notification accepted');
  equal((await res.json()).delivered_to, 1, 'delivered to the one open stream');
  await customer.waitForFunction(() => document.querySelectorAll('#toasts .toast').length === 2, null, { timeout: 5000 });
  equal(await ctoast.nth(1).locator('span').textContent(), 'Your parcel is on its way 📦', 'message toast');
  equal(await customer.textContent('#unread'), '2', 'customer unread count');
  // The export link works from the customer's page (its cookie), not from the admin's.
  equal((await customer.request.get(exportUrl)).status(), 200, 'export file for its owner');
  equal((await admin.request.get(exportUrl)).status(), 404, 'export file for someone else');
  // Even a plain link from another site to the file arrives without the SameSite=Strict
  // cookie (a Lax one would be sent on this top-level navigation, and the file downloaded).
  await customer.context().route(`${evil}link`, route => route.fulfill({
    contentType: 'text/html', body: `<!doctype html><a id="go" href="${exportUrl}">your export</a>`,
  }));
  const linker = await customer.context().newPage();
  await linker.goto(`${evil}link`);
  const [linkAnswer] = await Promise.all([linker.waitForNavigation({ timeout: 5000 }), linker.click('#go')]);
  equal(linkAnswer.status(), 401, 'the export file through a cross-site link');
  await linker.close();
  equal(await toast.count(), 1, 'still one toast on the admin page');
  await customer.screenshot({ path: path.join(shots, 'notify-customer.png') });

  await customer.click('#read');
  equal(await customer.textContent('#unread'), '0', 'mark all read');

  check(problems.length === 0, problems.join('\n'));
});
