// Model versions on a real SQLite store, real weight files and a real sampler worker: the
// base model's identity, promotion, rejection, admin activation and rollback, a restart that
// serves the active version, stale candidates, weights that cannot be written, and a corrupt
// version file (test/verified-weights.test.ts has the rest of verification).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { loadModel, saveModel, WEIGHTS_FILE, type Model } from '../src/formats/checkpoint.ts';
import { initWeights, type Weights } from '../src/model/family.ts';
import { paramSpecsOf } from '../src/model/families.ts';
import type { GPTConfig } from '../src/model/gpt.ts';
import { ARITHMETIC_CHARS, CharTokenizer } from '../src/tokenizers/tokenizer.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { Rng } from '../src/util/rng.ts';
import { claimBaseModel, contentFingerprint, FINGERPRINT_KEY, weightFilesOf } from '../src/loop/base-model.ts';
import { ProtocolError } from '../src/protocol/errors.ts';
import { createMetrics } from '../src/loop/metrics.ts';
import { loadVersionWeights } from '../src/loop/version-files.ts';
import { Versions } from '../src/loop/versions.ts';
import { scratch } from './helpers/scratch.ts';
import { promote, rejectCandidate } from './helpers/versions.ts';

const tokenizer = new CharTokenizer(ARITHMETIC_CHARS);
const config: GPTConfig = { family: 'gpt', vocabSize: 17, contextLength: 16, dModel: 8, nLayers: 1, nHeads: 2, tiedHead: false, padTokenId: 16 };

/** A tiny random GPT saved as our model directory, loaded back as the server would. */
async function tinyModel(dir: string): Promise<Model> {
  await saveModel(dir, { config, tokenizer, weights: initWeights(paramSpecsOf(config), new Rng(3)), metadata: {} });
  return loadModel(dir);
}

const sha16 = async (path: string) =>
  createHash('sha256')
    .update(await readFile(path))
    .digest('hex')
    .slice(0, 16);

/** The base weights with one value moved: a different, valid version. */
function changed(w: Weights, by: number): Weights {
  const out = new Map([...w].map(([k, v]) => [k, Float32Array.from(v)]));
  out.get('lm_head.weight')![0]! += by;
  return out;
}

async function open(dir: string, modelDir: string, model: Model, log: string[] = [], keepVersions?: number) {
  const store = SqliteStore.open(join(dir, 'ttrl.sqlite'));
  const metrics = createMetrics();
  try {
    const versions = await Versions.open({
      store,
      model,
      modelPath: modelDir,
      versionsDir: join(dir, 'versions'),
      metrics,
      sampler: { threads: 1, spin: false },
      keepVersions,
      log: (l) => log.push(l),
    });
    return { store, metrics, versions };
  } catch (e) {
    await store.close();
    throw e;
  }
}

/** The version the sampler serves now: every generate() reports it. */
const samplerVersion = async (v: Versions) =>
  (await v.sampler.generate([[1, 2, 3]], { samplesPerPrompt: 1, maxNewTokens: 2, seed: 1, stopTokens: [tokenizer.eosId], padToken: tokenizer.padId })).version;

test('promote, reject, activate and roll back: one owner of rows, files, the sampler and versions$; a restart serves the active version', async () => {
  const dir = await scratch('ttrl-versions-');
  const modelDir = join(dir, 'model');
  const model = await tinyModel(modelDir);
  const base = model.weights as Weights;
  let { store, versions } = await open(dir, modelDir, model);
  try {
    // A new store: version 0 is the base model, active, and the store knows its fingerprint
    // (the sha256 of model.safetensors, as databases written before hold it).
    assert.deepEqual(
      (await store.versions()).map((r) => [r.version, r.status, r.weights_path]),
      [[0, 'active', resolve(modelDir, WEIGHTS_FILE)]],
    );
    assert.equal(await store.getMeta(FINGERPRINT_KEY), await sha16(join(modelDir, WEIGHTS_FILE)));
    assert.equal(versions.active.version, 0);
    assert.equal(await samplerVersion(versions), 0);
    const seen: number[] = [];
    versions.versions$.subscribe((v) => seen.push(v));

    const w1 = changed(base, 0.5);
    const v1 = await promote(versions, { parent: 0, weights: w1, stats: { steps: 1 } });
    assert.equal(v1, 1);
    const row1 = (await store.version(1))!;
    assert.deepEqual([row1.status, row1.parent, row1.stats], ['active', 0, { steps: 1 }]);
    assert.equal((await store.version(0))!.status, 'retired');
    assert.deepEqual(await loadVersionWeights(row1.weights_path!, config), w1);
    assert.equal(versions.active.version, 1);
    assert.equal(await samplerVersion(versions), 1);

    const v2 = await rejectCandidate(versions, { parent: 1, stats: { steps: 1 }, reason: 'entropy collapsed' });
    const row2 = (await store.version(v2))!;
    assert.deepEqual([v2, row2.status, row2.reason, row2.weights_path, row2.parent], [2, 'rejected', 'entropy collapsed', null, 1]);
    assert.equal(versions.active.version, 1);

    // Admin: back to the base model, then errors that change nothing, then forward again.
    await versions.activate(0, 'test');
    assert.equal(versions.active.version, 0);
    assert.equal(versions.active.weights, base, "version 0 serves the base model's own weights");
    assert.equal(await samplerVersion(versions), 0);
    await assert.rejects(
      versions.activate(2, 'test'),
      (e: ProtocolError) => e.code === 'invalid_message' && /version 2 was rejected and its weights were not kept/.test(e.message),
    );
    await assert.rejects(versions.activate(9, 'test'), (e: ProtocolError) => e.code === 'not_found' && /no model version 9/.test(e.message));
    assert.equal(versions.active.version, 0);
    assert.equal((await store.activeVersion())!.version, 0);
    await versions.activate(1, 'test');
    assert.deepEqual(versions.active.weights, w1);
    assert.deepEqual(seen, [0, 1, 0, 1]);
    assert.deepEqual(
      (await versions.list()).map((r) => [r.version, r.status, r.serving]),
      [
        [0, 'retired', false],
        [1, 'active', true],
        [2, 'rejected', false],
      ],
    );
    const kinds = (await store.events()).map((e) => e.kind).reverse();
    assert.deepEqual(kinds, ['version_promoted', 'version_rejected', 'version_activated', 'version_activated']);
    await versions.close();
    await store.close();

    // A crash mid-update left a candidate; the restart marks it interrupted and serves version 1 from its file.
    const crashed = SqliteStore.open(join(dir, 'ttrl.sqlite'));
    await crashed.addVersion({ parent: 1, status: 'candidate', weightsPath: join(dir, 'versions', 'v3.safetensors') });
    await crashed.close();
    const log: string[] = [];
    ({ store, versions } = await open(dir, modelDir, model, log));
    assert.equal(versions.active.version, 1);
    assert.deepEqual(versions.active.weights, w1);
    assert.equal(await samplerVersion(versions), 1);
    const stale = (await store.version(3))!;
    assert.equal(stale.status, 'rejected');
    assert.match(stale.reason!, /interrupted/);
    assert.deepEqual(log, ['marked 1 unfinished candidate version(s) as interrupted']);
  } finally {
    await versions.close();
    await store.close();
  }
});

test('weights that cannot be written leave the candidate rejected with the reason; the serving version stays', async () => {
  const dir = await scratch('ttrl-versions-');
  const modelDir = join(dir, 'model');
  const model = await tinyModel(modelDir);
  const { store, versions } = await open(dir, modelDir, model);
  try {
    // A file where the versions folder should be.
    await rm(join(dir, 'versions'), { recursive: true });
    await writeFile(join(dir, 'versions'), 'not a folder');
    await assert.rejects(
      promote(versions, { parent: 0, weights: changed(model.weights as Weights, 1), stats: {} }),
      /the weights could not be written to .*v1\.safetensors/,
    );
    const row = (await store.version(1))!;
    assert.equal(row.status, 'rejected');
    assert.match(row.reason!, /the weights could not be written to .*v1\.safetensors/);
    assert.equal(versions.active.version, 0);
    assert.equal((await store.activeVersion())!.version, 0);
    assert.equal(await samplerVersion(versions), 0);
  } finally {
    await versions.close();
    await store.close();
  }
});

test('a corrupt active version file: the start serves its parent (here the base model), the row is corrupt with a reason naming the file', async () => {
  const dir = await scratch('ttrl-versions-');
  const modelDir = join(dir, 'model');
  const model = await tinyModel(modelDir);
  const first = await open(dir, modelDir, model);
  await promote(first.versions, { parent: 0, weights: changed(model.weights as Weights, 1), stats: {} });
  const path = (await first.store.version(1))!.weights_path!;
  await first.versions.close();
  await first.store.close();
  await writeFile(path, 'truncated');
  const log: string[] = [];
  const { store, versions } = await open(dir, modelDir, model, log);
  try {
    const row = (await store.version(1))!;
    assert.equal(row.status, 'corrupt');
    assert.ok(row.reason!.startsWith(`model version 1: cannot load its weights from ${path}: ${path} (9 bytes) has sha256`), row.reason!);
    assert.equal(versions.active.version, 0);
    assert.equal((await store.activeVersion())!.version, 0);
    assert.equal(await samplerVersion(versions), 0);
    assert.deepEqual(
      log.map((l) => l.split(':')[0]),
      ['model version 1 is corrupt', 'serving model version 0, the newest good ancestor of corrupt version 1 (corrupt'],
    );
  } finally {
    await versions.close();
    await store.close();
  }
});

test("the base model's identity: the fingerprint is remembered while the files are unchanged, and another model is refused", async () => {
  const dir = await scratch('ttrl-versions-');
  const modelDir = join(dir, 'model');
  const model = await tinyModel(modelDir);
  const file = join(modelDir, WEIGHTS_FILE);
  const real = await sha16(file);
  const store = SqliteStore.open(join(dir, 'ttrl.sqlite'));
  try {
    assert.deepEqual(await claimBaseModel(store, modelDir), { fingerprint: real, files: [resolve(file)] });
    // Files unchanged (path, size, mtime): the remembered fingerprint stands, nothing is hashed.
    await store.setMeta(FINGERPRINT_KEY, 'remembered');
    assert.equal((await claimBaseModel(store, modelDir)).fingerprint, 'remembered');
    // Touched: hashed again, and found to differ from what the store logs.
    await utimes(file, new Date(), new Date(Date.now() + 5000));
    await assert.rejects(
      claimBaseModel(store, modelDir),
      new RegExp(`logs a different base model \\(weights remembered, this one ${real}, from ${file.replace(/[.]/g, '\\.')}\\)`),
    );
    await store.setMeta(FINGERPRINT_KEY, real);
    assert.equal((await claimBaseModel(store, modelDir)).fingerprint, real);
    // Another model's weights (same shapes, other values) on this store: refused before anything is served.
    const otherDir = join(dir, 'other');
    await saveModel(otherDir, { config, tokenizer, weights: changed(model.weights as Weights, 1), metadata: {} });
    await assert.rejects(claimBaseModel(store, otherDir), /logs a different base model/);
    assert.equal(await store.getMeta(FINGERPRINT_KEY), real);
  } finally {
    await store.close();
  }
});

test('weight files of each format: a single file, a GGUF file, shards by the index; the fingerprint spans them in order', async () => {
  const dir = await scratch('ttrl-versions-');
  const sharded = join(dir, 'sharded');
  await mkdir(sharded);
  await writeFile(join(sharded, 'model-00002-of-00002.safetensors'), 'second');
  await writeFile(join(sharded, 'model-00001-of-00002.safetensors'), 'first');
  await writeFile(
    join(sharded, 'model.safetensors.index.json'),
    JSON.stringify({ weight_map: { b: 'model-00002-of-00002.safetensors', a: 'model-00001-of-00002.safetensors', c: 'model-00002-of-00002.safetensors' } }),
  );
  const shards = [join(sharded, 'model-00001-of-00002.safetensors'), join(sharded, 'model-00002-of-00002.safetensors')];
  assert.deepEqual(await weightFilesOf(sharded), shards);
  assert.equal(await contentFingerprint(shards), createHash('sha256').update('firstsecond').digest('hex').slice(0, 16));
  const gguf = join(dir, 'm.gguf');
  await writeFile(gguf, 'GGUF');
  assert.deepEqual(await weightFilesOf(gguf), [gguf]);
  const single = join(dir, 'single');
  await mkdir(single);
  assert.deepEqual(await weightFilesOf(single), [join(single, WEIGHTS_FILE)]);
  await writeFile(join(sharded, 'model.safetensors.index.json'), '{"metadata": {}}');
  await assert.rejects(weightFilesOf(sharded), /model\.safetensors\.index\.json: no weight_map object/);
  await assert.rejects(weightFilesOf(join(dir, 'nothing')), /ENOENT/);
});

test('--keep-versions: the newest retired versions keep their files, older ones lose them but keep their rows; a pruned version cannot be activated and a fallback passes over it', async () => {
  const dir = await scratch('ttrl-prune-');
  const modelDir = join(dir, 'model');
  const model = await tinyModel(modelDir);
  const base = model.weights as Weights;
  let { store, versions } = await open(dir, modelDir, model, [], 2);
  try {
    for (let v = 1; v <= 5; v++) await promote(versions, { parent: v - 1, weights: changed(base, v / 10), stats: { v } });
    // v5 active; v4 and v3 retired with files; v2 and v1 pruned; v0 is the model itself.
    const rows = new Map((await store.versions()).map((r) => [r.version, r]));
    assert.deepEqual(
      [1, 2].map((v) => [rows.get(v)!.status, rows.get(v)!.weights_path]),
      [
        ['retired', null],
        ['retired', null],
      ],
    );
    assert.ok([3, 4, 5].every((v) => rows.get(v)!.weights_path !== null));
    assert.match(rows.get(1)!.reason!, /deleted to keep the newest 2 retired versions' files \(--keep-versions\)/);
    assert.deepEqual(rows.get(1)!.stats, { v: 1 });
    assert.equal(rows.get(0)!.weights_path, resolve(modelDir, WEIGHTS_FILE));
    for (const v of [1, 2]) await assert.rejects(readFile(join(dir, 'versions', `v${v}.safetensors`)), /ENOENT/);
    await assert.rejects(versions.activate(1, 'admin'), (e: unknown) => e instanceof ProtocolError && /weights were not kept/.test(e.message));
    assert.ok((await store.events(5)).some((e) => e.kind === 'versions_pruned'));
    // Roll back to v3 and damage it: a restart walks v3's lineage past pruned v2 and v1
    // (passed over, not marked corrupt) to the base model.
    await versions.activate(3, 'admin');
    await versions.close();
    await store.close();
    await writeFile(join(dir, 'versions', 'v3.safetensors'), 'damaged');
    const log: string[] = [];
    ({ store, versions } = await open(dir, modelDir, model, log, 2));
    assert.equal(versions.active.version, 0);
    assert.deepEqual(await Promise.all([1, 2, 3].map(async (v) => (await store.version(v))!.status)), ['retired', 'retired', 'corrupt']);
    assert.ok(
      log.some((l) => /serving model version 0, the newest good ancestor of corrupt version 3/.test(l)),
      log.join('\n'),
    );
  } finally {
    await versions.close();
    await store.close();
  }
});
