// The HTTP layer below the routes, as a hostile client reaches it: raw request lines and
// header sets over TCP sockets, on a server with API keys on (and one with none). First the
// request that used to stop the process (issue 19), then fast-check generating request lines
// (odd targets, absolute- and authority-form, *, long targets, non-ASCII bytes), header sets
// (duplicate, missing or conflicting Upgrade, Connection and Sec-WebSocket-* headers, huge
// headers, bad Content-Length, chunked bodies cut short) and bodies, on every route family.
// Each must get a JSON reply (or a closed socket, where HTTP allows no reply), never HTML,
// never a 5xx other than the documented 503s, and the server must answer /readyz after each.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import type { RunningServer } from '../src/server/server.ts';
import { collect } from './helpers/collect.ts';
import { rawExchange, type RawResponse } from './helpers/raw-http.ts';
import { startTestServer } from './helpers/server.ts';

const KEY = 'fuzz-key-0123456789abcdef';
const ADMIN = 'admin-token-0123';
const WS_KEY = 'dGhlIHNhbXBsZSBub25jZQ==';

let keyed: RunningServer;
let open: RunningServer;

before(async () => {
  const common = { votes: 2, maxMessageBytes: 2048, adminToken: ADMIN };
  keyed = await startTestServer({ ...common, apiKeys: [KEY] }, { prefix: 'ttrl-raw-' });
  open = await startTestServer(common, { prefix: 'ttrl-raw-' });
});
after(async () => {
  await keyed?.close();
  await open?.close();
});

const ISSUE_LINE =
  'GET //[ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n' + `Sec-WebSocket-Key: ${WS_KEY}\r\n\r\n`;

/** The documented 503s: a full queue, shutting down, too many connections, not ready (readiness). */
const DOCUMENTED_503 = new Set(['overloaded', 'shutting_down', 'too_many_connections']);

function errorCode(body: unknown): string | undefined {
  const b = body as { code?: unknown; error?: { code?: unknown } } | null;
  const c = b?.code ?? b?.error?.code;
  return typeof c === 'string' ? c : undefined;
}

/** What the contract allows a reply to be; returns why not, or null. */
function judge(r: RawResponse & { closed: boolean; timedOut: boolean }, o: { head: boolean }): string | null {
  if (r.status === undefined) {
    if (r.raw.length) return `bytes that are not an HTTP response: ${JSON.stringify(r.raw.subarray(0, 120).toString('latin1'))}`;
    if (r.timedOut) return 'no reply and the socket stayed open';
    return null; // a closed socket, where HTTP allows no reply
  }
  const type = r.headers['content-type'] ?? '';
  if (/html/i.test(type) && !(r.status === 200)) return `an HTML error reply (${r.status})`;
  if (r.status === 101 || (r.status >= 200 && r.status < 400)) return null;
  if (!type.startsWith('application/json')) return `a ${r.status} reply of type ${JSON.stringify(type)}, not JSON`;
  if (o.head) return r.status >= 500 && r.status !== 503 ? `status ${r.status}` : null;
  if (!r.complete) return `a ${r.status} reply cut short`;
  let body: unknown;
  try {
    body = JSON.parse(r.body);
  } catch {
    return `a ${r.status} body that is not JSON: ${JSON.stringify(r.body.slice(0, 120))}`;
  }
  if (/\/work\/|node_modules|\bat [\w.]+ \(/.test(r.body)) return `a reply that shows a stack or a path: ${r.body.slice(0, 200)}`;
  if (r.status >= 500) {
    if (r.status !== 503) return `status ${r.status}: ${r.body.slice(0, 200)}`;
    const code = errorCode(body);
    const notReady = (body as { ready?: unknown }).ready === false;
    if (!notReady && !DOCUMENTED_503.has(code ?? '')) return `an undocumented 503: ${r.body.slice(0, 200)}`;
  }
  if (r.status >= 400 && !errorCode(body) && (body as { ready?: unknown }).ready === undefined)
    return `a ${r.status} reply without an error code: ${r.body.slice(0, 200)}`;
  return null;
}

async function assertReady(s: RunningServer, after: string): Promise<void> {
  const r = await fetch(`${s.url}/readyz`);
  assert.equal(r.status, 200, `the server is not ready after ${after}`);
}

test('the request that stopped the process: GET //[ with upgrade headers gets 400 invalid_message (JSON), with and without a key; the server stays up', async () => {
  for (const s of [keyed, open]) {
    const r = await rawExchange(s.port, ISSUE_LINE);
    assert.equal(r.status, 400);
    assert.match(r.headers['content-type']!, /^application\/json/);
    assert.equal(JSON.parse(r.body).code, 'invalid_message');
    // Without the upgrade headers: the same JSON 400, not express's HTML 500 with a stack.
    const plain = await rawExchange(s.port, 'GET //[ HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal(plain.status, 400, plain.body);
    assert.match(plain.headers['content-type']!, /^application\/json/);
    assert.equal(JSON.parse(plain.body).code, 'invalid_message');
    assert.doesNotMatch(plain.body, /node_modules|\/work\/|at /);
    await assertReady(s, 'GET //[');
  }
});

test('request targets, one by one: each form and fault gets its JSON reply', async () => {
  const cases: [string, number, string | null][] = [
    ['/%zz', 400, 'invalid_message'],
    ['/v1/%E0%A4%A', 400, 'invalid_message'],
    ['/v1/%FF', 400, 'invalid_message'],
    ['*', 400, 'invalid_message'],
    ['/readyz?x=%zz', 200, null],
    ['http://example.invalid/readyz', 200, null], // absolute-form: a server must take it
    ['/nowhere', 404, 'not_found'],
    [`/${'a'.repeat(9000)}`, 400, 'invalid_message'],
  ];
  for (const [target, status, code] of cases) {
    const r = await rawExchange(keyed.port, `GET ${target} HTTP/1.1\r\nHost: x\r\n\r\n`);
    assert.equal(r.status, status, `${target.slice(0, 40)}: ${r.body}`);
    assert.match(r.headers['content-type']!, /^application\/json/);
    if (code) assert.equal(JSON.parse(r.body).code, code, target.slice(0, 40));
  }
  // Node's parser refuses these before any route: answered in our shape all the same.
  for (const line of ['GET example.invalid:80 HTTP/1.1', 'GET /\xff\xfe HTTP/1.1', 'NOT HTTP AT ALL', 'GET / HTTP/9.9']) {
    const r = await rawExchange(keyed.port, Buffer.from(`${line}\r\nHost: x\r\n\r\n`, 'latin1'));
    assert.equal(r.status, 400, line);
    assert.equal(JSON.parse(r.body).code, 'invalid_message', line);
  }
  const big = await rawExchange(keyed.port, `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(20_000)}\r\n\r\n`);
  assert.equal(big.status, 431);
  assert.equal(JSON.parse(big.body).code, 'payload_too_large');
  const connect = await rawExchange(keyed.port, 'CONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n\r\n');
  assert.equal(connect.status, 405);
  assert.equal(JSON.parse(connect.body).code, 'invalid_message');
  await assertReady(keyed, 'the targets');
});

test('WebSocket handshakes gone wrong get JSON: wrong method, version, key, subprotocol; the key is checked before the handshake is taken', async () => {
  const upgrade = (extra: string, method = 'GET', auth = `Authorization: Bearer ${KEY}\r\n`) =>
    `${method} /v1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n${auth}${extra}\r\n`;
  const cases: [string, number][] = [
    [upgrade(`Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${WS_KEY}\r\n`, 'GET', ''), 401],
    [upgrade(`Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${WS_KEY}\r\n`, 'POST'), 405],
    [upgrade(`Sec-WebSocket-Version: 12\r\nSec-WebSocket-Key: ${WS_KEY}\r\n`), 426],
    [upgrade(`Sec-WebSocket-Key: ${WS_KEY}\r\n`), 426],
    [upgrade('Sec-WebSocket-Version: 13\r\n'), 400],
    [upgrade('Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n'), 400],
    [upgrade(`Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${WS_KEY}\r\nSec-WebSocket-Protocol: a b,,\r\n`), 400],
  ];
  for (const [req, status] of cases) {
    const r = await rawExchange(keyed.port, req);
    assert.equal(r.status, status, `${req.slice(0, 120)} -> ${r.body}`);
    assert.match(r.headers['content-type']!, /^application\/json/);
    assert.ok(errorCode(JSON.parse(r.body)));
  }
  const ok = await rawExchange(keyed.port, upgrade(`Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${WS_KEY}\r\n`), { keepOpen: true });
  assert.equal(ok.status, 101);
  await assertReady(keyed, 'the handshakes');
});

// ---------- generated raw requests ----------

const ROUTES = [
  '/v1/ask',
  '/v1/ws',
  '/v1/models',
  '/v1/completions',
  '/v1/chat/completions',
  '/v1/load_lora_adapter',
  '/v1/unload_lora_adapter',
  '/dashboard/state',
  '/dashboard/events',
  '/dashboard/static/app.js',
  '/',
  '/admin/status',
  '/admin/versions',
  '/admin/versions/0/activate',
  '/admin/adaptation/pause',
  '/metrics',
  '/readyz',
  '/healthz',
];
const ODD = ['//[', '/%zz', '/%E0%A4%A', '/%00', '/..%2f..', '/a%20b', '?key=%zz', `?key=${KEY}`, '?a[]=1&b=%', '#frag', '/\u00e9', '/;x', '//'];

const target = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...ROUTES) },
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom(...ROUTES), fc.constantFrom(...ODD)).map(([r, o]) => r + o) },
  { weight: 1, arbitrary: fc.constantFrom(...ROUTES).map((r) => `http://example.invalid${r}`) },
  { weight: 1, arbitrary: fc.constantFrom('example.invalid:80', '*', '', 'v1/ask', '\\v1\\ask', '/v1/ask\t') },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom(...ROUTES), fc.integer({ min: 100, max: 12_000 })).map(([r, n]) => `${r}/${'x'.repeat(n)}`) },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.constantFrom(...ROUTES), fc.uint8Array({ minLength: 1, maxLength: 8 })).map(([r, b]) => r + Buffer.from(b).toString('latin1')),
  },
);
const method = fc.constantFrom('GET', 'GET', 'POST', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'CONNECT', 'BREW', 'get');
const version = fc.constantFrom('HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/1.1 extra', '');
const oneOf = <T>(...xs: T[]) => fc.constantFrom(...xs);
const headerSet = fc.record({
  host: oneOf(['Host: x'], [], ['Host: x', 'Host: y'], ['Host: ']),
  auth: oneOf(
    [],
    [`Authorization: Bearer ${KEY}`],
    ['Authorization: Bearer wrong-key-0000000000'],
    [`Authorization: ${KEY}`],
    [`Authorization: Bearer ${ADMIN}`],
    [ADMIN],
    ['Authorization: Basic eDp5'],
    [`Authorization: Bearer ${KEY}`, 'Authorization: Bearer other'],
  ),
  connection: oneOf([], ['Connection: Upgrade'], ['Connection: close'], ['Connection: keep-alive, Upgrade'], ['Connection: Upgrade', 'Connection: close']),
  upgrade: oneOf([], ['Upgrade: websocket'], ['Upgrade: WebSocket'], ['Upgrade: h2c'], ['Upgrade: websocket', 'Upgrade: websocket'], ['Upgrade: ']),
  wsVersion: oneOf(
    [],
    ['Sec-WebSocket-Version: 13'],
    ['Sec-WebSocket-Version: 8'],
    ['Sec-WebSocket-Version: x'],
    ['Sec-WebSocket-Version: 13', 'Sec-WebSocket-Version: 12'],
  ),
  wsKey: oneOf([], [`Sec-WebSocket-Key: ${WS_KEY}`], ['Sec-WebSocket-Key: nope'], [`Sec-WebSocket-Key: ${WS_KEY}`, `Sec-WebSocket-Key: ${WS_KEY}`]),
  wsProtocol: oneOf(
    [],
    ['Sec-WebSocket-Protocol: ttrl.v1'],
    [`Sec-WebSocket-Protocol: ttrl.v1, ttrl.key.${KEY}`],
    ['Sec-WebSocket-Protocol: ,,'],
    ['Sec-WebSocket-Protocol: a, a'],
  ),
  huge: oneOf([], [], [], [`X-Huge: ${'h'.repeat(17_000)}`], [`X-Many: ${'m'.repeat(4000)}`, `X-Many2: ${'m'.repeat(4000)}`]),
  contentType: oneOf([], ['Content-Type: application/json'], ['Content-Type: text/plain; charset=latin1'], ['Content-Type: application/json; charset=utf-16']),
  contentEncoding: oneOf([], [], ['Content-Encoding: gzip'], ['Content-Encoding: zstd']),
  requestId: oneOf([], ['X-Request-Id: same-id'], ['X-Request-Id: bad id']),
});
const body = fc.constantFrom(
  '',
  '{"question":"1+2="}',
  '{"question":"1+2=","votes":2}',
  '{"model":"arith-tiny","prompt":"1+1=","n":2}',
  '{"model":"arith-tiny","messages":[{"role":"user","content":"1+1="}],"n":2}',
  'null',
  '"x"',
  '{',
  '\u0000\u00ff',
  '{"question":"1+2=","extra":1}',
);
const framing = fc.constantFrom(
  'length',
  'length',
  'none',
  'chunked',
  'chunked-cut',
  'length-short',
  'length-bad',
  'length-negative',
  'length-conflict',
  'length-and-chunked',
  'te-gzip-chunked',
);

function frame(b: string, how: string): { headers: string[]; payload: string } {
  const n = Buffer.byteLength(b);
  const chunked = (cut: boolean) => `${n.toString(16)}\r\n${b}\r\n${cut ? '' : '0\r\n\r\n'}`;
  switch (how) {
    case 'length':
      return { headers: [`Content-Length: ${n}`], payload: b };
    case 'none':
      return { headers: [], payload: b };
    case 'chunked':
      return { headers: ['Transfer-Encoding: chunked'], payload: chunked(false) };
    case 'chunked-cut':
      return { headers: ['Transfer-Encoding: chunked'], payload: chunked(true).slice(0, Math.max(1, chunked(true).length - 3)) };
    case 'length-short':
      return { headers: [`Content-Length: ${n + 50}`], payload: b };
    case 'length-bad':
      return { headers: ['Content-Length: 12abc'], payload: b };
    case 'length-negative':
      return { headers: ['Content-Length: -1'], payload: b };
    case 'length-conflict':
      return { headers: [`Content-Length: ${n}`, `Content-Length: ${n + 1}`], payload: b };
    case 'length-and-chunked':
      return { headers: [`Content-Length: ${n}`, 'Transfer-Encoding: chunked'], payload: chunked(false) };
    default:
      return { headers: ['Transfer-Encoding: gzip, chunked'], payload: chunked(false) };
  }
}

const rawRequest = fc.record({ method, target, version, headers: headerSet, body, framing }).map((r) => {
  const { headers, payload } = frame(r.body, r.framing);
  const h = r.headers;
  const lines = [
    ...h.host,
    ...h.auth,
    ...h.connection,
    ...h.upgrade,
    ...h.wsVersion,
    ...h.wsKey,
    ...h.wsProtocol,
    ...h.huge,
    ...h.contentType,
    ...h.contentEncoding,
    ...h.requestId,
    ...headers,
  ];
  const requestLine = `${r.method} ${r.target}${r.version ? ` ${r.version}` : ''}`;
  return {
    bytes: Buffer.from(`${requestLine}\r\n${lines.map((l) => `${l}\r\n`).join('')}\r\n${payload}`, 'latin1'),
    head: r.method === 'HEAD',
    show: `${requestLine.slice(0, 160)} | ${lines.map((l) => l.slice(0, 60)).join(' | ')} | ${r.framing}`,
  };
});

for (const [name, runs] of [
  ['keyed', 250],
  ['open', 100],
] as const) {
  test(
    `fuzz: generated raw requests on every route family (server ${name === 'keyed' ? 'with API keys' : 'without keys'}) get JSON or a closed socket, never HTML or an undocumented 5xx; /readyz answers after each`,
    { timeout: 300_000 },
    async () => {
      const s = name === 'keyed' ? keyed : open;
      await fc.assert(
        fc.asyncProperty(rawRequest, async (req) => {
          const r = await rawExchange(s.port, req.bytes, { timeoutMs: 8000, noBody: req.head });
          const why = judge(r, { head: req.head });
          if (why) console.log(`# fuzz failure: ${req.show}\n#   -> ${why}\n#   raw: ${JSON.stringify(r.raw.subarray(0, 300).toString('latin1'))}`);
          assert.equal(why, null, `${req.show}\n-> ${why}`);
          await assertReady(s, req.show);
        }),
        { numRuns: Number(process.env.FUZZ_RUNS ?? runs), seed: Number(process.env.FUZZ_SEED ?? (name === 'keyed' ? 19 : 20)) },
      );
    },
  );
}

// ---------- the smaller findings of the same probe ----------

const admin = (s: RunningServer, path: string, auth = `Bearer ${ADMIN}`) => fetch(`${s.url}${path}`, { method: 'POST', headers: { authorization: auth } });

test('/admin/versions/N/activate takes only canonical decimal integers: %20, 0x0, 1e0, 01, -0 and +1 are refused (400) and nothing is activated', async () => {
  for (const n of ['%20', '0x0', '1e0', '01', '-0', '+1', '0.0', '%EF%BC%91', '1%20']) {
    const r = await admin(open, `/admin/versions/${n}/activate`);
    assert.equal(r.status, 400, n);
    assert.equal(((await r.json()) as { code: string }).code, 'invalid_message', n);
  }
  const events = (await open.store.events(50)).filter((e) => JSON.stringify(e).includes('activat'));
  assert.equal(events.length, 0, 'no activation was recorded');
  const ok = await admin(open, '/admin/versions/0/activate');
  assert.equal(ok.status, 200);
});

test('the admin token needs its Bearer scheme, and is compared as API keys are (no early exit on its length)', async () => {
  for (const auth of [ADMIN, `Token ${ADMIN}`, `Bearer ${ADMIN}x`, `Bearer ${ADMIN.slice(0, -1)}`, 'Bearer ', `Bearer  ${ADMIN} extra`]) {
    const r = await fetch(`${open.url}/admin/status`, { headers: { authorization: auth } });
    assert.equal(r.status, 401, auth);
    assert.equal(((await r.json()) as { code: string }).code, 'unauthorized');
  }
  for (const auth of [`Bearer ${ADMIN}`, `bearer ${ADMIN}`])
    assert.equal((await fetch(`${open.url}/admin/status`, { headers: { authorization: auth } })).status, 200, auth);
});

test('OpenAI routes: unknown fields inside a message are refused; a body of null or "x" is JSON of the wrong type, not "not JSON"', async () => {
  const post = (path: string, body: string) => fetch(`${open.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  const r = await post('/v1/chat/completions', JSON.stringify({ messages: [{ role: 'user', content: '1+1=', colour: 'red' }], n: 2 }));
  assert.equal(r.status, 400);
  const e = ((await r.json()) as { error: { code: string; message: string } }).error;
  assert.equal(e.code, 'unknown_field');
  assert.match(e.message, /colour/);
  for (const path of ['/v1/chat/completions', '/v1/completions', '/v1/ask']) {
    for (const body of ['null', '"x"', '3', '[]']) {
      const x = await post(path, body);
      assert.equal(x.status, 400, `${path} ${body}`);
      const j = (await x.json()) as { code?: string; message?: string; error?: { code: string; message: string } };
      const code = j.code ?? j.error!.code;
      assert.equal(code, 'invalid_message', `${path} ${body}`);
      assert.doesNotMatch(j.message ?? j.error!.message, /not JSON/);
    }
    const bad = await post(path, '{');
    assert.equal(((await bad.json()) as { code?: string; error?: { code: string } }).code ?? 'bad_json', 'bad_json');
  }
});

test('seeds: the whole seed picks the dice (seeds 2^32 apart draw differently; the same seed alike); seeds past 2^53 are refused', async () => {
  const ask = async (seed: number) => {
    const r = await fetch(`${open.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: '12+34-5=', n: 8, seed }) });
    assert.equal(r.status, 200);
    return ((await r.json()) as { choices: { text: string }[] }).choices.map((c) => c.text);
  };
  const a = await ask(5);
  assert.deepEqual(await ask(5), a);
  assert.notDeepEqual(await ask(5 + 2 ** 32), a);
  const big = await fetch(`${open.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: '1+1=', n: 2, seed: 2 ** 60 }) });
  assert.equal(big.status, 400);
});

test("a request's temperature, top_p or max_tokens equal to the server's own is no override, both ways: the question stays trainable", async () => {
  const before = open.adaptation.pendingExperiences;
  const post = (body: object) => fetch(`${open.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ n: 2, ...body }) }).then((r) => r.json());
  // The server samples at temperature 1 and top_p 1 (resolveSettings' defaults).
  await post({ prompt: '3+4=', temperature: 1 });
  await post({ prompt: '3+5=', top_p: 1 });
  await post({ prompt: '3+6=', temperature: 1, top_p: 1 });
  assert.equal(open.adaptation.pendingExperiences, before + 3);
  await post({ prompt: '3+7=', temperature: 0.5 });
  await post({ prompt: '3+8=', top_p: 0.9 });
  assert.equal(open.adaptation.pendingExperiences, before + 3, 'other values are overrides: not trained on');
});

test("two concurrent requests with the same X-Request-Id get distinct request ids; the client's is kept beside them", async () => {
  const send = () => fetch(`${open.url}/v1/ask`, { method: 'POST', headers: { 'x-request-id': 'same-id' }, body: JSON.stringify({ question: '1+2=' }) });
  const [a, b] = await Promise.all([send(), send()]);
  const ids = [a.headers.get('x-request-id'), b.headers.get('x-request-id')];
  assert.notEqual(ids[0], ids[1]);
  assert.ok(
    ids.every((id) => id && /^[0-9a-f]{6}-\w+$/.test(id)),
    JSON.stringify(ids),
  );
  assert.equal(a.headers.get('x-client-request-id'), 'same-id');
});

test('an HTTP or OpenAI request whose client went away is dropped from the queue and logged as failed, as a WebSocket question is', async () => {
  const s = await startTestServer({ votes: 64, batchQuestions: 1, batchWaitMs: 0, adminToken: ADMIN }, { prefix: 'ttrl-gone-' });
  try {
    const controllers = Array.from({ length: 12 }, () => new AbortController());
    const sent = controllers.map((c, i) =>
      fetch(`${s.url}${i % 2 ? '/v1/completions' : '/v1/ask'}`, {
        method: 'POST',
        signal: c.signal,
        body: JSON.stringify(i % 2 ? { prompt: `${i}+1=`, n: 64 } : { question: `${i}+1=`, votes: 64 }),
      }).catch(() => 'aborted'),
    );
    // All asked (one sampling, the rest waiting), then every client leaves.
    for (let t = 0; t < 200; t++) {
      const st = (await (await fetch(`${s.url}/admin/status`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as { queue_depth: number };
      if (st.queue_depth >= 10) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    for (const c of controllers) c.abort();
    await Promise.all(sent);
    for (let t = 0; t < 500; t++) {
      const st = (await (await fetch(`${s.url}/admin/status`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as { queue_depth: number };
      if (st.queue_depth === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise((r) => setTimeout(r, 300)); // the batch in flight, if any, is stored
    const rows = await collect(s.store.questions());
    const gone = rows.filter((q) => q.status === 'failed' && /went away/.test(q.error ?? ''));
    const answered = rows.filter((q) => q.status === 'answered');
    assert.equal(rows.length, 12);
    assert.ok(gone.length >= 10, `${gone.length} dropped, ${answered.length} answered`);
    assert.ok(answered.length <= 2, `${answered.length} answered after their clients left`);
  } finally {
    await s.close();
  }
});
