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
  const sq = slots.map((s) => op.sumAll(op.mul(s.grad, s.grad)));
  const gradNorm = op.sqrt(sq.reduce((a, b) => op.add(a, b)));
  const finite = op.not(op.or(op.isNaN(gradNorm), op.isInf(gradNorm)));
  // scale = min(1, maxNorm / norm) when clipping is on
  const clipOn = op.greater(h.maxGradNorm, 0);
  const scale = op.where(clipOn, op.min(op.div(h.maxGradNorm, op.add(gradNorm, 1e-6)), 1), 1);
  const bc1 = op.sub(1, op.pow(c.beta1, h.step));
  const bc2 = op.sub(1, op.pow(c.beta2, h.step));
  const updated = slots.map((s) => {
    const g = op.mul(s.grad, scale);
    const m = op.add(op.mul(s.m, c.beta1), op.mul(g, 1 - c.beta1));
    const v = op.add(op.mul(s.v, c.beta2), op.mul(op.mul(g, g), 1 - c.beta2));
    const stepDir = op.div(op.div(m, bc1), op.add(op.sqrt(op.div(v, bc2)), c.eps));
    const decayed = s.decay && c.weightDecay > 0 ? op.mul(s.param, op.sub(1, op.mul(h.lr, c.weightDecay))) : s.param;
    const p = op.sub(decayed, op.mul(stepDir, h.lr));
    return {
      param: op.where(finite, p, s.param),
      m: op.where(finite, m, s.m),
      v: op.where(finite, v, s.v),
    };
  });
  return { updated, gradNorm, finite };
}
