// The RL loss of a TTRL update, in one place: its options, its defaults and its graph. GRPO's
// policy gradient on per-sequence advantages (grpo.ts computes them), with optional PPO ratio
// clipping against the sampling log-probs, a k3 KL penalty to reference log-probs and an
// entropy bonus. The engine runs it through its Objective seam (engine/objective.ts): the
// trainer worker imports this module by URL and calls objective(options).
import * as op from '../graph/ops.ts';
import type { Tensor } from '../graph/ir.ts';
import { weightedMean, type Aggregation, type Objective, type ObjectiveRef } from '../engine/objective.ts';

/** What shapes the loss graph: each term on or off. */
export interface GrpoOptions {
  aggregation: Aggregation;
  /** PPO-style ratio clipping against old log-probs (batch old_logprobs, scalar clip_eps). */
  ppoClip: boolean;
  /** k3 KL penalty to reference log-probs (batch ref_logprobs, scalar kl_coef). */
  klTerm: boolean;
  /** Subtract entropy_coef * entropy from the loss (scalar entropy_coef). */
  entropyTerm: boolean;
}

/** The coefficients fed at every step: the train settings of the same names (config/settings.ts holds their defaults). */
export interface GrpoCoefficients {
  clipEps: number;
  kl: number;
  entropyBonus: number;
}

/** Updates average the loss over tokens; pretraining and SFT choose per sequence where they need it. */
export const GRPO_AGGREGATION: Aggregation = 'token-mean';

/** The loss options of a TTRL update: a term whose coefficient is 0 is left out of the graph. */
export function grpoOptionsFor(c: GrpoCoefficients, aggregation: Aggregation = GRPO_AGGREGATION): GrpoOptions {
  return { aggregation, ppoClip: c.clipEps > 0, klTerm: c.kl > 0, entropyTerm: c.entropyBonus > 0 };
}

/** The trainer's handle on this loss (plain data, for the worker). */
export const grpo = (o: GrpoOptions): ObjectiveRef => ({ module: import.meta.url, options: o });

/** The step's scalar inputs for the loss `o` (only those its graph declares). */
export function grpoScalars(o: GrpoOptions, c: GrpoCoefficients): Record<string, number> {
  const s: Record<string, number> = {};
  if (o.ppoClip) s.clip_eps = c.clipEps;
  if (o.klTerm) s.kl_coef = c.kl;
  if (o.entropyTerm) s.entropy_coef = c.entropyBonus;
  return s;
}

export function objective(o: GrpoOptions): Objective {
  return {
    build(t) {
      const w = t.weights;
      const adv = op.unsqueeze(t.sequence('advantages'), [1]);
      // exp() of a log-ratio at a padded position (pad targets score -1e9) would be Inf, and Inf * 0 = NaN:
      // zero the log-ratios there before exp, so neither the loss nor its gradient sees them.
      const active = op.greater(w, 0);
      const onlyActive = (x: Tensor) => op.where(active, x, 0);
      const lp = t.tokenLogprobs;
      let perToken: Tensor;
      const stats: Record<string, Tensor> = {};
      if (o.ppoClip) {
        const eps = t.scalar('clip_eps');
        const logRatio = onlyActive(op.sub(lp, t.token('old_logprobs')));
        const ratio = op.exp(logRatio);
        const clipped = op.max(op.min(ratio, op.add(eps, 1)), op.sub(1, eps));
        perToken = op.neg(op.min(op.mul(ratio, adv), op.mul(clipped, adv)));
        // How far the trained weights score the sampled tokens from the sampler: at an update's
        // first step that is the sampler's own gap (kernels, quantized weights), later the drift.
        stats.abs_logratio = weightedMean(op.abs(logRatio), w, 'token-mean');
        stats.clipped_share = weightedMean(op.cast(op.greater(op.abs(op.sub(ratio, 1)), eps), lp.dtype), w, 'token-mean');
      } else perToken = op.neg(op.mul(lp, adv));
      if (o.klTerm) {
        const d = onlyActive(op.sub(t.token('ref_logprobs'), lp));
        const k3 = op.sub(op.sub(op.exp(d), d), 1); // low-variance, non-negative KL estimator
        stats.kl = weightedMean(k3, w, 'token-mean');
        perToken = op.add(perToken, op.mul(k3, t.scalar('kl_coef')));
      }
      if (o.entropyTerm) perToken = op.sub(perToken, op.mul(t.entropy, t.scalar('entropy_coef')));
      stats.entropy = weightedMean(t.entropy, w, 'token-mean');
      return { loss: weightedMean(perToken, w, o.aggregation), stats };
    },
  };
}
