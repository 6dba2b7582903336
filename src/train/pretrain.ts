// Supervised pretraining of the default model on worked arithmetic solutions. Every step's
// batch is a pure function of (seed, step) and the learning-rate schedule does not depend on
// the total, so a run resumed from a checkpoint (weights + AdamW state) is the same run, and
// the checkpoint at step S of a long run is exactly what `--steps S` produces.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Trainer } from '../engine/trainer.ts';
import { sft } from '../engine/sft.ts';
import { packBatch, type TrainSequence } from '../engine/batch.ts';
import { Rng } from '../util/rng.ts';
import { loadModel, saveModel, weightsToTensors, type Model } from '../formats/checkpoint.ts';
import { initWeights } from '../model/family.ts';
import { paramSpecsOf } from '../model/families.ts';
import type { GPTConfig } from '../model/gpt.ts';
import { readSafetensors, writeSafetensors } from '../formats/safetensors.ts';
import { ARITHMETIC_CHARS, CharTokenizer, type Tokenizer } from '../tokenizers/tokenizer.ts';
import { workedSolution } from '../tasks/arithmetic.ts';
import { drawFrom, PRETRAIN_MIXTURE } from '../tasks/suites.ts';

export const TRAIN_STATE_FILE = 'train-state.safetensors';

export interface PretrainOptions {
  out: string;
  steps: number;
  seed: number;
  batchSize: number;
  lr: number;
  warmup: number;
  /** Loss over completion tokens: every token alike, or every sequence alike (the mixture's proportions). */
  aggregation: 'token-mean' | 'sequence-mean';
  /** Linear anneal of the learning rate to 0 over the last this many steps. */
  anneal: number;
  checkpointEvery: number;
  threads: number;
  /** Architecture of a fresh run (ignored when resuming). */
  arch: Pick<GPTConfig, 'contextLength' | 'dModel' | 'nLayers' | 'nHeads' | 'tiedHead'>;
  onStart?: (s: { resumedFrom: number }) => void;
  onStep?: (s: { step: number; loss: number; tokensPerSec: number }) => void;
  /** Checked after every step: true stops the run after writing a checkpoint. */
  shouldStop?: () => boolean;
}

export interface PretrainResult {
  step: number;
  resumedFrom: number;
  loss: number;
  wallS: number;
}

/**
 * Linear warm-up, inverse-square-root decay, and a linear anneal to 0 over the last
 * `anneal` steps. Before the anneal it does not depend on the total, so a checkpoint taken
 * before it can be continued with a longer --steps and be the run that --steps asked for.
 */
export function pretrainLr(base: number, warmup: number, step: number, total = Infinity, anneal = 0): number {
  const invSqrt = base * Math.min(1, step / warmup) * Math.sqrt(warmup / Math.max(step, warmup));
  return anneal > 0 ? invSqrt * Math.min(1, (total - step + 1) / anneal) : invSqrt;
}

/** The supervised sequence of one question: prompt, worked solution, end token. */
export function solutionSequence(tok: Tokenizer, question: string): TrainSequence {
  const prompt = tok.encode(question);
  return { tokens: [...prompt, ...tok.encode(workedSolution(question)), tok.eosId], promptLength: prompt.length };
}

export function pretrainBatch(tok: Tokenizer, seed: number, step: number, size: number): TrainSequence[] {
  const rng = new Rng((seed ^ Math.imul(step + 1, 0x9e3779b1)) >>> 0);
  return Array.from({ length: size }, () => solutionSequence(tok, drawFrom(PRETRAIN_MIXTURE, rng).question));
}

export async function pretrain(o: PretrainOptions): Promise<PretrainResult> {
  const t0 = performance.now();
  const statePath = join(o.out, TRAIN_STATE_FILE);
  let model: Model;
  let resumedFrom = 0;
  let state: { m: Map<string, Float32Array>; v: Map<string, Float32Array>; step: number } | undefined;
  if (existsSync(statePath)) {
    model = await loadModel(o.out);
    const saved = await readSafetensors(statePath);
    if (saved.metadata.seed !== String(o.seed))
      throw new Error(`${o.out} holds a run with seed ${saved.metadata.seed}; resume it with --seed ${saved.metadata.seed} or choose another --out`);
    resumedFrom = Number(saved.metadata.step);
    const part = (prefix: string) =>
      new Map([...saved.tensors].filter(([k]) => k.startsWith(prefix)).map(([k, t]) => [k.slice(prefix.length), t.data as Float32Array]));
    state = { m: part('m.'), v: part('v.'), step: Number(saved.metadata.optimizer_step) };
  } else if (existsSync(join(o.out, 'config.json'))) {
    throw new Error(`${o.out} holds a model but no ${TRAIN_STATE_FILE} to resume from; choose another --out`);
  } else {
    const tokenizer = new CharTokenizer(ARITHMETIC_CHARS);
    const config: GPTConfig = { family: 'gpt', vocabSize: tokenizer.vocabSize, padTokenId: tokenizer.padId, ...o.arch };
    model = { config, tokenizer, weights: initWeights(paramSpecsOf(config), new Rng(o.seed)), metadata: {} };
  }
  const { config, tokenizer } = model;
  const trainer = await Trainer.create({ config, weights: model.weights, loss: sft(o.aggregation), threads: o.threads });
  let step = resumedFrom;
  let loss = NaN;
  try {
    if (state) await trainer.setOptimizerState(state);
    o.onStart?.({ resumedFrom });
    const checkpoint = async () => {
      const weights = await trainer.getWeights();
      const opt = await trainer.getOptimizerState();
      const metadata = { ...model.metadata, pretrain_seed: String(o.seed), pretrain_step: String(step), pretrain_loss: loss.toFixed(5) };
      await saveModel(o.out, { config, tokenizer, weights, metadata });
      const tensors = new Map([
        ...[...weightsToTensors(config, opt.m)].map(([k, t]) => [`m.${k}`, t] as const),
        ...[...weightsToTensors(config, opt.v)].map(([k, t]) => [`v.${k}`, t] as const),
      ]);
      await writeSafetensors(statePath, tensors, { seed: String(o.seed), step: String(step), optimizer_step: String(opt.step) });
    };
    let ema = NaN;
    let tokens = 0;
    const tStart = performance.now();
    while (step < o.steps) {
      const seqs = pretrainBatch(tokenizer, o.seed, step, o.batchSize);
      const batch = packBatch(seqs, tokenizer.padId, config.contextLength);
      const r = await trainer.step(batch, { lr: pretrainLr(o.lr, o.warmup, step + 1, o.steps, o.anneal), maxGradNorm: 1 });
      if (!r.updated) throw new Error(`pretraining step ${step + 1}: the gradient is not finite (loss ${r.loss}); lower --lr`);
      step++;
      loss = r.loss;
      ema = Number.isNaN(ema) ? r.loss : 0.95 * ema + 0.05 * r.loss;
      tokens += batch.B * batch.T;
      o.onStep?.({ step, loss: ema, tokensPerSec: tokens / ((performance.now() - tStart) / 1000) });
      const stop = o.shouldStop?.() ?? false;
      if (step % o.checkpointEvery === 0 || step === o.steps || stop) await checkpoint();
      if (stop) break;
    }
    if (step === resumedFrom && step >= o.steps) loss = Number(model.metadata.pretrain_loss);
  } finally {
    await trainer.close();
  }
  return { step, resumedFrom, loss, wallS: (performance.now() - t0) / 1000 };
}
