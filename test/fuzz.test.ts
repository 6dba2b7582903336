// Property-based fuzzing (fast-check) of both transports of a live server on the shipped model:
// generated WebSocket frames (valid asks, malformed JSON, wrong types, unknown fields and types,
// oversized, odd unicode, binary) and HTTP requests (bad bodies, content types and encodings,
// huge bodies). Every message gets exactly one reply, an answer (a pong for a ping) or an error
// with a documented code, never `internal`; the valid asks among them are answered; the server
// is still up at the end. Kinds are generated with the reply they must get, so a wrong code
// fails too, not only an undocumented one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import WebSocket from 'ws';
import { ERROR_CODES } from '../src/protocol/errors.ts';
import type { RunningServer } from '../src/server/server.ts';
import { startTestServer } from './helpers/server.ts';

const MAX_BYTES = 1024; // --max-message-bytes: small, so oversized frames are cheap
const VOTES = 2; // --votes: small, so the valid asks are quick
const CODES = new Set(Object.keys(ERROR_CODES));
// HTTP statuses of the codes, as the README's Protocol section states them (400 otherwise).
const HTTP_STATUS: Record<string, number> = {
  overloaded: 503,
  shutting_down: 503,
  internal: 500,
  payload_too_large: 413,
  unsupported_encoding: 415,
  unauthorized: 401,
  not_found: 404,
};
// What a question with odd characters may get: the shipped model reads digits, + - and = only.
const QUESTION_CODES = ['answer', 'unreadable_question', 'question_too_long', 'context_length_exceeded', 'invalid_message'];

// ---------- generated WebSocket frames ----------

/** A frame and the replies it may get ('answer', 'pong' or error codes), or the close code it must get instead. */
interface WsCase {
  kind: string;
  /** A message to send as JSON (a non-empty string id is made unique at send time), or raw text, or bytes. */
  msg?: unknown;
  text?: string;
  bytes?: Uint8Array;
  binary?: boolean;
  /** Send with lone surrogates unescaped (ws encodes them as U+FFFD). */
  rawSurrogates?: boolean;
  allowed: string[];
  closes?: number;
}

const question = fc
  .tuple(fc.array(fc.integer({ min: 0, max: 99 }), { minLength: 2, maxLength: 4 }), fc.array(fc.constantFrom('+', '-'), { minLength: 3, maxLength: 3 }))
  .map(([ns, ops]) => ns.map((n, i) => (i ? ops[i - 1]! + n : String(n))).join('') + '=');
const oddChar = fc.oneof(
  fc.constantFrom(
    '\u0000',
    '\ud800',
    '\udfff',
    '\ud83d',
    '\u202e',
    '\u200f',
    '\u0627\u0644',
    '😀',
    '👩‍👩‍👧',
    '\ufeff',
    '\uffff',
    '\u2028',
    'e\u0301',
    '\u007f',
    '\n',
    '"',
    '\\',
  ),
  fc.string({ unit: 'binary', maxLength: 3 }),
  fc.constantFrom('1', '7', '+', '-', '='),
);
const oddText = (maxLength: number) => fc.array(oddChar, { maxLength }).map((cs) => cs.join(''));
const validId = fc.oneof(
  fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 20 }),
  fc.string({ unit: 'binary', minLength: 1, maxLength: 40 }),
  oddText(20).filter((s) => s.length > 0 && s.length <= 80),
);
const ask = fc.record({ type: fc.constant('ask'), id: validId, question }, { requiredKeys: ['type', 'id', 'question'] });
const notAString = fc.oneof(fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.array(fc.integer(), { maxLength: 3 }), fc.object({ maxDepth: 1 }));
const notJson = fc.string({ maxLength: 200 }).filter((s) => {
  try {
    JSON.parse(s);
    return false;
  } catch {
    return true;
  }
});
/** JSON text of `size` bytes: `head`, then a string of 1s that fills it. */
const ofBytes = (head: string, size: number) => head + '1'.repeat(size - head.length - 2) + '"}';
const askOfBytes = (size: number) => ofBytes('{"type":"ask","id":"big","question":"', size);

const wsCase: fc.Arbitrary<WsCase> = fc.oneof(
  {
    weight: 80,
    arbitrary: fc
      .tuple(ask, fc.option(fc.integer({ min: 1, max: 3 }), { nil: undefined }), fc.option(fc.boolean(), { nil: undefined }))
      .map(([m, votes, stream]) => ({
        kind: 'valid ask',
        msg: { ...m, ...(votes ? { votes } : {}), ...(stream === undefined ? {} : { stream }) },
        allowed: ['answer'],
      })),
  },
  {
    weight: 10,
    arbitrary: fc
      .option(validId, { nil: undefined })
      .map((id) => ({ kind: 'ping', msg: id === undefined ? { type: 'ping' } : { type: 'ping', id }, allowed: ['pong'] })),
  },
  { weight: 20, arbitrary: notJson.map((text) => ({ kind: 'malformed JSON', text, allowed: ['bad_json'] })) },
  {
    weight: 10,
    arbitrary: fc
      .oneof(
        fc.jsonValue().filter((v) => v === null || typeof v !== 'object' || Array.isArray(v)),
        fc.constant('[]'),
      )
      .map((msg) => ({ kind: 'not an object', msg, allowed: ['invalid_message'] })),
  },
  {
    weight: 10,
    arbitrary: fc.integer({ min: 1, max: 500 }).map((n) => ({ kind: 'deep nesting', text: '['.repeat(n) + ']'.repeat(n), allowed: ['invalid_message'] })),
  },
  {
    weight: 30,
    arbitrary: fc
      .oneof(
        fc.tuple(ask, notAString).map(([m, id]) => ({ ...m, id })),
        fc.tuple(ask, notAString).map(([m, q]) => ({ ...m, question: q })),
        fc
          .tuple(
            ask,
            fc.oneof(
              notAString.filter((v) => !Number.isInteger(v)),
              fc.constant('3'),
            ),
          )
          .map(([m, votes]) => ({ ...m, votes })),
        fc
          .tuple(
            ask,
            fc.oneof(
              notAString.filter((v) => typeof v !== 'boolean'),
              fc.constant('true'),
            ),
          )
          .map(([m, stream]) => ({ ...m, stream })),
        ask.map(({ question: _, ...m }) => m),
        ask.map((m) => ({ ...m, id: '' })),
        ask.map((m) => ({ ...m, id: 'x'.repeat(129) })),
        ask.map((m) => ({ ...m, question: '' })),
      )
      .map((msg) => ({ kind: 'wrong type', msg, allowed: ['invalid_message'] })),
  },
  {
    weight: 10,
    arbitrary: fc
      .tuple(ask, fc.oneof(fc.integer({ max: 0 }), fc.integer({ min: 65 })))
      .map(([m, votes]) => ({ kind: 'votes out of range', msg: { ...m, votes }, allowed: ['bad_votes'] })),
  },
  {
    weight: 20,
    arbitrary: fc
      .tuple(
        ask,
        fc.oneof(fc.string({ minLength: 1, maxLength: 12 }), fc.constantFrom('__proto__', 'constructor', 'toString', 'Type', 'ID')),
        fc.jsonValue({ maxDepth: 1 }),
      )
      .filter(([, key]) => !['type', 'id', 'question', 'votes', 'stream'].includes(key))
      .map(([m, key, value]) => ({ kind: 'unknown field', msg: { ...m, [key]: value }, allowed: ['unknown_field'] })),
  },
  {
    weight: 10,
    arbitrary: fc
      .tuple(
        ask,
        fc.string({ maxLength: 12 }).filter((t) => t !== 'ask' && t !== 'ping'),
      )
      .map(([m, type]) => ({ kind: 'unknown type', msg: { ...m, type }, allowed: ['unknown_type'] })),
  },
  { weight: 10, arbitrary: fc.tuple(ask, notAString).map(([m, type]) => ({ kind: 'type not a string', msg: { ...m, type }, allowed: ['invalid_message'] })) },
  {
    weight: 20,
    arbitrary: fc.tuple(ask, oddText(30)).map(([m, q]) => ({ kind: 'odd unicode question', msg: { ...m, question: q }, allowed: QUESTION_CODES })),
  },
  {
    weight: 10,
    arbitrary: fc
      .tuple(ask, oddText(30))
      .map(([m, q]) => ({ kind: 'raw lone surrogates', msg: { ...m, question: q + '\ud800' }, rawSurrogates: true, allowed: QUESTION_CODES })),
  },
  {
    weight: 10,
    arbitrary: fc.integer({ min: MAX_BYTES + 1, max: 4 * MAX_BYTES }).map((n) => ({ kind: 'oversized', text: askOfBytes(n), allowed: ['payload_too_large'] })),
  },
  {
    weight: 10,
    arbitrary: fc.uint8Array({ maxLength: 2 * MAX_BYTES }).map((bytes) => ({ kind: 'binary frame', bytes, binary: true, allowed: ['invalid_message'] })),
  },
  // Closing cases, rarer: the connection is then opened again.
  {
    weight: 3,
    arbitrary: fc
      .integer({ min: 4 * MAX_BYTES + 1, max: 8 * MAX_BYTES })
      .map((n) => ({ kind: 'over 4x the limit', text: askOfBytes(n), allowed: [], closes: 1009 })),
  },
  // Not UTF-8 in a text frame: RFC 6455 requires the connection to fail (1007), as ws does.
  {
    weight: 2,
    arbitrary: fc
      .constantFrom([0x7b, 0xff, 0x7d], [0xc3, 0x28], [0xed, 0xa0, 0x80])
      .map((b) => ({ kind: 'invalid UTF-8 text', bytes: Uint8Array.from(b), allowed: [], closes: 1007 })),
  },
);

// ---------- a WebSocket client that counts replies ----------

type Msg = Record<string, unknown>;

class Conn {
  readonly replies: Msg[] = [];
  readonly votes = new Map<string, number>();
  closeCode: Promise<number>;
  private wake = () => {};
  private constructor(readonly ws: WebSocket) {
    ws.on('message', (d) => {
      const m = JSON.parse(String(d)) as Msg;
      if (m.type === 'vote') this.votes.set(m.id as string, (this.votes.get(m.id as string) ?? 0) + 1);
      else if (m.type !== 'hello' && m.type !== 'model') this.replies.push(m);
      this.wake();
    });
    this.closeCode = new Promise((r) => ws.on('close', (code) => (r(code), this.wake())));
    ws.on('error', () => {}); // a failed connection shows as its close code
  }
  static async open(url: string): Promise<Conn> {
    const c = new Conn(new WebSocket(url));
    await new Promise((res, rej) => (c.ws.once('open', res), c.ws.once('error', rej)));
    return c;
  }
  async waitReplies(n: number): Promise<void> {
    const end = Date.now() + 60_000;
    while (this.replies.length < n) {
      if (this.ws.readyState !== WebSocket.OPEN) throw new Error(`the connection closed with ${this.replies.length} of ${n} replies`);
      if (Date.now() > end) throw new Error(`timed out with ${this.replies.length} of ${n} replies`);
      await new Promise<void>((r) => ((this.wake = r), setTimeout(r, 1000)));
    }
  }
}

/** Checks one reply's shape; returns what it is: 'answer', 'pong' or its error code. */
function kindOf(r: Msg): string {
  if (r.type === 'answer') {
    assert.ok(Number.isInteger(r.model_version), JSON.stringify(r));
    assert.ok(r.answer === null || typeof r.answer === 'string');
    return 'answer';
  }
  if (r.type === 'pong') return 'pong';
  assert.equal(r.type, 'error', `a reply is an answer, a pong or an error: ${JSON.stringify(r)}`);
  assert.ok(CODES.has(r.code as string), `undocumented code: ${JSON.stringify(r)}`);
  assert.equal(typeof r.message, 'string');
  return r.code as string;
}

/** The id the server reads from a frame: a string `id` of a JSON object within the size limit. */
function idOf(frame: string | Uint8Array, binary: boolean): string | undefined {
  if (binary) return undefined;
  const text = Buffer.from(frame).toString('utf8');
  if (Buffer.byteLength(text) > MAX_BYTES) return undefined;
  try {
    const v = JSON.parse(text);
    return v && typeof v === 'object' && !Array.isArray(v) && typeof v.id === 'string' ? v.id : undefined;
  } catch {
    return undefined;
  }
}

let seq = 0;
function frameOf(c: WsCase): string | Uint8Array {
  if (c.bytes) return c.bytes;
  if (c.text !== undefined) return c.text;
  let msg = c.msg;
  // Unique ids (a prefix of at most 8 characters keeps each id's length class: valid ones are
  // at most 80 long), so that replies can be told apart by id.
  if (msg && typeof msg === 'object' && !Array.isArray(msg) && typeof (msg as Msg).id === 'string' && (msg as Msg).id !== '')
    msg = { ...(msg as Msg), id: `${seq++ % 1e6}.${(msg as Msg).id}` };
  const json = JSON.stringify(msg);
  // An escape is one after an even number of backslashes (`\\\\ud800` is a backslash, then text).
  return c.rawSurrogates
    ? json.replace(/(?<!\\)((?:\\\\)*)\\u(d[89a-f][0-9a-f]{2})/g, (_, bs: string, hex: string) => bs + String.fromCharCode(parseInt(hex, 16)))
    : json;
}

/** Sends the cases up to the next closing one, and checks every reply; returns the connection to go on with. */
async function runCases(url: string, conn: Conn, cases: WsCase[], stats: { sent: number; asks: number; kinds: Record<string, number> }): Promise<Conn> {
  for (const c of cases) stats.kinds[c.kind] = (stats.kinds[c.kind] ?? 0) + 1;
  let i = 0;
  while (i < cases.length) {
    assert.equal(conn.replies.length, 0, 'no reply beyond one per message');
    const segment: { c: WsCase; id?: string; frame: string | Uint8Array }[] = [];
    for (; i < cases.length && !cases[i]!.closes; i++) {
      const c = cases[i]!;
      const frame = frameOf(c);
      conn.ws.send(frame, { binary: !!c.binary });
      segment.push({ c, id: idOf(frame, !!c.binary), frame });
    }
    await conn.waitReplies(segment.length);
    const replies = conn.replies.splice(0);
    // Replies by the id they carry. Ids are unique but for empty ones and none, and replies that
    // share one (errors of unreadable frames, pongs, empty ids) are sent at once, in order.
    const byId = new Map<string | undefined, Msg[]>();
    for (const r of replies) byId.set(r.id as string | undefined, [...(byId.get(r.id as string | undefined) ?? []), r]);
    for (const { c, id, frame } of segment) {
      const r = byId.get(id)?.shift();
      assert.ok(r, `no reply to a ${c.kind} (id ${JSON.stringify(id)})`);
      const got = kindOf(r);
      // Whatever else is wrong with it, a frame over the limit is refused for its size first.
      const allowed = !c.binary && Buffer.byteLength(Buffer.from(frame).toString('utf8')) > MAX_BYTES ? ['payload_too_large'] : c.allowed;
      assert.ok(allowed.includes(got), `a ${c.kind} got ${JSON.stringify(r)}; expected one of ${allowed.join(', ')}\nframe: ${JSON.stringify(c)}`);
      if (c.kind === 'valid ask') {
        const m = c.msg as { votes?: number; stream?: boolean };
        const votes = m.votes ?? VOTES;
        assert.equal(
          Object.values(r.votes as Record<string, number>).reduce((a, b) => a + b, 0),
          votes,
        );
        assert.equal(conn.votes.get(id!) ?? 0, m.stream ? votes : 0, 'vote messages exactly when streamed');
        stats.asks++;
      }
      stats.sent++;
    }
    if (i < cases.length) {
      const c = cases[i++]!;
      conn.ws.send(frameOf(c), { binary: false });
      assert.equal(await conn.closeCode, c.closes, `a ${c.kind} closes the connection with ${c.closes}`);
      stats.sent++;
      conn = await Conn.open(url);
    }
  }
  return conn;
}

const start = (): Promise<RunningServer> => startTestServer({ votes: VOTES, maxMessageBytes: MAX_BYTES }, { prefix: 'ttrl-fuzz-' });

async function assertStillServing(s: RunningServer): Promise<void> {
  assert.equal((await fetch(`${s.url}/healthz`)).status, 200);
  assert.equal((await fetch(`${s.url}/readyz`)).status, 200);
  const r = await fetch(`${s.url}/v1/ask`, { method: 'POST', body: JSON.stringify({ question: '12+34=' }) });
  assert.equal(((await r.json()) as Msg).type, 'answer');
}

test('fuzzed WebSocket frames: one documented reply each, valid asks answered, the server stays up', async (t) => {
  const s = await start();
  try {
    let conn = await Conn.open(s.wsUrl);
    const stats = { sent: 0, asks: 0, kinds: {} as Record<string, number> };
    // At most 40 messages at once, below the 64 questions a connection may have in flight.
    await fc.assert(
      fc.asyncProperty(fc.array(wsCase, { minLength: 1, maxLength: 40, size: 'max' }), async (cases) => {
        try {
          conn = await runCases(s.wsUrl, conn, cases, stats);
        } catch (e) {
          // A fresh connection for the next run (shrinking replays smaller cases): none of this one's replies may reach it.
          conn.ws.terminate();
          conn = await Conn.open(s.wsUrl);
          throw e;
        }
      }),
      { numRuns: 200, includeErrorInReport: true },
    );
    t.diagnostic(`${stats.sent} frames sent, ${stats.asks} valid asks answered; by kind ${JSON.stringify(stats.kinds)}`);
    assert.ok(stats.sent >= 3000, `${stats.sent} frames`);
    assert.ok(stats.asks > 0, 'no valid ask was generated: the vote checks never ran');
    conn.ws.send(JSON.stringify({ type: 'ask', id: 'last', question: '1+2=' }));
    await conn.waitReplies(1);
    assert.equal(conn.replies[0]!.type, 'answer');
    conn.ws.close();
    await assertStillServing(s);
  } finally {
    await s.close();
  }
});

// ---------- generated HTTP requests ----------

interface HttpCase {
  kind: string;
  method?: string;
  body?: string | Uint8Array;
  headers?: Record<string, string>;
  allowed: string[];
}

const askBody = fc.record(
  { question, votes: fc.integer({ min: 1, max: 3 }), id: fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 20 }) },
  { requiredKeys: ['question'] },
);
const contentType = fc.constantFrom<string>(
  'application/json',
  'text/plain',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x',
  'application/octet-stream',
  '',
  'application/json; charset=utf-8',
  '*/*',
);
const typed = (ct: string): Record<string, string> => (ct ? { 'content-type': ct } : {});
const httpCase: fc.Arbitrary<HttpCase> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.tuple(askBody, contentType).map(([b, ct]) => ({ kind: 'valid ask', body: JSON.stringify(b), headers: typed(ct), allowed: ['answer'] })),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(
        notJson.filter((s) => s.trim() !== ''),
        contentType,
      )
      .map(([body, ct]) => ({ kind: 'malformed JSON', body, headers: typed(ct), allowed: ['bad_json'] })),
  },
  // Top-level scalars fail the JSON reader's strict mode (bad_json); arrays and null are not asks.
  {
    weight: 1,
    arbitrary: fc
      .jsonValue()
      .filter((v) => v === null || typeof v !== 'object' || Array.isArray(v))
      .map((v) => ({ kind: 'not an object', body: JSON.stringify(v), allowed: ['bad_json', 'invalid_message'] })),
  },
  {
    weight: 2,
    arbitrary: fc
      .oneof(
        fc.tuple(askBody, notAString).map(([b, q]) => ({ ...b, question: q })),
        fc
          .tuple(
            askBody,
            notAString.filter((v) => !Number.isInteger(v)),
          )
          .map(([b, votes]) => ({ ...b, votes })),
        fc.tuple(askBody, notAString).map(([b, id]) => ({ ...b, id })),
        askBody.map(({ question: _, ...b }) => b),
        askBody.map((b) => ({ ...b, question: '' })),
      )
      .map((b) => ({ kind: 'wrong type', body: JSON.stringify(b), allowed: ['invalid_message'] })),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(askBody, fc.oneof(fc.integer({ max: 0 }), fc.integer({ min: 65 })))
      .map(([b, votes]) => ({ kind: 'votes out of range', body: JSON.stringify({ ...b, votes }), allowed: ['bad_votes'] })),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(
        askBody,
        fc.oneof(fc.string({ minLength: 1, maxLength: 12 }), fc.constantFrom('__proto__', 'constructor', 'type', 'stream')),
        fc.jsonValue({ maxDepth: 1 }),
      )
      .filter(([, key]) => !['question', 'votes', 'id'].includes(key))
      .map(([b, key, v]) => ({ kind: 'unknown field', body: JSON.stringify({ ...b, [key]: v }), allowed: ['unknown_field'] })),
  },
  { weight: 2, arbitrary: oddText(30).map((q) => ({ kind: 'odd unicode question', body: JSON.stringify({ question: q }), allowed: QUESTION_CODES })) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 300 }).map((body) => ({ kind: 'random bytes', body, allowed: ['bad_json', 'invalid_message'] })) },
  {
    weight: 1,
    arbitrary: fc
      .integer({ min: MAX_BYTES + 1, max: 2 << 20 })
      .map((n) => ({ kind: 'huge body', body: ofBytes('{"question":"', n), allowed: ['payload_too_large'] })),
  },
  {
    weight: 1,
    arbitrary: askBody.map((b) => ({ kind: 'gzip body', body: gzipSync(JSON.stringify(b)), headers: { 'content-encoding': 'gzip' }, allowed: ['answer'] })),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(askBody, fc.constantFrom('gzip', 'deflate', 'br'))
      .map(([b, enc]) => ({ kind: 'not the encoding it says', body: JSON.stringify(b), headers: { 'content-encoding': enc }, allowed: ['bad_encoding'] })),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(askBody, fc.constantFrom('zstd', 'compress', 'x-unknown', 'gzip, zstd'))
      .map(([b, enc]) => ({ kind: 'unknown encoding', body: JSON.stringify(b), headers: { 'content-encoding': enc }, allowed: ['unsupported_encoding'] })),
  },
  // The JSON reader reads utf-8 (and utf-16 and -32) alone: other charsets are refused.
  {
    weight: 1,
    arbitrary: fc.tuple(askBody, fc.constantFrom('latin1', 'iso-8859-1', 'utf-99', 'koi8-r')).map(([b, cs]) => ({
      kind: 'unknown charset',
      body: JSON.stringify(b),
      headers: { 'content-type': `application/json; charset=${cs}` },
      allowed: ['unsupported_encoding'],
    })),
  },
  { weight: 1, arbitrary: fc.constantFrom('GET', 'PUT', 'DELETE', 'PATCH').map((method) => ({ kind: 'wrong method', method, allowed: ['not_found'] })) },
);

async function send(url: string, c: HttpCase): Promise<string> {
  const r = await fetch(`${url}/v1/ask`, { method: c.method ?? 'POST', body: c.body, headers: c.headers });
  const text = await r.text();
  let m: Msg;
  try {
    m = JSON.parse(text) as Msg;
  } catch {
    throw new Error(`a ${c.kind} got ${r.status} with a body that is not JSON: ${text.slice(0, 200)}`);
  }
  const got = kindOf(m);
  // A generated body of any kind may pass the size limit (a deep "wrong type" value does): then that is its reply.
  const size = typeof c.body === 'string' ? Buffer.byteLength(c.body) : (c.body?.length ?? 0);
  const allowed = size > MAX_BYTES && !c.headers?.['content-encoding'] ? [...c.allowed, 'payload_too_large'] : c.allowed;
  assert.ok(allowed.includes(got), `a ${c.kind} got ${r.status} ${text.slice(0, 300)}; expected one of ${allowed.join(', ')}`);
  assert.equal(r.status, got === 'answer' ? 200 : (HTTP_STATUS[got] ?? 400), `the status of ${got}`);
  return got;
}

test('fuzzed HTTP asks: every response is an answer or a documented error with its status, the server stays up', async (t) => {
  const s = await start();
  try {
    let sent = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(httpCase, { minLength: 1, maxLength: 12, size: 'max' }), async (cases) => {
        await Promise.all(cases.map((c) => send(s.url, c)));
        sent += cases.length;
      }),
      // No shrinking: cases of megabyte bodies take minutes to shrink; the first failure is reported as found.
      { numRuns: 100, includeErrorInReport: true, endOnFailure: true },
    );
    t.diagnostic(`${sent} HTTP requests`);
    await assertStillServing(s);
  } finally {
    await s.close();
  }
});
