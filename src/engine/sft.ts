// The engine's own objective: next-token cross-entropy on the weighted tokens (pretraining,
// supervised fine-tuning, the tests' toy tasks).
import * as op from '../graph/ops.ts';
import { weightedMean, type Aggregation, type Objective, type ObjectiveRef } from './objective.ts';

export interface SftOptions {
  aggregation: Aggregation;
}

export function objective(o: SftOptions = { aggregation: 'token-mean' }): Objective {
  return {
    build: (t) => ({
      loss: weightedMean(op.neg(t.tokenLogprobs), t.weights, o.aggregation),
      stats: { entropy: weightedMean(t.entropy, t.weights, 'token-mean') },
    }),
  };
}

export const sft = (aggregation: Aggregation = 'token-mean'): ObjectiveRef => ({ module: import.meta.url, options: { aggregation } });
