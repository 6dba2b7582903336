// Scorer worker: the score-graph session and the weights it scores with (mapped from a file, or
// fed as inputs when in memory), plus LoRA adapters as inputs when it was started with a lora
// config (the base then fixed; a swap hands adapters only).
import { buildScore } from './graphs.ts';
import type { ort } from './ort.ts';
import { serveWorker } from './worker-host.ts';
import { bindWeights, WorkerSessions } from './session.ts';
import type { ParamSpec, Weights } from '../model/family.ts';
import { paramSpecsOf, type ModelConfig } from '../model/families.ts';
import { checkAdapters, initAdapters, loraSpecs, type LoraConfig } from '../model/lora.ts';
import type { WeightSource } from '../formats/weight-file.ts';
import { Rng } from '../util/rng.ts';
import type { PackedBatch } from './batch.ts';
import { scoreBatch, weightFeedsOf, type TokenScores } from './scoring.ts';
import type { ScorerCalls, ScorerInit } from './scorer.ts';

/** Everything this worker holds, made by its init. */
class ScorerWorker {
  private readonly config: ModelConfig;
  private readonly specs: ParamSpec[];
  private readonly lora: LoraConfig | undefined;
  private readonly sessions: WorkerSessions;
  /** The session scoring now and the inputs it needs beyond the batch. */
  private active: { session: ort.InferenceSession; weightFeeds: Record<string, ort.Tensor> } | undefined;
  /** LoRA: the base's feeds (empty when mapped) beside the adapters'. */
  private baseFeeds: Record<string, ort.Tensor> = {};

  static async start(init: ScorerInit): Promise<ScorerWorker> {
    const w = new ScorerWorker(init);
    await w.bindBase(init.weights);
    if (init.lora) {
      w.baseFeeds = w.active!.weightFeeds;
      w.bindAdapters(init.adapters ?? initAdapters(init.config, init.lora, new Rng(0)));
    } else if (init.adapters) throw new Error('scorer: adapters given without a lora config');
    return w;
  }

  private constructor(init: ScorerInit) {
    this.sessions = new WorkerSessions(init, { memPattern: false, prepack: false });
    this.config = init.config;
    this.specs = paramSpecsOf(init.config);
    this.lora = init.lora;
  }

  score(batch: PackedBatch): Promise<TokenScores> {
    return scoreBatch(this.active!.session, this.active!.weightFeeds, batch);
  }

  async setWeights(w: WeightSource): Promise<void> {
    if (this.lora) throw new Error('scorer: with LoRA the base is fixed at start; use setAdapters()');
    await this.bindBase(w);
  }

  setAdapters(a: Weights): void {
    if (!this.lora) throw new Error('scorer: started without a lora config, so it takes full weights (setWeights)');
    this.bindAdapters(a);
  }

  private async bindBase(w: WeightSource): Promise<void> {
    const { file, feeds } = bindWeights(this.specs, w);
    const active = this.active;
    // Weights fed as inputs leave the session as it was: only a mapped one is built for its file.
    const session = file
      ? await this.sessions.create(buildScore(this.config, 'float32', { weights: file, lora: this.lora }), file)
      : active && Object.keys(active.weightFeeds).length
        ? active.session
        : await this.sessions.create(buildScore(this.config, 'float32', { lora: this.lora }));
    this.active = { session, weightFeeds: feeds };
    if (active && active.session !== session) await active.session.release();
  }

  private bindAdapters(a: Weights): void {
    checkAdapters(this.config, this.lora!, a);
    this.active = { session: this.active!.session, weightFeeds: { ...this.baseFeeds, ...weightFeedsOf(loraSpecs(this.config, this.lora!), a) } };
  }
}

serveWorker<ScorerCalls>(async (init) => {
  const scorer = await ScorerWorker.start(init);
  return {
    score: (p) => scorer.score(p.batch),
    setWeights: (p) => scorer.setWeights(p.weights),
    setAdapters: (p) => scorer.setAdapters(p.adapters),
  };
});
