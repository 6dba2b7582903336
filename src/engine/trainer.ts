// The trainer: parameters and AdamW state live in a worker; each step() is one run of
// the train-step graph (loss and gradients), then AdamW in place. A step whose gradient is
// not finite changes nothing and reports updated: false. With LoRA the base weights are
// frozen and shared (mapped from their file, or fed from the one copy the worker was given):
// the trainer's own arrays are the adapters and their moments only.
import type { Weights } from '../model/family.ts';
import { dimsOf, type ModelConfig } from '../model/families.ts';
import type { WeightSource } from '../formats/weight-file.ts';
import type { AdamWConfig } from './adamw.ts';
import type { BatchLayout } from './graphs.ts';
import type { ObjectiveRef } from './objective.ts';
import type { LoraConfig } from '../model/lora.ts';
import { checkTokenIds, type PackedBatch } from './batch.ts';
import type { TokenScores } from './scoring.ts';
import { WorkerClient } from './worker-host.ts';

export interface StepHyper {
  lr: number;
  /** Clip gradients to this global norm (unset or 0: no clipping; the train settings' maxGradNorm decides for updates). */
  maxGradNorm?: number;
  /** The objective's scalar inputs by name (e.g. ttrl/objective.ts's grpoScalars): every one its graph declares is needed. */
  scalars?: Record<string, number>;
}

export interface StepStats {
  loss: number;
  gradNorm: number;
  entropy: number;
  kl?: number;
  /** Every scalar statistic the objective reports (entropy, kl, ...), by name. */
  stats: Record<string, number>;
  /** False when the gradient was NaN/Inf: parameters and optimizer state were kept. */
  updated: boolean;
  /** Optimizer steps taken so far. */
  step: number;
  ms: number;
}

/** AdamW moments by parameter name and the optimizer steps taken: what a resumed run needs. */
export interface OptimizerState {
  m: Weights;
  v: Weights;
  step: number;
}

export interface TrainerInit {
  config: ModelConfig;
  /**
   * Initial weights; the trainer keeps its own copy either way. With lora: the frozen base,
   * never copied (a file is mapped by the session; arrays are fed as they are).
   */
  weights: WeightSource;
  /** The loss: engine/sft.ts's sft(), or an objective of ttrl/objective.ts. */
  loss: ObjectiveRef;
  /** Train LoRA adapters on the frozen base instead of every weight. */
  lora?: LoraConfig;
  /** The adapters to start from (default: fresh ones, PEFT's init, from `seed`). */
  adapters?: Weights;
  /** Seed of fresh adapters (default 0). */
  seed?: number;
  adamw?: AdamWConfig;
  threads?: number;
  /** Linux nice value of the worker's threads (e.g. 19: train only on cycles serving leaves). */
  nice?: number;
  /** Let idle compute threads spin (default true; false when sharing cores with a sampler). */
  spin?: boolean;
  /**
   * The batch layout whose train-step session is built at start (default flat; GRPO batches
   * are grouped). Building one takes seconds for a real model (about 23 s for a 0.5B one), so
   * the first step should not pay it.
   */
  layout?: BatchLayout;
}

/** The trainer worker's calls (trainer.worker.ts serves them). */
export interface TrainerCalls {
  init: (init: TrainerInit) => void;
  step: (p: { batch: PackedBatch; hyper: StepHyper }) => StepStats;
  score: (p: { batch: PackedBatch }) => TokenScores;
  getWeights: () => Weights;
  getAdapters: () => Weights;
  setWeights: (p: { weights: WeightSource; resetOptimizer: boolean }) => void;
  setAdapters: (p: { adapters: Weights; resetOptimizer: boolean }) => void;
  getOptimizerState: () => OptimizerState;
  setOptimizerState: (state: OptimizerState) => void;
}

export class Trainer {
  private constructor(
    private client: WorkerClient<TrainerCalls>,
    private vocabSize: number,
  ) {}

  static async create(o: TrainerInit): Promise<Trainer> {
    const client = await WorkerClient.start<TrainerCalls>('trainer', o);
    return new Trainer(client, dimsOf(o.config).vocabSize);
  }

  step(batch: PackedBatch, h: StepHyper): Promise<StepStats> {
    if (!(h.lr >= 0) || !Number.isFinite(h.lr)) return Promise.reject(new Error(`train step: lr must be a finite number >= 0, got ${h.lr}`));
    try {
      checkTokenIds(batch, this.vocabSize);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.client.call('step', { batch, hyper: h });
  }

  /** Token log-probs and entropies [B, T] (position 0 is 0) of the batch under the current weights. */
  score(batch: PackedBatch): Promise<TokenScores> {
    try {
      checkTokenIds(batch, this.vocabSize);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.client.call('score', { batch });
  }

  /** The trained weights (full fine-tuning; with LoRA this throws: use getAdapters). */
  getWeights(): Promise<Weights> {
    return this.client.call('getWeights');
  }

  /** The current adapters (LoRA only). */
  getAdapters(): Promise<Weights> {
    return this.client.call('getAdapters');
  }

  /** Replaces the adapters (LoRA only; e.g. a rollback); the optimizer state is reset unless told otherwise. */
  setAdapters(adapters: Weights, resetOptimizer = true): Promise<void> {
    return this.client.call('setAdapters', { adapters, resetOptimizer });
  }

  getOptimizerState(): Promise<OptimizerState> {
    return this.client.call('getOptimizerState');
  }

  setOptimizerState(state: OptimizerState): Promise<void> {
    return this.client.call('setOptimizerState', state);
  }

  /** Replaces the weights (full fine-tuning; e.g. a rollback); the optimizer state is reset unless told otherwise. */
  setWeights(weights: WeightSource, resetOptimizer = true): Promise<void> {
    return this.client.call('setWeights', { weights, resetOptimizer });
  }

  close(): Promise<void> {
    return this.client.close();
  }
}
