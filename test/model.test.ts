// A whole small transformer: every loss variant's gradient w.r.t. every weight against
// central finite differences in float64, plus the stepwise decode graph against a full forward.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildDecoder, buildLossAndGrad, type BatchLayout, type LossOptions } from '../src/engine/graphs.ts';
import { createSession, f64, i64, type ort } from '../src/engine/ort.ts';
import { initWeights, paramSpecs, type GPTConfig } from '../src/model/gpt.ts';
import { Rng } from '../src/engine/rng.ts';

const tiny: GPTConfig = { vocabSize: 7, contextLength: 8, dModel: 8, nLayers: 2, nHeads: 2, tiedHead: false };

function batchFeeds(rng: Rng) {
  // Two sequences of 5 tokens; the second is right-padded after 4.
  const ids = [1, 2, 3, 4, 5, 6, 0, 2, 3, 6];
  const mask = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0];
  const lossMask = [0, 0, 1, 1, 1, 0, 0, 1, 1, 0];
  const lp = () => f64(Float64Array.from({ length: 10 }, () => -1 - rng.next()), [2, 5]);
  return {
    input_ids: i64(ids, [2, 5]),
    attention_mask: i64(mask, [2, 5]),
    loss_mask: f64(Float64Array.from(lossMask), [2, 5]),
    advantages: f64(Float64Array.of(0.7, -1.3), [2]),
    old_logprobs: lp(),
    ref_logprobs: lp(),
    clip_eps: f64(Float64Array.of(0.2), []),
    kl_coef: f64(Float64Array.of(0.3), []),
    entropy_coef: f64(Float64Array.of(0.05), []),
  };
}

/** Two prompts (the first left-padded), two completions each (one right-padded). */
function groupedFeeds(rng: Rng) {
  const lp = () => f64(Float64Array.from({ length: 12 }, () => -1 - rng.next()), [4, 3]);
  return {
    ...batchFeeds(rng),
    prompt_ids: i64([6, 1, 2, 3, 4, 5], [2, 3]),
    prompt_mask: i64([0, 1, 1, 1, 1, 1], [2, 3]),
    input_ids: i64([2, 3, 4, 5, 6, 6, 1, 1, 2, 3, 4, 0], [4, 3]),
    attention_mask: i64([1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1], [4, 3]),
    loss_mask: f64(Float64Array.from([1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1]), [4, 3]),
    advantages: f64(Float64Array.of(0.7, -1.3, 0.2, 1.1), [4]),
    old_logprobs: lp(),
    ref_logprobs: lp(),
  };
}

async function lossGradError(c: GPTConfig, o: LossOptions, layout: BatchLayout = 'flat'): Promise<number> {
  const rng = new Rng(3);
  // Larger-than-init weights so attention and MLP are far from linear.
  const weights = new Map([...initWeights(c, rng)].map(([k, v]) => [k, Float64Array.from(v, (x) => x * 10 + (k.includes('ln') ? rng.normal() * 0.1 : 0))]));
  const specs = paramSpecs(c);
  const session = await createSession(buildLossAndGrad(c, o, 'float64', layout));
  const data = layout === 'flat' ? batchFeeds(rng) : groupedFeeds(rng);
  const feeds = (): Record<string, ort.Tensor> => {
    const f: Record<string, ort.Tensor> = {};
    for (const name of session.inputNames) f[name] = (data as Record<string, ort.Tensor>)[name] ?? f64(weights.get(name)!, specs.find((s) => s.name === name)!.shape);
    return f;
  };
  const base = await session.run(feeds());
  let diff = 0;
  let norm = 0;
  const h = 1e-6;
  for (const s of specs) {
    const w = weights.get(s.name)!;
    const analytic = base[`grad.${s.name}`]!.data as Float64Array;
    for (let j = 0; j < w.length; j++) {
      const orig = w[j]!;
      w[j] = orig + h;
      const plus = (await session.run(feeds())).loss!.data[0] as number;
      w[j] = orig - h;
      const minus = (await session.run(feeds())).loss!.data[0] as number;
      w[j] = orig;
      const numeric = (plus - minus) / (2 * h);
      diff += (analytic[j]! - numeric) ** 2;
      norm += analytic[j]! ** 2 + numeric ** 2;
    }
  }
  return Math.sqrt(diff) / Math.sqrt(norm);
}

const variants: [string, GPTConfig, LossOptions, BatchLayout?][] = [
  ['supervised cross-entropy, untied head', tiny, { objective: 'sft', aggregation: 'token-mean', kl: false, ppoClip: false, entropyBonus: false }],
  ['GRPO with KL, PPO clipping and entropy bonus, tied head', { ...tiny, tiedHead: true }, { objective: 'grpo', aggregation: 'token-mean', kl: true, ppoClip: true, entropyBonus: true }],
  ['GRPO, sequence-mean aggregation', tiny, { objective: 'grpo', aggregation: 'sequence-mean', kl: false, ppoClip: false, entropyBonus: false }],
  ['GRPO with KL and PPO clipping, grouped layout (shared prompt cache)', tiny, { objective: 'grpo', aggregation: 'token-mean', kl: true, ppoClip: true, entropyBonus: false }, 'grouped'],
];
for (const [name, c, o, layout] of variants) {
  test(`whole-transformer gradient, ${name}, matches finite differences`, async () => {
    const err = await lossGradError(c, o, layout);
    assert.ok(err < 1e-6, `relative error ${err}`);
  });
}

test('prefill + decode with a KV cache give the same logits as one full forward', async () => {
  const c: GPTConfig = { ...tiny, contextLength: 16 };
  const w = initWeights(c, new Rng(5));
  const specs = paramSpecs(c);
  const wf: Record<string, ort.Tensor> = {};
  for (const s of specs) wf[s.name] = f64(Float64Array.from(w.get(s.name)!, (x) => x * 5), s.shape);
  const prefill = await createSession(buildDecoder(c, false, 'float64'));
  const decode = await createSession(buildDecoder(c, true, 'float64'));
  // Row 0 is left-padded by two; row 1 is full. 3 prompt tokens + 2 decoded.
  const ids = [[6, 6, 1], [2, 3, 4]];
  const mask = [[0, 0, 1], [1, 1, 1]];
  const pos = [[0, 0, 0], [0, 1, 2]];
  const next = [[5, 2], [1, 3]];
  const full = await prefill.run({
    ...wf,
    input_ids: i64(ids.flatMap((r, i) => [...r, ...next[i]!]), [2, 5]),
    attention_mask: i64(mask.flatMap((r) => [...r, 1, 1]), [2, 5]),
    position_ids: i64(pos.flatMap((r) => [...r, r[2]! + 1, r[2]! + 2]), [2, 5]),
  });
  let out = await prefill.run({ ...wf, input_ids: i64(ids.flat(), [2, 3]), attention_mask: i64(mask.flat(), [2, 3]), position_ids: i64(pos.flat(), [2, 3]) });
  const fullLogits = full.logits!.data as Float64Array;
  const V = c.vocabSize;
  let m = mask.map((r) => [...r]);
  for (let step = 0; step < 2; step++) {
    const feeds: Record<string, ort.Tensor> = { ...wf };
    for (let l = 0; l < c.nLayers; l++) {
      feeds[`past_key_values.${l}.key`] = out[`present.${l}.key`]!;
      feeds[`past_key_values.${l}.value`] = out[`present.${l}.value`]!;
    }
    m = m.map((r) => [...r, 1]);
    out = await decode.run({
      ...feeds,
      input_ids: i64(next.map((r) => r[step]!), [2, 1]),
      attention_mask: i64(m.flat(), [2, m[0]!.length]),
      position_ids: i64([pos[0]![2]! + 1 + step, pos[1]![2]! + 1 + step], [2, 1]),
    });
    const got = out.logits!.data as Float64Array;
    for (let b = 0; b < 2; b++)
      for (let k = 0; k < V; k++) {
        const want = fullLogits[(b * 5 + 3 + step) * V + k]!;
        assert.ok(Math.abs(got[b * V + k]! - want) < 1e-9, `step ${step} row ${b}: ${got[b * V + k]} vs ${want}`);
      }
  }
});
