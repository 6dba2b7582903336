// The server end to end, over real loopback sockets, on the shipped model, with a real
// SQLite file: protocol errors, concurrent clients, the experience log, live updates that
// swap the serving version, guard rejections, admin rollback, overload and shutdown.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import type { RunningServer } from '../src/server/server.ts';
import { suite } from '../src/tasks/suites.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { collect } from './helpers/collect.ts';
import { assertJudged, startTestServer, type SettingOverrides } from './helpers/server.ts';

// Adaptation on (the resolved default) unless a test says otherwise.
const start = (over: SettingOverrides = {}): Promise<RunningServer> => startTestServer({ adapt: true, maxClientShare: 1, ...over }, { prefix: 'ttrl-server-' });

/** A WebSocket client that collects messages and answers "next message with id X". */
class Client {
  messages: Record<string, unknown>[] = [];
  private waiters: { match: (m: Record<string, unknown>) => boolean; resolve: (m: Record<string, unknown>) => void }[] = [];
  closed: Promise<{ code: number }>;
  private constructor(readonly ws: WebSocket) {
    ws.on('message', (d) => {
      const m = JSON.parse(String(d));
      this.messages.push(m);
      this.waiters = this.waiters.filter((w) => (w.match(m) ? (w.resolve(m), false) : true));
    });
    this.closed = new Promise((r) => ws.on('close', (code) => r({ code })));
  }
  static async open(url: string): Promise<Client> {
    const ws = new WebSocket(url);
    const c = new Client(ws);
    await new Promise((res, rej) => (ws.once('open', res), ws.once('error', rej)));
    await c.next((m) => m.type === 'hello');
    return c;
  }
  next(match: (m: Record<string, unknown>) => boolean, timeoutMs = 30_000): Promise<Record<string, unknown>> {
    const seen = this.messages.find(match);
    if (seen) {
      this.messages.splice(this.messages.indexOf(seen), 1);
      return Promise.resolve(seen);
    }
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('timed out waiting for a message')), timeoutMs);
      this.waiters.push({ match, resolve: (m) => (clearTimeout(t), this.messages.splice(this.messages.indexOf(m), 1), resolve(m)) });
    });
  }
  send(m: unknown): void {
    this.ws.send(typeof m === 'string' ? m : JSON.stringify(m));
  }
  ask(id: string, question: string, extra: object = {}): Promise<Record<string, unknown>> {
    this.send({ type: 'ask', id, question, ...extra });
    return this.next((m) => m.id === id && (m.type === 'answer' || m.type === 'error'));
  }
  close(): void {
    this.ws.close();
  }
}

test('every bad input gets its error code and the connection stays usable', async () => {
  const s = await start({ adapt: false, maxMessageBytes: 256, maxPromptTokens: 16 });
  try {
    const hello = new Promise<Record<string, unknown>>((resolve) => {
      const ws = new WebSocket(s.wsUrl);
      ws.once('message', (d) => (resolve(JSON.parse(String(d))), ws.close()));
    });
    // The shipped model: a context of 96 tokens, 72 of them kept for the answer.
    assert.deepEqual((await hello).limits, {
      max_message_bytes: 256,
      max_prompt_tokens: 16,
      max_new_tokens: 72,
      context_length: 96,
      max_votes: 64,
      default_votes: 4,
      max_in_flight: 64,
    });
    const c = await Client.open(s.wsUrl);
    const errorFor = async (raw: unknown, id?: string) => {
      c.send(raw);
      const m = await c.next((x) => x.type === 'error' && (id === undefined || x.id === id));
      return m.code;
    };
    assert.equal(await errorFor('{not json'), 'bad_json');
    assert.equal(await errorFor('[1,2]'), 'invalid_message');
    assert.equal(await errorFor({ type: 'shout', id: 'a' }, 'a'), 'unknown_type');
    assert.equal(await errorFor({ type: 'ask', question: '1+2=' }), 'invalid_message');
    assert.equal(await errorFor({ type: 'ask', id: 'b', question: '1+2=', colour: 'red' }, 'b'), 'unknown_field');
    assert.equal(await errorFor({ type: 'ask', id: 'c', question: '12+34+56+78+90+1+2=' }, 'c'), 'question_too_long', '19 tokens, over --max-prompt-tokens');
    assert.equal(
      await errorFor({ type: 'ask', id: 'c2', question: '1'.repeat(60) + '=' }, 'c2'),
      'context_length_exceeded',
      '61 + 72 new tokens do not fit in 96',
    );
    assert.equal(await errorFor({ type: 'ask', id: 'd', question: '1*2=' }, 'd'), 'unreadable_question');
    assert.equal(await errorFor({ type: 'ask', id: 'e', question: '1+2=', votes: 0 }, 'e'), 'bad_votes');
    assert.equal(await errorFor({ type: 'ask', id: 'f', question: 1 }, 'f'), 'invalid_message');
    assert.equal(await errorFor(JSON.stringify({ type: 'ask', id: 'g', question: '1+2=', pad: 'x'.repeat(300) })), 'payload_too_large');
    c.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    assert.equal((await c.next((x) => x.type === 'error')).code, 'invalid_message');
    // Still usable: a good question gets its answer.
    const a = await c.ask('ok', '12+34-5=');
    assert.equal(a.type, 'answer');
    c.send({ type: 'ping', id: 'p' });
    assert.equal((await c.next((x) => x.type === 'pong')).id, 'p');
    // Past the hard limit (4x) the socket is closed with 1009.
    c.send(JSON.stringify({ type: 'ask', id: 'h', question: 'x'.repeat(2000) }));
    assert.equal((await c.closed).code, 1009);
  } finally {
    await s.close();
  }
});

test('many concurrent clients get well-formed answers, and the log holds every one with its samples and version', async () => {
  const s = await start({ adapt: false, votes: 6 });
  try {
    const qs = suite('4-operand', 24, 5);
    const clients = await Promise.all(Array.from({ length: 8 }, () => Client.open(s.wsUrl)));
    const answers = await Promise.all(qs.map((q, i) => clients[i % clients.length]!.ask(`q${i}`, q.question)));
    for (const a of answers) {
      assert.equal(a.type, 'answer');
      assert.equal(a.model_version, 0);
      const votes = a.votes as Record<string, number>;
      assert.equal(
        Object.values(votes).reduce((x, y) => x + y, 0),
        6,
      );
      assert.equal(a.confidence, a.answer === null ? 0 : votes[a.answer as string]! / 6);
      assert.ok(typeof a.latency_ms === 'number' && a.latency_ms >= 0);
    }
    answers.forEach((a, i) => assert.equal(a.prompt_tokens, qs[i]!.question.length, 'the shipped model reads one token per character'));
    const rows = await collect(s.store.questions());
    assert.equal(rows.length, qs.length);
    for (const r of rows) {
      assert.equal(r.status, 'answered');
      assert.equal(r.model_version, 0);
      const samples = await s.store.samplesOf(r.id);
      assert.equal(samples.length, 6);
      assert.ok(samples.every((x) => x.tokens > 0 && Number.isFinite(x.logprobSum)));
      const served = answers[Number(r.client_id!.slice(1))]!;
      assert.equal(r.answer, served.answer);
      assert.equal(r.question, qs[Number(r.client_id!.slice(1))]!.question);
    }
    // Votes streamed before the answer when asked for.
    const streamer = clients[0]!;
    streamer.send({ type: 'ask', id: 's1', question: qs[0]!.question, stream: true });
    const answer = await streamer.next((m) => m.id === 's1' && m.type === 'answer');
    const votes = streamer.messages.filter((m) => m.id === 's1' && m.type === 'vote');
    assert.equal(votes.length, 6);
    assert.deepEqual(
      votes.map((v) => v.index),
      [0, 1, 2, 3, 4, 5],
    );
    const tally: Record<string, number> = {};
    for (const v of votes) tally[(v.answer as string | null) ?? ''] = (tally[(v.answer as string | null) ?? ''] ?? 0) + 1;
    assert.deepEqual(tally, answer.votes);
    // The event loop stays free while the sampler works: health checks answer during a batch.
    const busy = Promise.all(qs.map((q, i) => clients[i % clients.length]!.ask(`b${i}`, q.question, { votes: 32 })));
    const t0 = performance.now();
    assert.equal((await fetch(`${s.url}/healthz`)).status, 200);
    assert.ok(performance.now() - t0 < 250, `healthz took ${performance.now() - t0} ms during a batch`);
    await busy;
    // The same ask over HTTP.
    const res = await fetch(`${s.url}/v1/ask`, { method: 'POST', body: JSON.stringify({ question: '12+34=' }) });
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as { type: string }).type, 'answer');
    const bad = await fetch(`${s.url}/v1/ask`, { method: 'POST', body: '{"question": 3}' });
    assert.equal(bad.status, 400);
    assert.equal(((await bad.json()) as { code: string }).code, 'invalid_message');
    const unknown = await fetch(`${s.url}/v1/ask`, { method: 'POST', body: '{"question": "1=", "x": 1}' });
    assert.equal(((await unknown.json()) as { code: string }).code, 'unknown_field');
    const broken = await fetch(`${s.url}/v1/ask`, { method: 'POST', body: '{' });
    assert.equal(((await broken.json()) as { code: string }).code, 'bad_json');
    assert.equal((await fetch(`${s.url}/healthz`)).status, 200);
    assert.equal((await fetch(`${s.url}/readyz`)).status, 200);
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    assert.match(metrics, /ttrl_answers_total 50/);
    assert.match(metrics, /ttrl_answer_latency_seconds_bucket/);
    // Every name under one prefix, said once (Node's own metrics included).
    const names = [...new Set([...metrics.matchAll(/^# TYPE (\S+)/gm)].map((m) => m[1]!))];
    assert.ok(names.includes('ttrl_process_cpu_seconds_total'), names.join(' '));
    assert.deepEqual(
      names.filter((n) => !n.startsWith('ttrl_') || /^ttrl_(\w+?_)\1/.test(n) || n.startsWith('ttrl_ttrl_')),
      [],
    );
    for (const c of clients) c.close();
  } finally {
    await s.close();
  }
});

test('past the queue bound questions are refused at once with overloaded', async () => {
  const s = await start({ adapt: false, queueLimit: 3, batchQuestions: 1, batchWaitMs: 0 });
  try {
    const c = await Client.open(s.wsUrl);
    const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => c.ask(`o${i}`, '12+34-56+7=')));
    const codes = replies.map((r) => (r.type === 'answer' ? 'answer' : r.code));
    assert.ok(codes.includes('overloaded'), codes.join());
    assert.ok(codes.filter((x) => x === 'answer').length >= 3, codes.join());
    assert.ok(
      codes.every((x) => x === 'answer' || x === 'overloaded'),
      codes.join(),
    );
  } finally {
    await s.close();
  }
});

test('the k-th ask of a question draws the same samples however it is batched; a repeat draws new ones', async () => {
  const qs = suite('4-operand', 6, 21).map((q) => q.question);
  const stream = [...qs, qs[0]!, qs[1]!];
  const serve = async (together: boolean) => {
    const s = await start({ adapt: false, votes: 8, seed: 5 });
    try {
      const c = await Client.open(s.wsUrl);
      const ask = (q: string, i: number) => c.ask(`k${i}`, q).then((m) => JSON.stringify(m.votes));
      const first = together
        ? await Promise.all(qs.map(ask))
        : await qs.reduce(async (acc, q, i) => [...(await acc), await ask(q, i)], Promise.resolve([] as string[]));
      const repeats = [await ask(stream[6]!, 6), await ask(stream[7]!, 7)];
      c.close();
      return [...first, ...repeats];
    } finally {
      await s.close();
    }
  };
  const batched = await serve(true);
  const oneByOne = await serve(false);
  assert.deepEqual(batched, oneByOne);
  // The second ask of a question is a new draw (8 samples of a 4-operand chain: equal tallies would be a fluke).
  assert.ok(batched[6] !== batched[0] || batched[7] !== batched[1], 'repeats drew the same samples');
});

test('live updates swap the version while clients keep getting answers; admin rolls back', async () => {
  const token = 'test-admin-token';
  const s = await start({ updateEvery: 16, questionsPerStep: 16, lr: 1e-4, probeQuestions: 8, anchors: 0, votes: 8, adminToken: token });
  const admin = (path: string, method = 'GET') => fetch(`${s.url}/admin${path}`, { method, headers: { authorization: `Bearer ${token}` } });
  try {
    assert.equal((await fetch(`${s.url}/admin/versions`)).status, 401);
    const c = await Client.open(s.wsUrl);
    const modelEvent = c.next((m) => m.type === 'model' && (m.model_version as number) > 0, 120_000);
    const qs = suite('4-operand', 64, 9);
    const seen = new Set<number>();
    let i = 0;
    // Keep asking until a new version is announced, then a little longer.
    let announced: Record<string, unknown> | undefined;
    void modelEvent.then((m) => (announced = m));
    while (!announced && i < 400) {
      const a = await c.ask(`u${i}`, qs[i % qs.length]!.question);
      assert.equal(a.type, 'answer', JSON.stringify(a));
      seen.add(a.model_version as number);
      i++;
    }
    assert.ok(announced, 'no new version within 400 questions');
    const v = announced!.model_version as number;
    const after = await c.ask('after', qs[0]!.question);
    assert.equal(after.model_version, v);
    const versions = (await (await admin('/versions')).json()) as { version: number; status: string; parent: number | null; stats: Record<string, unknown> }[];
    const promoted = versions.find((x) => x.version === v)!;
    assert.equal(promoted.status, 'active');
    assert.ok((promoted.stats.steps as number) >= 1);
    // Every answer is logged with the version that produced it.
    const logged = (await collect(s.store.questions())).map((r) => r.model_version);
    assert.ok(logged.includes(0) && logged.includes(v));

    // Roll back to version 0: clients hear of it and the next answer comes from it.
    await admin('/adaptation/pause', 'POST');
    const back = c.next((m) => m.type === 'model' && m.model_version === 0);
    const r = await admin('/versions/0/activate', 'POST');
    assert.equal(r.status, 200);
    await back;
    assert.equal((await c.ask('rolled', qs[1]!.question)).model_version, 0);
    const status = (await (await admin('/status')).json()) as { model_version: number; adaptation: string };
    assert.deepEqual([status.model_version, status.adaptation], [0, 'paused']);
    assert.equal((await admin('/versions/999/activate', 'POST')).status, 404);
    c.close();
  } finally {
    await s.close();
  }
});

test('the guard rejects a collapsed version and keeps the one serving; the reason is stored', async () => {
  // An entropy floor no policy reaches: every update is rejected. --gate 0: any split vote is
  // a learning signal, so the update trains and is judged, not skipped.
  const s = await start({ updateEvery: 8, questionsPerStep: 8, entropyFloor: 9, probeQuestions: 0, votes: 8, gate: 0, adminToken: 'test-admin-token' });
  try {
    const c = await Client.open(s.wsUrl);
    const qs = suite('4-operand', 8, 3);
    await Promise.all(qs.map((q, i) => c.ask(`g${i}`, q.question)));
    const outcome = (await (
      await fetch(`${s.url}/admin/adaptation/update`, { method: 'POST', headers: { authorization: 'Bearer test-admin-token' } })
    ).json()) as { outcome: string; reason: string; version: number };
    assertJudged(outcome, ['rejected']);
    assert.match(outcome.reason, /entropy collapsed/);
    const row = (await s.store.version(outcome.version))!;
    assert.equal(row.status, 'rejected');
    assert.match(row.reason!, /entropy collapsed/);
    assert.equal((await c.ask('still', qs[0]!.question)).model_version, 0);
    c.close();
  } finally {
    await s.close();
  }
});

test('the anchor check: an update that changes nothing passes it exactly, one that wrecks the model is rejected', async () => {
  // Near-unanimous in-distribution answers make the anchors; four-operand ones give the update its signal.
  const qs = [...suite('in-distribution', 24, 11), ...suite('4-operand', 24, 12)];
  const token = 'test-admin-token';
  const run = async (lr: number) => {
    const s = await start({ updateEvery: 1000, questionsPerStep: 16, probeQuestions: 8, votes: 8, lr, adminToken: token });
    try {
      const c = await Client.open(s.wsUrl);
      await Promise.all(qs.map((q, i) => c.ask(`a${i}`, q.question)));
      c.close();
      const anchors = JSON.parse((await s.store.getMeta('anchors'))!) as { ref: number | null }[];
      assert.ok(anchors.length >= 8, `only ${anchors.length} anchors`);
      const r = (await (await fetch(`${s.url}/admin/adaptation/update`, { method: 'POST', headers: { authorization: `Bearer ${token}` } })).json()) as {
        outcome: string;
        reason?: string;
        version: number;
        stats: Record<string, number>;
      };
      // Anchors got the shipped model's log-probs, and survive in the store.
      assert.ok((JSON.parse((await s.store.getMeta('anchors'))!) as { ref: number | null }[]).every((a) => Number.isFinite(a.ref)));
      const metric = /^ttrl_anchor_shift_nats (\S+)$/m.exec(await (await fetch(`${s.url}/metrics`)).text());
      assert.equal(Number(metric?.[1]), r.stats.anchor_shift, 'the shift is exported');
      return r;
    } finally {
      await s.close();
    }
  };
  const still = await run(0);
  assert.equal(still.outcome, 'promoted', JSON.stringify(still));
  assert.equal(still.stats.anchor_shift, 0);
  const wrecked = await run(3e-3);
  assert.equal(wrecked.outcome, 'rejected', JSON.stringify(wrecked));
  assert.match(wrecked.reason!, /less sure of the shipped model's surest answers/);
  assert.ok(wrecked.stats.anchor_shift < 0);
});

test('shutdown answers the batch in flight, refuses new questions, and a restart continues the log', async () => {
  const s = await start({ adapt: false });
  const db = s.store.location;
  const c = await Client.open(s.wsUrl);
  const pending = c.ask('last', '12+34-56+7=');
  await new Promise((r) => setTimeout(r, 5));
  const closing = s.close();
  const reply = await pending;
  assert.ok(reply.type === 'answer' || reply.code === 'shutting_down', JSON.stringify(reply));
  await closing;
  // A candidate left by a crash mid-update is marked interrupted on the next start.
  const store = SqliteStore.open(db);
  await store.addVersion({ parent: 0, status: 'candidate', weightsPath: null });
  await store.close();
  const s2 = await startTestServer({ db });
  try {
    const rows = await s2.store.versions();
    assert.equal(rows.at(-1)!.status, 'rejected');
    assert.match(rows.at(-1)!.reason!, /interrupted/);
    const c2 = await Client.open(s2.wsUrl);
    assert.equal((await c2.ask('again', '1+2=')).type, 'answer');
    c2.close();
  } finally {
    await s2.close();
  }
});
