// The offline guard (ttrl adapt): label-free checks that a policy is adapting rather than
// collapsing. TTRL's known failure is "rise then fall": self-reinforced answers that drift
// into long, unparsable or degenerate completions, or, quieter, into confidently wrong ones
// of the same length and format. A CollapseGuard watches the rollouts a policy produces
// (length, parsable share, majority ratio) against the initial model's, smoothed over steps,
// and every few steps the answer anchors (questions the initial model was surest of) must
// keep their answers. The serving loop judges each candidate version instead
// (candidate-checks.ts); both start their anchors from the same ANCHOR_RATIO.
import { ANCHOR_RATIO } from './candidate-checks.ts';

export interface Signals {
  meanLength: number;
  /** Share of samples with a parsable answer. */
  parsable: number;
  majorityRatio: number;
}

export interface GuardSettings {
  /** Anchors: questions the initial model answers with at least this majority ratio. */
  anchorRatio: number;
  /** At most this many anchors (the first in question order). */
  anchorMax: number;
  /** Steps between anchor checks; a check that passes is a rollback point. */
  anchorEvery: number;
  /** Trip when fewer than this share of anchors keep their initial majority answer. */
  anchorAgreement: number;
  /** Trip when the smoothed mean length exceeds the baseline by this factor. */
  lengthRatio: number;
  /** Trip when the smoothed parsable share falls this far below the baseline. */
  parsableDrop: number;
  /** Trip when the smoothed majority ratio falls this far below the baseline. */
  majorityDrop: number;
  /** Weight of the newest step in the smoothing (1 = no smoothing). */
  smoothing: number;
}

export const GUARD_DEFAULTS: GuardSettings = {
  anchorRatio: ANCHOR_RATIO,
  anchorMax: 64,
  anchorEvery: 10,
  anchorAgreement: 0.85,
  lengthRatio: 1.25,
  parsableDrop: 0.1,
  majorityDrop: 0.15,
  smoothing: 0.3,
};

/**
 * The quiet collapse: a policy that grows confidently wrong keeps its length, parses and
 * even raises its majority ratio. What it cannot keep is its answers to the questions it
 * was surest of at the start (at a majority ratio >= ANCHOR_RATIO they are mostly right):
 * when many of those flip, the model is unlearning, not adapting. No label is used.
 */
export interface AnswerAnchor {
  question: string;
  label: string;
}

export function pickAnchors(initial: { question: string; vote: { label: string | null; ratio: number } }[], s: GuardSettings): AnswerAnchor[] {
  return initial
    .filter((r) => r.vote.label !== null && r.vote.ratio >= s.anchorRatio)
    .slice(0, s.anchorMax)
    .map((r) => ({ question: r.question, label: r.vote.label! }));
}

/** Share of anchors whose majority answer is still the initial one. */
export function anchorAgreement(anchors: AnswerAnchor[], now: { vote: { label: string | null } }[]): number {
  return anchors.length ? anchors.filter((a, i) => now[i]!.vote.label === a.label).length / anchors.length : 1;
}

/** Smoothed rollout signals against the initial model's; names the first one that has run away. */
export class CollapseGuard {
  private ema: Signals;
  constructor(
    readonly settings: GuardSettings,
    readonly baseline: Signals,
  ) {
    this.ema = { ...baseline };
  }

  get smoothed(): Signals {
    return { ...this.ema };
  }

  /** Folds in one step's signals; returns why the policy looks collapsed, or null. */
  observe(s: Signals): string | null {
    const a = this.settings.smoothing;
    for (const k of ['meanLength', 'parsable', 'majorityRatio'] as const) this.ema[k] = (1 - a) * this.ema[k] + a * s[k];
    const b = this.baseline;
    if (this.ema.meanLength > b.meanLength * this.settings.lengthRatio)
      return `runaway length: ${this.ema.meanLength.toFixed(1)} tokens against ${b.meanLength.toFixed(1)} at the start`;
    if (this.ema.parsable < b.parsable - this.settings.parsableDrop)
      return `parsable answers fell to ${this.ema.parsable.toFixed(3)} from ${b.parsable.toFixed(3)}`;
    if (this.ema.majorityRatio < b.majorityRatio - this.settings.majorityDrop)
      return `majority ratio fell to ${this.ema.majorityRatio.toFixed(3)} from ${b.majorityRatio.toFixed(3)}`;
    return null;
  }

  /** After a rollback the policy is the old one again. */
  reset(): void {
    this.ema = { ...this.baseline };
  }
}
