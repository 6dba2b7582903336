// Named question sets of the arithmetic task, and the pretraining mixture. A suite is a
// distribution of chain shapes; `suite(name, n, seed)` draws n questions reproducibly.
import { Rng } from '../util/rng.ts';
import { makeQuestion, type ChainShape, type Question } from './arithmetic.ts';

/** Chain shapes with their weights; a question picks a shape, then its numbers. */
export type Mixture = { shape: ChainShape; weight: number }[];

const twoDigit = (operands: number): ChainShape => ({ operands, min: 0, max: 99 });

/** What the default model is pretrained on: 4-operand chains are deliberately rare (a weak prior to adapt). */
export const PRETRAIN_MIXTURE: Mixture = [
  { shape: twoDigit(2), weight: 0.44 },
  { shape: twoDigit(3), weight: 0.44 },
  { shape: twoDigit(4), weight: 0.12 },
];

export const SUITES: Record<string, { description: string; mixture: Mixture }> = {
  'in-distribution': {
    description: '2- and 3-operand chains of numbers 0..99, as in pretraining',
    mixture: [
      { shape: twoDigit(2), weight: 0.5 },
      { shape: twoDigit(3), weight: 0.5 },
    ],
  },
  '4-operand': { description: '4-operand chains: under-trained, a weak prior (the adaptation suite)', mixture: [{ shape: twoDigit(4), weight: 1 }] },
  '5-operand': { description: '5-operand chains: never seen in pretraining', mixture: [{ shape: twoDigit(5), weight: 1 }] },
  '3-digit': {
    description: '2- and 3-operand chains of numbers 100..999: no prior',
    mixture: [
      { shape: { operands: 2, min: 100, max: 999 }, weight: 0.5 },
      { shape: { operands: 3, min: 100, max: 999 }, weight: 0.5 },
    ],
  },
};

export const SUITE_NAMES: readonly string[] = Object.freeze(Object.keys(SUITES));

export function drawFrom(mixture: Mixture, rng: Rng): Question {
  const total = mixture.reduce((a, m) => a + m.weight, 0);
  let u = rng.next() * total;
  for (const m of mixture) {
    u -= m.weight;
    if (u < 0) return makeQuestion(rng, m.shape);
  }
  return makeQuestion(rng, mixture[mixture.length - 1]!.shape);
}

export function suite(name: string, n: number, seed: number): Question[] {
  const s = SUITES[name];
  if (!s) throw new Error(`unknown suite ${JSON.stringify(name)}; one of: ${SUITE_NAMES.join(', ')}`);
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => drawFrom(s.mixture, rng));
}
