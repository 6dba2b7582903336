// Engine benchmark: the exact shapes of ../shared/peers/torch_ttrl_peer.py (vocab 17, d 128,
// 4 layers, 4 heads, context 96; 16 prompts x 16 samples, prompt 12, exactly 48 new tokens;
// one GRPO train step on those 256 sequences, tokens/s counting all 60 tokens of each), random weights, then the PyTorch peer in the
// same run, one after the other (never both at once: 2 cores). Prints one JSON line last.
//
//   npm run bench:engine -- [--json] [--threads 2] [--reps 5] [--no-peer] [--no-stepwise]
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { Sampler } from '../src/engine/sampler.ts';
import { Trainer } from '../src/engine/trainer.ts';
import { packBatch, packGroups } from '../src/engine/batch.ts';
import { buildDecoder } from '../src/engine/graphs.ts';
import { grpo } from '../src/ttrl/objective.ts';
import { createSession, f32, i64, type ort } from '../src/engine/ort.ts';
import { initWeights, paramCount, type Weights } from '../src/model/family.ts';
import { paramSpecsOf } from '../src/model/families.ts';
import type { GPTConfig } from '../src/model/gpt.ts';
import { Rng } from '../src/util/rng.ts';
import { median as medianOf } from './timing.ts';

const opts = new Command()
  .option('--json', 'print only the JSON line on stdout')
  .option('--threads <n>', 'threads on both sides', '2')
  .option('--reps <n>', 'timed repetitions (median reported), after one warm-up', '5')
  .option('--no-peer', 'skip the PyTorch peer')
  .option('--no-stepwise', 'skip the per-token run() sampler comparison')
  .parse()
  .opts<{ json?: boolean; threads: string; reps: string; peer: boolean; stepwise: boolean }>();

const threads = Number(opts.threads);
const reps = Number(opts.reps);
const median = (fn: () => Promise<unknown>) => medianOf(fn, reps);
const P = 16,
  G = 16,
  PLEN = 12,
  T = 48,
  V = 17,
  PAD = 16;
const config: GPTConfig = { family: 'gpt', vocabSize: V, contextLength: 96, dModel: 128, nLayers: 4, nHeads: 4, tiedHead: false, padTokenId: PAD };
const log = (...a: unknown[]) => console.error(...a);

/** The slow road, for comparison: one decode run() per token, KV cache handed back to JS each step. */
async function stepwiseSampler(weights: Weights, prompts: number[][]) {
  const session = await createSession(buildDecoder(config, true), { threads });
  const prefill = await createSession(buildDecoder(config, false), { threads });
  const wf: Record<string, ort.Tensor> = {};
  for (const s of paramSpecsOf(config)) wf[s.name] = f32(weights.get(s.name)!, s.shape);
  const B = P * G;
  const rng = new Rng(1);
  return async () => {
    // Prefill every sequence (B rows; the stepwise road has no cache sharing), then decode.
    const ids = prompts.flatMap((p) => Array(G).fill(p).flat());
    let out = await prefill.run({
      ...wf,
      input_ids: i64(ids, [B, PLEN]),
      attention_mask: i64(Array(B * PLEN).fill(1), [B, PLEN]),
      position_ids: i64(
        Array.from({ length: B * PLEN }, (_, i) => i % PLEN),
        [B, PLEN],
      ),
    });
    for (let step = 0; step < T; step++) {
      const logits = out.logits!.data as Float32Array;
      const L = out.logits!.dims[1]!;
      const next = new Array<number>(B);
      for (let b = 0; b < B; b++) {
        const row = logits.subarray((b * L + L - 1) * V, (b * L + L) * V);
        let max = -Infinity;
        for (let k = 0; k < PAD; k++) max = Math.max(max, row[k]!);
        let sum = 0;
        for (let k = 0; k < PAD; k++) sum += Math.exp(row[k]! - max);
        let u = rng.next() * sum;
        let k = 0;
        for (; k < PAD - 1; k++) if ((u -= Math.exp(row[k]! - max)) < 0) break;
        next[b] = k;
      }
      if (step === T - 1) break;
      const feeds: Record<string, ort.Tensor> = { ...wf };
      for (let l = 0; l < config.nLayers; l++) {
        feeds[`past_key_values.${l}.key`] = out[`present.${l}.key`]!;
        feeds[`past_key_values.${l}.value`] = out[`present.${l}.value`]!;
      }
      const total = PLEN + step + 1;
      out = await session.run({
        ...feeds,
        input_ids: i64(next, [B, 1]),
        attention_mask: i64(Array(B * total).fill(1), [B, total]),
        position_ids: i64(Array(B).fill(total - 1), [B, 1]),
      });
    }
  };
}

function runPeer(): Record<string, number | string> | { error: string } {
  const script = fileURLToPath(new URL('../../shared/peers/torch_ttrl_peer.py', import.meta.url));
  if (!existsSync(script)) return { error: `peer not found at ${script}` };
  const r = spawnSync(
    '/usr/bin/python3',
    [script, '--threads', String(threads), '--P', String(P), '--G', String(G), '--T', String(T), '--reps', String(reps)],
    { encoding: 'utf8' },
  );
  if (r.status !== 0)
    return {
      error: `peer failed (${r.status}): ${(r.stderr || r.error?.message || '').trim().split('\n').at(-1)} -- apt-get install -y python3-torch libopenblas0-pthread`,
    };
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

const rng = new Rng(0);
const weights = initWeights(paramSpecsOf(config), rng);
const prompts = Array.from({ length: P }, () => Array.from({ length: PLEN }, () => rng.int(0, PAD - 1)));

log(`engine bench: ${paramCount(paramSpecsOf(config))} params, ${P}x${G} sequences, prompt ${PLEN}, ${T} new tokens, ${threads} threads, median of ${reps}`);
const sampler = await Sampler.create({ config, weights, threads });
let seed = 0;
let completions: number[][] = [];
const sampleS = await median(async () => {
  const r = await sampler.generate(prompts, { samplesPerPrompt: G, maxNewTokens: T, seed: seed++, stopTokens: [], padToken: PAD });
  completions = r.completions.flatMap((row) => row.map((c) => c.tokens));
});
// Left padding's cost: the same batch with prompt lengths spread over 6..18 (mean 12).
const mixed = prompts.map((p, i) => (i % 2 ? p.slice(0, 6 + (i % 7)) : [...p, ...p].slice(0, 18 - (i % 7))));
const sampleMixedS = await median(() => sampler.generate(mixed, { samplesPerPrompt: G, maxNewTokens: T, seed: seed++, stopTokens: [], padToken: PAD }));
await sampler.close();
if (completions.some((c) => c.length !== T)) throw new Error('expected exactly T new tokens per sequence');
const peakRssMb = process.resourceUsage().maxRSS / 1024;
log(`generate graph (Loop): ${sampleS.toFixed(3)} s, ${Math.round((P * G * T) / sampleS)} tokens/s, peak RSS ${peakRssMb.toFixed(0)} MB`);
log(`  with prompt lengths 6..18, left-padded to 18: ${sampleMixedS.toFixed(3)} s, ${Math.round((P * G * T) / sampleMixedS)} tokens/s`);

let stepwiseS: number | null = null;
if (opts.stepwise) {
  stepwiseS = await median(await stepwiseSampler(weights, prompts));
  log(`per-token run() decode: ${stepwiseS.toFixed(3)} s, ${Math.round((P * G * T) / stepwiseS)} tokens/s`);
}

const trainer = await Trainer.create({
  config,
  weights,
  threads,
  loss: grpo({ aggregation: 'token-mean', ppoClip: false, klTerm: false, entropyTerm: false }),
});
// GRPO batches are groups: the 16 samples of a prompt share it, so the grouped layout runs each
// prompt once (the default for GRPO). The flat layout, every row a whole sequence, is timed too.
const advantages = completions.map(() => rng.normal());
const grouped = packGroups(
  prompts.map((prompt, i) => ({
    prompt,
    completions: completions.slice(i * G, (i + 1) * G).map((tokens, j) => ({ tokens, advantage: advantages[i * G + j]! })),
  })),
  PAD,
  config.contextLength,
);
const flat = packBatch(
  completions.map((c, i) => ({ tokens: [...prompts[Math.floor(i / G)]!, ...c], promptLength: PLEN, advantage: advantages[i]! })),
  PAD,
  config.contextLength,
);
const trainS = await median(() => trainer.step(grouped, { lr: 1e-4, maxGradNorm: 1 }));
const trainFlatS = await median(() => trainer.step(flat, { lr: 1e-4, maxGradNorm: 1 }));
await trainer.close();
log(
  `GRPO train step, grouped: ${trainS.toFixed(3)} s, ${Math.round((P * G * (PLEN + T)) / trainS)} tokens/s; flat: ${trainFlatS.toFixed(3)} s, ${Math.round((P * G * (PLEN + T)) / trainFlatS)} tokens/s`,
);

const peer = opts.peer ? runPeer() : { error: 'skipped (--no-peer)' };
if ('error' in peer) log(`peer: ${peer.error}`);
else log(`peer ${peer.peer}: sample ${peer.sample_tok_s} tokens/s, train ${peer.train_tok_s} tokens/s`);
const ok = !('error' in peer);
const sampleTok = Math.round((P * G * T) / sampleS);
const trainTok = Math.round((P * G * (PLEN + T)) / trainS);
const peerSample = ok ? Number(peer.sample_tok_s) : null;
const peerTrain = ok ? Number(peer.train_tok_s) : null;
const result = {
  sample_tok_s: sampleTok,
  train_tok_s: trainTok,
  peer_sample_tok_s: peerSample,
  peer_train_tok_s: peerTrain,
  sample_ratio: peerSample ? +(sampleTok / peerSample).toFixed(2) : null,
  train_ratio: peerTrain ? +(trainTok / peerTrain).toFixed(2) : null,
  sample_mixed_lengths_tok_s: Math.round((P * G * T) / sampleMixedS),
  train_flat_tok_s: Math.round((P * G * (PLEN + T)) / trainFlatS),
  stepwise_sample_tok_s: stepwiseS ? Math.round((P * G * T) / stepwiseS) : null,
  sample_s: +sampleS.toFixed(4),
  train_step_s: +trainS.toFixed(4),
  peak_rss_mb: Math.round(peakRssMb),
  threads,
  params: paramCount(paramSpecsOf(config)),
  peer: ok ? peer.peer : peer.error,
};
console.log(JSON.stringify(result));
