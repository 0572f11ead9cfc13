'use strict';
// Stand-in for the Foundry Virtual Tabletop server, used by foundry-fleet's tests.
//
// It behaves like Foundry where the fleet cares: the command line, Config/options.json
// (port, routePrefix), GET /<prefix>/api/status, a websocket under /<prefix>/socket.io/,
// 404 outside the route prefix, a Logs directory, and a clean exit on SIGTERM/SIGINT.
// It also has test hooks under the prefix (__crash, __probe, __headers, __alloc, __hang, __shell,
// __node). __shell runs a shell script, __node a JS program in a child node, inside the instance,
// as a hostile tenant's server code could. Start-up hooks are files in the data path:
// `crash-on-start` (exits 3 at once) and `hold-memory-mb` (an integer N: N MB are allocated,
// touched and kept before it listens, as a Foundry with a world loaded holds memory). `crash-on-start`
// next to this file instead: a broken release, exiting 3 at every start.
//
// Node.js built-ins only. This file is the single source of the server; the release zips
// carry it next to a thin main.js (CommonJS) or main.mjs (ES module) loader.

const http = require('node:http');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const PRODUCT = 'Foundry Virtual Tabletop (stand-in)';
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const WS_MAX_MESSAGE = 64 * 1024 * 1024;
const MB = 1024 * 1024;

function log(line) {
  process.stdout.write(`${line}\n`);
}

function fail(code, message) {
  process.stderr.write(`${PRODUCT}: ${message}\n`);
  log(`${PRODUCT}: ${message}`);
  process.exit(code);
}

// ---------------------------------------------------------------------------------------------
// Command line, package.json, options.json

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) continue;
    const eq = a.indexOf('=');
    if (eq >= 0) {
      args[a.slice(2, eq)] = a.slice(eq + 1);
    } else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) {
      args[a.slice(2)] = argv[++i];
    } else {
      args[a.slice(2)] = true; // a flag such as --noupdate, --headless
    }
  }
  return args;
}

function readRelease() {
  const pkgPath = path.join(__dirname, 'package.json');
  try {
    const pkg = JSON.parse(fs.readFileSync(pkgPath, 'utf8'));
    const rel = pkg.release || {};
    const version =
      Number.isInteger(rel.generation) && Number.isInteger(rel.build)
        ? `${rel.generation}.${rel.build}`
        : String(pkg.version || 'dev');
    return { version, generation: rel.generation ?? null, build: rel.build ?? null };
  } catch (err) {
    return { version: 'dev', generation: null, build: null };
  }
}

function normalizePrefix(value) {
  if (value === undefined || value === null || value === false) return '';
  const trimmed = String(value).replace(/^\/+|\/+$/g, '');
  return trimmed;
}

function readOptions(dataPath) {
  const file = path.join(dataPath, 'Config', 'options.json');
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (err.code === 'ENOENT') return {};
    fail(2, `cannot read ${file}: ${err.code || err.message}`);
  }
  try {
    const parsed = JSON.parse(text);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      fail(2, `${file} is not a JSON object`);
    }
    return parsed;
  } catch (err) {
    fail(2, `${file} is not valid JSON: ${err.message}`);
  }
  return {};
}

// ---------------------------------------------------------------------------------------------
// Start-up

const args = parseArgs(process.argv.slice(2));
const release = readRelease();

const dataPathArg =
  typeof args.dataPath === 'string' && args.dataPath !== ''
    ? args.dataPath
    : process.env.FOUNDRY_VTT_DATA_PATH || '';
if (!dataPathArg) {
  fail(2, 'no user data path: start with --dataPath=DIR');
}
const dataPath = path.resolve(dataPathArg);
try {
  fs.mkdirSync(dataPath, { recursive: true });
} catch (err) {
  fail(2, `cannot create the user data path ${dataPath}: ${err.code || err.message}`);
}
if (!fs.statSync(dataPath).isDirectory()) {
  fail(2, `the user data path ${dataPath} is not a directory`);
}

if (fs.existsSync(path.join(__dirname, 'crash-on-start'))) {
  // A broken release: a few lines first, as a real server's start-up error would leave.
  log(`${PRODUCT} ${release.version}: starting with data path ${dataPath}`);
  log(`${PRODUCT} ${release.version}: Error: this release is broken (crash-on-start in ${__dirname})`);
  log(`${PRODUCT} ${release.version}: exiting with code 3`);
  process.exit(3);
}
if (fs.existsSync(path.join(dataPath, 'crash-on-start'))) {
  log(`${PRODUCT} ${release.version}: crash-on-start present in ${dataPath}, exiting with code 3`);
  process.exit(3);
}

const options = readOptions(dataPath);

let port = 30000;
if (args.port !== undefined) {
  port = Number(args.port);
} else if (options.port !== undefined && options.port !== null) {
  port = Number(options.port);
}
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  fail(2, `invalid port ${JSON.stringify(args.port ?? options.port)}`);
}

const prefix = normalizePrefix(options.routePrefix);
const base = prefix ? `/${prefix}/` : '/';

try {
  fs.mkdirSync(path.join(dataPath, 'Logs'), { recursive: true });
} catch (err) {
  log(`cannot create ${path.join(dataPath, 'Logs')}: ${err.code || err.message}`);
}

const startedAt = Date.now();
const sockets = new Set(); // open websockets
const pendingRequests = new Set(); // e.g. __hang
const retained = []; // __alloc buffers, kept referenced on purpose
let retainedMb = 0;
let shuttingDown = false;

const holdFile = path.join(dataPath, 'hold-memory-mb');
if (fs.existsSync(holdFile)) {
  const text = fs.readFileSync(holdFile, 'utf8').trim();
  const mb = Number(text);
  if (text === '' || !Number.isInteger(mb) || mb < 0) {
    fail(2, `${holdFile} must hold a non-negative integer, not ${JSON.stringify(text)}`);
  }
  alloc(mb);
  log(`${PRODUCT} ${release.version}: holding ${mb} MB (hold-memory-mb in ${dataPath})`);
}

// ---------------------------------------------------------------------------------------------
// HTTP

function send(res, status, body, type) {
  const buf = Buffer.isBuffer(body) ? body : Buffer.from(body);
  res.writeHead(status, {
    'Content-Type': type,
    'Content-Length': buf.length,
    'Cache-Control': 'no-store',
  });
  res.end(buf);
}

function sendJson(res, status, value, done) {
  const buf = Buffer.from(JSON.stringify(value));
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': buf.length,
    'Cache-Control': 'no-store',
  });
  res.end(buf, done);
}

function statusBody() {
  return {
    active: false,
    version: release.version,
    world: null,
    system: null,
    users: sockets.size,
    uptime: Math.round((Date.now() - startedAt) / 10) / 100,
  };
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function indexPage() {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Foundry Virtual Tabletop (stand-in)</title>
</head>
<body data-ws="connecting">
<h1>Foundry Virtual Tabletop (stand-in)</h1>
<p id="version">version ${escapeHtml(release.version)}</p>
<p id="ws">websocket: connecting</p>
<script>
(function () {
  var el = document.getElementById('ws');
  function show(state, text) {
    document.body.dataset.ws = state;
    el.textContent = 'websocket: ' + text;
  }
  var scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  var url = scheme + '//' + location.host + ${JSON.stringify(base)} + 'socket.io/';
  var connected = false;
  var ws;
  try {
    ws = new WebSocket(url);
  } catch (e) {
    show('error', 'error (' + e + ')');
    return;
  }
  window.standinSocket = ws;
  ws.onopen = function () { ws.send('hello'); };
  ws.onmessage = function (ev) {
    if (!connected && ev.data === 'hello') {
      connected = true;
      show('connected', 'connected');
    }
  };
  ws.onerror = function () { if (!connected) show('error', 'error'); };
  ws.onclose = function (ev) { show('closed', 'closed (code ' + ev.code + ')'); };
})();
</script>
</body>
</html>
`;
}

function resolveInData(p) {
  return path.resolve(dataPath, p);
}

function errorInfo(err) {
  return { ok: false, code: err.code || null, message: err.message };
}

function probeRead(p) {
  const resolved = resolveInData(p);
  try {
    const data = fs.readFileSync(resolved);
    return { path: resolved, ok: true, code: null, bytes: data.length };
  } catch (err) {
    return { path: resolved, ...errorInfo(err) };
  }
}

function probeWrite(p) {
  // A directory: create and remove a scratch file in it. Anything else: write the file itself.
  const resolved = resolveInData(p);
  try {
    let target = resolved;
    let isDir = false;
    try {
      isDir = fs.statSync(resolved).isDirectory();
    } catch (err) {
      isDir = false;
    }
    if (isDir) {
      target = path.join(resolved, `.standin-probe-${process.pid}-${crypto.randomBytes(4).toString('hex')}`);
    }
    fs.writeFileSync(target, `stand-in write probe from pid ${process.pid}\n`);
    if (isDir) fs.unlinkSync(target);
    return { path: resolved, ok: true, code: null };
  } catch (err) {
    return { path: resolved, ...errorInfo(err) };
  }
}

function probeList(p) {
  const resolved = resolveInData(p);
  try {
    const entries = fs.readdirSync(resolved).sort();
    return { path: resolved, ok: true, code: null, entries: entries.slice(0, 1000), count: entries.length };
  } catch (err) {
    return { path: resolved, ...errorInfo(err) };
  }
}

function probe(query) {
  const out = {
    uid: typeof process.getuid === 'function' ? process.getuid() : null,
    gid: typeof process.getgid === 'function' ? process.getgid() : null,
    pid: process.pid,
    ppid: process.ppid,
    cwd: process.cwd(),
    argv: process.argv,
    execPath: process.execPath,
    nodeVersion: process.version,
    hostname: os.hostname(),
    dataPath,
    routePrefix: prefix,
    version: release.version,
    rss: process.memoryUsage().rss,
    envKeys: Object.keys(process.env).sort(),
    env: {},
    read: {},
    write: {},
    list: {},
  };
  for (const name of query.getAll('env')) out.env[name] = process.env[name] ?? null;
  for (const p of query.getAll('read')) out.read[p] = probeRead(p);
  for (const p of query.getAll('write')) out.write[p] = probeWrite(p);
  for (const p of query.getAll('list')) out.list[p] = probeList(p);
  return out;
}

function alloc(mb) {
  // Touch every byte so the pages are really resident (Buffer.alloc alone may map zero pages).
  let left = mb;
  while (left > 0) {
    const chunk = Math.min(left, 64);
    const buf = Buffer.allocUnsafe(chunk * MB);
    buf.fill(0xa5);
    retained.push(buf);
    retainedMb += chunk;
    left -= chunk;
  }
}

// POST __shell with JSON {"script", "timeoutMs", "background"}: `/bin/sh -c script` as this
// server's own user, inside whatever sandbox it runs in. POST __node with JSON {"program", ...}
// the same with `<this node> -e program`, for sandboxes that hold node and nothing else (a
// container image has no /bin/sh). Each answers {code, signal, stdout, stderr} (each stream cut to
// 1 MiB), or {pid} at once when `background` (its output is then discarded).
function runChild(req, res, field, command) {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let job;
    try {
      job = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (err) {
      sendJson(res, 400, { error: 'body must be JSON' });
      return;
    }
    if (job === null || typeof job[field] !== 'string') {
      sendJson(res, 400, { error: `${field} must be a string` });
      return;
    }
    const [file, args] = command(job[field]);
    const { spawn } = require('node:child_process');
    if (job.background) {
      const child = spawn(file, args, { cwd: dataPath, stdio: 'ignore', detached: true });
      child.on('error', () => {});
      child.unref();
      sendJson(res, 200, { pid: child.pid });
      return;
    }
    const child = spawn(file, args, { cwd: dataPath, stdio: ['ignore', 'pipe', 'pipe'] });
    const out = { stdout: [], stderr: [] };
    const sizes = { stdout: 0, stderr: 0 };
    for (const name of ['stdout', 'stderr']) {
      child[name].on('data', (c) => {
        if (sizes[name] < MB) out[name].push(c.subarray(0, MB - sizes[name]));
        sizes[name] += c.length;
      });
    }
    const timer = setTimeout(() => child.kill('SIGKILL'), Number(job.timeoutMs) || 30000);
    let answered = false;
    child.on('error', (err) => {
      clearTimeout(timer);
      if (answered) return;
      answered = true;
      sendJson(res, 500, { error: String(err) });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (answered) return;
      answered = true;
      sendJson(res, 200, {
        code,
        signal,
        stdout: Buffer.concat(out.stdout).toString('utf8'),
        stderr: Buffer.concat(out.stderr).toString('utf8'),
      });
    });
  });
}

function handle(req, res) {
  const t0 = process.hrtime.bigint();
  let logged = false;
  const logLine = (status) => {
    if (logged) return;
    logged = true;
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    log(`${new Date().toISOString()} ${req.method} ${req.url} ${status} ${ms.toFixed(1)}ms`);
  };
  res.on('finish', () => logLine(res.statusCode));
  res.on('close', () => logLine(res.writableFinished ? res.statusCode : 'aborted'));

  let url;
  try {
    url = new URL(req.url, 'http://standin.invalid');
  } catch (err) {
    send(res, 400, 'Bad Request\n', 'text/plain; charset=utf-8');
    return;
  }
  const pathname = url.pathname;

  if (prefix && pathname === `/${prefix}`) {
    res.writeHead(302, { Location: base + url.search, 'Content-Length': 0 });
    res.end();
    return;
  }
  if (!pathname.startsWith(base)) {
    send(res, 404, 'Not Found\n', 'text/plain; charset=utf-8');
    return;
  }
  const route = pathname.slice(base.length); // '' for the index

  if (route === '__shell' && req.method === 'POST') {
    runChild(req, res, 'script', (script) => ['/bin/sh', ['-c', script]]);
    return;
  }
  if (route === '__node' && req.method === 'POST') {
    runChild(req, res, 'program', (program) => [process.execPath, ['-e', program]]);
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    send(res, 405, 'Method Not Allowed\n', 'text/plain; charset=utf-8');
    return;
  }

  switch (route) {
    case '':
      send(res, 200, indexPage(), 'text/html; charset=utf-8');
      return;
    case 'api/status':
      sendJson(res, 200, statusBody());
      return;
    case '__probe':
      sendJson(res, 200, probe(url.searchParams));
      return;
    case '__headers': {
      // What reached the server, as tenant code sees it (rawHeaders keeps repeated fields apart);
      // each `set-cookie` parameter is sent back as a Set-Cookie header, as tenant code could.
      const cookies = url.searchParams.getAll('set-cookie');
      if (cookies.length) res.setHeader('Set-Cookie', cookies);
      sendJson(res, 200, { headers: req.headers, rawHeaders: req.rawHeaders });
      return;
    }
    case '__alloc': {
      const mb = Number(url.searchParams.get('mb') ?? '0');
      if (!Number.isInteger(mb) || mb < 0) {
        sendJson(res, 400, { error: 'mb must be a non-negative integer' });
        return;
      }
      alloc(mb);
      sendJson(res, 200, { allocatedMb: mb, retainedMb, rss: process.memoryUsage().rss });
      return;
    }
    case '__hang':
      pendingRequests.add(res);
      log(`holding ${req.method} ${req.url} open, never answered`); // tests wait for this line
      res.on('close', () => pendingRequests.delete(res));
      return; // never answered
    case '__crash': {
      const raw = url.searchParams.get('code');
      const code = raw === null || raw === '' ? 1 : Number(raw);
      if (!Number.isInteger(code) || code < 0 || code > 255) {
        sendJson(res, 400, { error: 'code must be an integer 0-255' });
        return;
      }
      log(`crashing on request with exit code ${code}`);
      sendJson(res, 200, { exiting: code, pid: process.pid }, () => process.exit(code));
      return;
    }
    default:
      send(res, 404, 'Not Found\n', 'text/plain; charset=utf-8');
  }
}

// ---------------------------------------------------------------------------------------------
// Websocket (RFC 6455), echo server

function encodeFrame(opcode, payload) {
  const len = payload.length;
  let header;
  if (len < 126) {
    header = Buffer.alloc(2);
    header[1] = len;
  } else if (len < 65536) {
    header = Buffer.alloc(4);
    header[1] = 126;
    header.writeUInt16BE(len, 2);
  } else {
    header = Buffer.alloc(10);
    header[1] = 127;
    header.writeBigUInt64BE(BigInt(len), 2);
  }
  header[0] = 0x80 | opcode; // FIN, server frames are never masked
  return Buffer.concat([header, payload]);
}

function closePayload(code, reason) {
  if (code === undefined || code === null) return Buffer.alloc(0);
  const r = Buffer.from(reason || '', 'utf8').subarray(0, 123);
  const b = Buffer.alloc(2 + r.length);
  b.writeUInt16BE(code, 0);
  r.copy(b, 2);
  return b;
}

function validCloseCode(code) {
  if (code >= 3000 && code <= 4999) return true;
  return code >= 1000 && code <= 1014 && ![1004, 1005, 1006].includes(code);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
function isUtf8(buf) {
  try {
    utf8.decode(buf);
    return true;
  } catch (err) {
    return false;
  }
}

class WsConnection {
  constructor(socket, label) {
    this.socket = socket;
    this.label = label;
    this.buffer = Buffer.alloc(0);
    this.fragments = null; // { opcode, parts, size } while a fragmented message is arriving
    this.closing = false; // a close frame was sent
    this.closed = false;
    socket.setNoDelay(true);
    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('close', () => this.onSocketClose());
    socket.on('error', () => {});
  }

  send(opcode, payload) {
    if (this.closed || this.socket.destroyed || !this.socket.writable) return;
    this.socket.write(encodeFrame(opcode, payload));
  }

  close(code, reason) {
    if (this.closing) return;
    this.closing = true;
    this.send(0x8, closePayload(code, reason));
    // Give the peer a moment to answer with its own close frame, then drop the TCP connection.
    this.closeTimer = setTimeout(() => this.socket.destroy(), 1000);
    this.closeTimer.unref();
  }

  fail(code, reason) {
    log(`websocket ${this.label}: protocol error ${code} ${reason}`);
    this.close(code, reason);
    this.buffer = Buffer.alloc(0);
    this.socket.end();
  }

  onSocketClose() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.closeTimer);
    sockets.delete(this);
    log(`websocket ${this.label} disconnected (users ${sockets.size})`);
  }

  onData(chunk) {
    if (this.closed) return;
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    while (!this.closed && this.parseOne()) {
      /* keep going */
    }
  }

  // Parse one frame from the buffer; false when more bytes are needed or the connection failed.
  parseOne() {
    const b = this.buffer;
    if (b.length < 2) return false;
    const fin = (b[0] & 0x80) !== 0;
    const rsv = b[0] & 0x70;
    const opcode = b[0] & 0x0f;
    const masked = (b[1] & 0x80) !== 0;
    let len = b[1] & 0x7f;
    let offset = 2;
    if (len === 126) {
      if (b.length < 4) return false;
      len = b.readUInt16BE(2);
      offset = 4;
    } else if (len === 127) {
      if (b.length < 10) return false;
      const big = b.readBigUInt64BE(2);
      if (big > BigInt(WS_MAX_MESSAGE)) {
        this.fail(1009, 'message too big');
        return false;
      }
      len = Number(big);
      offset = 10;
    }
    if (rsv !== 0) {
      this.fail(1002, 'reserved bits set');
      return false;
    }
    if (!masked) {
      this.fail(1002, 'client frames must be masked');
      return false;
    }
    const isControl = (opcode & 0x08) !== 0;
    if (isControl && (!fin || len > 125)) {
      this.fail(1002, 'bad control frame');
      return false;
    }
    if (![0x0, 0x1, 0x2, 0x8, 0x9, 0xa].includes(opcode)) {
      this.fail(1002, `unknown opcode ${opcode}`);
      return false;
    }
    if (!isControl && len > WS_MAX_MESSAGE) {
      this.fail(1009, 'message too big');
      return false;
    }
    if (b.length < offset + 4 + len) return false;
    const mask = b.subarray(offset, offset + 4);
    const payload = Buffer.from(b.subarray(offset + 4, offset + 4 + len));
    for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
    this.buffer = b.subarray(offset + 4 + len);
    this.onFrame(fin, opcode, payload);
    return true;
  }

  onFrame(fin, opcode, payload) {
    switch (opcode) {
      case 0x9: // ping
        this.send(0xa, payload);
        return;
      case 0xa: // pong
        return;
      case 0x8: {
        // close
        let code = 1000;
        if (payload.length === 1) {
          this.fail(1002, 'bad close frame');
          return;
        }
        if (payload.length >= 2) {
          code = payload.readUInt16BE(0);
          if (!validCloseCode(code) || !isUtf8(payload.subarray(2))) {
            this.fail(1002, 'bad close code or reason');
            return;
          }
        }
        if (this.closing) {
          this.socket.end(); // it answered our close
        } else {
          this.closing = true;
          this.send(0x8, payload.length >= 2 ? payload.subarray(0, 2) : Buffer.alloc(0));
          this.socket.end();
        }
        this.closed = true;
        clearTimeout(this.closeTimer);
        sockets.delete(this);
        log(`websocket ${this.label} closed with code ${payload.length >= 2 ? code : 1005} (users ${sockets.size})`);
        return;
      }
      case 0x1:
      case 0x2:
        if (this.fragments) {
          this.fail(1002, 'new message inside a fragmented message');
          return;
        }
        if (fin) {
          this.onMessage(opcode, payload);
        } else {
          this.fragments = { opcode, parts: [payload], size: payload.length };
        }
        return;
      case 0x0: {
        if (!this.fragments) {
          this.fail(1002, 'continuation without a message');
          return;
        }
        const f = this.fragments;
        f.parts.push(payload);
        f.size += payload.length;
        if (f.size > WS_MAX_MESSAGE) {
          this.fail(1009, 'message too big');
          return;
        }
        if (fin) {
          this.fragments = null;
          this.onMessage(f.opcode, Buffer.concat(f.parts, f.size));
        }
        return;
      }
      default:
        this.fail(1002, `unknown opcode ${opcode}`);
    }
  }

  onMessage(opcode, payload) {
    if (this.closing) return;
    if (opcode === 0x1 && !isUtf8(payload)) {
      this.fail(1007, 'text message is not UTF-8');
      return;
    }
    this.send(opcode, payload); // echo
  }
}

function rejectUpgrade(socket, status, text) {
  const body = `${text}\n`;
  socket.end(
    `HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Type: text/plain\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

let wsCounter = 0;

function handleUpgrade(req, socket, head) {
  socket.on('error', () => {});
  let pathname;
  try {
    pathname = new URL(req.url, 'http://standin.invalid').pathname;
  } catch (err) {
    pathname = '';
  }
  const wsPath = `${base}socket.io`;
  const logReject = (status) => log(`${new Date().toISOString()} ${req.method} ${req.url} ${status} upgrade`);
  if (shuttingDown) {
    logReject(503);
    rejectUpgrade(socket, 503, 'Service Unavailable');
    return;
  }
  if (pathname !== wsPath && pathname !== `${wsPath}/`) {
    logReject(404);
    rejectUpgrade(socket, 404, 'Not Found');
    return;
  }
  const key = req.headers['sec-websocket-key'];
  const upgrade = String(req.headers.upgrade || '').toLowerCase();
  const version = req.headers['sec-websocket-version'];
  if (req.method !== 'GET' || upgrade !== 'websocket' || !key || Buffer.from(key, 'base64').length !== 16) {
    logReject(400);
    rejectUpgrade(socket, 400, 'Bad Request');
    return;
  }
  if (version !== '13') {
    logReject(426);
    socket.end('HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  const accept = crypto.createHash('sha1').update(key + WS_GUID).digest('base64');
  socket.write(
    'HTTP/1.1 101 Switching Protocols\r\n' +
      'Upgrade: websocket\r\n' +
      'Connection: Upgrade\r\n' +
      `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
  );
  const conn = new WsConnection(socket, `#${++wsCounter}`);
  sockets.add(conn);
  log(`${new Date().toISOString()} ${req.method} ${req.url} 101 websocket ${conn.label} connected (users ${sockets.size})`);
  if (head && head.length) conn.onData(head);
}

// ---------------------------------------------------------------------------------------------
// Server life cycle

const server = http.createServer(handle);
server.on('upgrade', handleUpgrade);
server.on('clientError', (err, socket) => {
  if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
  else socket.destroy();
});
server.on('error', (err) => {
  fail(1, `cannot listen on port ${port}: ${err.code || err.message}`);
});

function shutdown(signal) {
  if (shuttingDown) {
    process.exit(0);
  }
  shuttingDown = true;
  log(`${signal} received, shutting down`);
  const hard = setTimeout(() => process.exit(0), 700);
  hard.unref();
  for (const conn of sockets) conn.close(1001, 'server shutting down');
  for (const res of pendingRequests) res.destroy();
  server.close(() => {
    // The websockets were sent a close frame; give them a moment to flush, then go.
    setTimeout(() => process.exit(0), sockets.size ? 100 : 0).unref();
  });
  server.closeAllConnections();
  setTimeout(() => {
    for (const conn of sockets) conn.socket.destroy();
  }, 300).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

function listen() {
  if (shuttingDown) return;
  server.listen(port, '0.0.0.0', () => {
    const actual = server.address().port;
    log(`${PRODUCT} ${release.version} listening on port ${actual} (prefix ${base}) pid ${process.pid} dataPath ${dataPath}`);
  });
}

// The data's own file holds where the environment cannot be set (a sandbox passes none through).
const delayFile = path.join(dataPath, 'start-delay-ms');
const delayFrom = fs.existsSync(delayFile) ? 'start-delay-ms' : 'STANDIN_START_DELAY_MS';
const delay = Number(fs.existsSync(delayFile) ? fs.readFileSync(delayFile, 'utf8').trim()
  : process.env.STANDIN_START_DELAY_MS || 0);
log(`${PRODUCT} ${release.version} starting (node ${process.version}, pid ${process.pid})`);
if (Number.isFinite(delay) && delay > 0) {
  log(`waiting ${delay} ms before listening (${delayFrom})`);
  setTimeout(listen, delay);
} else {
  listen();
}
