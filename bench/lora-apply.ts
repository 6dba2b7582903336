// How a LoRA sampler applies its adapters, timed: in the graph (the base stays mapped and
// prepacked; a swap hands only the adapter tensors) against merged on swap (full weights fed
// as inputs). On the shipped model (weights in memory, so no prepacking either way),
// stories260K (test fixture) and a random Llama of a given shape, both mapped. Prints one
// JSON line last. A quick measure, not the real-model benchmark (that is bench/llama.ts).
//
//   npm run bench:lora-apply -- [--hidden 256] [--layers 4] [--reps 3] [--threads 1]
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { Sampler } from '../src/engine/sampler.ts';
import { loadModel, weightsToTensors } from '../src/formats/checkpoint.ts';
import { initWeights, type Weights } from '../src/model/family.ts';
import { writeSafetensors } from '../src/formats/safetensors.ts';
import { paramSpecsOf, type ModelConfig } from '../src/model/families.ts';
import type { LlamaConfig } from '../src/model/llama.ts';
import { initAdapters, loraConfigFor, loraSpecs } from '../src/model/lora.ts';
import { weightFileOf, type WeightSource } from '../src/formats/weight-file.ts';
import { Rng } from '../src/util/rng.ts';

const o = new Command()
  .option('--hidden <n>', 'hidden size of the random Llama', '256')
  .option('--layers <n>', 'layers of the random Llama', '4')
  .option('--reps <n>', 'timed repetitions (median), after one warm-up', '3')
  .option('--threads <n>', 'threads', '1')
  .parse()
  .opts<{ hidden: string; layers: string; reps: string; threads: string }>();
const reps = Number(o.reps);

/** Adapters with B nonzero, as after training (fresh ones would be all-zero updates). */
function trainedAdapters(c: ModelConfig, rank: number): Weights {
  const lora = loraConfigFor(c, { rank });
  const a = initAdapters(c, lora, new Rng(1));
  const rng = new Rng(2);
  for (const s of loraSpecs(c, lora))
    if (s.name.endsWith('lora_B.weight'))
      a.set(
        s.name,
        a.get(s.name)!.map(() => rng.normal() * 0.01),
      );
  return a;
}

async function time(c: ModelConfig, weights: WeightSource, how: 'graph' | 'merge', rank: number) {
  const lora = loraConfigFor(c, { rank });
  const adapters = trainedAdapters(c, rank);
  const s = await Sampler.create({ config: c, weights, lora, adapters, applyAdapters: how, threads: Number(o.threads) });
  try {
    const prompts = [Array.from({ length: 16 }, (_, i) => 1 + (i % 50))];
    const run = (n: number) => s.generate(prompts, { samplesPerPrompt: 8, maxNewTokens: n, seed: 0, temperature: 1, stopTokens: [], padToken: 0 });
    const median = async (fn: () => Promise<unknown>) => {
      await fn();
      const ts: number[] = [];
      for (let i = 0; i < reps; i++) {
        const t = performance.now();
        await fn();
        ts.push(performance.now() - t);
      }
      return ts.sort((a, b) => a - b)[Math.floor(reps / 2)]!;
    };
    const N = 48;
    const full = await median(() => run(N));
    const first = await median(() => run(1));
    const swap = await median(() => s.setAdapters(adapters, 1));
    return { how, decode_step_ms: +((full - first) / (N - 1)).toFixed(3), prefill_ms: +first.toFixed(1), swap_ms: +swap.toFixed(1) };
  } finally {
    await s.close();
  }
}

const results: Record<string, unknown>[] = [];
const shipped = await loadModel(fileURLToPath(new URL('../models/arith-tiny', import.meta.url)));
for (const how of ['graph', 'merge'] as const) results.push({ model: 'arith-tiny (in memory)', ...(await time(shipped.config, shipped.weights, how, 16)) });
const stories = await loadModel(fileURLToPath(new URL('../test/fixtures/stories260K/hf', import.meta.url)));
for (const how of ['graph', 'merge'] as const) results.push({ model: 'stories260K', ...(await time(stories.config, stories.weights, how, 16)) });
const d = Number(o.hidden);
const c: LlamaConfig = {
  family: 'llama',
  vocabSize: 2048,
  contextLength: 128,
  hiddenSize: d,
  intermediateSize: Math.round((8 * d) / 3 / 64) * 64,
  layers: Number(o.layers),
  heads: d / 64,
  kvHeads: d / 128,
  headDim: 64,
  rmsNormEps: 1e-5,
  ropeTheta: 1e4,
  tiedEmbeddings: true,
  qkvBias: false,
  oBias: false,
  mlpBias: false,
  qkNorm: false,
};
const dir = await mkdtemp(join(tmpdir(), 'lora-apply-'));
try {
  // Mapped from a float32 file, as real checkpoints are (so the in-graph base can be prepacked).
  const path = join(dir, 'model.safetensors');
  await writeSafetensors(path, weightsToTensors(c, initWeights(paramSpecsOf(c), new Rng(0))));
  const w = await weightFileOf([path]);
  for (const how of ['graph', 'merge'] as const) results.push({ model: `random llama d${d} x${c.layers}`, ...(await time(c, w, how, 16)) });
} finally {
  await rm(dir, { recursive: true, force: true });
}
for (const r of results) console.error(JSON.stringify(r));
console.log(JSON.stringify({ threads: Number(o.threads), results }));
