// Trainer worker: owns the trained arrays (every weight, or LoRA adapters) and their AdamW
// moments; a step runs the loss-and-gradient session for the batch's layout, then AdamW over
// its own arrays in place. With LoRA the base is frozen: mapped by the sessions from its
// file, or fed from the one copy this worker was handed, never copied.
import { buildLossAndGrad, buildScore, type BatchLayout } from './graphs.ts';
import { createSession, f32, type ort } from './ort.ts';
import { niceThisThread, serveRequests } from './worker-host.ts';
import { ADAMW_DEFAULTS, adamwUpdate, type AdamWConfig } from './adamw.ts';
import { loadObjective, type Objective, type SequenceInput, type TokenInput } from './objective.ts';
import { checkWeights, type ParamSpec, type Weights } from '../model/family.ts';
import { paramSpecsOf, type ModelConfig } from '../model/families.ts';
import { checkAdapters, initAdapters, loraSpecs, type LoraConfig } from '../model/lora.ts';
import { Rng } from '../util/rng.ts';
import type { PackedBatch } from './batch.ts';
import { batchFeeds, scoreBatch, weightFeedsOf } from './scoring.ts';
import { checkWeightFile, isWeightFile, readWeights, type WeightFile, type WeightSource } from '../formats/weight-file.ts';
import type { OptimizerState, StepHyper, TrainerInit } from './trainer.ts';

let config: ModelConfig;
/** What this worker trains: every weight, or the adapters. */
let trained: ParamSpec[];
let objective: Objective;
let lora: LoraConfig | undefined;
/** LoRA's frozen base: a mapped file, or arrays fed as they are. */
let baseFile: WeightFile | undefined;
let baseFeeds: Record<string, ort.Tensor> = {};
let threads = 1;
let spin = true;
let adamwConfig: AdamWConfig;
/** One loss-and-gradient session per batch layout, built on first use. */
const trainSessions = new Map<BatchLayout, Promise<ort.InferenceSession>>();
let scoreSession: ort.InferenceSession | undefined;
let params: Weights;
let m: Weights;
let v: Weights;
let steps = 0;

const zeros = (): Weights => new Map(trained.map((s) => [s.name, new Float32Array(s.shape.reduce((a, b) => a * b, 1))]));

function resetOptimizer(): void {
  m = zeros();
  v = zeros();
  steps = 0;
}

async function setParams(source: WeightSource, reset: boolean): Promise<void> {
  // Trained weights change at every step: the trainer keeps its own copy, even of a shared file.
  const w = isWeightFile(source) ? await readWeights(source, trained.map((s) => s.name)) : source;
  checkWeights(trained, w);
  params = new Map(trained.map((s) => [s.name, Float32Array.from(w.get(s.name)!)]));
  if (reset) resetOptimizer();
}

function setAdapters(a: Weights, reset: boolean): void {
  checkAdapters(config, lora!, a);
  params = new Map(trained.map((s) => [s.name, Float32Array.from(a.get(s.name)!)]));
  if (reset) resetOptimizer();
}

function setBase(source: WeightSource): void {
  const specs = paramSpecsOf(config);
  if (isWeightFile(source)) {
    checkWeightFile(specs, source);
    baseFile = source;
  } else {
    checkWeights(specs, source);
    baseFeeds = weightFeedsOf(specs, source);
  }
}

// A mapped base stays on the shared mapping: no private prepacked copy of it in this worker.
const sessionOptions = () => ({ threads, spin, memPattern: false, ...(baseFile ? { externalDir: baseFile.dir, prepack: false } : {}) });

function trainSession(layout: BatchLayout): Promise<ort.InferenceSession> {
  let s = trainSessions.get(layout);
  if (!s) trainSessions.set(layout, (s = createSession(buildLossAndGrad(config, objective, 'float32', layout, { lora, weights: baseFile }), sessionOptions())));
  return s;
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

serveRequests({
  async init(p: TrainerInit) {
    if (p.nice) niceThisThread(p.nice);
    config = p.config;
    objective = await loadObjective(p.loss);
    lora = p.lora;
    threads = p.threads ?? 1;
    spin = p.spin ?? true;
    adamwConfig = p.adamw ?? ADAMW_DEFAULTS;
    if (lora) {
      trained = loraSpecs(config, lora);
      setBase(p.weights);
      setAdapters(p.adapters ?? initAdapters(config, lora, new Rng(p.seed ?? 0)), true);
    } else {
      if (p.adapters) throw new Error('trainer: adapters given without a lora config');
      trained = paramSpecsOf(config);
      await setParams(p.weights, true);
    }
    await trainSession(p.layout ?? 'flat');
    return { value: null };
  },
  async step(p: { batch: PackedBatch; hyper: StepHyper }) {
    const t0 = performance.now();
    const { batch: b, hyper: h } = p;
    const session = await trainSession(b.prompts ? 'grouped' : 'flat');
    const feeds: Record<string, ort.Tensor> = { ...batchFeeds(b), loss_mask: f32(b.lossMask, [b.B, b.T]), ...baseFeeds, ...weightFeedsOf(trained, params) };
    for (const name of session.inputNames) feeds[name] ??= objectiveInput(name, b, h);
    const out = await session.run(feeds);
    const num = (k: string) => (out[k] ? (out[k]!.data as Float32Array)[0]! : undefined);
    const gradNorm = num('grad_norm')!;
    // A non-finite gradient changes nothing: not the weights, not the moments, not the step count.
    const updated = Number.isFinite(gradNorm);
    if (updated) {
      steps++;
      const slots = trained.map((s) => ({ param: params.get(s.name)!, grad: out[`grad.${s.name}`]!.data as Float32Array, m: m.get(s.name)!, v: v.get(s.name)!, decay: s.decay }));
      adamwUpdate(slots, { lr: h.lr, step: steps, gradNorm, maxGradNorm: h.maxGradNorm ?? 1 }, adamwConfig);
    }
    const stats = Object.fromEntries(session.outputNames.filter((k) => k !== 'loss' && k !== 'grad_norm' && !k.startsWith('grad.')).map((k) => [k, num(k)!]));
    return {
      value: { loss: num('loss')!, gradNorm, entropy: num('entropy')!, kl: num('kl'), stats, updated, step: steps, ms: performance.now() - t0 },
    };
  },
  async score(p: { batch: PackedBatch }) {
    // The trainer's own current weights (the candidate's): a scorer holds fixed ones.
    scoreSession ??= await createSession(buildScore(config, 'float32', { lora, weights: baseFile }), sessionOptions());
    return { value: await scoreBatch(scoreSession, { ...baseFeeds, ...weightFeedsOf(trained, params) }, p.batch) };
  },
  getWeights() {
    if (lora) throw new Error('trainer: with LoRA only the adapters are trained: use getAdapters() (model/lora.ts mergeAdapters gives full weights)');
    return { value: params };
  },
  getAdapters() {
    if (!lora) throw new Error('trainer: no LoRA adapters (full fine-tuning): use getWeights()');
    return { value: params };
  },
  getOptimizerState() {
    return { value: { m, v, step: steps } };
  },
  setOptimizerState(p: OptimizerState) {
    checkWeights(trained, p.m);
    checkWeights(trained, p.v);
    if (!Number.isInteger(p.step) || p.step < 0) throw new Error(`optimizer state: step must be an integer >= 0, got ${p.step}`);
    m = new Map(p.m);
    v = new Map(p.v);
    steps = p.step;
    return { value: null };
  },
  async setWeights(p: { weights: WeightSource; resetOptimizer: boolean }) {
    if (lora) throw new Error('trainer: with LoRA the base is fixed at start; use setAdapters()');
    await setParams(p.weights, p.resetOptimizer);
    return { value: null };
  },
  setAdapters(p: { adapters: Weights; resetOptimizer: boolean }) {
    if (!lora) throw new Error('trainer: no LoRA adapters (full fine-tuning): use setWeights()');
    setAdapters(p.adapters, p.resetOptimizer);
    return { value: null };
  },
});
