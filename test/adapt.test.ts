// Offline TTRL end to end on a tiny model: majority-vote rewards raise the model's
// agreement with itself (the majority ratio), with no labels used for training.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pretrain } from '../src/train/pretrain.ts';
import { inMemory, loadModel } from '../src/formats/checkpoint.ts';
import { adapt, ADAPT_DEFAULTS } from '../src/ttrl/adapt.ts';
import { suite } from '../src/tasks/suites.ts';

test('TTRL with majority rewards raises agreement on a tiny model', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ttrl-adapt-'));
  try {
    const arch = { contextLength: 64, dModel: 32, nLayers: 1, nHeads: 2, tiedHead: false };
    await pretrain({
      out: dir,
      steps: 150,
      seed: 1,
      batchSize: 32,
      lr: 3e-3,
      warmup: 10,
      anneal: 0,
      aggregation: 'sequence-mean',
      checkpointEvery: 1000,
      threads: 1,
      arch,
    });
    const model = await loadModel(dir);
    const questions = suite('in-distribution', 16, 4);
    const rows: number[] = [];
    const r = await adapt(
      model,
      questions,
      {
        ...ADAPT_DEFAULTS,
        steps: 12,
        votes: 8,
        trainSamples: 8,
        questionsPerStep: 8,
        lr: 3e-3,
        gate: 0,
        evalEvery: 0,
        guard: false,
        threads: 1,
        trainThreads: 1,
      },
      (row) => rows.push(row.majority_ratio),
    );
    assert.equal(rows.length, 12);
    if (process.env.VERBOSE) console.log(r.before, r.after);
    assert.ok(r.before && r.after);
    assert.ok(r.after!.majority_ratio > r.before!.majority_ratio + 0.05, `agreement ${r.before!.majority_ratio} -> ${r.after!.majority_ratio}`);
    // The weights changed, and every parameter stayed finite.
    for (const [name, w] of r.weights) assert.ok(w.every(Number.isFinite), name);
    assert.notDeepEqual(r.weights.get('wte'), (await inMemory(model.weights)).get('wte'));
  } finally {
    await rm(dir, { recursive: true });
  }
});
