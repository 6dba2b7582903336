// AdamW over the trainer's own parameter arrays, in place, one fused pass per parameter: global
// gradient-norm clipping, bias correction, decoupled weight decay (matrices only). The graph
// computes the loss and the gradients; this loop is the update. (It was part of the train-step
// graph before: ONNX has no fused optimizer op, so the update took about 15 elementwise passes
// over every parameter, moment and gradient, and each step's new parameters and moments crossed
// back to JavaScript as copies. Here it is one pass, in place: see bench/RESULTS.md.)

export interface AdamWConfig {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}
export const ADAMW_DEFAULTS: AdamWConfig = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };

export interface AdamWSlot {
  param: Float32Array;
  grad: Float32Array;
  m: Float32Array;
  v: Float32Array;
  /** Weight decay applies (matrices), or not (biases, norms, embeddings). */
  decay: boolean;
}

export interface AdamWStep {
  lr: number;
  /** 1-based step number, for bias correction. */
  step: number;
  /** The gradients' global L2 norm (from the graph). */
  gradNorm: number;
  /** Clip the global norm to this; <= 0: no clipping. */
  maxGradNorm: number;
}

/**
 * Updates every slot in place. The caller skips the step (and keeps everything as it was)
 * when the gradient norm is not finite.
 */
export function adamwUpdate(slots: AdamWSlot[], h: AdamWStep, c: AdamWConfig = ADAMW_DEFAULTS): void {
  if (!Number.isFinite(h.gradNorm)) throw new Error('adamw: a non-finite gradient must skip the step');
  const scale = h.maxGradNorm > 0 ? Math.min(1, h.maxGradNorm / (h.gradNorm + 1e-6)) : 1;
  const { beta1: b1, beta2: b2, eps } = c;
  const c1 = (1 - b1) * scale;
  const c2 = (1 - b2) * scale * scale;
  const stepSize = h.lr / (1 - b1 ** h.step);
  const invSqrtBc2 = 1 / Math.sqrt(1 - b2 ** h.step);
  for (const s of slots) {
    const decay = s.decay ? 1 - h.lr * c.weightDecay : 1;
    const { param: p, grad: g, m, v } = s;
    for (let i = 0; i < p.length; i++) {
      const gi = g[i]!;
      const mi = m[i]! * b1 + gi * c1;
      const vi = v[i]! * b2 + gi * gi * c2;
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i]! * decay - (stepSize * mi) / (Math.sqrt(vi) * invSqrtBc2 + eps);
    }
  }
}
