// The reference model's support of a majority (src/ttrl/reference.ts) on the shipped model,
// with real workers: sampled and scored by the same weights, every importance weight is 1 and
// support is the majority's share of the votes; scored by other weights (the output layer
// sharpened), it moves away from it. The guard's check on confidence without support
// (candidate-checks.ts) decides on what adaptation measures.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sampler } from '../src/engine/sampler.ts';
import { Scorer } from '../src/engine/scorer.ts';
import { inMemory, loadModel } from '../src/formats/checkpoint.ts';
import { DEFAULT_MODEL_DIR } from '../src/config/settings.ts';
import { rolloutBatch } from '../src/sampling/rollout.ts';
import { importanceSupport, referenceSupport } from '../src/ttrl/reference.ts';
import { judgeConfidence } from '../src/ttrl/candidate-checks.ts';
import { suite } from '../src/tasks/suites.ts';
import { startTestServer } from './helpers/server.ts';
import type { UpdateOutcome } from '../src/loop/adaptation.ts';
import { adapt, ADAPT_DEFAULTS } from '../src/ttrl/adapt.ts';

test('reference support: the vote share under the same weights, something else under others', async () => {
  const m = await loadModel(DEFAULT_MODEL_DIR);
  const weights = await inMemory(m.weights);
  const sampler = await Sampler.create({ config: m.config, weights, threads: 1 });
  const same = await Scorer.create({ config: m.config, weights, threads: 1 });
  const sharper = new Map(weights);
  sharper.set(
    'lm_head.weight',
    weights.get('lm_head.weight')!.map((x) => x * 2),
  );
  const other = await Scorer.create({ config: m.config, weights: sharper, threads: 1 });
  try {
    const questions = suite('4-operand', 12, 2).map((q) => q.question);
    const rollouts = await rolloutBatch(sampler, m.tokenizer, questions, { votes: 8, temperature: 1, seed: 3 });
    const support = await referenceSupport(same, rollouts, m.tokenizer.padId, m.config.contextLength);
    rollouts.forEach((r, i) => assert.ok(Math.abs(support[i]! - (r.vote.label === null ? 0 : r.vote.ratio)) < 1e-3, `${support[i]} vs ${r.vote.ratio}`));
    const moved = await referenceSupport(other, rollouts, m.tokenizer.padId, m.config.contextLength);
    assert.ok(
      moved.some((x, i) => Math.abs(x - support[i]!) > 0.05),
      'another reference gives another support',
    );
    for (const x of moved) assert.ok(x >= 0 && x <= 1);
  } finally {
    await Promise.all([sampler.close(), same.close(), other.close()]);
  }
});

test('importance support: the mean weight of the majority samples over the votes, scaled up when only some were scored, clipped to 1', () => {
  // Two majority samples of 8 votes: weights e^0 and e^ln 3 -> (1 + 3) / 8.
  assert.ok(
    Math.abs(
      importanceSupport(
        [
          { target: -2, sampled: -2 },
          { target: Math.log(3) - 1, sampled: -1 },
        ],
        8,
      ) - 0.5,
    ) < 1e-12,
  );
  // The same two standing for 4 majority samples: twice as much.
  assert.ok(
    Math.abs(
      importanceSupport(
        [
          { target: -2, sampled: -2 },
          { target: Math.log(3) - 1, sampled: -1 },
        ],
        8,
        4,
      ) - 1,
    ) < 1e-12,
  );
  assert.equal(importanceSupport([{ target: 0, sampled: -30 }], 8), 1, 'clipped');
  assert.equal(importanceSupport([], 8), 0);
});

test('the confidence guard rejects a rise of confidence on unbacked majorities beyond its bound, and only when on', () => {
  assert.equal(judgeConfidence({ questions: 5, rise: 0.3 }, undefined), null, 'off by default');
  assert.equal(judgeConfidence({ questions: 5, rise: 0.05 }, 0.1), null);
  assert.equal(judgeConfidence({ questions: 0, rise: 9 }, 0.1), null, 'nothing unbacked: nothing to judge');
  assert.match(
    judgeConfidence({ questions: 5, rise: 0.3 }, 0.1)!,
    /surer of answers the shipped model does not back: on 5 such questions the candidate's probability of the majority answer is 0\.300 above the shipped model's \(at most 0\.1/,
  );
});

test('live, on questions the shipped model has no prior for: a candidate surer of its majorities than the shipped model is rejected by --confidence-rise 0, and served with a bound it cannot reach', async () => {
  for (const confidenceRise of [0, 1]) {
    const s = await startTestServer(
      { adapt: true, votes: 8, updateEvery: 8, maxClientShare: 1, questionsPerStep: 8, probeQuestions: 0, anchors: 0, lr: 3e-5, confidenceRise },
      { prefix: 'ttrl-confidence-' },
    );
    try {
      const ended = new Promise<UpdateOutcome>((resolve) => s.adaptation.updates$.subscribe((e) => e.phase === 'end' && resolve(e.outcome)));
      for (const q of suite('3-digit', 8, 5)) {
        const r = await fetch(`${s.url}/v1/ask`, { method: 'POST', body: JSON.stringify({ question: q.question }) });
        assert.equal(r.status, 200);
      }
      const o = await ended;
      const stats = o.stats as Record<string, number>;
      assert.ok(stats.unbacked_questions! > 0, JSON.stringify(o));
      assert.ok(stats.unbacked_candidate_support! > stats.unbacked_reference_support!, JSON.stringify(stats));
      if (confidenceRise === 0) {
        assert.equal(o.outcome, 'rejected', JSON.stringify(o));
        assert.match(o.reason!, /surer of answers the shipped model does not back/);
      } else assert.equal(o.outcome, 'promoted', JSON.stringify(o));
    } finally {
      await s.close();
    }
  }
});

test('offline, on questions the shipped model has no prior for: ttrl adapt rolls back when its confidence rises past --confidence-rise over the shipped model support', async () => {
  const m = await loadModel(DEFAULT_MODEL_DIR);
  const questions = suite('3-digit', 8, 6).map((q) => ({ question: q.question, answer: q.answer }));
  const run = (confidenceRise: number | undefined) =>
    adapt(m, questions, {
      ...ADAPT_DEFAULTS,
      steps: 6,
      questionsPerStep: 8,
      votes: 8,
      trainSamples: 8,
      lr: 3e-4,
      gate: 0,
      evalEvery: 0,
      guard: false,
      threads: 1,
      confidenceRise,
    });
  const on = await run(0.02);
  assert.ok(
    on.rows.some((r) => /surer of answers the shipped model does not back/.test(r.event)),
    JSON.stringify(on.rows.map((r) => [r.confidence_rise, r.event])),
  );
  assert.ok(on.rollbacks > 0);
  assert.ok(on.rows.every((r) => r.confidence_rise !== null));
  const off = await run(undefined);
  assert.equal(off.rollbacks, 0);
  assert.ok(off.rows.every((r) => r.confidence_rise === null));
  // Unchecked, the same run grows surer than the checked one let it.
  assert.ok(off.after!.majority_ratio > on.after!.majority_ratio, `${off.after!.majority_ratio} vs ${on.after!.majority_ratio}`);
});
