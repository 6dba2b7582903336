// AdamW in the graph: global-norm gradient clipping, bias correction, decoupled
// weight decay. Hyperparameters that schedules change (learning rate, clip norm)
// are graph inputs; a non-finite gradient leaves parameters and state untouched.
import { Graph, type Tensor } from './ir.ts';
import * as op from './ops.ts';

export interface AdamWConfig {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}
export const ADAMW_DEFAULTS: AdamWConfig = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };

export interface AdamWSlot {
  param: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
  decay: boolean;
}

export interface AdamWInputs {
  /** Learning rate, scalar. */
  lr: Tensor;
  /** 1-based step count as a float scalar, for bias correction. */
  step: Tensor;
  /** Clip the global gradient norm to this, scalar (<= 0 or huge: no clipping in effect). */
  maxGradNorm: Tensor;
}

export function adamw(slots: AdamWSlot[], h: AdamWInputs, c: AdamWConfig = ADAMW_DEFAULTS) {
  const sq = slots.map((s) => op.reduceSumSquare(s.grad));
  const gradNorm = op.sqrt(sq.reduce((a, b) => op.add(a, b)));
  const finite = op.not(op.or(op.isNaN(gradNorm), op.isInf(gradNorm)));
  // scale = min(1, maxNorm / norm) when clipping is on
  const clipOn = op.greater(h.maxGradNorm, 0);
  const scale = op.where(clipOn, op.min(op.div(h.maxGradNorm, op.add(gradNorm, 1e-6)), 1), 1);
  const bc1 = op.sub(1, op.pow(c.beta1, h.step));
  const bc2 = op.sub(1, op.pow(c.beta2, h.step));
  // A step whose gradient is not finite changes nothing: the update runs in one branch of an If,
  // the other hands back parameters and moments as they were. Everything that is one number
  // per step (clipping, bias correction, the learning rate) folds into scalars, so each element
  // sees about 12 passes: the update streams every parameter, both moments and the gradient.
  const g = h.lr.graph;
  const update = new Graph('adamw_update', g);
  const local = (x: Tensor) => op.capture(update, x); // scalars inside the branch pull the per-element work in with them
  const c1 = local(op.mul(scale, 1 - c.beta1));
  const c2 = local(op.mul(op.mul(scale, scale), 1 - c.beta2));
  const b1 = op.constant(update, h.lr.dtype, c.beta1);
  const b2 = op.constant(update, h.lr.dtype, c.beta2);
  const invSqrtBc2 = local(op.div(1, op.sqrt(bc2)));
  const stepSize = local(op.div(h.lr, bc1));
  const decay = local(op.sub(1, op.mul(h.lr, c.weightDecay)));
  const keep = new Graph('adamw_skip', g);
  slots.forEach((s, i) => {
    const m = op.add(op.mul(s.m, b1), op.mul(s.grad, c1));
    const v = op.add(op.mul(s.v, b2), op.mul(op.mul(s.grad, s.grad), c2));
    const denom = op.add(op.mul(op.sqrt(v), invSqrtBc2), c.eps);
    const decayed = s.decay && c.weightDecay > 0 ? op.mul(s.param, decay) : s.param;
    update.output(`adamw_p${i}`, op.sub(decayed, op.mul(op.div(m, denom), stepSize)));
    update.output(`adamw_m${i}`, m);
    update.output(`adamw_v${i}`, v);
    for (const [name, t] of [['p', s.param], ['m', s.m], ['v', s.v]] as const) keep.output(`kept_${name}${i}`, op.capture(keep, t));
  });
  const outs = op.ifElse(g, finite, update, keep);
  const updated = slots.map((_, i) => ({ param: outs[3 * i]!, m: outs[3 * i + 1]!, v: outs[3 * i + 2]! }));
  return { updated, gradNorm, finite };
}
