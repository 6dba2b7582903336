// What the dashboard page is sent: the views of questions, updates, versions, stats and
// calibration (their field names are the page's, snake_case as on the wire), and how each is
// made from what the serving loop reports. Texts are clipped here so that one long question
// cannot bloat a snapshot.
import type { UpdateOutcome } from '../loop/adaptation.ts';
import { calibration, type Calibration, type Judged } from '../sampling/calibration.ts';
import type { Experience } from '../loop/answerer.ts';
import type { VersionRow } from '../store/store.ts';

/** A question's text and an answer's label as shown; votes beyond the top ones are summed as "other". */
const QUESTION_CHARS = 160;
const LABEL_CHARS = 40;
const TOP_VOTES = 6;

export interface QuestionView {
  id: number;
  at: number;
  question: string;
  answer: string | null;
  confidence: number;
  /** The top answers and their votes, most first; "other" sums the rest. */
  votes: [string, number][];
  other: number;
  total: number;
  version: number;
  latency_ms: number;
}

export interface UpdateView {
  id: number;
  started_at: number | null;
  finished_at: number | null;
  /** running until it ends. */
  outcome: UpdateOutcome['outcome'] | 'running';
  version: number | null;
  reason: string | null;
  anchor_shift: number | null;
  seconds: number | null;
  experiences: number | null;
}

export interface VersionView {
  version: number;
  parent: number | null;
  status: VersionRow['status'];
  created_at: number;
  activated_at: number | null;
  reason: string | null;
  anchor_shift: number | null;
}

export interface StatsView {
  at: number;
  qps: number;
  p50_ms: number | null;
  p99_ms: number | null;
  /** Latencies the percentiles are of. */
  latency_n: number;
  answered: number;
  queue_depth: number;
  adaptation: string;
  pending_experiences: number;
  /** In words, why no update is due yet (null: one is running or due). */
  why_no_update_yet: string | null;
  /** With a shared store: the front-ends seen, which leads, and how far this one is behind. */
  fleet: {
    frontend: string;
    leader: string | null;
    leading: boolean;
    versions_behind: number;
    frontends: { id: string; serving_version: number; leader: boolean }[];
  } | null;
  /** With --upstream: each inference server sampled on, its state and latency. */
  upstreams: { url: string; state: string; reason: string; p50_ms: number | null; p99_ms: number | null; errors: number; outstanding: number }[] | null;
  /** Counts of the latest answers' majority ratios in ten bins of 0.1 (1.0 in the last). */
  confidence: number[];
  confidence_n: number;
  confidence_mean: number | null;
}

/**
 * Served confidence against correctness over the labelled answers kept: how many, their
 * accuracy and mean confidence, the expected calibration error and the reliability bins,
 * as `ttrl eval` and replay reports compute them.
 */
export type CalibrationView = Calibration;

/** The calibration of the labelled answers kept; null when there are none (no client sent labels). */
export const calibrationViewOf = (judged: Judged[]): CalibrationView | null => (judged.length ? calibration(judged) : null);

/** A finite number, or null (stats are JSON of any shape). */
export const numberOr = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const clip = (s: string, n: number) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);
const statOf = (r: VersionRow, key: string) => numberOr((r.stats as Record<string, unknown> | null)?.[key]);

/** An answered question as shown. */
export function questionViewOf(e: Experience): QuestionView {
  const r = e.rollout;
  // The majority answer first (a tie leaves others with as many votes), then by votes.
  const sorted = Object.entries(r.vote.counts).sort((a, b) => Number(b[0] === r.vote.label) - Number(a[0] === r.vote.label) || b[1] - a[1]);
  const top = sorted.slice(0, TOP_VOTES);
  const total = sorted.reduce((a, [, n]) => a + n, 0);
  return {
    id: e.questionId,
    at: e.at,
    question: clip(r.question, QUESTION_CHARS),
    answer: r.vote.label === null ? null : clip(r.vote.label, LABEL_CHARS),
    confidence: r.vote.ratio,
    votes: top.map(([label, n]) => [clip(label, LABEL_CHARS), n]),
    other: total - top.reduce((a, [, n]) => a + n, 0),
    total,
    version: r.version,
    latency_ms: Math.round(e.latencyMs),
  };
}

/** An earlier update, from the version it left (skipped and failed updates leave none). */
export function updateViewOfRow(r: VersionRow, id: number): UpdateView {
  return {
    id,
    started_at: null,
    finished_at: r.created_at,
    outcome: r.status === 'rejected' ? 'rejected' : r.status === 'candidate' ? 'running' : 'promoted',
    version: r.version,
    reason: r.reason,
    anchor_shift: statOf(r, 'anchor_shift'),
    seconds: statOf(r, 'seconds'),
    experiences: statOf(r, 'experiences'),
  };
}

export function versionViewOf(r: VersionRow): VersionView {
  return {
    version: r.version,
    parent: r.parent,
    status: r.status,
    created_at: r.created_at,
    activated_at: r.activated_at,
    reason: r.reason,
    anchor_shift: statOf(r, 'anchor_shift'),
  };
}
