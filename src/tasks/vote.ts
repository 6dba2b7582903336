// Majority voting over extracted answers: TTRL's label estimate. Answers are normalised
// first (src/tasks/normalize.ts) so that "+5", "05", "5.0" and "\frac{10}{2}" are one vote; the
// winner is independent of the order the samples came in (ties go to the smaller normalised
// answer, compared as text).
import { normalizeAnswer } from './normalize.ts';

export { normalizeAnswer };

export interface VoteResult {
  /** The majority answer, or null when no sample had a parsable answer. */
  label: string | null;
  /** Votes for the label. */
  count: number;
  /** count / all votes (unparsable ones included): the paper's majority ratio. */
  ratio: number;
  /** Votes per normalised answer; '' counts the samples with no answer. */
  counts: Record<string, number>;
  total: number;
}

export function majorityVote(answers: (string | null | undefined)[]): VoteResult {
  const counts: Record<string, number> = {};
  let label: string | null = null;
  let best = 0;
  for (const a of answers) {
    const key = normalizeAnswer(a) ?? '';
    counts[key] = (counts[key] ?? 0) + 1;
  }
  for (const [key, n] of Object.entries(counts)) {
    if (key === '') continue;
    if (n > best || (n === best && label !== null && key < label)) {
      label = key;
      best = n;
    }
  }
  return { label, count: best, ratio: answers.length ? best / answers.length : 0, counts, total: answers.length };
}
