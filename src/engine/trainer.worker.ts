// Trainer worker: owns the trained arrays (every weight, or LoRA adapters) and their AdamW
// moments; a step runs the loss-and-gradient session for the batch's layout, then AdamW over
// its own arrays in place. With LoRA the base is frozen: mapped by the sessions from its
// file, or fed from the one copy this worker was handed, never copied.
import { buildLossAndGrad, buildScore, type BatchLayout } from './graphs.ts';
import { f32, type ort } from './ort.ts';
import { serveWorker } from './worker-host.ts';
import { bindWeights, WorkerSessions, type WeightBinding } from './session.ts';
import { ADAMW_DEFAULTS, adamwUpdate, type AdamWConfig } from './adamw.ts';
import { loadObjective, type Objective, type SequenceInput, type TokenInput } from './objective.ts';
import { checkWeights, type ParamSpec, type Weights } from '../model/family.ts';
import { paramSpecsOf, type ModelConfig } from '../model/families.ts';
import { checkAdapters, initAdapters, loraSpecs, type LoraConfig } from '../model/lora.ts';
import { Rng } from '../util/rng.ts';
import type { PackedBatch } from './batch.ts';
import { batchFeeds, scoreBatch, weightFeedsOf, type TokenScores } from './scoring.ts';
import { isWeightFile, readWeights, type WeightSource } from '../formats/weight-file.ts';
import type { OptimizerState, StepHyper, StepStats, TrainerCalls, TrainerInit } from './trainer.ts';

/** Everything this worker holds, made by its init. */
class TrainerWorker {
  private readonly config: ModelConfig;
  private readonly objective: Objective;
  private readonly lora: LoraConfig | undefined;
  /** What this worker trains: every weight, or the adapters. */
  private readonly trained: ParamSpec[];
  /** LoRA's frozen base: a mapped file, or arrays fed as they are (none without LoRA). */
  private readonly base: WeightBinding;
  private readonly adamw: AdamWConfig;
  private readonly sessions: WorkerSessions;
  /** One loss-and-gradient session per batch layout, built on first use. */
  private readonly trainSessions = new Map<BatchLayout, Promise<ort.InferenceSession>>();
  private scoreSession: ort.InferenceSession | undefined;
  private params!: Weights;
  private m!: Weights;
  private v!: Weights;
  private steps = 0;

  static async start(init: TrainerInit): Promise<TrainerWorker> {
    const w = new TrainerWorker(init, await loadObjective(init.loss));
    if (w.lora) w.setAdapters(init.adapters ?? initAdapters(w.config, w.lora, new Rng(init.seed ?? 0)), true);
    else {
      if (init.adapters) throw new Error('trainer: adapters given without a lora config');
      await w.setWeights(init.weights, true);
    }
    await w.trainSession(init.layout ?? 'flat');
    return w;
  }

  private constructor(init: TrainerInit, objective: Objective) {
    this.config = init.config;
    this.objective = objective;
    this.lora = init.lora;
    this.adamw = init.adamw ?? ADAMW_DEFAULTS;
    this.trained = init.lora ? loraSpecs(init.config, init.lora) : paramSpecsOf(init.config);
    this.base = init.lora ? bindWeights(paramSpecsOf(init.config), init.weights) : { feeds: {} };
    // A mapped base stays on the shared mapping: no private prepacked copy of it in this worker.
    this.sessions = new WorkerSessions(init, { memPattern: false, ...(this.base.file ? { prepack: false } : {}) });
  }

  async step(b: PackedBatch, h: StepHyper): Promise<StepStats> {
    const t0 = performance.now();
    const session = await this.trainSession(b.prompts ? 'grouped' : 'flat');
    const feeds: Record<string, ort.Tensor> = {
      ...batchFeeds(b),
      loss_mask: f32(b.lossMask, [b.B, b.T]),
      ...this.base.feeds,
      ...weightFeedsOf(this.trained, this.params),
    };
    for (const name of session.inputNames) feeds[name] ??= objectiveInput(name, b, h);
    const out = await session.run(feeds);
    const num = (k: string) => (out[k] ? (out[k]!.data as Float32Array)[0]! : undefined);
    const gradNorm = num('grad_norm')!;
    // A non-finite gradient changes nothing: not the weights, not the moments, not the step count.
    const updated = Number.isFinite(gradNorm);
    if (updated) {
      this.steps++;
      const slots = this.trained.map((s) => ({
        param: this.params.get(s.name)!,
        grad: out[`grad.${s.name}`]!.data as Float32Array,
        m: this.m.get(s.name)!,
        v: this.v.get(s.name)!,
        decay: s.decay,
      }));
      adamwUpdate(slots, { lr: h.lr, step: this.steps, gradNorm, maxGradNorm: h.maxGradNorm ?? 0 }, this.adamw);
    }
    const stats = Object.fromEntries(session.outputNames.filter((k) => k !== 'loss' && k !== 'grad_norm' && !k.startsWith('grad.')).map((k) => [k, num(k)!]));
    return { loss: num('loss')!, gradNorm, entropy: num('entropy')!, kl: num('kl'), stats, updated, step: this.steps, ms: performance.now() - t0 };
  }

  /** Under the trainer's own current weights (the candidate's): a scorer holds fixed ones. */
  async score(batch: PackedBatch): Promise<TokenScores> {
    const { config, lora, base } = this;
    this.scoreSession ??= await this.sessions.create(buildScore(config, 'float32', { lora, weights: base.file }), base.file);
    return scoreBatch(this.scoreSession, { ...base.feeds, ...weightFeedsOf(this.trained, this.params) }, batch);
  }

  getWeights(): Weights {
    if (this.lora) throw new Error('trainer: with LoRA only the adapters are trained: use getAdapters() (model/lora.ts mergeAdapters gives full weights)');
    return this.params;
  }

  getAdapters(): Weights {
    if (!this.lora) throw new Error('trainer: no LoRA adapters (full fine-tuning): use getWeights()');
    return this.params;
  }

  getOptimizerState(): OptimizerState {
    return { m: this.m, v: this.v, step: this.steps };
  }

  setOptimizerState(s: OptimizerState): void {
    checkWeights(this.trained, s.m);
    checkWeights(this.trained, s.v);
    if (!Number.isInteger(s.step) || s.step < 0) throw new Error(`optimizer state: step must be an integer >= 0, got ${s.step}`);
    this.m = new Map(s.m);
    this.v = new Map(s.v);
    this.steps = s.step;
  }

  async setWeights(source: WeightSource, resetOptimizer: boolean): Promise<void> {
    if (this.lora) throw new Error('trainer: with LoRA the base is fixed at start; use setAdapters()');
    // Trained weights change at every step: the trainer keeps its own copy, even of a shared file.
    const w = isWeightFile(source)
      ? await readWeights(
          source,
          this.trained.map((s) => s.name),
        )
      : source;
    checkWeights(this.trained, w);
    this.params = this.copyOfTrained(w);
    if (resetOptimizer) this.resetOptimizer();
  }

  setAdapters(a: Weights, resetOptimizer: boolean): void {
    if (!this.lora) throw new Error('trainer: no LoRA adapters (full fine-tuning): use setWeights()');
    checkAdapters(this.config, this.lora, a);
    this.params = this.copyOfTrained(a);
    if (resetOptimizer) this.resetOptimizer();
  }

  private copyOfTrained(w: Weights): Weights {
    return new Map(this.trained.map((s) => [s.name, Float32Array.from(w.get(s.name)!)]));
  }

  private resetOptimizer(): void {
    const zeros = (): Weights => new Map(this.trained.map((s) => [s.name, new Float32Array(s.shape.reduce((a, b) => a * b, 1))]));
    this.m = zeros();
    this.v = zeros();
    this.steps = 0;
  }

  private trainSession(layout: BatchLayout): Promise<ort.InferenceSession> {
    let s = this.trainSessions.get(layout);
    if (!s) {
      const graph = buildLossAndGrad(this.config, this.objective, 'float32', layout, { lora: this.lora, weights: this.base.file });
      this.trainSessions.set(layout, (s = this.sessions.create(graph, this.base.file)));
    }
    return s;
  }
}

/** Where the batch inputs an objective may declare come from. */
const BATCH_INPUTS: Record<TokenInput | SequenceInput, (b: PackedBatch) => [Float32Array | undefined, number[]]> = {
  advantages: (b) => [b.advantages, [b.B]],
  old_logprobs: (b) => [b.oldLogprobs, [b.B, b.T]],
  ref_logprobs: (b) => [b.refLogprobs, [b.B, b.T]],
};

/** A graph input beyond the batch and the weights: a batch array or a scalar the objective declared. */
function objectiveInput(name: string, b: PackedBatch, h: StepHyper): ort.Tensor {
  const fromBatch = BATCH_INPUTS[name as keyof typeof BATCH_INPUTS];
  if (fromBatch) {
    const [arr, dims] = fromBatch(b);
    if (!arr) throw new Error(`train step: this loss needs ${name}`);
    return f32(arr, dims);
  }
  const x = h.scalars?.[name];
  if (x === undefined) throw new Error(`train step: this loss needs the scalar ${name} (StepHyper.scalars)`);
  if (!Number.isFinite(x)) throw new Error(`train step: scalar ${name} must be finite, got ${x}`);
  return f32(Float32Array.of(x), []);
}

serveWorker<TrainerCalls>(async (init) => {
  const trainer = await TrainerWorker.start(init);
  return {
    step: (p) => trainer.step(p.batch, p.hyper),
    score: (p) => trainer.score(p.batch),
    getWeights: () => trainer.getWeights(),
    getAdapters: () => trainer.getAdapters(),
    getOptimizerState: () => trainer.getOptimizerState(),
    setOptimizerState: (p) => trainer.setOptimizerState(p),
    setWeights: (p) => trainer.setWeights(p.weights, p.resetOptimizer),
    setAdapters: (p) => trainer.setAdapters(p.adapters, p.resetOptimizer),
  };
});
