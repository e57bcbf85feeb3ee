// tests/browser/upload.test.js
// Issue 4 in a real browser: upload_server's page uploads examples/upload_progress/products.csv
// through the file input, follows the job with EventSource, and shows the progress bar at 100 %,
// the row errors and the summary; the numbers shown must be the file's.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { env, check, equal, startServer, launchChromium, watchPage, tempDir, run } = require('./lib.js');

// products.csv (examples/upload_progress/make_products.py): 3000 rows, 60 bad of each of six
// kinds, so 2640 import (all new in an empty database) and 360 are reported.
const ROWS = 3000, ERRORS = 360, GOOD = 2640;

run('browser upload', 90000, async ({ cleanup }) => {
  const shots = env('SSEPP_SCREENSHOT_DIR');
  fs.mkdirSync(shots, { recursive: true });
  const dir = tempDir();
  cleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
  const server = await startServer(env('SSEPP_UPLOAD_SERVER'), ['--db', path.join(dir, 'upload.db')]);
  cleanup(async () => equal((await server.stop()).code, 0, 'upload_server exit code after SIGTERM'));

  const browser = await launchChromium();
  cleanup(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
  const problems = [];
  // The refused upload below logs its 400, as browsers do for any failed fetch.
  watchPage(page, 'upload page', problems, [/status of 400 .*\/api\/upload\/csv/]);

  await page.goto(server.url);
  equal(await page.title(), 'Product import', 'page title');
  await page.setInputFiles('#file', env('SSEPP_SAMPLE_CSV'));
  await page.click('#upload');

  // Bounded waits: the summary appears when `complete` arrives.
  await page.waitForSelector('#summary:not([hidden])', { timeout: 30000 });
  await page.waitForFunction(() => document.querySelector('#bar').value === 100, null, { timeout: 5000 });

  const shown = await page.evaluate(() => ({
    state: document.querySelector('#state').textContent,
    done: document.querySelector('#done').textContent,
    total: document.querySelector('#total').textContent,
    errors: document.querySelector('#nerrors').textContent,
    errorItems: document.querySelectorAll('#errors li').length,
    firstError: document.querySelector('#errors li')?.textContent,
    errorTexts: [...document.querySelectorAll('#errors li')].map((li) => li.textContent),
    summary: document.querySelector('#summary').textContent,
    link: document.querySelector('#summary a')?.getAttribute('href'),
    tx: document.querySelector('#tx').textContent,
    hash: location.hash,
  }));
  console.log('shown:', JSON.stringify({ ...shown, errorTexts: shown.errorTexts.slice(0, 5) }));
  equal(shown.state, 'completed', 'state');
  equal(shown.done, String(ROWS), 'rows done');
  equal(shown.total, String(ROWS), 'rows total');
  equal(shown.errors, String(ERRORS), 'errors');
  equal(shown.errorItems, ERRORS, 'row errors listed');
  check(/^line \d+/.test(shown.firstError), `a row error names its line: ${shown.firstError}`);
  // Each reason says which rule the row broke (issue 16 item 8), never a bare "bad price".
  const vague = shown.errorTexts.filter((t) => /: (bad price|bad quantity|missing name|missing sku|malformed quotes)$/.test(t));
  equal(vague.length, 0, `vague row-error reasons: ${vague.slice(0, 3).join(' | ')}`);
  for (const rule of ['price must be a number with at most 2 decimals', 'quantity must not be negative',
                      'sku is empty', 'name is empty', 'duplicate sku (first at line ', 'malformed quotes in the name field: '])
    check(shown.errorTexts.some((t) => t.includes(rule)), `a row error says "${rule}"`);
  check(shown.summary.startsWith(`Imported ${GOOD} of ${ROWS} rows (${GOOD} new, 0 updated, ${ERRORS} errors) in `),
        `summary: ${shown.summary}`);
  equal(shown.link, '/api/products', 'products link');
  check(/^[0-9a-f]{32}$/.test(shown.tx), `transaction id shown: ${shown.tx}`);
  equal(shown.hash, `#${shown.tx}`, 'the page remembers the job in its URL');

  // What the page says is what the server has.
  const products = await (await page.request.get(`${server.url}api/products?limit=1`)).json();
  equal(products.total, GOOD, 'products stored');
  const status = await (await page.request.get(`${server.url}api/upload/${shown.tx}`)).json();
  equal(status.state, 'completed', 'job state');

  await page.screenshot({ path: path.join(shots, 'upload.png'), fullPage: false });

  // Reloading the page (the job in its hash) replays the history to the same result.
  await page.reload();
  await page.waitForSelector('#summary:not([hidden])', { timeout: 10000 });
  equal(await page.textContent('#done'), String(ROWS), 'rows done after reload');
  equal(await page.locator('#errors li').count(), ERRORS, 'row errors listed after reload');

  // A refused upload says why, in place of the job shown before.
  const bad = path.join(dir, 'bad.csv');
  fs.writeFileSync(bad, 'sku,name\nA,B\n');
  await page.setInputFiles('#file', bad);
  await page.click('#upload');
  await page.waitForSelector('#refused:not([hidden])', { timeout: 10000 });
  const refused = await page.textContent('#refused');
  check(refused.startsWith('Upload refused (400): ') && refused.includes('missing required columns'),
        `refusal shown: ${refused}`);
  check(await page.locator('#job').isHidden(), 'the previous job is no longer shown');
  equal(await page.evaluate(() => location.hash), '', 'no job in the URL');
  await page.screenshot({ path: path.join(shots, 'upload-refused.png') });

  check(problems.length === 0, problems.join('\n'));
});
