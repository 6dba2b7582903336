// Pretraining as users run it: a short run lowers the loss, an interrupted run resumes to
// exactly the weights of an uninterrupted one, and `ttrl eval` scores the result.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pretrain, pretrainLr, type PretrainOptions } from '../src/train/pretrain.ts';
import { inMemory, loadModel } from '../src/formats/checkpoint.ts';
import { suite } from '../src/tasks/suites.ts';
import { ttrl } from './helpers/cli.ts';

const arch = { contextLength: 64, dModel: 32, nLayers: 1, nHeads: 2, tiedHead: false };
const base = (out: string, steps: number): PretrainOptions => ({
  out,
  steps,
  seed: 3,
  batchSize: 16,
  lr: 3e-3,
  warmup: 5,
  anneal: 0,
  aggregation: 'sequence-mean',
  checkpointEvery: 10,
  threads: 1,
  arch,
});

test('the learning-rate schedule warms up, then decays without knowing the total', () => {
  assert.equal(pretrainLr(1e-3, 100, 50), 5e-4);
  assert.equal(pretrainLr(1e-3, 100, 100), 1e-3);
  assert.ok(Math.abs(pretrainLr(1e-3, 100, 400) - 5e-4) < 1e-12);
  // the anneal: untouched until the last N steps, then linearly to 0
  assert.equal(pretrainLr(1e-3, 100, 400, 1000, 100), pretrainLr(1e-3, 100, 400));
  assert.ok(Math.abs(pretrainLr(1e-3, 100, 951, 1000, 100) - 0.5 * pretrainLr(1e-3, 100, 951)) < 1e-12);
  assert.ok(pretrainLr(1e-3, 100, 1000, 1000, 100) > 0 && pretrainLr(1e-3, 100, 1000, 1000, 100) < 2e-5);
});

test('pretraining lowers the loss, and an interrupted run resumes to the same weights', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ttrl-pretrain-'));
  try {
    const losses: number[] = [];
    const straight = await pretrain({ ...base(join(dir, 'a'), 30), onStep: (s) => losses.push(s.loss) });
    assert.equal(straight.step, 30);
    assert.ok(straight.loss < 0.9 * losses[0]!, `loss ${losses[0]} -> ${straight.loss}`);

    let n = 0;
    const stopped = await pretrain({ ...base(join(dir, 'b'), 30), shouldStop: () => ++n === 17 });
    assert.equal(stopped.step, 17);
    const resumed = await pretrain(base(join(dir, 'b'), 30));
    assert.equal(resumed.resumedFrom, 17);
    const a = await inMemory((await loadModel(join(dir, 'a'))).weights);
    const b = await loadModel(join(dir, 'b'));
    const bw = await inMemory(b.weights);
    for (const [name, w] of a) assert.deepEqual(bw.get(name), w, name);
    assert.equal(b.metadata.pretrain_step, '30');

    await assert.rejects(pretrain({ ...base(join(dir, 'b'), 40), seed: 4 }), /holds a run with seed 3; resume it with --seed 3/);

    // ttrl eval on the result: every field, in range. A context of 64 leaves no room for the
    // arithmetic task's 72 new tokens: eval says so, and runs with fewer.
    const qfile = join(dir, 'q.jsonl');
    await writeFile(
      qfile,
      suite('in-distribution', 6, 1)
        .map((q) => JSON.stringify(q))
        .join('\n'),
    );
    const full = await ttrl('eval', '--model', join(dir, 'a'), '--questions', qfile, '--votes', '4', '--threads', '1', '--json');
    assert.match(full.stderr, /answers of up to 72 new tokens leave no room for a prompt in the context of .* \(64 tokens\); set --max-new-tokens below 64/);
    const r = await ttrl('eval', '--model', join(dir, 'a'), '--questions', qfile, '--votes', '4', '--threads', '1', '--max-new-tokens', '48', '--json');
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    assert.deepEqual(Object.keys(out).sort(), [
      'ece',
      'maj_at_n',
      'mean_confidence',
      'mean_len',
      'parsable',
      'pass_at_1',
      'questions',
      'reliability',
      'votes',
      'wall_s',
    ]);
    assert.equal(out.questions, 6);
    assert.equal(out.votes, 4);
    for (const k of ['pass_at_1', 'maj_at_n', 'parsable', 'mean_confidence', 'ece']) assert.ok(out[k] >= 0 && out[k] <= 1, k);
    assert.equal(out.reliability.length, 10, 'ten bins of confidence');
    assert.ok(out.mean_len >= 1);

    await writeFile(qfile, '{"question":"1+2="}\n');
    const noAnswer = await ttrl('eval', '--model', join(dir, 'a'), '--questions', qfile);
    assert.notEqual(noAnswer.code, 0);
    assert.match(noAnswer.stderr, /question 1 has no answer to score against/);
  } finally {
    await rm(dir, { recursive: true });
  }
});
