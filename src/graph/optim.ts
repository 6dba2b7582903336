// AdamW in the graph: global-norm gradient clipping, bias correction, decoupled
// weight decay. Hyperparameters that schedules change (learning rate, clip norm)
// are graph inputs; a non-finite gradient leaves parameters and state untouched.
import type { Tensor } from './ir.ts';
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
  // Everything that is one number per step (clipping, bias correction, the learning rate, and
  // the skip of a non-finite step) folds into scalars: coefficients that, when the gradient is
  // not finite, keep m, v and the parameters exactly as they were. Each element then sees
  // about 13 passes instead of 25: the update streams every parameter, both moments and the
  // gradient, and writes its results straight into the outputs (the trainer's own buffers).
  const scalar = (x: Tensor | number) => (typeof x === 'number' ? op.constant(h.lr.graph, h.lr.dtype, x) : x);
  const ifFinite = (x: Tensor | number, otherwise: number) => op.where(finite, scalar(x), otherwise);
  const b1 = ifFinite(c.beta1, 1);
  const b2 = ifFinite(c.beta2, 1);
  const c1 = ifFinite(op.mul(scale, 1 - c.beta1), 0);
  const c2 = ifFinite(op.mul(op.mul(scale, scale), 1 - c.beta2), 0);
  const invSqrtBc2 = op.div(1, op.sqrt(bc2));
  const stepSize = ifFinite(op.div(h.lr, bc1), 0);
  const decay = ifFinite(op.sub(1, op.mul(h.lr, c.weightDecay)), 1);
  const updated = slots.map((s) => {
    const g = op.where(finite, s.grad, 0); // 0 * NaN would be NaN: drop a non-finite gradient first
    const m = op.add(op.mul(s.m, b1), op.mul(g, c1));
    const v = op.add(op.mul(s.v, b2), op.mul(op.mul(g, g), c2));
    const denom = op.add(op.mul(op.sqrt(v), invSqrtBc2), c.eps);
    const decayed = s.decay && c.weightDecay > 0 ? op.mul(s.param, decay) : s.param;
    return { param: op.sub(decayed, op.mul(op.div(m, denom), stepSize)), m, v };
  });
  return { updated, gradNorm, finite };
}
