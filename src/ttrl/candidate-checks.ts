// The live guard: each candidate version is judged once before it serves. The update itself
// must be finite and keep some entropy, the candidate must stay as sure of completion anchors
// (the shipped model's own completions of its surest served answers) as the shipped model
// was, and its greedy answers on a probe set must not collapse, stop parsing or run long
// against its parent's. These are the decisions; loop/judge.ts gathers what they are made
// on. Offline adaptation has its own guard (collapse-guard.ts), whose answer anchors start
// from the same notion: an answer given with a majority ratio of at least ANCHOR_RATIO.
import type { Weights } from '../model/family.ts';
import type { Rollout } from '../sampling/rollout.ts';

/** Anchors: answers the initial (shipped) model gave with at least this majority ratio: mostly right ones. */
export const ANCHOR_RATIO = 0.9;

/** Fewer completion anchors than this: no anchor check yet. */
export const MIN_ANCHORS = 8;
/** A question asked with fewer votes than this never becomes an anchor: its ratio says too little. */
export const MIN_ANCHOR_VOTES = 8;
/** Fewer probe questions than this (or than the probe set's size, if smaller): no probe check yet. */
export const MIN_PROBE_QUESTIONS = 8;

/**
 * An answer the shipped model was surest of in served traffic, as one of its own completions
 * (prompt and completion tokens), with the shipped model's log-prob of that completion.
 */
export interface CompletionAnchor {
  question: string;
  tokens: number[];
  promptLength: number;
  /** The shipped model's log-prob of the completion: filled in by its scorer before the anchor is first used. */
  ref: number | null;
}

/** The anchor a served rollout makes, or null: only the shipped model's (version 0) near-unanimous answers do. */
export function completionAnchorOf(r: Rollout): CompletionAnchor | null {
  if (r.version !== 0 || r.samples.length < MIN_ANCHOR_VOTES || r.vote.label === null || r.vote.ratio < ANCHOR_RATIO) return null;
  const sample = r.samples.find((s) => s.answer === r.vote.label)!;
  return { question: r.question, tokens: [...r.prompt, ...sample.tokens], promptLength: r.prompt.length, ref: null };
}

/** What the guard needs of each optimizer step of an update. */
export interface StepHealth {
  updated: boolean;
  /** Epochs whose gradient was non-finite. */
  skipped: number;
  loss: number;
  entropy: number;
}

/** Why the update itself is unfit (non-finite anywhere, or its entropy collapsed), or null. */
export function judgeUpdate(steps: StepHealth[], weights: Weights, entropyFloor: number): string | null {
  if (steps.some((s) => !s.updated || s.skipped > 0)) return 'non-finite gradient in the update';
  for (const [name, w] of weights) for (let i = 0; i < w.length; i++) if (!Number.isFinite(w[i])) return `non-finite weight in ${name}`;
  if (steps.some((s) => !Number.isFinite(s.loss))) return 'non-finite loss';
  const entropy = steps.reduce((a, s) => a + s.entropy, 0) / steps.length;
  if (entropy < entropyFloor) return `entropy collapsed: ${entropy.toFixed(4)} nats per token, below the floor ${entropyFloor}`;
  return null;
}

export interface AnchorShift {
  anchors: number;
  /** Mean change of the anchor completions' log-probs, candidate minus shipped model (nats). */
  mean: number;
  /** Share of anchors whose log-prob rose. */
  up: number;
}

/** How the candidate's log-probs of the anchor completions (`candidate[i]`) moved from the shipped model's (`anchors[i].ref`). */
export function anchorShiftOf(anchors: CompletionAnchor[], candidate: number[]): AnchorShift {
  const shifts = candidate.map((c, i) => c - anchors[i]!.ref!);
  return { anchors: anchors.length, mean: shifts.reduce((a, b) => a + b, 0) / shifts.length, up: shifts.filter((d) => d > 0).length / shifts.length };
}

/**
 * The quiet collapse (confidently wrong, same length, same format) shows first as a model
 * less sure of what it knew: a healthy TTRL update sharpens the shipped model's surest
 * answers, a harmful one makes them less likely. Measured: at the default lr the anchors'
 * mean log-prob rises with every version; at 3x it falls from the third update on, while
 * served accuracy falls 5 to 13 points (bench/RESULTS.md, the guard study).
 */
export function judgeAnchors(s: AnchorShift, slack: number): string | null {
  if (s.mean >= -slack) return null;
  return `less sure of the shipped model's surest answers: their log-prob fell by ${(-s.mean).toFixed(4)} nats on average over ${s.anchors} anchors (${Math.round(100 * (1 - s.up))}% fell; slack ${slack})`;
}

/** Label-free health of a version on the probe questions. */
export interface ProbeStats {
  questions: number;
  /** Distinct greedy answers / probe questions: near 0 means everything gets the same answer. */
  distinct: number;
  parsable: number;
  meanLength: number;
}

/** The probe signals of one version's greedy rollouts of the probe questions (one completion each). */
export function probeStatsOf(rollouts: Rollout[]): ProbeStats {
  const labels = rollouts.map((r) => r.vote.label).filter((l) => l !== null);
  const samples = rollouts.flatMap((r) => r.samples);
  return {
    questions: rollouts.length,
    distinct: new Set(labels).size / rollouts.length,
    parsable: samples.filter((x) => x.answer !== null).length / samples.length,
    meanLength: samples.reduce((a, x) => a + x.tokens.length, 0) / samples.length,
  };
}

/** A candidate whose greedy probe answers collapsed, stopped parsing or ran long against its parent's. */
export function judgeProbe(parent: ProbeStats, cand: ProbeStats): string | null {
  if (cand.distinct < 0.5 * parent.distinct)
    return `probe answers collapsed: ${(cand.distinct * cand.questions).toFixed(0)} distinct majority answers on ${cand.questions} probe questions, against ${(parent.distinct * parent.questions).toFixed(0)} before`;
  if (cand.parsable < parent.parsable - 0.2)
    return `probe answers stopped parsing: ${cand.parsable.toFixed(3)} parsable, against ${parent.parsable.toFixed(3)} before`;
  if (cand.meanLength > 1.5 * parent.meanLength)
    return `probe completions ran long: ${cand.meanLength.toFixed(1)} tokens, against ${parent.meanLength.toFixed(1)} before`;
  return null;
}

/**
 * Confidence without support: how much more probable a candidate holds the majority answers of
 * its update's questions that the reference (shipped) model does not back than the reference
 * does. Self-training makes a model surer of its own majorities whether they are right or not;
 * where the reference's support (ttrl/reference.ts) is low, that certainty has nothing behind
 * it (the no-prior suites: the model becomes confidently wrong). Both are estimated from the
 * same samples, so the rise is in the units clients read `confidence` in (a share of the
 * votes), and it is measured against the shipped model, not the parent: a creep of small
 * steps adds up. Label-free.
 */
export interface ConfidenceShift {
  /** Questions whose majority the reference backs less than LOW_SUPPORT. */
  questions: number;
  /** Mean over them of the candidate's probability of the majority answer minus the reference's. */
  rise: number;
}

/** Reference support under which a majority counts as unbacked. */
export const LOW_SUPPORT = 0.5;

export function judgeConfidence(s: ConfidenceShift | null, maxRise: number | undefined): string | null {
  if (maxRise === undefined || !s || s.questions === 0 || s.rise <= maxRise) return null;
  return `surer of answers the shipped model does not back: on ${s.questions} such questions the candidate's probability of the majority answer is ${s.rise.toFixed(3)} above the shipped model's (at most ${maxRise}, --confidence-rise)`;
}
