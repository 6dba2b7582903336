// The default task: arithmetic chains such as `12+34-56+7=`, answered by a worked chain of
// steps and a final answer after '#': `12+34=46;46-56=-10;-10+7=-3#-3`, then the end token.
import type { Rng } from '../util/rng.ts';

export const ANSWER_MARKER = '#';

export interface Question {
  question: string;
  /** The integer value, as text; used only to score (never to train, except in ground-truth mode). */
  answer: string;
}

export interface ChainShape {
  operands: number;
  /** Numbers are drawn uniformly from [min, max]. */
  min: number;
  max: number;
}

export function makeQuestion(rng: Rng, s: ChainShape): Question {
  if (s.operands < 2) throw new Error('a chain needs at least 2 operands');
  let q = String(rng.int(s.min, s.max));
  for (let i = 1; i < s.operands; i++) q += (rng.next() < 0.5 ? '+' : '-') + rng.int(s.min, s.max);
  q += '=';
  return { question: q, answer: String(evaluate(q)) };
}

/** Parses `a(+|-)b...=` into its numbers and operators; throws on anything else. */
export function parseChain(question: string): { numbers: number[]; ops: ('+' | '-')[] } {
  const m = /^(\d+)((?:[+-]\d+)+)=$/.exec(question);
  if (!m) throw new Error(`not an arithmetic chain: ${JSON.stringify(question)}`);
  const numbers = [Number(m[1])];
  const ops: ('+' | '-')[] = [];
  for (const [, op, n] of m[2]!.matchAll(/([+-])(\d+)/g)) {
    ops.push(op as '+' | '-');
    numbers.push(Number(n));
  }
  return { numbers, ops };
}

export function evaluate(question: string): number {
  const { numbers, ops } = parseChain(question);
  return ops.reduce((acc, op, i) => (op === '+' ? acc + numbers[i + 1]! : acc - numbers[i + 1]!), numbers[0]!);
}

/** The worked solution the model learns to write (without the end token). */
export function workedSolution(question: string): string {
  const { numbers, ops } = parseChain(question);
  const steps: string[] = [];
  let acc = numbers[0]!;
  ops.forEach((op, i) => {
    const next = op === '+' ? acc + numbers[i + 1]! : acc - numbers[i + 1]!;
    steps.push(`${acc}${op}${numbers[i + 1]}=${next}`);
    acc = next;
  });
  return `${steps.join(';')}${ANSWER_MARKER}${acc}`;
}

/**
 * The final answer of a completion: the integer after the last answer marker, or null when
 * there is none or it is not an integer (a truncated or malformed completion). Never throws.
 */
export function extractAnswer(completion: string): string | null {
  const at = completion.lastIndexOf(ANSWER_MARKER);
  if (at < 0) return null;
  const m = /^-?\d+$/.exec(completion.slice(at + 1));
  return m ? String(Number(m[0])) : null;
}
