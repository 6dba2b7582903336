// Whole-model checks shared by the model and checkpoint tests: tiny configs of each family,
// weights far from init, and the float64 finite-difference check of a whole loss.
import { buildLossAndGrad, type BatchLayout } from '../../src/engine/graphs.ts';
import type { Objective } from '../../src/engine/objective.ts';
import { loraSpecs, type LoraConfig } from '../../src/model/lora.ts';
import { createSession, f64, i64, type ort } from '../../src/engine/ort.ts';
import { initWeights } from '../../src/model/family.ts';
import { paramSpecsOf, type ModelConfig } from '../../src/model/families.ts';
import type { GPTConfig } from '../../src/model/gpt.ts';
import type { LlamaConfig } from '../../src/model/llama.ts';
import { Rng } from '../../src/util/rng.ts';

export const tiny: GPTConfig = { family: 'gpt', vocabSize: 7, contextLength: 8, dModel: 8, nLayers: 2, nHeads: 2, tiedHead: false };
export const llamaBase: LlamaConfig = {
  family: 'llama',
  vocabSize: 7,
  contextLength: 16,
  hiddenSize: 8,
  intermediateSize: 12,
  layers: 2,
  heads: 2,
  kvHeads: 2,
  headDim: 4,
  rmsNormEps: 1e-6,
  ropeTheta: 10000,
  tiedEmbeddings: false,
  qkvBias: false,
  oBias: false,
  mlpBias: false,
  qkNorm: false,
};
/** Qwen2's shape: q/k/v biases, grouped-query attention (2 query heads per kv head), tied head. */
export const qwen2Tiny: LlamaConfig = { ...llamaBase, heads: 4, kvHeads: 2, headDim: 2, qkvBias: true, tiedEmbeddings: true, ropeTheta: 1e6 };
/** Qwen3's shape: q/k RMSNorm per head, head_dim wider than hidden/heads, GQA; plus o and MLP biases and Llama 3 rope scaling. */
export const qwen3Tiny: LlamaConfig = {
  ...llamaBase,
  heads: 4,
  kvHeads: 2,
  headDim: 4,
  qkNorm: true,
  oBias: true,
  qkvBias: true,
  mlpBias: true,
  ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalContext: 8 },
};

function batchFeeds(rng: Rng) {
  // Two sequences of 5 tokens; the second is right-padded after 4.
  const ids = [1, 2, 3, 4, 5, 6, 0, 2, 3, 6];
  const mask = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0];
  const lossMask = [0, 0, 1, 1, 1, 0, 0, 1, 1, 0];
  const lp = () =>
    f64(
      Float64Array.from({ length: 10 }, () => -1 - rng.next()),
      [2, 5],
    );
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
  const lp = () =>
    f64(
      Float64Array.from({ length: 12 }, () => -1 - rng.next()),
      [4, 3],
    );
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

/** Larger-than-init weights so attention and MLP are far from linear; norm gains and biases off their init values. */
export function testWeights(c: ModelConfig, rng: Rng, scale = 10): Map<string, Float64Array> {
  const specs = paramSpecsOf(c);
  const init = initWeights(specs, rng);
  return new Map(specs.map((s) => [s.name, Float64Array.from(init.get(s.name)!, (x) => (s.init === 'normal' ? x * scale : x + rng.normal() * 0.1))]));
}

/**
 * Relative error ||analytic - numeric|| / (||analytic|| + ||numeric||) of the loss gradient
 * w.r.t. every trained tensor (every weight; with `lora`, the adapters only, on the frozen
 * base `weights`), in float64, numeric by central differences over every coordinate.
 */
export async function modelGradError(
  c: ModelConfig,
  weights: Map<string, Float64Array>,
  o: Objective,
  layout: BatchLayout = 'flat',
  lora?: { config: LoraConfig; adapters: Map<string, Float64Array> },
): Promise<number> {
  const rng = new Rng(3);
  const specs = paramSpecsOf(c);
  const adapterSpecs = lora ? loraSpecs(c, lora.config) : [];
  const graph = buildLossAndGrad(c, o, 'float64', layout, { lora: lora?.config });
  const session = await createSession(graph);
  const data = layout === 'flat' ? batchFeeds(rng) : groupedFeeds(rng);
  const all = [...specs, ...adapterSpecs];
  const values = new Map([...weights, ...(lora?.adapters ?? [])]);
  const feeds = (): Record<string, ort.Tensor> => {
    const f: Record<string, ort.Tensor> = {};
    for (const name of session.inputNames)
      f[name] = (data as Record<string, ort.Tensor>)[name] ?? f64(values.get(name)!, all.find((s) => s.name === name)!.shape);
    return f;
  };
  const base = await session.run(feeds());
  let diff = 0;
  let norm = 0;
  const h = 1e-6;
  for (const s of lora ? adapterSpecs : specs) {
    const w = values.get(s.name)!;
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
