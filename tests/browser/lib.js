// tests/browser/lib.js
// What the browser tests share: the example server as a child process (port 0, a temp db, the
// URL read from its first line, stopped at the end), Debian's chromium under Playwright (no
// browser download), a watchdog so that nothing waits forever, and plain assertions.
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`environment variable ${name} is not set (run this through ctest)`);
  return v;
}

function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
}

function equal(actual, expected, what) {
  if (actual !== expected)
    throw new Error(`check failed: ${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}

// Starts `binary` with `--port 0` and `args`; resolves once it printed its URL.
function startServer(binary, args, timeoutMs = 10000) {
  if (!fs.existsSync(binary)) throw new Error(`server binary not found: ${binary} (build it first)`);
  const proc = spawn(binary, ['--port', '0', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise(resolve => proc.on('exit', (code, signal) => resolve({ code, signal })));
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`${binary} printed no URL within ${timeoutMs} ms; got: ${out}`));
    }, timeoutMs);
    proc.on('error', e => { clearTimeout(timer); reject(e); });
    proc.on('exit', () => { clearTimeout(timer); reject(new Error(`${binary} exited before printing its URL: ${out}`)); });
    proc.stdout.on('data', chunk => {
      out += chunk;
      const m = /(http:\/\/[^\s]+)/.exec(out);
      if (m && out.includes('\n')) {
        clearTimeout(timer);
        proc.stdout.resume(); // keep draining
        resolve({
          url: m[1],
          proc,
          // SIGTERM, then SIGKILL if it has not exited within `graceMs`; the exit status.
          async stop(graceMs = 5000) {
            if (proc.exitCode !== null || proc.signalCode !== null) return exited;
            proc.kill('SIGTERM');
            const killer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
            const status = await exited;
            clearTimeout(killer);
            return status;
          },
        });
      }
    });
  });
}

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

// Debian's chromium under Playwright. Playwright gives it a fresh, empty --user-data-dir of its
// own (a temp dir it removes on close).
async function launchChromium() {
  const executablePath = process.env.SSEPP_CHROMIUM || '/usr/bin/chromium';
  if (!fs.existsSync(executablePath))
    throw new Error(`chromium not found at ${executablePath}: install it (bash scripts/deps.sh, or apt-get install chromium)`);
  let playwright;
  try {
    playwright = require('playwright-core');
  } catch (e) {
    throw new Error(`playwright-core is not installed (the browser.npm_ci test installs it from package-lock.json): ${e.message}`);
  }
  return playwright.chromium.launch({ executablePath, headless: true, args: CHROMIUM_ARGS, timeout: 30000 });
}

// Fails a page on any script error or console error, so that a broken page cannot pass;
// `expected` lists console errors a test provokes on purpose (regular expressions).
function watchPage(page, name, problems, expected = []) {
  page.on('pageerror', e => problems.push(`${name}: page error: ${e.message}`));
  page.on('console', m => {
    if (m.type() !== 'error') return;
    const text = `${m.text()} (${m.location().url || 'no url'})`;
    if (!expected.some(re => re.test(text))) problems.push(`${name}: console error: ${text}`);
  });
}

function tempDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'ssepp-browser-'));
}

// Runs `body(ctx)` with a server and a browser, cleans both up whatever happens, and exits
// non-zero on failure or when `limitMs` passes.
async function run(name, limitMs, body) {
  const watchdog = setTimeout(() => {
    console.error(`${name}: FAILED: still running after ${limitMs} ms`);
    process.exit(1);
  }, limitMs);
  const cleanups = [];
  let failed = false;
  try {
    await body({ cleanup: f => cleanups.push(f) });
    console.log(`${name}: passed`);
  } catch (e) {
    failed = true;
    console.error(`${name}: FAILED: ${e.stack || e}`);
  } finally {
    for (const f of cleanups.reverse()) {
      try { await f(); } catch (e) { console.error(`${name}: cleanup: ${e.message}`); }
    }
    clearTimeout(watchdog);
  }
  process.exit(failed ? 1 : 0);
}

module.exports = { env, check, equal, startServer, launchChromium, watchPage, tempDir, run };
