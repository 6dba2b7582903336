// The outcome of a replay: counts, throughput, latency, and (when true answers are known)
// served accuracy overall, over windows of the stream and per model version; as JSON, CSV
// and an SVG plot of accuracy and majority ratio over the stream.
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { mkdir } from 'node:fs/promises';
import { writeFileAtomic } from '../util/atomic-write.ts';
import { linePlot, toCsv } from '../util/svg-plot.ts';
import { isCorrect } from '../tasks/normalize.ts';
import { quantile } from '../util/stats.ts';
import { calibration, type Calibration } from '../sampling/calibration.ts';

export interface Outcome {
  question: string;
  truth?: string;
  /** Set when answered. */
  answer?: string | null;
  version?: number;
  confidence?: number;
  latencyMs?: number;
  /** Error code when not answered (or 'not_sent'). */
  error?: string;
}

export interface Report {
  questions: number;
  sent: number;
  answered: number;
  errors: number;
  error_codes: Record<string, number>;
  wall_s: number;
  questions_per_s: number;
  p50_ms: number | null;
  p99_ms: number | null;
  accuracy: number | null;
  /** Served confidence against correctness, over answers whose true answer is known (null: none known). */
  calibration: Calibration | null;
  windows: {
    from: number;
    to: number;
    answered: number;
    accuracy: number | null;
    majority_ratio: number | null;
    /** Expected calibration error of the window's answers with known answers and a confidence. */
    ece: number | null;
    version: number | null;
  }[];
  per_version: Record<string, { answered: number; accuracy: number | null }>;
  versions: number[];
  digest: string;
}

const round = (x: number | null, d = 4) => (x === null ? null : +x.toFixed(d));

/** A hash of the ordered (question, answer, version) sequence: equal digests, equal runs. */
export function digestOf(outcomes: Outcome[]): string {
  const h = createHash('sha256');
  for (const o of outcomes) h.update(JSON.stringify([o.question, o.answer ?? null, o.version ?? null, o.error ?? null]) + '\n');
  return h.digest('hex').slice(0, 16);
}

export function buildReport(outcomes: Outcome[], sent: number, wallS: number, window = 100): Report {
  const answered = outcomes.filter((o) => o.error === undefined && o.answer !== undefined);
  const known = (o: Outcome) => o.truth !== undefined;
  const right = (o: Outcome) => isCorrect(o.answer, o.truth);
  const accuracyOf = (xs: Outcome[]) => {
    const k = xs.filter(known);
    return k.length ? k.filter(right).length / k.length : null;
  };
  const judged = (xs: Outcome[]) => xs.filter((o) => known(o) && o.confidence !== undefined).map((o) => ({ confidence: o.confidence!, correct: right(o) }));
  const codes: Record<string, number> = {};
  for (const o of outcomes) if (o.error !== undefined) codes[o.error] = (codes[o.error] ?? 0) + 1;
  const windows: Report['windows'] = [];
  for (let i = 0; i < outcomes.length; i += window) {
    const w = outcomes.slice(i, i + window);
    const a = w.filter((o) => o.answer !== undefined && o.error === undefined);
    const conf = a.filter((o) => o.confidence !== undefined);
    windows.push({
      from: i + 1,
      to: i + w.length,
      answered: a.length,
      accuracy: round(accuracyOf(a)),
      majority_ratio: round(conf.length ? conf.reduce((s, o) => s + o.confidence!, 0) / conf.length : null),
      ece: round(calibration(judged(a)).ece),
      version: a.length ? (a[a.length - 1]!.version ?? null) : null,
    });
  }
  const perVersion: Report['per_version'] = {};
  const versions = [...new Set(answered.map((o) => o.version).filter((v): v is number => v !== undefined))].sort((a, b) => a - b);
  for (const v of versions) {
    const xs = answered.filter((o) => o.version === v);
    perVersion[v] = { answered: xs.length, accuracy: round(accuracyOf(xs)) };
  }
  const lat = answered.map((o) => o.latencyMs).filter((x): x is number => x !== undefined);
  return {
    questions: outcomes.length,
    sent,
    answered: answered.length,
    errors: outcomes.length - answered.length,
    error_codes: codes,
    wall_s: round(wallS, 2)!,
    questions_per_s: round(wallS > 0 ? answered.length / wallS : 0, 2)!,
    p50_ms: round(quantile(lat, 0.5), 1),
    p99_ms: round(quantile(lat, 0.99), 1),
    accuracy: round(accuracyOf(answered)),
    calibration: judged(answered).length ? calibration(judged(answered)) : null,
    windows,
    per_version: perVersion,
    versions,
    digest: digestOf(outcomes),
  };
}

/** report.csv (per window) and report.svg (accuracy, majority ratio and calibration error over the stream). */
export async function writeReport(dir: string, r: Report, title: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, 'report.csv'), toCsv(r.windows));
  const mid = (w: Report['windows'][number]) => (w.from + w.to) / 2;
  const series = [
    { name: 'accuracy', points: r.windows.filter((w) => w.accuracy !== null).map((w) => [mid(w), w.accuracy!] as [number, number]) },
    { name: 'majority ratio', points: r.windows.filter((w) => w.majority_ratio !== null).map((w) => [mid(w), w.majority_ratio!] as [number, number]) },
    { name: 'ECE', points: r.windows.filter((w) => w.ece !== null).map((w) => [mid(w), w.ece!] as [number, number]) },
  ].filter((s) => s.points.length);
  await writeFileAtomic(join(dir, 'report.svg'), linePlot(series, { title, xLabel: 'question (stream order)', yMin: 0, yMax: 1 }));
}
