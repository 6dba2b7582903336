// `ttrl vote`: a user's own completions, one JSON line {"completions": [...]} each, voted
// with an extractor, so they can check what an extractor reads in their logs before serving.
// A bad line is reported with its number and gets an error line of its own in the output,
// so output line k is always about input record k; the rest are still voted.
import { majorityVote } from './vote.ts';
import type { Extractor } from './extractors.ts';
import { normalizeAnswer } from './normalize.ts';

export interface LineVote {
  /** The majority answer, null when no completion states one. */
  answer: string | null;
  /** Completions per normalised answer; '' counts those without one. */
  votes: Record<string, number>;
  /** The majority's share of all completions (0 when there are none). */
  confidence: number;
  /** Each completion's normalised answer, in order. */
  answers: (string | null)[];
}

export type LineResult = { line: number; vote: LineVote } | { line: number; error: string };

const kind = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : `a ${typeof v}`);

/** The vote of one input line (`line`: its 1-based number, for the error). */
export function voteLine(text: string, line: number, ex: Extractor): LineResult {
  let record: unknown;
  try {
    record = JSON.parse(text);
  } catch (e) {
    return { line, error: `line ${line}: not JSON: ${(e as Error).message}` };
  }
  if (!record || typeof record !== 'object' || Array.isArray(record))
    return { line, error: `line ${line}: expected an object {"completions": [...]}, got ${kind(record)}` };
  const completions = (record as Record<string, unknown>).completions;
  if (!Array.isArray(completions))
    return { line, error: `line ${line}: "completions" must be an array of strings, got ${completions === undefined ? 'nothing' : kind(completions)}` };
  const bad = completions.findIndex((c) => typeof c !== 'string');
  if (bad >= 0) return { line, error: `line ${line}: completions[${bad}] must be a string, got ${kind(completions[bad])}` };
  const answers = (completions as string[]).map((c) => normalizeAnswer(ex.extract(c)));
  const v = majorityVote(answers);
  return { line, vote: { answer: v.label, votes: v.counts, confidence: v.ratio, answers } };
}

/** One line for a person: the answer, its share, and the whole count. */
export function describeVote(r: LineResult): string {
  if ('error' in r) return `error: ${r.error}`;
  const { answer, votes, confidence, answers } = r.vote;
  const counts = Object.entries(votes)
    .sort(([a, x], [b, y]) => y - x || (a < b ? -1 : 1))
    .map(([k, n]) => `${k === '' ? '(none)' : JSON.stringify(k)} ${n}`)
    .join(', ');
  const head = answer === null ? 'no answer' : JSON.stringify(answer);
  const share = answers.length ? `${answer === null ? 0 : votes[answer]}/${answers.length} votes (${confidence.toFixed(3)})` : 'no completions';
  return `${head}  ${share}${counts ? `  [${counts}]` : ''}`;
}
