// Forward-only scoring in a worker: token log-probs and entropies of given sequences under one
// set of weights (the shipped model, for KL references and the guard's anchors). No optimizer
// state, and weights from a file are mapped, shared with every other worker of the model.
import { dimsOf, type ModelConfig } from '../model/families.ts';
import type { WeightSource } from '../formats/weight-file.ts';
import type { Weights } from '../model/family.ts';
import type { LoraConfig } from '../model/lora.ts';
import { checkTokenIds, type PackedBatch } from './batch.ts';
import type { TokenScores } from './scoring.ts';
import { WorkerClient } from './worker-host.ts';

export interface ScorerInit {
  config: ModelConfig;
  weights: WeightSource;
  threads?: number;
  nice?: number;
  spin?: boolean;
  /** Score with LoRA adapters on the frozen base `weights` (default: none; a KL reference is the base alone). */
  lora?: LoraConfig;
  /** The adapters to score with first (default: fresh ones, which change nothing). */
  adapters?: Weights;
}

/** The scorer worker's calls (scorer.worker.ts serves them). */
export interface ScorerCalls {
  init: (init: ScorerInit) => void;
  score: (p: { batch: PackedBatch }) => TokenScores;
  setWeights: (p: { weights: WeightSource }) => void;
  setAdapters: (p: { adapters: Weights }) => void;
}

export class Scorer {
  private constructor(
    private client: WorkerClient<ScorerCalls>,
    private vocabSize: number,
  ) {}

  static async create(o: ScorerInit): Promise<Scorer> {
    const client = await WorkerClient.start<ScorerCalls>('scorer', o);
    return new Scorer(client, dimsOf(o.config).vocabSize);
  }

  /** Token log-probs and entropies [B, T] (position 0 is 0) of a flat batch (packBatch). */
  score(batch: PackedBatch): Promise<TokenScores> {
    try {
      checkTokenIds(batch, this.vocabSize);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.client.call('score', { batch });
  }

  setWeights(weights: WeightSource): Promise<void> {
    return this.client.call('setWeights', { weights });
  }

  /** LoRA: score with these adapters from now on. */
  setAdapters(adapters: Weights): Promise<void> {
    return this.client.call('setAdapters', { adapters });
  }

  close(): Promise<void> {
    return this.client.close();
  }
}
