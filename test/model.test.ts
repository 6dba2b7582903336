// Whole small transformers of each family: every loss variant's gradient w.r.t. every weight
// against central finite differences in float64, plus the stepwise decode graph against a
// full forward (the KV cache, grouped-query heads and rotary positions included).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildDecoder, type BatchLayout } from '../src/engine/graphs.ts';
import type { Objective } from '../src/engine/objective.ts';
import { objective as sftLoss } from '../src/engine/sft.ts';
import { objective as grpoLoss } from '../src/ttrl/objective.ts';
import { createSession, f64, i64, type ort } from '../src/engine/ort.ts';
import { dimsOf, paramSpecsOf, type ModelConfig } from '../src/model/families.ts';
import { Rng } from '../src/util/rng.ts';
import { llamaBase, modelGradError, qwen2Tiny, qwen3Tiny, testWeights, tiny } from './helpers/model-check.ts';

const sft = sftLoss({ aggregation: 'token-mean' });
const grpoAll = grpoLoss({ aggregation: 'token-mean', klTerm: true, ppoClip: true, entropyTerm: true });
const variants: [string, ModelConfig, Objective, BatchLayout?][] = [
  ['supervised cross-entropy, untied head', tiny, sft],
  [
    'GRPO with KL, PPO clipping and entropy bonus, tied head',
    { ...tiny, tiedHead: true },
    grpoLoss({ aggregation: 'token-mean', klTerm: true, ppoClip: true, entropyTerm: true }),
  ],
  ['GRPO, sequence-mean aggregation', tiny, grpoLoss({ aggregation: 'sequence-mean', klTerm: false, ppoClip: false, entropyTerm: false })],
  [
    'GRPO with KL and PPO clipping, grouped layout (shared prompt cache)',
    tiny,
    grpoLoss({ aggregation: 'token-mean', klTerm: true, ppoClip: true, entropyTerm: false }),
    'grouped',
  ],
  ['Llama, supervised cross-entropy, untied head', llamaBase, sft],
  ['Qwen2 shape (q/k/v biases, GQA, tied head), GRPO with KL, PPO clipping and entropy bonus', qwen2Tiny, grpoAll],
  ['Qwen3 shape (q/k norm, wide heads, GQA, every bias, Llama 3 rope scaling), GRPO with KL, PPO clipping and entropy bonus', qwen3Tiny, grpoAll],
  [
    'Qwen2 shape, grouped layout (shared prompt cache)',
    qwen2Tiny,
    grpoLoss({ aggregation: 'sequence-mean', klTerm: true, ppoClip: true, entropyTerm: false }),
    'grouped',
  ],
];
for (const [name, c, o, layout] of variants) {
  test(`whole-transformer gradient, ${name}, matches finite differences`, async () => {
    const err = await modelGradError(c, testWeights(c, new Rng(3)), o, layout);
    assert.ok(err < 1e-6, `relative error ${err}`);
  });
}

const decoders: [string, ModelConfig][] = [
  ['GPT', { ...tiny, contextLength: 16 }],
  ['Qwen2 shape', qwen2Tiny],
  ['Qwen3 shape', qwen3Tiny],
];
for (const [name, c] of decoders)
  test(`prefill + decode with a KV cache give the same logits as one full forward, ${name}`, async () => {
    const w = testWeights(c, new Rng(5), 5);
    const specs = paramSpecsOf(c);
    const wf: Record<string, ort.Tensor> = {};
    for (const s of specs) wf[s.name] = f64(w.get(s.name)!, s.shape);
    const prefill = await createSession(buildDecoder(c, false, 'float64'));
    const decode = await createSession(buildDecoder(c, true, 'float64'));
    // Row 0 is left-padded by two; row 1 is full. 3 prompt tokens + 2 decoded.
    const ids = [
      [6, 6, 1],
      [2, 3, 4],
    ];
    const mask = [
      [0, 0, 1],
      [1, 1, 1],
    ];
    const pos = [
      [0, 0, 0],
      [0, 1, 2],
    ];
    const next = [
      [5, 2],
      [1, 3],
    ];
    const full = await prefill.run({
      ...wf,
      input_ids: i64(
        ids.flatMap((r, i) => [...r, ...next[i]!]),
        [2, 5],
      ),
      attention_mask: i64(
        mask.flatMap((r) => [...r, 1, 1]),
        [2, 5],
      ),
      position_ids: i64(
        pos.flatMap((r) => [...r, r[2]! + 1, r[2]! + 2]),
        [2, 5],
      ),
    });
    let out = await prefill.run({ ...wf, input_ids: i64(ids.flat(), [2, 3]), attention_mask: i64(mask.flat(), [2, 3]), position_ids: i64(pos.flat(), [2, 3]) });
    const fullLogits = full.logits!.data as Float64Array;
    const V = c.vocabSize;
    let m = mask.map((r) => [...r]);
    for (let step = 0; step < 2; step++) {
      const feeds: Record<string, ort.Tensor> = { ...wf };
      for (let l = 0; l < dimsOf(c).layers; l++) {
        feeds[`past_key_values.${l}.key`] = out[`present.${l}.key`]!;
        feeds[`past_key_values.${l}.value`] = out[`present.${l}.value`]!;
      }
      m = m.map((r) => [...r, 1]);
      out = await decode.run({
        ...feeds,
        input_ids: i64(
          next.map((r) => r[step]!),
          [2, 1],
        ),
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
