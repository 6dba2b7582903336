// `ttrl copy`: a SQLite store filled through the store interface (questions, failures, a
// version lineage with small weight files in its DB.versions folder, the base model's meta,
// anchors and probe questions, events) copied to PostgreSQL, then every row compared and the
// version files byte-equal; back down from PostgreSQL to SQLite with token ids kept; a
// destination that is not empty refused; and the CLI command itself. The PostgreSQL parts
// skip, saying why, where PostgreSQL is not installed.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { decodeSafetensors, encodeSafetensors } from '../src/formats/safetensors.ts';
import { copyStore, META_NOT_COPIED, runCopy } from '../src/store/copy.ts';
import { CURSOR_KEY } from '../src/loop/fleet.ts';
import { openStore } from '../src/store/open.ts';
import type { LoggedQuestion, Store, VersionRow } from '../src/store/store.ts';
import { DATABASE_META } from '../src/loop/version-files.ts';
import { FINGERPRINT_KEY, STAMPS_KEY } from '../src/loop/base-model.ts';
import { postgresMissing, startPostgres, type TestPostgres } from './helpers/postgres.ts';
import { answered, failed } from './helpers/store-records.ts';
import { scratch } from './helpers/scratch.ts';
import { lastJson, ttrl } from './helpers/cli.ts';

const missing = postgresMissing();
let server: TestPostgres;
let databases = 0;
const freshPostgres = () => {
  const name = `copy_${++databases}`;
  server.createDatabase(name);
  return server.url(name);
};

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

const all = async <T>(it: AsyncIterable<T>): Promise<T[]> => {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
};

/** A small safetensors file as a version file is: one tensor, the database id and lineage in its metadata. */
function versionFile(databaseId: string, version: number, parent: number): Buffer {
  const data = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i * version));
  return encodeSafetensors(new Map([['w', { dtype: 'F32', shape: [8, 8], data }]]), {
    [DATABASE_META]: databaseId,
    version: String(version),
    parent: String(parent),
  });
}

/**
 * A SQLite store as a server leaves it, filled through the interface: version 0 (the base
 * model's own path), versions 1 (retired, its file kept), 2 (active), 3 (rejected, no file),
 * 4 (corrupt: its file is gone), 5 (retired and pruned), 6 (retired, a LoRA adapter file's name);
 * answered and failed questions; meta; events.
 */
async function filledSqlite(dir: string): Promise<{ file: string; store: Store; files: Map<number, string> }> {
  const file = join(dir, 'server.sqlite');
  const store = await openStore(file);
  const versionsDir = `${file}.versions`;
  await mkdir(versionsDir, { recursive: true });
  await store.ensureBaseVersion({ weightsPath: '/models/arith-tiny', stats: { base: '/models/arith-tiny' } });
  const id = await store.databaseId();
  await store.setMeta(FINGERPRINT_KEY, '0123456789abcdef');
  await store.setMeta(STAMPS_KEY, JSON.stringify([{ path: '/models/arith-tiny/model.safetensors', size: 1234, mtimeMs: 1.5e12 }]));
  await store.setMeta('probe_questions', JSON.stringify(['1+2=', '3+4=']));
  await store.setMeta('anchors', JSON.stringify([{ question: '1+2=', completion: '3#', ref: -0.25 }]));
  const files = new Map<number, string>();
  const write = async (version: number, parent: number, name = `v${version}.safetensors`) => {
    const path = join(versionsDir, name);
    const bytes = versionFile(id, version, parent);
    await writeFile(path, bytes);
    files.set(version, path);
    return { path, sha: sha256(bytes) };
  };
  const v1 = await store.addVersion({ parent: 0, status: 'candidate', weightsPath: (v) => join(versionsDir, `v${v}.safetensors`), stats: { loss: 0.5 } });
  await store.setWeightsSha256(v1, (await write(v1, 0)).sha);
  await store.activate(v1);
  await store.recordAnswered([
    answered('1+2=', { receivedAt: 1000, modelVersion: 0 }),
    answered('3+4=', { receivedAt: 1001, modelVersion: 0, trainable: false }),
  ]);
  const v2 = await store.addVersion({
    parent: 1,
    status: 'candidate',
    weightsPath: (v) => join(versionsDir, `v${v}.safetensors`),
    stats: { loss: 0.25 },
    activate: true,
  });
  await store.setWeightsSha256(v2, (await write(v2, 1)).sha);
  const v3 = await store.addVersion({ parent: 2, status: 'candidate', weightsPath: null, stats: { loss: 9 } });
  await store.reject(v3, 'entropy collapsed');
  const v4 = await store.addVersion({ parent: 2, status: 'candidate', weightsPath: join(versionsDir, 'v4.safetensors') });
  await store.markCorrupt(v4, `${join(versionsDir, 'v4.safetensors')} cannot be read`);
  const v5 = await store.addVersion({ parent: 1, status: 'retired', weightsPath: null, reason: 'pruned' });
  const v6 = await store.addVersion({ parent: 2, status: 'retired', weightsPath: (v) => join(versionsDir, `v${v}.adapter.safetensors`) });
  await store.setWeightsSha256(v6, (await write(v6, 2, `v${v6}.adapter.safetensors`)).sha);
  assert.deepEqual([v1, v2, v3, v4, v5, v6], [1, 2, 3, 4, 5, 6]);
  await store.recordAnswered(
    Array.from({ length: 30 }, (_, i) =>
      answered(`${i}+${i}=`, {
        receivedAt: 2000 + i,
        modelVersion: 2,
        latencyMs: i / 4,
        source: i % 3 ? `key:${i % 3}` : null,
        ...upstream(i),
        ...(labelOf(i) === null ? {} : { label: labelOf(i) }),
      }),
    ),
    'solo',
  );
  await store.recordFailed([failed('9/0=', { receivedAt: 1500, label: 'undefined' }), failed('x', { receivedAt: 2500, clientId: null, connection: null })]);
  await store.event('activate', { version: 1, by: 'update' });
  await store.event('rollback', { version: 2, by: 'admin', note: 'ünï ✓' });
  await store.event('version_corrupt', { version: 4 });
  return { file, store, files };
}

/** Where the i-th answer's samples were drawn: one upstream, two, or in-process (none said, or null said). */
const upstream = (i: number) =>
  [
    { sampledOn: 'http://vllm-a:8000/v1', sampledModel: 'ttrl-v2' },
    { sampledOn: 'http://vllm-a:8000/v1,http://vllm-b:8000/v1', sampledModel: 'ttrl-v2' },
    {},
    { sampledOn: null, sampledModel: null },
  ][i % 4]!;

/** Checks that a store's log holds each form of upstream() (so that comparing copies tests them). */
function assertUpstreamsKept(log: Pick<LoggedQuestion, 'question' | 'sampled_on' | 'sampled_model'>[]): void {
  for (let i = 0; i < 30; i++) {
    const q = log.find((x) => x.question === `${i}+${i}=`)!;
    const u = upstream(i);
    assert.deepEqual([q.sampled_on, q.sampled_model], [u.sampledOn ?? null, u.sampledModel ?? null], q.question);
  }
}

/** The label the i-th answer was asked with (every third one has one), or null. */
const labelOf = (i: number) => (i % 3 === 0 ? String(2 * i) : null);

/** Checks that a store's log holds the labels of labelOf() and the failed question's (so that comparing copies tests them). */
function assertLabelsKept(log: Pick<LoggedQuestion, 'question' | 'label'>[]): void {
  for (let i = 0; i < 30; i++) {
    const q = log.find((x) => x.question === `${i}+${i}=`)!;
    assert.equal(q.label, labelOf(i), q.question);
  }
  assert.equal(log.find((x) => x.question === '9/0=')!.label, 'undefined');
}

/** The whole content of a store, in a form two stores of either kind compare by (ids as positions). */
async function contents(s: Store) {
  const log = await all(s.exportLog());
  const ids = new Map(log.map((q, i) => [q.id, i]));
  const rows = await all(s.questions());
  const samples = await Promise.all(log.map((q) => s.samplesOf(q.id)));
  return {
    log: log.map(({ id: _id, ...q }: LoggedQuestion) => q),
    questions: rows.map(({ id, ...r }) => ({ at: ids.get(id), ...r })),
    samples,
    counts: await s.counts(),
    meta: await s.exportMeta(),
    events: (await all(s.exportEvents())).map(({ id: _id, ...e }) => e),
    versions: await s.versions(),
    askCounts: await s.askCounts(['1+2=', '9/0=', '0+0=', 'none']),
  };
}

/** The version rows expected in a copy: a copied file's row points into the new folder. */
const moved = (rows: VersionRow[], files: Map<number, string>, dir: string) =>
  rows.map((r) => (files.has(r.version) && r.weights_path ? { ...r, weights_path: join(dir, basename(r.weights_path)) } : r));

test('a SQLite store copied to SQLite: every row, the version files unchanged, the database id kept; a store not empty is refused', async () => {
  const dir = await scratch('ttrl-copy-');
  const { file, store, files } = await filledSqlite(dir);
  const before = await contents(store);
  await store.close();
  const to = join(dir, 'copy', 'copy.sqlite');
  const lines: string[] = [];
  const r = await runCopy({ from: file, to, log: (l) => lines.push(l) });
  const versionsDir = `${to}.versions`;
  assert.equal(r.versionsDir, versionsDir, 'default: DST.versions beside a SQLite destination');
  assert.deepEqual([r.questions, r.samples, r.versions, r.events], [34, 64, 7, 3]);
  assert.deepEqual(
    r.files.map((f) => f.version),
    [1, 2, 6],
  );
  assert.deepEqual(
    r.problems.map((p) => p.version),
    [4],
  );
  assert.match(r.problems[0]!.problem, /cannot be read/);
  assert.ok(lines.length > 0);

  const copy = await openStore(to);
  try {
    const after = await contents(copy);
    assertUpstreamsKept(before.log);
    assertLabelsKept(before.log);
    assert.deepEqual(after.log, before.log);
    assert.deepEqual(after.questions, before.questions);
    assert.deepEqual(after.samples, before.samples);
    assert.deepEqual(after.counts, before.counts);
    assert.deepEqual(after.meta, before.meta, 'every meta row, the database id, anchors and probe questions included');
    assert.deepEqual(after.askCounts, before.askCounts);
    assert.deepEqual(after.events.slice(0, -1), before.events);
    assert.equal(after.events.at(-1)!.kind, 'copied');
    assert.deepEqual(after.versions, moved(before.versions, files, versionsDir));
    for (const [version, path] of files) {
      if (version === 4) continue;
      assert.ok((await readFile(join(versionsDir, basename(path)))).equals(await readFile(path)), `version ${version}'s file byte-equal`);
    }
    assert.equal(existsSync(join(versionsDir, 'v4.safetensors')), false);
    // The copy's files name its own database id (the source's, kept).
    const copied = decodeSafetensors(await readFile(join(versionsDir, 'v2.safetensors')));
    assert.equal(copied.metadata[DATABASE_META], await copy.databaseId());
    assert.equal(await copy.databaseId(), r.databaseId);
  } finally {
    await copy.close();
  }

  // Not empty now: refused, naming it, nothing changed.
  await assert.rejects(runCopy({ from: file, to }), (e: Error) => {
    assert.match(e.message, /is not empty \(34 questions, 7 model versions\)/);
    assert.ok(e.message.includes(to));
    return true;
  });
  // A source that does not exist is not made.
  await assert.rejects(runCopy({ from: join(dir, 'nope.sqlite'), to: join(dir, 'other.sqlite') }), /nope\.sqlite: no such file/);
  assert.equal(existsSync(join(dir, 'nope.sqlite')), false);
});

test('a version folder already holding another file of that name is refused before anything is written', async () => {
  const dir = await scratch('ttrl-copy-');
  const { file, store } = await filledSqlite(dir);
  await store.close();
  const versionsDir = join(dir, 'taken');
  await mkdir(versionsDir);
  await writeFile(join(versionsDir, 'v2.safetensors'), 'someone else');
  const to = join(dir, 'dst.sqlite');
  await assert.rejects(runCopy({ from: file, to, versionsDir }), /v2\.safetensors exists with other contents/);
  const dst = await openStore(to);
  try {
    assert.deepEqual(await dst.versions(), []);
    assert.deepEqual(await dst.exportMeta(), new Map());
  } finally {
    await dst.close();
  }
});

test('ttrl copy on the command line', async () => {
  const dir = await scratch('ttrl-copy-');
  const { file, store } = await filledSqlite(dir);
  await store.close();
  const to = join(dir, 'cli.sqlite');
  const r = await ttrl('copy', '--from', file, '--to', to, '--versions-dir', join(dir, 'cli-versions'), '--json');
  assert.equal(r.code, 0, r.stderr);
  const summary = lastJson(r.stdout);
  assert.deepEqual([summary.questions, summary.versions, summary.files.length, summary.versionsDir], [34, 7, 3, join(dir, 'cli-versions')]);
  assert.match(r.stderr, /warning: version 4/);
  assert.match(r.stderr, /copied .* 34 questions/);
  const again = await ttrl('copy', '--from', file, '--to', to);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /ttrl: .*cli\.sqlite is not empty/);
  const pgNoDir = await ttrl('copy', '--from', file, '--to', 'postgres://nobody@127.0.0.1:1/none');
  assert.equal(pgNoDir.code, 1);
  assert.match(pgNoDir.stderr, /--versions-dir DIR is needed with a postgres:\/\/ --to/);
  const bad = await ttrl('copy', '--from', file, '--to', 'mysql://x@y/z', '--versions-dir', dir);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /mysql:\/\/ is not supported/);
});

describe('copy to and from PostgreSQL', { skip: missing ?? false }, () => {
  before(async () => {
    server = await startPostgres();
  });
  after(() => server?.destroy());

  test('SQLite to PostgreSQL: every row compared, version files byte-equal; and back down to SQLite with token ids', async () => {
    const dir = await scratch('ttrl-copy-');
    const { file, store, files } = await filledSqlite(dir);
    const before = await contents(store);
    const url = freshPostgres();
    const pgStore = await openStore(url);
    const versionsDir = join(dir, 'shared-versions');
    try {
      const r = await copyStore(store, pgStore, { versionsDir, batch: 7 });
      assert.deepEqual([r.questions, r.samples, r.versions, r.events, r.meta], [34, 64, 7, 3, before.meta.size]);
      const after = await contents(pgStore);
      assertUpstreamsKept(before.log);
      assertLabelsKept(before.log);
      assert.deepEqual(after.log, before.log);
      assert.deepEqual(after.questions, before.questions);
      assert.deepEqual(after.samples, before.samples);
      assert.deepEqual(after.counts, before.counts);
      assert.deepEqual(after.meta, before.meta);
      assert.deepEqual(after.askCounts, before.askCounts);
      assert.deepEqual(after.events.slice(0, -1), before.events);
      assert.deepEqual(after.events.at(-1)!.detail, { from: file, questions: 34, samples: 64, versions: 7, events: 3, versionsDir });
      assert.deepEqual(after.versions, moved(before.versions, files, versionsDir));
      assert.equal((await pgStore.activeVersion())!.version, 2);
      for (const [version, path] of files) {
        if (version === 4) continue;
        const copied = await readFile(join(versionsDir, basename(path)));
        assert.ok(copied.equals(await readFile(path)), `version ${version}'s file byte-equal`);
        assert.equal(sha256(copied), after.versions[version]!.weights_sha256);
      }
      assert.equal(await pgStore.databaseId(), await store.databaseId());
      // SQLite kept no token ids: nothing of the copied log is an experience to train on.
      assert.deepEqual((await pgStore.experiencesAfter('0:0', 100)).experiences, []);
      // The lineage goes on from the copied numbers.
      assert.equal(await pgStore.addVersion({ parent: 2, status: 'rejected', weightsPath: null, reason: 'next' }), 7);

      // Refused: it is not empty now.
      await assert.rejects(copyStore(store, pgStore, { versionsDir }), (e: Error) => {
        assert.match(e.message, /is not empty \(34 questions, 8 model versions\)/);
        assert.ok(e.message.startsWith(url));
        return true;
      });

      // Trainable answers on PostgreSQL keep their token ids; copied back down to SQLite, so do they.
      await pgStore.recordAnswered(
        [
          answered('70+7=', { receivedAt: 9000, modelVersion: 2, sampledOn: 'http://vllm-c:8000/v1', sampledModel: 'ttrl-v2' }),
          answered('80+8=', { receivedAt: 9001, modelVersion: 2, trainable: false }),
        ],
        'fleet-1',
      );
      // The fleet leader's experience cursor is a position in this database's log: not carried.
      assert.ok(META_NOT_COPIED.includes(CURSOR_KEY));
      await pgStore.setMeta(CURSOR_KEY, '123456:789');
      const onPostgres = await contents(pgStore);
      const withTokens = onPostgres.log.find((q) => q.question === '70+7=')!;
      assert.deepEqual(
        withTokens.prompt_ids,
        [...'70+7='].map((c) => c.charCodeAt(0)),
      );
      assert.deepEqual(withTokens.samples[0]!.tokenIds, answered('70+7=').samples[0]!.tokenIds);
      const down = join(dir, 'down.sqlite');
      const back = await openStore(down);
      try {
        const r2 = await copyStore(pgStore, back, { versionsDir: `${down}.versions` });
        assert.equal(r2.questions, 36);
        const there = await contents(back);
        assertUpstreamsKept(there.log);
        assertLabelsKept(there.log);
        assert.deepEqual(
          there.log.filter((q) => q.question === '70+7=' || q.question === '80+8=').map((q) => [q.question, q.sampled_on, q.sampled_model]),
          [
            ['70+7=', 'http://vllm-c:8000/v1', 'ttrl-v2'],
            ['80+8=', null, null],
          ],
        );
        assert.deepEqual(there.log, onPostgres.log);
        assert.deepEqual(there.questions, onPostgres.questions);
        assert.deepEqual(there.meta, new Map([...onPostgres.meta].filter(([k]) => k !== CURSOR_KEY)));
        assert.deepEqual(there.events.slice(0, -1), onPostgres.events);
        assert.deepEqual(there.versions, moved(onPostgres.versions, files, `${down}.versions`));
        for (const [version, path] of files)
          if (version !== 4) assert.ok((await readFile(join(`${down}.versions`, basename(path)))).equals(await readFile(path)));
      } finally {
        await back.close();
      }
    } finally {
      await store.close();
      await pgStore.close();
    }
  });

  test('ttrl copy to a postgres:// URL on the command line', async () => {
    const dir = await scratch('ttrl-copy-');
    const { file, store } = await filledSqlite(dir);
    await store.close();
    const url = freshPostgres();
    const r = await ttrl('copy', '--from', file, '--to', url, '--versions-dir', join(dir, 'v'), '--json');
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual([lastJson(r.stdout).questions, lastJson(r.stdout).to], [34, url]);
    const s = await openStore(url);
    try {
      assert.deepEqual(await s.counts(), { answered: 32, failed: 2, samples: 64 });
    } finally {
      await s.close();
    }
  });
});
