// How much the reference (base) model backs a question's majority answer, estimated from the
// samples the current policy drew. The majority's share of the votes is the current policy's
// confidence, and self-training inflates it: a model trained on its own majorities grows
// surer of them whether they are right or not. The reference model's probability of the
// majority answer does not move with training. With the samples y_j drawn by the current
// policy (their log-probs l_old as drawn) and the reference's log-probs l_ref of the same
// tokens, importance weighting gives an unbiased estimate of it:
//
//     support = (1/N) * sum over samples whose answer is the majority of exp(l_ref(y_j) - l_old(y_j))
//
// Before any update the two models are one (every weight is 1) and support is the majority's
// share of the votes; after updates that only made the model surer, support stays where the
// reference put it. Not self-normalised on purpose: when every sample agrees, a normalised
// estimate would say 1 whatever the reference thinks. Clipped to [0, 1] (a few heavy weights
// can overshoot).
import type { Scorer } from '../engine/scorer.ts';
import type { Rollout } from '../sampling/rollout.ts';
import { completionLogprobs, sum } from './updater.ts';

/** The reference's support for each rollout's majority answer (0 where there is no majority answer). */
export async function referenceSupport(reference: Pick<Scorer, 'score'>, rollouts: Rollout[], padId: number, contextLength: number): Promise<number[]> {
  const seqs = rollouts.flatMap((r) => r.samples.map((s) => ({ tokens: [...r.prompt, ...s.tokens], promptLength: r.prompt.length })));
  const ref = seqs.length ? await completionLogprobs(reference, seqs, padId, contextLength) : [];
  let k = 0;
  return rollouts.map((r) => {
    const majority: { target: number; sampled: number }[] = [];
    for (const s of r.samples) {
      const lr = sum(ref[k++]!);
      if (r.vote.label !== null && s.answer === r.vote.label) majority.push({ target: lr, sampled: sum(s.logprobs) });
    }
    return importanceSupport(majority, r.samples.length);
  });
}

/**
 * Another model's (the target's) probability of a majority answer, from the log-probs of the
 * majority's samples under it and as drawn, over `votes` samples in all. `of` majority samples
 * when only some of them were scored (an unbiased estimate still: their mean weight, times
 * `of`). Clipped to [0, 1].
 */
export function importanceSupport(majority: { target: number; sampled: number }[], votes: number, of = majority.length): number {
  if (!majority.length || votes <= 0) return 0;
  const total = majority.reduce((a, x) => a + Math.exp(Math.min(50, x.target - x.sampled)), 0);
  return Math.min(1, ((of / majority.length) * total) / votes);
}
