// Verified weights and versions owned by their database, on the real pipeline: the shipped
// model (models/arith-tiny), real SQLite files, real version files written by promote() and
// then damaged on disk as a failing disk or a careless copy would. Each test fails without its
// protection: unverified, a same-size overwrite serves garbage (every ask failed `internal`);
// a truncated file stopped the start; two databases in one folder shared versions/v1.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { open, readdir, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { checkAsk } from '../src/loop/admission.ts';
import { ProtocolError } from '../src/protocol/errors.ts';
import { createPipeline, type Pipeline } from '../src/loop/pipeline.ts';
import { inMemory } from '../src/formats/checkpoint.ts';
import type { Weights } from '../src/model/family.ts';
import { initAdapters } from '../src/model/lora.ts';
import { resolveSettings } from '../src/config/settings.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { Rng } from '../src/util/rng.ts';
import { collectingLogger } from '../src/util/log.ts';
import { collect } from './helpers/collect.ts';
import { scratch } from './helpers/scratch.ts';
import { promote } from './helpers/versions.ts';

async function start(db: string, log: string[] = [], o: { loraRank?: number } = {}): Promise<Pipeline> {
  return createPipeline(resolveSettings({ db, threads: 1, trainThreads: 1, adapt: false, votes: 4, loraRank: o.loraRank ?? 0 }, {}), {
    logger: collectingLogger(log),
  });
}

/** Every weight moved by `by`: a different, valid version. */
function shifted(w: Weights, by: number): Weights {
  return new Map([...w].map(([k, v]) => [k, v.map((x) => x + by)]));
}

/** Asks one question; the answer must come from `version`, its samples scored. */
async function assertAnswers(p: Pipeline, version: number): Promise<void> {
  const question = '1+2=';
  const a = await p.answerer.ask({ question, votes: checkAsk({ question }, p.limits).votes, clientId: 'q', connection: 'test' });
  assert.equal(a.model_version, version);
  const last = (await collect(p.store.questions())).at(-1)!;
  assert.equal(last.status, 'answered');
  assert.ok((await p.store.samplesOf(last.id)).every((s) => Number.isFinite(s.logprobSum)));
}

/** Overwrites `bytes` in the middle of the file with other bytes: same size, other content. */
async function overwriteMiddle(path: string, bytes: number): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    const size = (await fh.stat()).size;
    assert.ok(size > bytes * 2, `${path} is ${size} bytes, too small to damage ${bytes} in the middle`);
    await fh.write(Buffer.alloc(bytes, 0xff), 0, bytes, Math.floor((size - bytes) / 2));
  } finally {
    await fh.close();
  }
}

/** Promotes versions 1 and 2 (2 a child of 1), closes; returns their files. */
async function twoVersions(db: string, o: { loraRank?: number } = {}): Promise<{ v1: string; v2: string; w1: Weights }> {
  const p = await start(db, [], o);
  try {
    const lora = p.versions.lora;
    const w1 = lora ? shifted(initAdapters(p.model.config, lora, new Rng(1)), 0.01) : shifted(await inMemory(p.model.weights), 0.01);
    await promote(p.versions, { parent: 0, weights: w1, stats: {} });
    await promote(p.versions, { parent: 1, weights: shifted(w1, 0.01), stats: {} });
    assert.equal((await p.store.activeVersion())!.version, 2);
    return { v1: (await p.store.version(1))!.weights_path!, v2: (await p.store.version(2))!.weights_path!, w1 };
  } finally {
    await p.close();
  }
}

/** After a restart on a damaged version 2: version 1 serves, 2 is corrupt naming its file, the log and an event say so. */
async function assertFellBack(db: string, v2: string, why: RegExp, o: { loraRank?: number } = {}): Promise<Pipeline> {
  const log: string[] = [];
  const p = await start(db, log, o);
  const row = (await p.store.version(2))!;
  assert.equal(row.status, 'corrupt');
  assert.ok(row.reason!.includes(v2), row.reason!);
  assert.match(row.reason!, why);
  assert.equal(p.versions.active.version, 1);
  assert.equal((await p.store.activeVersion())!.version, 1);
  assert.ok(
    log.some((l) => l.includes('model version 2 is corrupt') && l.includes(v2)),
    log.join('\n'),
  );
  assert.ok(
    log.some((l) => /serving model version 1, the newest good ancestor of corrupt version 2/.test(l)),
    log.join('\n'),
  );
  const fallback = (await p.store.events()).find((e) => e.kind === 'version_fallback');
  assert.deepEqual(fallback?.detail, { from: 2, to: 1, corrupt: [2] });
  await assertAnswers(p, 1);
  return p;
}

test('200 KB overwritten in the middle of the active version (same size): the restart serves its parent, the row is corrupt naming the file, answers work; admin activation of it is refused', async () => {
  const db = join(await scratch('ttrl-verified-'), 'ttrl.sqlite');
  const { v1, v2, w1 } = await twoVersions(db);
  assert.ok(v2.startsWith(`${db}.versions/`), `${v2} is in the database's own folder`);
  await overwriteMiddle(v2, 200 * 1024);
  const p = await assertFellBack(db, v2, /has sha256 [0-9a-f]{64}, not the [0-9a-f]{64} recorded when it was written/);
  try {
    assert.deepEqual(p.versions.active.weights, w1);
    await assert.rejects(
      p.activate(2, 'test'),
      (e: ProtocolError) => e.code === 'invalid_message' && e.message.includes(v2) && /marked corrupt and was not activated/.test(e.message),
    );
    assert.equal(p.versions.active.version, 1);
    // A retired version damaged later: its activation is refused, and marks it corrupt.
    await p.activate(0, 'test');
    await overwriteMiddle(v1, 1024);
    await assert.rejects(p.activate(1, 'test'), (e: ProtocolError) => e.code === 'invalid_message' && e.message.includes(v1));
    assert.equal((await p.store.version(1))!.status, 'corrupt');
    assert.equal(p.versions.active.version, 0);
    await assertAnswers(p, 0);
  } finally {
    await p.close();
  }
});

test('a truncated active version: the restart serves its parent, the reason names the file', async () => {
  const db = join(await scratch('ttrl-verified-'), 'ttrl.sqlite');
  const { v2 } = await twoVersions(db);
  await truncate(v2, 1000);
  const p = await assertFellBack(db, v2, /\(1000 bytes\) has sha256/);
  await p.close();
});

test('a corrupted LoRA adapter version: the restart serves its parent', async () => {
  const db = join(await scratch('ttrl-verified-'), 'ttrl.sqlite');
  const { v2, w1 } = await twoVersions(db, { loraRank: 2 });
  assert.match(v2, /v2\.adapter\.safetensors$/);
  await overwriteMiddle(v2, 256);
  const p = await assertFellBack(db, v2, /has sha256/, { loraRank: 2 });
  try {
    assert.deepEqual(p.versions.active.adapters, w1);
  } finally {
    await p.close();
  }
});

test('an active version whose file is gone, with a corrupt parent too: the walk reaches the base model', async () => {
  const db = join(await scratch('ttrl-verified-'), 'ttrl.sqlite');
  const { v1, v2 } = await twoVersions(db);
  await writeFile(v2, '');
  await overwriteMiddle(v1, 1024);
  const log: string[] = [];
  const p = await start(db, log);
  try {
    assert.deepEqual(
      (await p.store.versions()).map((r) => r.status),
      ['active', 'corrupt', 'corrupt'],
    );
    assert.deepEqual((await p.store.events()).find((e) => e.kind === 'version_fallback')?.detail, { from: 2, to: 0, corrupt: [2, 1] });
    await assertAnswers(p, 0);
  } finally {
    await p.close();
  }
});

test('two databases in one folder: each writes and serves its own version 1; a file written for the other database is refused', async () => {
  const dir = await scratch('ttrl-verified-');
  const [a, b] = [join(dir, 'a.sqlite'), join(dir, 'b.sqlite')];
  const own = new Map<string, { path: string; w: Weights }>();
  for (const [db, by] of [
    [a, 0.01],
    [b, -0.01],
  ] as const) {
    const p = await start(db);
    try {
      const w = shifted(await inMemory(p.model.weights), by);
      await promote(p.versions, { parent: 0, weights: w, stats: {} });
      own.set(db, { path: (await p.store.version(1))!.weights_path!, w });
    } finally {
      await p.close();
    }
  }
  assert.notEqual(own.get(a)!.path, own.get(b)!.path);
  for (const db of [a, b]) {
    const p = await start(db);
    try {
      assert.equal(p.versions.active.version, 1);
      assert.deepEqual(p.versions.active.weights, own.get(db)!.w);
      await assertAnswers(p, 1);
    } finally {
      await p.close();
    }
  }
  // The old layout's hazard: b's row pointing at a's file, with no recorded hash (as rows
  // written before verification have none). The database id in the file refuses it.
  const s = SqliteStore.open(b);
  s.db.prepare('UPDATE model_versions SET weights_path = ?, weights_sha256 = NULL WHERE version = 1').run(own.get(a)!.path);
  await s.close();
  const p = await start(b);
  try {
    const row = (await p.store.version(1))!;
    assert.equal(row.status, 'corrupt');
    assert.ok(row.reason!.includes(own.get(a)!.path));
    assert.match(row.reason!, /was written for another database/);
    assert.equal(p.versions.active.version, 0);
  } finally {
    await p.close();
  }
});

test('a row written before verification (no sha256): its first good load records the hash, from then on checked', async () => {
  const db = join(await scratch('ttrl-verified-'), 'ttrl.sqlite');
  const { v2 } = await twoVersions(db);
  const s = SqliteStore.open(db);
  const recorded = (await s.version(2))!.weights_sha256;
  s.db.prepare('UPDATE model_versions SET weights_sha256 = NULL WHERE version = 2').run();
  await s.close();
  const log: string[] = [];
  let p = await start(db, log);
  try {
    assert.equal(p.versions.active.version, 2);
    assert.equal((await p.store.version(2))!.weights_sha256, recorded);
    assert.ok(
      log.some((l) => l.includes(v2) && /had no recorded sha256/.test(l)),
      log.join('\n'),
    );
  } finally {
    await p.close();
  }
  await overwriteMiddle(v2, 1024);
  p = await assertFellBack(db, v2, /has sha256/);
  await p.close();
});

test('temp files of unfinished version writes are removed at start-up, with a log line; one whose writer lives is kept', async () => {
  const db = join(await scratch('ttrl-verified-'), 'ttrl.sqlite');
  await (await start(db)).close();
  const dir = `${db}.versions`;
  // A pid no process has (above Linux's pid_max), and our own, alive.
  const dead = join(dir, '.v1.safetensors.4194999.1700000000000.k2j3h4.tmp');
  const deadAdapter = join(dir, '.v2.adapter.safetensors.4194998.1700000000000.abc.tmp');
  const live = join(dir, `.v3.safetensors.${process.pid}.1700000000000.xyz.tmp`);
  for (const f of [dead, deadAdapter, live]) await writeFile(f, 'half a version');
  await writeFile(join(dir, 'notes.tmp'), 'not ours');
  const log: string[] = [];
  const p = await start(db, log);
  await p.close();
  assert.deepEqual((await readdir(dir)).sort(), [live.slice(dir.length + 1), 'notes.tmp'].sort());
  for (const f of [dead, deadAdapter])
    assert.ok(
      log.some((l) => l.startsWith(`removed ${f}: the unfinished write`)),
      log.join('\n'),
    );
  assert.equal(await readFile(live, 'utf8'), 'half a version');
});
