// The typed client (src/client) against live servers in this process, over loopback: typed
// answers and streamed votes, the local queue under max_in_flight, overload retries, a
// server restarted on the same port, a server gone, timeouts, typed errors, model version
// events, and API keys (Node's header and the browser's subprotocol).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect as tcpConnect, createServer as createTcpServer, type Socket as TcpSocket } from 'node:net';
import { WebSocket as WS } from 'ws';
import type { RunningServer } from '../src/server/server.ts';
import { suite } from '../src/tasks/suites.ts';
import { TtrlClient, TtrlError, type Answer, type RetryInfo, type StreamEvent, type WebSocketConstructor } from '../src/client/index.ts';
import { collect } from './helpers/collect.ts';
import { scratch } from './helpers/scratch.ts';
import { startTestServer, type SettingOverrides } from './helpers/server.ts';

const start = (over: SettingOverrides = {}, dir?: string): Promise<RunningServer> => startTestServer(over, { dir, prefix: 'ttrl-client-' });

const QS = suite('4-operand', 32, 14).map((q) => q.question);

/** The error a promise rejects with (and that it does reject). */
async function failure(p: Promise<unknown>): Promise<TtrlError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof TtrlError, `not a TtrlError: ${e}`);
    return e;
  }
  assert.fail('expected a rejection');
}

/**
 * A TCP relay in front of a server: a network path the test can cut (every connection
 * through it dropped at once) or make silent (what the server sends through it from now on
 * is swallowed, as a dead link would). New connections pass normally.
 */
async function relay(port: number) {
  const pairs = new Set<{ client: TcpSocket; upstream: TcpSocket; silent: boolean }>();
  const server = createTcpServer((client) => {
    const upstream = tcpConnect(port, '127.0.0.1');
    const pair = { client, upstream, silent: false };
    pairs.add(pair);
    client.on('data', (d) => upstream.write(d));
    upstream.on('data', (d) => pair.silent || client.write(d));
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `ws://127.0.0.1:${(server.address() as { port: number }).port}/v1/ws`,
    cut: () => [...pairs].forEach((p) => (p.client.destroy(), p.upstream.destroy())),
    silence: () => pairs.forEach((p) => (p.silent = true)),
    close: () => {
      for (const p of pairs) (p.client.destroy(), p.upstream.destroy());
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

function checkAnswer(a: Answer, votes: number): void {
  assert.equal(typeof a.id, 'string');
  assert.ok(a.answer === null || typeof a.answer === 'string');
  assert.equal(
    Object.values(a.votes).reduce((x, y) => x + y, 0),
    votes,
  );
  assert.ok(a.confidence > 0 && a.confidence <= 1);
  assert.equal(typeof a.model_version, 'number');
  assert.ok(a.prompt_tokens > 0);
  assert.ok(a.latency_ms >= 0);
}

test('ask and stream give typed answers; votes stream before the answer; hello, ping and an http:// URL', async () => {
  const s = await start();
  const c = new TtrlClient(s.url); // http://HOST:PORT: the client finds /v1/ws
  try {
    const hello = await c.connect();
    assert.match(hello.connection, /^c\d+$/);
    assert.equal(hello.protocol, 1);
    assert.equal(hello.model_version, 0);
    assert.equal(hello.limits.default_votes, 4);
    assert.equal(c.modelVersion, 0);
    assert.equal(c.url, s.wsUrl);
    const a = await c.ask(QS[0]!);
    checkAnswer(a, 4);
    checkAnswer(await c.ask(QS[1]!, { votes: 7 }), 7);

    const events: StreamEvent[] = [];
    for await (const e of c.stream(QS[2]!, { votes: 6 })) events.push(e);
    assert.equal(events.length, 7);
    assert.deepEqual(
      events.map((e) => e.type),
      [...Array(6).fill('vote'), 'answer'],
    );
    const last = events.at(-1)!;
    assert.ok(last.type === 'answer');
    checkAnswer(last, 6);
    // The answer's tally is the streamed votes' tally ("" for a sample without an answer).
    const tally: Record<string, number> = {};
    for (const e of events) if (e.type === 'vote') tally[e.answer ?? ''] = (tally[e.answer ?? ''] ?? 0) + 1;
    assert.deepEqual(tally, last.votes);
    assert.deepEqual(
      events
        .filter((e) => e.type === 'vote')
        .map((e) => (e.type === 'vote' ? e.index : -1))
        .sort((x, y) => x - y),
      [0, 1, 2, 3, 4, 5],
    );
    for (const e of events) if (e.type === 'vote') assert.ok(typeof e.text === 'string' && e.tokens > 0 && e.id === last.id);

    // Leaving a stream early is fine, and the client carries on.
    for await (const e of c.stream(QS[3]!)) {
      assert.equal(e.type, 'vote');
      break;
    }
    assert.ok((await c.ping()) >= 0);
    checkAnswer(await c.ask(QS[4]!), 4);
    assert.equal(c.inFlight, 0);
  } finally {
    await c.close();
    await s.close();
  }
});

test('more questions than max_in_flight wait in the client and are all answered', async () => {
  const s = await start({ maxInFlight: 2, batchQuestions: 1, batchWaitMs: 0 });
  // The client asks for 3; a server that states max_in_flight 2 caps it at 2.
  const c = new TtrlClient(s.wsUrl, { maxInFlight: 3, retries: 0 });
  try {
    const hello = await c.connect();
    const cap = hello.limits.max_in_flight ?? 3;
    assert.equal(c.maxInFlight, cap);
    let peak = 0;
    let watching = true;
    const watch = () => {
      peak = Math.max(peak, c.inFlight);
      if (watching) setImmediate(watch);
    };
    watch();
    const asks = QS.slice(0, 12).map((q) => c.ask(q));
    assert.equal(c.inFlight, cap);
    assert.equal(c.queued, 12 - cap);
    // retries 0: a too_many_in_flight from the server would fail an ask here.
    const answers = await Promise.all(asks);
    watching = false;
    answers.forEach((a) => checkAnswer(a, 4));
    assert.ok(peak <= cap, `peak ${peak} in flight, cap ${cap}`);
    assert.equal(peak, cap);
    assert.deepEqual([c.inFlight, c.queued], [0, 0]);
  } finally {
    await c.close();
    await s.close();
  }
});

test('overloaded replies are retried with jittered backoff until answered; with no retries left the error surfaces typed', async () => {
  const s = await start({ queueLimit: 1, batchQuestions: 1, batchWaitMs: 0 });
  const patient = new TtrlClient(s.wsUrl, { retries: 200, backoff: { initialMs: 4, maxMs: 64 } });
  const hasty = new TtrlClient(s.wsUrl, { retries: 0 });
  try {
    const retries: RetryInfo[] = [];
    patient.on('retry', (r) => retries.push(r));
    const answers = await Promise.all(QS.slice(0, 16).map((q) => patient.ask(q)));
    answers.forEach((a) => checkAnswer(a, 4));
    assert.ok(retries.length > 0, 'the queue of 1 overflowed');
    assert.ok(
      retries.every((r) => r.code === 'overloaded'),
      JSON.stringify(retries.slice(0, 3)),
    );
    for (const r of retries) {
      const nominal = Math.min(64, 4 * 2 ** (r.attempt - 1));
      assert.ok(r.delayMs >= 0.5 * nominal && r.delayMs < 1.5 * nominal, `retry ${r.attempt} after ${r.delayMs} ms`);
    }
    const results = await Promise.allSettled(QS.slice(0, 16).map((q) => hasty.ask(q)));
    const refused = results.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason as TtrlError);
    assert.ok(refused.length > 0 && refused.length < 16, `${refused.length} refused`);
    for (const e of refused) {
      assert.ok(e instanceof TtrlError);
      assert.equal(e.code, 'overloaded');
      assert.equal(e.retryable, true);
      assert.match(e.id!, /^q\d+$/);
    }
  } finally {
    await patient.close();
    await hasty.close();
    await s.close();
  }
});

test('a server restarted on the same port: the client reconnects and every question is answered', async () => {
  const dir = await scratch('ttrl-client-');
  const a = await start({ batchQuestions: 2 }, dir);
  const c = new TtrlClient(a.wsUrl, { reconnect: { attempts: 60, initialMs: 50, maxMs: 400 }, retries: 10 });
  const hellos: string[] = [];
  const drops: { code: number; reconnecting: boolean }[] = [];
  c.on('hello', (h) => hellos.push(h.connection));
  c.on('disconnect', (d) => drops.push(d));
  let b: RunningServer | undefined;
  try {
    checkAnswer(await c.ask(QS[0]!), 4);
    // Questions in flight and queued when the server stops: answered before it closes, or
    // (shutting_down, or the drop) asked again once it is back.
    const during = Promise.allSettled(QS.slice(1, 13).map((q) => c.ask(q)));
    const dropped = new Promise((r) => c.on('disconnect', r));
    await a.close();
    await dropped;
    assert.equal(c.connected, false);
    const whileDown = Promise.allSettled([c.ask(QS[13]!)]);
    b = await start({ port: a.port }, dir); // the same database and port
    assert.equal(b.port, a.port);
    for (const r of [...(await during), ...(await whileDown)]) {
      assert.equal(r.status, 'fulfilled', r.status === 'rejected' ? String(r.reason) : '');
      checkAnswer((r as PromiseFulfilledResult<Answer>).value, 4);
    }
    assert.equal(hellos.length, 2);
    assert.notEqual(hellos[0], undefined);
    assert.equal(drops.length, 1);
    assert.equal(drops[0]!.reconnecting, true);
    assert.equal(c.connected, true);
    // Every question reached a server's log at least once; the restarted one has those it answered.
    const logged = new Set((await collect(b.store.questions())).map((q) => q.question));
    assert.ok(logged.has(QS[13]!));
  } finally {
    await c.close();
    await b?.close();
  }
});

test('a cut network path: the questions in flight are asked again on the new connection', async () => {
  const s = await start({ votes: 32 });
  const r = await relay(s.port);
  const c = new TtrlClient(r.url, { reconnect: { initialMs: 20, maxMs: 100 } });
  const retries: RetryInfo[] = [];
  const hellos: string[] = [];
  c.on('retry', (x) => retries.push(x));
  c.on('hello', (h) => hellos.push(h.connection));
  try {
    await c.connect();
    const asks = Promise.all(QS.slice(0, 6).map((q) => c.ask(q)));
    assert.equal(c.inFlight, 6);
    r.cut();
    (await asks).forEach((a) => checkAnswer(a, 32));
    assert.equal(hellos.length, 2);
    assert.deepEqual(
      retries.map((x) => [x.code, x.attempt]),
      Array(6).fill(['connection_lost', 1]),
    );
  } finally {
    await c.close();
    await r.close();
    await s.close();
  }
});

test('a silent connection: no pong in pingTimeoutMs drops it, and the client reconnects and asks again', async () => {
  const s = await start();
  const r = await relay(s.port);
  const c = new TtrlClient(r.url, { pingIntervalMs: 100, pingTimeoutMs: 200, reconnect: { initialMs: 20, maxMs: 100 } });
  const drops: string[] = [];
  c.on('disconnect', (d) => drops.push(d.reason));
  try {
    await c.connect();
    r.silence();
    const t0 = performance.now();
    checkAnswer(await c.ask(QS[0]!), 4);
    const took = performance.now() - t0;
    assert.deepEqual(drops, ['no reply to a ping within 200 ms']);
    assert.ok(took >= 250 && took < 5000, `answered after ${took} ms`);
  } finally {
    await c.close();
    await r.close();
    await s.close();
  }
});

test('with reconnect off, a server that goes away fails what it held with connection_lost; nothing listening fails with connection_failed', async () => {
  const s = await start();
  const c = new TtrlClient(s.wsUrl, { reconnect: false, maxInFlight: 1 });
  const drops: { code: number; reconnecting: boolean }[] = [];
  c.on('disconnect', (d) => drops.push(d));
  await c.connect();
  const results = Promise.allSettled(QS.slice(0, 10).map((q) => c.ask(q)));
  await s.close();
  const settled = await results;
  const codes = settled.map((r) => (r.status === 'fulfilled' ? 'answer' : (r.reason as TtrlError).code));
  assert.ok(
    codes.every((x) => ['answer', 'shutting_down', 'connection_lost'].includes(x)),
    codes.join(),
  );
  assert.ok(codes.includes('connection_lost'), codes.join());
  assert.deepEqual(
    drops.map((d) => d.reconnecting),
    [false],
  );
  // Nothing listens there now: a fresh attempt fails at once, typed.
  const e = await failure(c.ask(QS[0]!));
  assert.equal(e.code, 'connection_failed');
  assert.equal(e.retryable, true);
  assert.match(e.message, /ECONNREFUSED|cannot connect/);
  await c.close();
  assert.equal((await failure(c.ask(QS[0]!))).code, 'closed');
});

test('timeouts: a question unanswered in time, a server that never says hello; aborts', async () => {
  const s = await start();
  const c = new TtrlClient(s.wsUrl);
  // A TCP server that accepts and never answers the upgrade: a hung server.
  const held: TcpSocket[] = [];
  const hung = createTcpServer((sock) => held.push(sock));
  await new Promise<void>((r) => hung.listen(0, '127.0.0.1', r));
  try {
    const e = await failure(c.ask(QS[0]!, { votes: 64, timeoutMs: 1 }));
    assert.equal(e.code, 'timeout');
    assert.match(e.message, /no answer within 1 ms/);
    // The late answer is dropped and the client carries on.
    checkAnswer(await c.ask(QS[1]!), 4);

    const ac = new AbortController();
    const aborted = c.ask(QS[2]!, { votes: 64, signal: ac.signal });
    ac.abort();
    assert.equal((await failure(aborted)).code, 'aborted');
    assert.equal((await failure(c.ask(QS[2]!, { signal: AbortSignal.abort() }))).code, 'aborted');

    const port = (hung.address() as { port: number }).port;
    const silent = new TtrlClient(`ws://127.0.0.1:${port}/v1/ws`, { connectTimeoutMs: 300 });
    const t0 = performance.now();
    const te = await failure(silent.connect());
    assert.equal(te.code, 'timeout');
    assert.match(te.message, /no hello .* within 300 ms/);
    assert.ok(performance.now() - t0 < 3000);
    await silent.close();
  } finally {
    await c.close();
    for (const sock of held) sock.destroy();
    hung.close();
    await s.close();
  }
});

test('a label goes with ask and with stream, and the server logs it with the question; a malformed one comes back as invalid_message', async () => {
  const s = await start();
  const c = new TtrlClient(s.wsUrl);
  try {
    checkAnswer(await c.ask(QS[0]!, { votes: 2, label: '-3' }), 2);
    const events: StreamEvent[] = [];
    for await (const e of c.stream(QS[1]!, { votes: 3, label: '7' })) events.push(e);
    assert.equal(events.at(-1)!.type, 'answer');
    checkAnswer(await c.ask(QS[2]!, { votes: 2 }), 2);
    const bad = await failure(c.ask(QS[3]!, { label: '' }));
    assert.deepEqual([bad.code, bad.retryable], ['invalid_message', false]);
    assert.match(bad.message, /^label: /);
    assert.deepEqual(
      (await collect(s.store.questions())).map((q) => [q.question, q.label]),
      [
        [QS[0], '-3'],
        [QS[1], '7'],
        [QS[2], null],
      ],
    );
  } finally {
    await c.close();
    await s.close();
  }
});

test("the server's refusals come back as TtrlErrors with their code, and the connection stays usable", async () => {
  const s = await start({ maxMessageBytes: 256, maxPromptTokens: 16 });
  const c = new TtrlClient(s.wsUrl);
  const errors: TtrlError[] = [];
  c.on('error', (e) => errors.push(e));
  try {
    const bad = await failure(c.ask('1+2=', { votes: 100_000 }));
    assert.deepEqual([bad.code, bad.retryable], ['bad_votes', false]);
    assert.match(bad.id!, /^q\d+$/);
    assert.equal((await failure(c.ask('12+34+56+78+90+1+2='))).code, 'question_too_long');
    assert.equal((await failure(c.ask('1*2='))).code, 'unreadable_question');
    // Over max_message_bytes: refused here (the server would answer without the id).
    const big = await failure(c.ask('1'.repeat(400)));
    assert.equal(big.code, 'payload_too_large');
    assert.match(big.message, /at most 256/);
    checkAnswer(await c.ask('12+34-5='), 4);
    assert.deepEqual(errors, []);
    // A wrong path: the upgrade is refused with 404.
    const wrong = new TtrlClient(s.url.replace('http:', 'ws:') + '/v2/ws');
    const e = await failure(wrong.connect());
    assert.equal(e.status, 404);
    assert.ok(['not_found', 'connection_failed'].includes(e.code), e.code);
    await wrong.close();
  } finally {
    await c.close();
    await s.close();
  }
});

test('a model version change reaches on("model") and modelVersion', async () => {
  const token = 'client-test-admin';
  const s = await start({
    adapt: true,
    updateEvery: 1_000_000,
    votes: 8,
    trainSamples: 8,
    questionsPerStep: 8,
    probeQuestions: 0,
    anchors: 0,
    gate: 0,
    entropyFloor: 0,
    maxClientShare: 1,
    lr: 1e-4,
    adminToken: token,
  });
  const admin = (path: string) => fetch(`${s.url}/admin${path}`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
  const c = new TtrlClient(s.wsUrl);
  const seen: [number, number | undefined][] = [];
  c.on('model', (v, prev) => seen.push([v, prev]));
  try {
    await Promise.all(QS.slice(0, 8).map((q) => c.ask(q)));
    const promoted = new Promise<void>((r) => c.on('model', (v) => v > 0 && r()));
    const update = (await (await admin('/adaptation/update')).json()) as { outcome: string; version?: number };
    assert.equal(update.outcome, 'promoted', JSON.stringify(update));
    await promoted;
    assert.ok(c.modelVersion! > 0);
    const v = c.modelVersion!;
    assert.deepEqual(seen, [[v, 0]]);
    assert.equal((await c.ask(QS[9]!)).model_version, v);
    const back = new Promise<void>((r) => c.on('model', (x) => x === 0 && r()));
    assert.equal((await admin('/versions/0/activate')).status, 200);
    await back;
    assert.deepEqual(seen, [
      [v, 0],
      [0, v],
    ]);
    assert.equal(c.modelVersion, 0);
  } finally {
    await c.close();
    await s.close();
  }
});

test('without API keys the browser path (a standard WebSocket constructor) connects offering no subprotocol', async () => {
  const s = await start();
  // ws's WebSocket has the browser's constructor and event API: it stands in for the global one.
  const c = new TtrlClient(s.wsUrl, { WebSocket: WS as unknown as WebSocketConstructor });
  try {
    checkAnswer(await c.ask(QS[0]!), 4);
    const events: StreamEvent[] = [];
    for await (const e of c.stream(QS[1]!)) events.push(e);
    assert.equal(events.at(-1)!.type, 'answer');
  } finally {
    await c.close();
    await s.close();
  }
});

test('API keys: refused without one or with a wrong one (401 unauthorized); a Bearer header (Node) and the subprotocol (browsers) connect', async () => {
  const key = 'client-test-key-0123456789';
  const s = await start({ apiKeys: [key] });
  try {
    for (const apiKey of [undefined, 'not-the-key-0123456789']) {
      const c = new TtrlClient(s.wsUrl, { apiKey });
      const e = await failure(c.connect());
      assert.deepEqual([e.code, e.status, e.retryable], ['unauthorized', 401, false]);
      await c.close();
    }
    const node = new TtrlClient(s.wsUrl, { apiKey: key });
    checkAnswer(await node.ask(QS[0]!), 4);
    await node.close();

    const Browser = WS as unknown as WebSocketConstructor;
    const browser = new TtrlClient(s.wsUrl, { apiKey: key, WebSocket: Browser });
    checkAnswer(await browser.ask(QS[1]!), 4);
    await browser.close();
    // A browser cannot see the 401: the failure is a connection that did not open.
    const wrong = new TtrlClient(s.wsUrl, { apiKey: 'not-the-key-0123456789', WebSocket: Browser });
    assert.equal((await failure(wrong.connect())).code, 'connection_failed');
    await wrong.close();
  } finally {
    await s.close();
  }
});
