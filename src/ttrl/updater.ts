// One TTRL policy update from already-sampled, voted rollouts: the GRPO step in the trainer
// worker, with optional PPO epochs, KL to the initial weights and an entropy bonus (the loss
// itself is objective.ts). Full fine-tuning, or LoRA adapters on the frozen base. Used by
// offline adaptation and by the server's live loop alike.
import { packBatch, packGroups, type TrainSequence } from '../engine/batch.ts';
import { Trainer, type StepStats } from '../engine/trainer.ts';
import { Scorer } from '../engine/scorer.ts';
import type { Weights } from '../model/family.ts';
import type { ModelConfig } from '../model/families.ts';
import type { LoraConfig } from '../model/lora.ts';
import type { Tokenizer } from '../tokenizers/tokenizer.ts';
import type { WeightSource } from '../formats/weight-file.ts';
import { toGroups, type Selected } from './grpo.ts';
import { grpo, grpoOptionsFor, grpoScalars, type GrpoOptions } from './objective.ts';
import type { TrainSettings } from '../config/settings.ts';

/**
 * What an update does (the train settings, config/settings.ts), with the learning rate
 * resolved and the sampling temperature: log-probs from the sampler are only the policy's at 1.0.
 */
export type UpdateSettings = Pick<TrainSettings, 'kl' | 'entropyBonus' | 'epochs' | 'clipEps' | 'maxGradNorm'> & { lr: number; temperature: number };

export interface UpdateResult {
  loss: number;
  entropy: number;
  kl: number | null;
  gradNorm: number;
  /**
   * Mean |log p_trained - log p_sampled| per trained token, and the share of tokens whose
   * ratio the clip bounds (first epoch; null without clipping). At an update's first step the
   * weights are the sampler's, so this is the sampler's gap to the trainer (quantized kernels).
   */
  absLogratio: number | null;
  clippedShare: number | null;
  /** False when every epoch's gradient was non-finite (weights unchanged). */
  updated: boolean;
  /** Epochs whose gradient was non-finite and were skipped. */
  skipped: number;
  sequences: number;
  ms: number;
}

export class TTRLUpdater {
  private constructor(
    private trainer: Trainer,
    private reference: Scorer | null,
    private config: ModelConfig,
    private tok: Tokenizer,
    readonly settings: UpdateSettings,
    private loss: GrpoOptions,
  ) {}

  /**
   * `weights`: the initial weights (full fine-tuning), or with `lora` the frozen base; the
   * adapters start from `adapters`, else fresh (which change nothing).
   */
  static async create(o: {
    config: ModelConfig;
    tokenizer: Tokenizer;
    weights: WeightSource;
    settings: UpdateSettings;
    threads?: number;
    nice?: number;
    spin?: boolean;
    lora?: LoraConfig;
    adapters?: Weights;
  }): Promise<TTRLUpdater> {
    const s = o.settings;
    const loss = grpoOptionsFor(s);
    const trainer = await Trainer.create({
      config: o.config,
      weights: o.weights,
      loss: grpo(loss),
      threads: o.threads,
      nice: o.nice,
      spin: o.spin,
      layout: 'grouped',
      lora: o.lora,
      adapters: o.adapters,
    });
    const reference =
      s.kl > 0
        ? await Scorer.create({ config: o.config, weights: o.weights, threads: o.threads, nice: o.nice, spin: o.spin }).catch(async (e) => {
            await trainer.close();
            throw e;
          })
        : null;
    return new TTRLUpdater(trainer, reference, o.config, o.tokenizer, s, loss);
  }

  async update(selected: Selected[], lr = this.settings.lr): Promise<UpdateResult | null> {
    if (!selected.length) return null;
    const t0 = performance.now();
    const groups = toGroups(selected);
    const flat = groups.flatMap((g) => g.completions.map((c) => ({ tokens: [...g.prompt, ...c.tokens], promptLength: g.prompt.length })));
    // The sampler's log-probs are of the temperature-scaled policy; rescore when that is not the policy.
    const old = this.settings.temperature === 1 ? null : await completionLogprobs(this.trainer, flat, this.tok.padId, this.config.contextLength);
    const ref = this.reference ? await completionLogprobs(this.reference, flat, this.tok.padId, this.config.contextLength) : null;
    let i = 0;
    for (const g of groups)
      for (const c of g.completions) {
        if (old) c.oldLogprobs = old[i]!;
        if (ref) c.refLogprobs = ref[i]!;
        i++;
      }
    const batch = packGroups(groups, this.tok.padId, this.config.contextLength);
    let first: StepStats | undefined;
    let skipped = 0;
    for (let e = 0; e < this.settings.epochs; e++) {
      const r = await this.trainer.step(batch, { lr, maxGradNorm: this.settings.maxGradNorm, scalars: grpoScalars(this.loss, this.settings) });
      if (!r.updated) skipped++;
      first ??= r;
    }
    return {
      loss: first!.loss,
      entropy: first!.entropy,
      kl: first!.kl ?? null,
      gradNorm: first!.gradNorm,
      absLogratio: first!.stats.abs_logratio ?? null,
      clippedShare: first!.stats.clipped_share ?? null,
      updated: skipped < this.settings.epochs,
      skipped,
      sequences: batch.B,
      ms: performance.now() - t0,
    };
  }

  /** Log-prob of each sequence's completion under the weights being trained (the candidate's). */
  async sequenceLogprobs(seqs: TrainSequence[]): Promise<number[]> {
    return (await completionLogprobs(this.trainer, seqs, this.tok.padId, this.config.contextLength)).map(sum);
  }

  /** The trained weights (full fine-tuning only; with LoRA use getAdapters). */
  getWeights(): Promise<Weights> {
    return this.trainer.getWeights();
  }

  /** Rollback: new weights, fresh optimizer moments (full fine-tuning only). */
  setWeights(w: Weights): Promise<void> {
    return this.trainer.setWeights(w, true);
  }

  /** LoRA: the current adapters (a version to store). */
  getAdapters(): Promise<Weights> {
    return this.trainer.getAdapters();
  }

  /** LoRA rollback: these adapters, fresh optimizer moments. */
  setAdapters(a: Weights): Promise<void> {
    return this.trainer.setAdapters(a, true);
  }

  async close(): Promise<void> {
    await Promise.all([this.trainer.close(), this.reference?.close()]);
  }
}

/** Token log-probs of each sequence's completion (from promptLength on) under the scorer's weights. */
export async function completionLogprobs(scorer: Pick<Scorer, 'score'>, seqs: TrainSequence[], padId: number, contextLength: number): Promise<number[][]> {
  const b = packBatch(seqs, padId, contextLength);
  const { tokenLogprobs } = await scorer.score(b);
  return seqs.map((s, i) => Array.from(tokenLogprobs.subarray(i * b.T + s.promptLength, i * b.T + s.tokens.length)));
}

export const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
