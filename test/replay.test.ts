// Replay: a recorded stream against a live server (true answers sent as labels, and kept in
// its log), deterministic offline re-adaptation that labels cannot change, time ranges and
// speed, a server that goes away, and export.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readSource } from '../src/replay/source.ts';
import { replayLive } from '../src/replay/live.ts';
import { REPLAY_EXACT, replayOffline } from '../src/replay/offline.ts';
import { buildReport } from '../src/replay/report.ts';
import { suite } from '../src/tasks/suites.ts';
import { collect } from './helpers/collect.ts';
import { ttrl } from './helpers/cli.ts';
import { scratch } from './helpers/scratch.ts';
import { startTestServer, testSettings } from './helpers/server.ts';

test('a recorded stream replays against a live server, and the log exports', async () => {
  const dir = await scratch();
  const qfile = join(dir, 'q.jsonl');
  const qs = suite('4-operand', 20, 2);
  await writeFile(qfile, qs.map((q, i) => JSON.stringify({ ...q, at: i * 10 })).join('\n') + '\n');
  // Record: the JSONL stream into server A.
  const a = await startTestServer({}, { dir: join(dir, 'a') });
  const recorded = await replayLive((await readSource(qfile)).items, { to: a.wsUrl, speed: 'max', clients: 3 });
  await a.close();
  const rep = buildReport(recorded.outcomes, recorded.sent, recorded.wallS, 10);
  assert.equal(rep.answered, 20);
  assert.equal(rep.errors, 0);
  assert.ok(rep.accuracy !== null && rep.accuracy >= 0 && rep.accuracy <= 1);
  assert.equal(rep.windows.length, 2);
  // The true answers went as labels: A's log keeps them, and a replay of it reads them back as true answers.
  const fromLog = (await readSource(join(dir, 'a', 'ttrl.sqlite'))).items;
  assert.deepEqual(fromLog.map((x) => [x.question, x.answer]).sort(), qs.map((q) => [q.question, q.answer]).sort());
  // Replay A's log against server B through the CLI.
  const b = await startTestServer({}, { dir: join(dir, 'b') });
  try {
    const r = await ttrl(
      'replay',
      '--from',
      join(dir, 'a', 'ttrl.sqlite'),
      '--to',
      b.wsUrl,
      '--speed',
      '100',
      '--clients',
      '2',
      '--report',
      join(dir, 'report'),
      '--json',
    );
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    assert.equal(out.source, 'db');
    assert.deepEqual([out.questions, out.answered, out.errors], [20, 20, 0]);
    // A's log carries the labels it was asked with: B's answers are scored, and B logs the labels again.
    assert.ok(typeof out.accuracy === 'number' && out.accuracy >= 0 && out.accuracy <= 1, String(out.accuracy));
    assert.deepEqual(out.versions, [0]);
    assert.deepEqual((await collect(b.store.questions())).map((q) => [q.question, q.label]).sort(), qs.map((q) => [q.question, q.answer]).sort());
  } finally {
    await b.close();
  }
  const ex = await ttrl('export', '--db', join(dir, 'a', 'ttrl.sqlite'), '--format', 'jsonl', '--samples');
  assert.equal(ex.code, 0, ex.stderr);
  const lines = ex.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  assert.equal(lines.length, 20);
  for (const l of lines) {
    assert.equal(l.status, 'answered');
    assert.equal(l.model_version, 0);
    assert.equal(l.samples.length, 4);
    assert.ok(Date.parse(l.received_at) <= Date.parse(l.answered_at));
  }
});

/** Offline replays that update every 16 questions, small and repeatable. */
const SMALL_UPDATES = {
  adapt: true,
  updateEvery: 16,
  questionsPerStep: 8,
  trainSamples: 4,
  votes: 8,
  batchQuestions: 8,
  probeQuestions: 8,
  lr: 1e-4,
  ...REPLAY_EXACT,
};

test('offline replay with one seed gives the same answers and versions twice', async () => {
  const dir = await scratch();
  const items = suite('4-operand', 48, 6).map((q) => ({ ...q, at: 0 }));
  const s = testSettings({ db: join(dir, 'ttrl.sqlite'), ...SMALL_UPDATES, seed: 3 });
  const one = await replayOffline(items, s);
  const two = await replayOffline(items, s);
  const r1 = buildReport(one.outcomes, one.sent, one.wallS);
  const r2 = buildReport(two.outcomes, two.sent, two.wallS);
  assert.equal(r1.answered, 48);
  assert.ok(one.versions.length > 1, 'updates happened');
  assert.deepEqual(r1.versions, r2.versions);
  assert.equal(r1.digest, r2.digest);
  assert.deepEqual(
    one.outcomes.map((o) => [o.answer, o.version]),
    two.outcomes.map((o) => [o.answer, o.version]),
  );
  assert.deepEqual(
    one.versions.map((v) => v.status),
    two.versions.map((v) => v.status),
  );
  // A different seed is a different run.
  const three = await replayOffline(items, { ...s, seed: 4 });
  assert.notEqual(buildReport(three.outcomes, three.sent, three.wallS).digest, r1.digest);
});

test('labels never reach training: an offline replay with wrong labels answers and adapts exactly as one without, and logs the labels', async () => {
  const dir = await scratch();
  const questions = suite('4-operand', 32, 8).map((q) => ({ question: q.question, at: 0 }));
  // Wrong on purpose: were they rewards (ground truth), no sample would earn one and the updates would differ.
  const labelled = suite('4-operand', 32, 8).map((q) => ({ question: q.question, answer: `${Number(q.answer) + 1}`, at: 0 }));
  const s = testSettings({
    ...SMALL_UPDATES,
    seed: 5,
  });
  const plain = await replayOffline(questions, { ...s, db: join(dir, 'plain.sqlite') });
  const withLabels = await replayOffline(labelled, { ...s, db: join(dir, 'labelled.sqlite') }, { keepDb: true });
  assert.ok(plain.versions.length > 1, 'updates happened');
  assert.deepEqual(
    withLabels.outcomes.map((o) => [o.answer, o.version, o.confidence]),
    plain.outcomes.map((o) => [o.answer, o.version, o.confidence]),
  );
  // Each update trained on the same data with the same rewards: the same statistics (times aside) and verdicts.
  const trained = (v: { version: number; status: string; reason: string | null; stats: unknown }) => [
    v.version,
    v.status,
    v.reason,
    Object.fromEntries(Object.entries((v.stats ?? {}) as Record<string, unknown>).filter(([k]) => !/seconds|_at$|_ms$/.test(k))),
  ];
  assert.deepEqual(withLabels.versions.map(trained), plain.versions.map(trained));
  assert.ok(
    plain.versions.some((v) => typeof (v.stats as Record<string, unknown> | null)?.loss === 'number'),
    `no update trained: ${JSON.stringify(plain.versions.map((v) => v.stats))}`,
  );
  // The labelled run's log kept its labels, as sent.
  assert.deepEqual(
    (await readSource(join(dir, 'labelled.sqlite'))).items.map((x) => [x.question, x.answer]),
    labelled.map((x) => [x.question, x.answer]),
  );
});

test('--since/--until select by arrival time and --speed scales it', async () => {
  const dir = await scratch();
  const qfile = join(dir, 'q.jsonl');
  const qs = suite('in-distribution', 4, 1);
  await writeFile(qfile, qs.map((q, i) => JSON.stringify({ ...q, at: i * 250 })).join('\n'));
  assert.deepEqual(
    (await readSource(qfile, { since: 250, until: 750 })).items.map((x) => x.at),
    [250, 500],
  );
  const server = await startTestServer({}, { dir: join(dir, 's') });
  try {
    const { items } = await readSource(qfile);
    const t1 = performance.now();
    const real = await replayLive(items, { to: server.wsUrl, speed: 1, clients: 1 });
    const realMs = performance.now() - t1;
    const t2 = performance.now();
    const fast = await replayLive(items, { to: server.wsUrl, speed: 10, clients: 1 });
    const fastMs = performance.now() - t2;
    assert.equal(real.outcomes.filter((o) => o.error === undefined).length, 4);
    assert.equal(fast.outcomes.filter((o) => o.error === undefined).length, 4);
    assert.ok(realMs >= 740, `speed 1 took ${realMs} ms for arrivals spread over 750 ms`);
    assert.ok(fastMs < realMs - 400, `speed 10 took ${fastMs} ms against ${realMs} ms`);
    // The same range from a server log, by absolute time.
    const logged = (await readSource(server.store.location)).items;
    assert.equal(logged.length, 8);
    const cut = logged[4]!.receivedAt!;
    assert.equal((await readSource(server.store.location, { since: cut })).items.length, 4);
  } finally {
    await server.close();
  }
});

test('a server that goes away ends the replay with an error and a partial report', async () => {
  const dir = await scratch();
  const server = await startTestServer({}, { dir });
  const items = suite('in-distribution', 40, 3).map((q, i) => ({ ...q, at: i * 50 }));
  setTimeout(() => void server.close(), 500);
  const r = await replayLive(items, { to: server.wsUrl, speed: 1, clients: 2, timeoutMs: 5000 });
  assert.match(r.fatal ?? '', /server closed the connection|connection error/);
  const rep = buildReport(r.outcomes, r.sent, r.wallS);
  assert.ok(rep.answered > 0 && rep.answered < 40, `answered ${rep.answered}`);
  assert.equal(rep.answered + rep.errors, 40);
  const refused = await replayLive(items, { to: server.wsUrl, speed: 'max', clients: 1 });
  assert.match(refused.fatal!, /cannot connect/);
});
