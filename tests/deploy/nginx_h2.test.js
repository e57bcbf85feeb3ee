// tests/deploy/nginx_h2.test.js
// Issue 14: deploy/nginx's configuration in front of two notify_server nodes in cluster mode
// (one redis-server), with Debian's nginx and chromium, all on loopback ports of their own.
//
// - Over HTTP/2 (TLS, a self-signed certificate made here), one page opens 10 EventSources to
//   one origin: all 10 open, on one h2 connection, spread over both nodes (round robin), and a
//   notification published through either node reaches all 10 within a second.
// - The same site over HTTP/1.1 (a server block without http2): six open, the seventh waits
//   until one of the six closes. That is what HTTP/2 buys.
// - The event stream is not compressed (text/event-stream is not in gzip_types) while the page is.
// - Node loss: node A is killed; its streams end, the browser reconnects through nginx to node B
//   with Last-Event-ID, and every stream gets the notification sent meanwhile exactly once.
//
// nginx runs in the foreground (its own process group, so that its workers go with it) with
// its prefix, configuration, pid, logs and temp files under the build tree (SSEPP_DEPLOY_DIR);
// every process started here is killed when the test ends, however it ends.
'use strict';

const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const http2 = require('node:http2');
const net = require('node:net');
const path = require('node:path');
const { env, check, equal, startServer, launchChromium, watchPage, run } = require('../browser/lib.js');

const STREAMS = 10;

// Whatever is still running when node exits (a failure, the watchdog) is killed then.
const live = new Set();
process.on('exit', () => { for (const kill of live) kill('SIGKILL'); });
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => process.exit(1));

// Polls `f` until it returns true, at most `ms`.
async function eventually(f, ms, what) {
  const deadline = Date.now() + ms;
  while (!(await f())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise(r => setTimeout(r, 20));
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

// `n` distinct free ports of 127.0.0.1 (held together while chosen, so they differ).
async function freePorts(n) {
  const servers = await Promise.all(Array.from({ length: n }, () => new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => resolve(s));
  })));
  const ports = servers.map(s => s.address().port);
  await Promise.all(servers.map(s => new Promise(r => s.close(r))));
  return ports;
}

// Whether something accepts a TCP connection on the port; `send` is written, and the first
// reply chunk must include `expect` (when given).
function probe(port, send, expect) {
  return new Promise(resolve => {
    const s = net.connect(port, '127.0.0.1');
    const done = ok => { s.destroy(); resolve(ok); };
    s.setTimeout(1000, () => done(false));
    s.on('error', () => done(false));
    s.on('connect', () => {
      if (!send) return done(true);
      s.write(send);
    });
    let got = '';
    s.on('data', d => { got += d; if (got.includes(expect)) done(true); });
    s.on('end', () => done(false));
  });
}

// A child process whose stdout and stderr go to `log`; stopped with SIGTERM, then SIGKILL.
// `group`: in a process group of its own, signalled as a whole (nginx's master and workers).
function spawnChild(cmd, args, log, group = false) {
  if (!fs.existsSync(cmd)) throw new Error(`${cmd} not found`);
  const fd = fs.openSync(log, 'a');
  const proc = spawn(cmd, args, { stdio: ['ignore', fd, fd], detached: group });
  fs.closeSync(fd);
  const exited = new Promise(resolve => {
    proc.on('exit', (code, signal) => resolve({ code, signal }));
    proc.on('error', e => resolve({ code: null, signal: null, error: e }));
  });
  const alive = () => proc.exitCode === null && proc.signalCode === null;
  const kill = sig => {
    try {
      if (group) process.kill(-proc.pid, sig);
      else if (alive()) proc.kill(sig);
    } catch { /* already gone */ }
  };
  live.add(kill);
  return {
    proc, alive, exited, kill,
    log: () => fs.readFileSync(log, 'utf8'),
    async stop(graceMs = 5000) {
      if (alive()) {
        kill('SIGTERM');
        const killer = setTimeout(() => kill('SIGKILL'), graceMs);
        await exited;
        clearTimeout(killer);
      }
      if (group) kill('SIGKILL');  // a worker left behind by its master
      live.delete(kill);
      return exited;
    },
  };
}

async function startRedis(dir) {
  for (let attempt = 0; attempt < 3; ++attempt) {
    const [port] = await freePorts(1);
    const redis = spawnChild(env('SSEPP_REDIS_SERVER'), ['--port', String(port), '--bind', '127.0.0.1', '--save', '',
      '--appendonly', 'no', '--dir', dir, '--daemonize', 'no'], path.join(dir, 'redis.log'));
    const deadline = Date.now() + 5000;
    while (redis.alive() && Date.now() < deadline && !(await probe(port, 'PING\r\n', '+PONG')))
      await new Promise(r => setTimeout(r, 20));
    if (redis.alive() && await probe(port, 'PING\r\n', '+PONG')) return { ...redis, url: `redis://127.0.0.1:${port}` };
    await redis.stop();  // the port was taken meanwhile, or it did not start: try another
  }
  throw new Error(`redis-server did not start; its log:\n${fs.readFileSync(path.join(dir, 'redis.log'), 'utf8')}`);
}

// Fills the ${SSEPP_...} placeholders; an unknown one is an error (a renamed placeholder).
function fill(text, values) {
  return text.replace(/\$\{(SSEPP_[A-Z0-9_]+)\}/g, (_, name) => {
    if (!(name in values)) throw new Error(`no value for the placeholder \${${name}}`);
    return values[name];
  });
}

// nginx with deploy/nginx's files under `prefix`, the HTTP/2 site on one free port and the
// HTTP/1.1 one on another.
async function startNginx(prefix, cert, key, nodes) {
  const nginx = env('SSEPP_NGINX');
  const deploy = env('SSEPP_DEPLOY_NGINX_DIR');
  for (const d of ['conf/conf.d', 'conf/snippets', 'logs', 'temp']) fs.mkdirSync(path.join(prefix, d), { recursive: true });
  fs.copyFileSync(path.join(deploy, 'snippets', 'ssepp-server.conf'), path.join(prefix, 'conf/snippets/ssepp-server.conf'));
  for (let attempt = 0; attempt < 3; ++attempt) {
    const [h2, h1] = await freePorts(2);
    const values = {
      SSEPP_LISTEN: `127.0.0.1:${h2}`, SSEPP_H1_LISTEN: `127.0.0.1:${h1}`, SSEPP_SERVER_NAME: '127.0.0.1',
      SSEPP_CERT: cert, SSEPP_KEY: key, SSEPP_NODE_A: nodes[0], SSEPP_NODE_B: nodes[1],
      SSEPP_USER: process.getuid() === 0 ? 'user root;' : '# (not root: nginx keeps this user)',
    };
    fs.writeFileSync(path.join(prefix, 'conf/conf.d/ssepp.conf'),
      fill(fs.readFileSync(path.join(deploy, 'ssepp.conf.template'), 'utf8'), values));
    fs.writeFileSync(path.join(prefix, 'conf/nginx.conf'), fill(fs.readFileSync(env('SSEPP_DEPLOY_MAIN_CONF'), 'utf8'), values));
    const args = ['-p', `${prefix}/`, '-c', 'conf/nginx.conf'];
    try {
      execFileSync(nginx, [...args, '-t', '-q'], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 20000 });
    } catch (e) {
      throw new Error(`nginx -t refused the configuration in ${prefix}/conf:\n${e.stderr || e.message}`);
    }
    const log = path.join(prefix, 'logs', 'stderr.log');
    const proc = spawnChild(nginx, [...args, '-g', 'daemon off;'], log, true);
    const deadline = Date.now() + 10000;
    while (proc.alive() && Date.now() < deadline && !((await probe(h2)) && (await probe(h1))))
      await new Promise(r => setTimeout(r, 20));
    if (proc.alive() && (await probe(h2)) && (await probe(h1))) return { ...proc, h2, h1, prefix };
    await proc.stop();
    const why = proc.log() + fs.readFileSync(path.join(prefix, 'logs', 'error.log'), 'utf8');
    if (!/Address already in use/.test(why)) throw new Error(`nginx did not start:\n${why}`);
  }
  throw new Error('nginx: no free pair of ports in 3 attempts');
}

// The access log's lines (see tests/deploy/nginx-test.conf.in's log_format):
// {port, protocol, request, status, upstream}.
function accessLog(prefix) {
  const file = path.join(prefix, 'logs', 'access.log');
  if (!fs.existsSync(file)) return [];
  return fs.readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map(line => {
    const m = /^(\d+) (\S+) "([^"]*)" (\d+) (.*)$/.exec(line);
    if (!m) throw new Error(`unexpected access log line: ${line}`);
    return { port: Number(m[1]), protocol: m[2], request: m[3], status: Number(m[4]), upstream: m[5] };
  });
}

// One request over HTTP/2 with node's own client (no browser): the ALPN protocol, the response
// head and the first body chunk (the request is then cancelled: an event stream never ends).
async function h2First(port, reqPath, headers) {
  const session = http2.connect(`https://127.0.0.1:${port}`, { rejectUnauthorized: false });
  session.on('error', () => {});
  try {
    await withTimeout(new Promise((resolve, reject) => {
      session.once('connect', resolve);
      session.once('error', e => reject(new Error(`HTTP/2 connection to port ${port} failed: ${e.message}`)));
    }), 5000, `HTTP/2 connection to port ${port}`);
    const req = session.request({ ':path': reqPath, ...headers });
    req.on('error', () => {});
    const head = await withTimeout(new Promise((resolve, reject) => { req.once('response', resolve); req.once('error', reject); }),
      5000, `response head of ${reqPath}`);
    const first = await withTimeout(new Promise(resolve => {
      req.once('data', d => resolve(d));
      req.once('end', () => resolve(Buffer.alloc(0)));
    }), 5000, `first body bytes of ${reqPath}`);
    req.close(http2.constants.NGHTTP2_CANCEL);
    return { alpn: session.alpnProtocol, head, first };
  } finally {
    session.destroy();
  }
}

// A session outside the browser, on one node directly: its cookie ("session=...").
async function apiLogin(nodeUrl, user) {
  const res = await fetch(`${nodeUrl}api/login`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ user, role: 'customer' }),
  });
  equal(res.status, 200, `login of ${user} on ${nodeUrl}`);
  return res.headers.get('set-cookie').split(';')[0];
}

// A notification to `user`, published through one node directly (not through nginx).
async function notify(nodeUrl, cookie, user, data) {
  const res = await fetch(`${nodeUrl}api/notifications/${user}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json', Cookie: cookie }, body: JSON.stringify({ data }),
  });
  equal(res.status, 202, `notification through ${nodeUrl}`);
  return (await res.json()).id;
}

// In the page: log in (the page's origin gets the session cookie), then open `n` EventSources
// to /api/events, each recording when it opened, its errors and its messages (data, id, when).
async function openStreams(page, user, n) {
  return page.evaluate(async ({ user, n }) => {
    const res = await fetch('/api/login', { method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user, role: 'customer' }) });
    if (!res.ok) return res.status;
    window.streams = [];
    for (let i = 0; i < n; ++i) {
      const s = { es: new EventSource('/api/events'), opens: 0, errors: 0, messages: [] };
      s.es.onopen = () => { ++s.opens; };
      s.es.onerror = () => { ++s.errors; };
      s.es.onmessage = e => s.messages.push({ data: e.data, id: e.lastEventId, at: Date.now() });
      window.streams.push(s);
    }
    return res.status;
  }, { user, n });
}

function streamStates(page) {
  return page.evaluate(() => window.streams.map(s => ({ state: s.es.readyState, opens: s.opens, errors: s.errors, messages: s.messages })));
}

// Waits until every stream in `which` (indexes) has the message `data`; the latest arrival,
// in ms after `since`.
async function deliveredWithin(page, which, data, since, timeoutMs) {
  try {
    await page.waitForFunction(({ which, data }) => which.every(i => window.streams[i].messages.some(m => m.data === data)),
      { which, data }, { timeout: timeoutMs });
  } catch (e) {
    throw new Error(`${e.message}: not every stream of ${JSON.stringify(which)} had ${JSON.stringify(data)}; ` +
      `the streams: ${JSON.stringify(await streamStates(page))}`);
  }
  const arrivals = await page.evaluate(({ which, data }) => which.map(i => window.streams[i].messages.find(m => m.data === data).at),
    { which, data });
  return Math.max(...arrivals) - since;
}

const range = n => Array.from({ length: n }, (_, i) => i);

run('deploy: nginx in front of two notify_server nodes', 150000, async ({ cleanup }) => {
  const work = env('SSEPP_DEPLOY_DIR');
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(work, { recursive: true });

  // A self-signed certificate for 127.0.0.1 (the browser is told to accept it).
  const cert = path.join(work, 'cert.pem');
  const key = path.join(work, 'key.pem');
  execFileSync(env('SSEPP_OPENSSL'), ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'],
  { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30000 });

  const redis = await startRedis(work);
  cleanup(() => redis.stop());
  // Two nodes on one Redis and one database file. A session may hold more streams than the
  // default 8 (sized for HTTP/1.1's six connections): over HTTP/2 one page holds 10, and after
  // node A is gone node B holds them all.
  const nodeArgs = ['--db', path.join(work, 'notify.db'), '--redis', redis.url, '--max-session-streams', '16'];
  const nodes = [];
  for (const name of ['A', 'B']) {
    const n = await startServer(env('SSEPP_NOTIFY_SERVER'), nodeArgs);
    live.add(sig => { if (n.proc.exitCode === null && n.proc.signalCode === null) n.proc.kill(sig); });
    n.name = name;
    n.addr = new URL(n.url).host;
    nodes.push(n);
  }
  const [A, B] = nodes;
  cleanup(async () => equal((await B.stop()).code, 0, 'node B exit code after SIGTERM'));
  cleanup(() => A.stop());

  const nginx = await startNginx(path.join(work, 'nginx'), cert, key, [A.addr, B.addr]);
  cleanup(async () => {
    const status = await nginx.stop();
    check(status.code === 0 || status.signal === 'SIGTERM', `nginx exit status ${JSON.stringify(status)}`);
  });
  const isStream = l => l.port === nginx.h2 && /^GET \/api\/events /.test(l.request);
  const h2 = `https://127.0.0.1:${nginx.h2}/`;
  const h1 = `https://127.0.0.1:${nginx.h1}/`;
  console.log(`nginx: HTTP/2 on ${h2}, HTTP/1.1 on ${h1}; nodes A ${A.addr}, B ${B.addr}; logs in ${nginx.prefix}/logs`);

  // Outside the browser: the HTTP/2 port negotiates h2; the page is compressed, the event
  // stream is not, and its first bytes (the retry hint) come through while it is open.
  const dana = await apiLogin(A.url, 'dana');
  const pageRes = await h2First(nginx.h2, '/', { 'accept-encoding': 'gzip' });
  equal(pageRes.alpn, 'h2', 'ALPN protocol of the HTTP/2 port');
  equal(pageRes.head['content-encoding'], 'gzip', 'the page through nginx is compressed');
  const streamRes = await h2First(nginx.h2, '/api/events', { 'accept-encoding': 'gzip', cookie: dana });
  equal(streamRes.head[':status'], 200, 'event stream status');
  equal(streamRes.head['content-type'], 'text/event-stream', 'event stream content type');
  equal(streamRes.head['content-encoding'], undefined, 'event stream content encoding');
  check(/^(retry|:|id|data|event)/.test(streamRes.first.toString()), `first bytes of the stream: ${JSON.stringify(streamRes.first.toString())}`);
  await eventually(() => accessLog(nginx.prefix).filter(isStream).length === 1, 5000, 'the cancelled stream in the access log');

  const browser = await launchChromium();
  cleanup(() => browser.close());
  const problems = [];

  // --- HTTP/2: 10 EventSources on one page, one origin.
  const ctx2 = await browser.newContext({ ignoreHTTPSErrors: true });
  const page2 = await ctx2.newPage();
  watchPage(page2, 'HTTP/2 page', problems);
  await page2.goto(h2);
  equal(await page2.title(), 'Shop notifications', 'page title through nginx');
  equal(await openStreams(page2, 'dana', STREAMS), 200, 'login through nginx (HTTP/2)');
  await page2.waitForFunction(n => window.streams.filter(s => s.es.readyState === EventSource.OPEN).length === n, STREAMS,
    { timeout: 10000 });
  const protocols = await page2.evaluate(() => [performance.getEntriesByType('navigation')[0].nextHopProtocol,
    ...performance.getEntriesByType('resource').filter(e => e.name.endsWith('/api/login')).map(e => e.nextHopProtocol)]);
  equal(protocols.join(' '), 'h2 h2', 'protocol of the page and of the login request (Resource Timing nextHopProtocol)');

  // A notification through node A, then one through node B: every stream has each within a
  // second, wherever nginx put it.
  const m1 = 'm1: through node A';
  let t0 = Date.now();
  const id1 = await notify(A.url, dana, 'dana', m1);
  const late1 = await deliveredWithin(page2, range(STREAMS), m1, t0, 5000);
  console.log(`HTTP/2: ${STREAMS} streams had ${JSON.stringify(m1)} ${late1} ms after the publish began`);
  check(late1 < 1000, `all ${STREAMS} streams within a second (the last after ${late1} ms)`);
  const m2 = 'm2: through node B';
  t0 = Date.now();
  const id2 = await notify(B.url, dana, 'dana', m2);
  const late2 = await deliveredWithin(page2, range(STREAMS), m2, t0, 5000);
  console.log(`HTTP/2: ${STREAMS} streams had ${JSON.stringify(m2)} ${late2} ms after the publish began`);
  check(late2 < 1000, `all ${STREAMS} streams within a second (the last after ${late2} ms)`);
  for (const s of await streamStates(page2)) {
    equal(s.messages.map(m => m.data).join(' | '), `${m1} | ${m2}`, 'messages of each HTTP/2 stream');
    equal(s.messages.map(m => m.id).join(' '), `${id1} ${id2}`, 'their ids');
  }

  // --- HTTP/1.1: the same page and 10 EventSources; six connections per origin.
  const ctx1 = await browser.newContext({ ignoreHTTPSErrors: true });
  const page1 = await ctx1.newPage();
  watchPage(page1, 'HTTP/1.1 page', problems);
  await page1.goto(h1);
  equal(await openStreams(page1, 'erin', STREAMS), 200, 'login through nginx (HTTP/1.1)');
  equal(await page1.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol), 'http/1.1',
    'protocol of the page on the HTTP/1.1 port');
  await page1.waitForFunction(() => window.streams.filter(s => s.es.readyState === EventSource.OPEN).length === 6, null,
    { timeout: 10000 });
  // Which six is the browser's choice (not always the first six created).
  const open1 = (await streamStates(page1)).flatMap((s, i) => (s.state === 1 ? [i] : []));
  const waiting1 = range(STREAMS).filter(i => !open1.includes(i));
  const erin = await apiLogin(B.url, 'erin');
  const m3 = 'm3: to erin';
  t0 = Date.now();
  await notify(B.url, erin, 'erin', m3);
  const late3 = await deliveredWithin(page1, open1, m3, t0, 5000);
  console.log(`HTTP/1.1: the 6 open streams ${JSON.stringify(open1)} had ${JSON.stringify(m3)} ${late3} ms after the publish began`);
  check(late3 < 1000, `the six open streams within a second (the last after ${late3} ms)`);
  // The other four wait for a connection. Give them longer than the six took, by far, to be
  // sure nothing is on its way: none opens, none has the notification.
  let timedOut = false;
  await page1.waitForFunction(waiting => waiting.some(i => window.streams[i].es.readyState !== EventSource.CONNECTING ||
    window.streams[i].messages.length), waiting1, { timeout: 1500 }).catch(() => { timedOut = true; });
  const h1States = await streamStates(page1);
  console.log(`HTTP/1.1 1.5 s later: readyState ${h1States.map(s => s.state).join('')} (1 open, 0 connecting)`);
  check(timedOut, `a seventh stream got going over HTTP/1.1: ${JSON.stringify(h1States)}`);
  equal(h1States.filter(s => s.state === 1).length, 6, 'streams open over HTTP/1.1');
  check(waiting1.every(i => h1States[i].state === 0 && h1States[i].opens === 0 && h1States[i].messages.length === 0),
    `the other four are still connecting, with nothing received: ${JSON.stringify(h1States)}`);
  // Closing one of the six gives a waiting one its connection: they were queued, not broken.
  await page1.evaluate(i => window.streams[i].es.close(), open1[0]);
  await page1.waitForFunction(waiting => waiting.filter(i => window.streams[i].es.readyState === EventSource.OPEN).length === 1,
    waiting1, { timeout: 5000 });
  // Closed, the waiting ones first (so that none takes a connection another one frees), seven
  // event streams went over HTTP/1.1, the access log says (nginx logs a stream when it ends).
  await page1.evaluate(order => order.forEach(i => window.streams[i].es.close()), [...waiting1, ...open1]);
  const isStream1 = l => l.port === nginx.h1 && /^GET \/api\/events /.test(l.request);
  await eventually(() => accessLog(nginx.prefix).filter(isStream1).length >= 7, 5000, '7 HTTP/1.1 event streams in the access log');
  await ctx1.close();
  const streams1 = accessLog(nginx.prefix).filter(isStream1);
  check(streams1.length === 7 && streams1.every(l => l.protocol === 'HTTP/1.1'),
    `7 event streams over HTTP/1.1 on the other port: ${JSON.stringify(streams1)}`);

  // --- Node loss: A dies; the streams it held end, the browser reconnects through nginx (to
  // B, the only node left) with Last-Event-ID, and B replays from Redis what was sent meanwhile.
  const logged = accessLog(nginx.prefix).length;  // what ended before: h2First's stream
  A.proc.kill('SIGKILL');
  await withTimeout(A.stop(), 5000, 'node A to exit after SIGKILL');
  const m4 = 'm4: through node B while node A is down';
  t0 = Date.now();
  const id4 = await notify(B.url, dana, 'dana', m4);
  // EventSource waits the server's retry time (5 s) before it reconnects.
  const late4 = await deliveredWithin(page2, range(STREAMS), m4, t0, 20000);
  console.log(`node loss: every stream had ${JSON.stringify(m4)} ${late4} ms after the publish began`);
  const afterLoss = await streamStates(page2);
  for (const s of afterLoss) {
    equal(s.messages.map(m => m.data).join(' | '), `${m1} | ${m2} | ${m4}`, 'messages of each stream after node loss (none lost, none twice)');
    equal(s.messages[2].id, id4, 'the id of the replayed or live notification');
  }
  // The streams that were on A ended when A died (nginx logged them then, with A as upstream);
  // exactly those reconnected.
  const onA = accessLog(nginx.prefix).slice(logged).filter(l => isStream(l) && l.upstream === A.addr);
  const reconnected = afterLoss.filter(s => s.errors > 0).length;
  console.log(`node loss: ${onA.length} streams were on node A, ${reconnected} reconnected`);
  check(onA.length >= 1 && onA.length < STREAMS, `round robin put ${onA.length} of ${STREAMS} streams on node A`);
  equal(reconnected, onA.length, 'streams that reconnected');
  await page2.waitForFunction(n => window.streams.filter(s => s.es.readyState === EventSource.OPEN).length === n, STREAMS,
    { timeout: 5000 });

  // nginx logs a stream when it ends: close them all, then read the protocols from the log.
  await page2.evaluate(() => window.streams.forEach(s => s.es.close()));
  const want = STREAMS + onA.length + 1;  // the first ten, the reconnections, h2First's
  await eventually(() => accessLog(nginx.prefix).filter(isStream).length >= want, 5000, `${want} event streams in nginx's access log`);
  const log = accessLog(nginx.prefix);
  const streams2 = log.filter(isStream);
  check(streams2.every(l => l.protocol === 'HTTP/2.0'), `event streams on the HTTP/2 port: ${JSON.stringify(streams2)}`);
  check(streams2.some(l => l.upstream === B.addr), 'node B served event streams');
  equal(log.filter(isStream1).length, 7, 'event streams over HTTP/1.1, at the end');
  await ctx2.close();

  check(problems.length === 0, problems.join('\n'));
});
