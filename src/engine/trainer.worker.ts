// Trainer worker: owns parameters and AdamW moments; a step runs the loss-and-gradient session
// for the batch's layout, then AdamW over its own arrays in place.
import { buildLossAndGrad, buildScore, type BatchLayout, type LossOptions } from './graphs.ts';
import { createSession, f32, type ort } from './ort.ts';
import { niceThisThread, serveRequests } from './worker-host.ts';
import { ADAMW_DEFAULTS, adamwUpdate, type AdamWConfig } from './adamw.ts';
import { checkWeights, type ParamSpec, type Weights } from '../model/family.ts';
import { paramSpecsOf, type ModelConfig } from '../model/families.ts';
import type { PackedBatch } from './batch.ts';
import { batchFeeds, scoreBatch, weightFeedsOf } from './scoring.ts';
import { isWeightFile, readWeights, type WeightSource } from '../model/weight-file.ts';
import type { OptimizerState, StepHyper, TrainerInit } from './trainer.ts';

let config: ModelConfig;
let specs: ParamSpec[];
let loss: LossOptions;
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

const zeros = (): Weights => new Map(specs.map((s) => [s.name, new Float32Array(s.shape.reduce((a, b) => a * b, 1))]));

async function setParams(source: WeightSource, reset: boolean): Promise<void> {
  // Trained weights change at every step: the trainer keeps its own copy, even of a shared file.
  const w = isWeightFile(source) ? await readWeights(source, specs.map((s) => s.name)) : source;
  checkWeights(specs, w);
  params = new Map(specs.map((s) => [s.name, Float32Array.from(w.get(s.name)!)]));
  if (reset) {
    m = zeros();
    v = zeros();
    steps = 0;
  }
}

function trainSession(layout: BatchLayout): Promise<ort.InferenceSession> {
  let s = trainSessions.get(layout);
  if (!s) trainSessions.set(layout, (s = createSession(buildLossAndGrad(config, loss, 'float32', layout), { threads, spin, memPattern: false })));
  return s;
}

const scalar = (x: number) => f32(Float32Array.of(x), []);

serveRequests({
  async init(p: TrainerInit) {
    if (p.nice) niceThisThread(p.nice);
    config = p.config;
    specs = paramSpecsOf(config);
    loss = p.loss;
    threads = p.threads ?? 1;
    spin = p.spin ?? true;
    adamwConfig = p.adamw ?? ADAMW_DEFAULTS;
    await setParams(p.weights, true);
    await trainSession(p.layout ?? 'flat');
    return { value: null };
  },
  async step(p: { batch: PackedBatch; hyper: StepHyper }) {
    const t0 = performance.now();
    const { batch: b, hyper: h } = p;
    const feeds: Record<string, ort.Tensor> = { ...batchFeeds(b), loss_mask: f32(b.lossMask, [b.B, b.T]), ...weightFeedsOf(specs, params) };
    const need = (cond: boolean, name: string, arr: Float32Array | undefined, dims: number[]) => {
      if (!cond) return;
      if (!arr) throw new Error(`train step: this loss needs ${name}`);
      feeds[name] = f32(arr, dims);
    };
    need(loss.objective === 'grpo', 'advantages', b.advantages, [b.B]);
    need(loss.ppoClip, 'old_logprobs', b.oldLogprobs, [b.B, b.T]);
    need(loss.kl, 'ref_logprobs', b.refLogprobs, [b.B, b.T]);
    if (loss.ppoClip) feeds.clip_eps = scalar(h.clipEps ?? 0.2);
    if (loss.kl) feeds.kl_coef = scalar(h.klCoef ?? 0);
    if (loss.entropyBonus) feeds.entropy_coef = scalar(h.entropyCoef ?? 0);
    const session = await trainSession(b.prompts ? 'grouped' : 'flat');
    const out = await session.run(feeds);
    const num = (k: string) => (out[k] ? (out[k]!.data as Float32Array)[0]! : undefined);
    const gradNorm = num('grad_norm')!;
    // A non-finite gradient changes nothing: not the weights, not the moments, not the step count.
    const updated = Number.isFinite(gradNorm);
    if (updated) {
      steps++;
      const slots = specs.map((s) => ({ param: params.get(s.name)!, grad: out[`grad.${s.name}`]!.data as Float32Array, m: m.get(s.name)!, v: v.get(s.name)!, decay: s.decay }));
      adamwUpdate(slots, { lr: h.lr, step: steps, gradNorm, maxGradNorm: h.maxGradNorm ?? 1 }, adamwConfig);
    }
    return {
      value: { loss: num('loss')!, gradNorm, entropy: num('entropy')!, kl: num('kl'), updated, step: steps, ms: performance.now() - t0 },
    };
  },
  async score(p: { batch: PackedBatch }) {
    // The trainer's own current weights (the candidate's): a scorer holds fixed ones.
    scoreSession ??= await createSession(buildScore(config), { threads, spin, memPattern: false });
    return { value: await scoreBatch(scoreSession, weightFeedsOf(specs, params), p.batch) };
  },
  getWeights() {
    return { value: params };
  },
  getOptimizerState() {
    return { value: { m, v, step: steps } };
  },
  setOptimizerState(p: OptimizerState) {
    checkWeights(specs, p.m);
    checkWeights(specs, p.v);
    if (!Number.isInteger(p.step) || p.step < 0) throw new Error(`optimizer state: step must be an integer >= 0, got ${p.step}`);
    m = new Map(p.m);
    v = new Map(p.v);
    steps = p.step;
    return { value: null };
  },
  async setWeights(p: { weights: WeightSource; resetOptimizer: boolean }) {
    await setParams(p.weights, p.resetOptimizer);
    return { value: null };
  },
});
