// The seam between the engine and a training loss. The train-step graph scores the batch
// (each trained token's log-prob and entropy, and its loss weight); an Objective turns those
// into the scalar loss and its statistics, declaring any further inputs it reads. The engine
// knows no RL: the GRPO loss, its options and defaults live in ttrl/objective.ts.
//
// Graphs are built inside worker threads, from plain data, so an objective travels as an
// ObjectiveRef (the URL of a module exporting `objective(options)`, and the options); the
// worker imports it. Code on one thread (tests, gradient checks) can pass the Objective itself.
import type { DType, Graph, Tensor } from '../graph/ir.ts';
import * as op from '../graph/ops.ts';

/** Per-token inputs a loss can read, fed [B, T] from the packed batch (batch.ts) and aligned with the scored tokens. */
export type TokenInput = 'old_logprobs' | 'ref_logprobs';
/** Per-sequence inputs [B] from the packed batch. */
export type SequenceInput = 'advantages';

export interface LossTerms {
  graph: Graph;
  dtype: DType;
  /** [B, T'] log-prob of each scored token under the weights being trained. */
  tokenLogprobs: Tensor;
  /** [B, T'] entropy of the predicted distribution at each scored token. */
  entropy: Tensor;
  /** [B, T'] loss weight of each scored token (0: padding or prompt, not trained). */
  weights: Tensor;
  token(name: TokenInput): Tensor;
  sequence(name: SequenceInput): Tensor;
  /** A scalar input fed at every step from StepHyper.scalars[name]. */
  scalar(name: string): Tensor;
}

export interface LossOutputs {
  loss: Tensor;
  /** Scalars reported beside the loss (entropy, kl, ...), each a graph output of that name. */
  stats: Record<string, Tensor>;
}

export interface Objective {
  build(t: LossTerms): LossOutputs;
}

/** An objective as plain data: `module` exports `objective(options): Objective`. */
export interface ObjectiveRef {
  module: string;
  options?: unknown;
}

export async function loadObjective(ref: ObjectiveRef): Promise<Objective> {
  const mod = (await import(ref.module)) as { objective?: (o: unknown) => Objective };
  if (typeof mod.objective !== 'function') throw new Error(`objective module ${ref.module} exports no objective(options) function`);
  return mod.objective(ref.options);
}

export type Aggregation = 'token-mean' | 'sequence-mean';

/** Weighted mean of x [B, T] under weights w: over all tokens, or per sequence then over sequences. */
export function weightedMean(x: Tensor, w: Tensor, how: Aggregation): Tensor {
  if (how === 'token-mean') return op.div(op.sumAll(op.mul(x, w)), op.max(op.sumAll(w), 1e-8));
  const perSeq = op.div(op.reduceSum(op.mul(x, w), [1]), op.max(op.reduceSum(w, [1]), 1e-8));
  const hasTokens = op.cast(op.greater(op.reduceSum(w, [1]), 0), perSeq.dtype);
  return op.div(op.sumAll(op.mul(perSeq, hasTokens)), op.max(op.sumAll(hasTokens), 1));
}
