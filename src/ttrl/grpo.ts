// From voted rollouts to a GRPO batch: label each question (majority or true answer), gate
// on the majority ratio, reward the samples, normalise rewards within the question's group,
// and keep M of the N samples for training. How samples are rewarded is one of three rules
// (label-free ones; with true answers it is always the first):
//   grpo        TTRL's: 1 for the majority answer, 0 else; questions under the gate skipped.
//   asymmetric  the same advantages, but only the negative ones: samples against the vote are
//               pushed down, none pushed up (the majority is not reinforced into certainty).
//   restrain    after RESTRAIN (arXiv 2510.02172): each sample rewarded by its answer's share
//               of the votes (not a single trusted label), advantages weighted by the
//               question's agreement, and every sample of a question under the gate pushed
//               down by a fixed penalty (over-confident rollouts where the votes disagree).
// The loss that consumes the advantages is objective.ts.
import type { TrainGroup } from '../engine/batch.ts';
import type { Rng } from '../util/rng.ts';
import type { Rollout } from '../sampling/rollout.ts';
import { normalizeAnswer } from '../tasks/vote.ts';

export type RewardMode = 'majority' | 'ground-truth';
export type AdvantageMode = 'grpo' | 'asymmetric' | 'restrain';

export interface GroupSettings {
  reward: RewardMode;
  /** How label-free rewards become advantages (default grpo). */
  advantage?: AdvantageMode;
  /** restrain: the advantage of every sample of a question under the gate (as a positive number pushed down). */
  restrainPenalty?: number;
  /** Skip questions whose reference support (ttrl/reference.ts, given per rollout) is below this (0 or unset: off). */
  refGate?: number;
  /** Samples trained on per question (M <= N); chosen at random. */
  trainSamples: number;
  /** Questions whose majority ratio is below this are not trained on (majority mode). */
  gate: number;
}

export const ADVANTAGE_EPS = 1e-6;

/** Reward 1 for agreeing with the label, 0 otherwise; a missing answer never agrees. */
export function rewards(answers: (string | null)[], label: string): number[] {
  return answers.map((a) => (a !== null && a === label ? 1 : 0));
}

/** (r - mean) / (std + eps) over the group; null when every reward is equal (no signal). */
export function groupAdvantages(r: number[]): number[] | null {
  if (!r.length || r.every((x) => x === r[0])) return null;
  const mean = r.reduce((a, b) => a + b, 0) / r.length;
  const std = Math.sqrt(r.reduce((a, b) => a + (b - mean) ** 2, 0) / r.length);
  return r.map((x) => (x - mean) / (std + ADVANTAGE_EPS));
}

export interface GroupStats {
  questions: number;
  /** Questions trained on. */
  trained: number;
  /** restrain: questions under the gate whose samples were all pushed down. */
  penalized: number;
  /** Questions skipped because the reference model backs their majority less than --ref-gate. */
  refGated: number;
  /** Mean reference support of the questions' majority answers (null: not measured). */
  refSupport: number | null;
  noLabel: number;
  gated: number;
  noSignal: number;
  /** Majority label equals the true answer, over questions with a known answer (null: none known). */
  labelAccuracy: number | null;
  /** Rewards equal to the true rewards, over samples of questions with a known answer. */
  rewardAccuracy: number | null;
  majorityRatio: number;
  meanLength: number;
  /** Share of samples with a parsable answer. */
  parsable: number;
}

export interface Selected {
  rollout: Rollout;
  label: string;
  /** Indices into rollout.samples and their advantages. */
  picks: { index: number; advantage: number }[];
}

/**
 * Labels, gates and selects. `truths[i]` is the known answer of rollout i (or undefined);
 * in majority mode truths only feed the statistics.
 */
export function selectForTraining(
  rollouts: Rollout[],
  truths: (string | undefined)[],
  s: GroupSettings,
  rng: Rng,
  /** The reference's support of each rollout's majority (needed when s.refGate > 0). */
  support?: number[],
): { selected: Selected[]; stats: GroupStats } {
  if ((s.refGate ?? 0) > 0 && s.reward === 'majority' && support?.length !== rollouts.length)
    throw new Error('selectForTraining: --ref-gate needs the reference support of every rollout');
  const st: GroupStats = {
    questions: rollouts.length,
    trained: 0,
    penalized: 0,
    refGated: 0,
    refSupport: null,
    noLabel: 0,
    gated: 0,
    noSignal: 0,
    labelAccuracy: null,
    rewardAccuracy: null,
    majorityRatio: 0,
    meanLength: 0,
    parsable: 0,
  };
  let known = 0,
    labelRight = 0,
    rewardSamples = 0,
    rewardRight = 0,
    samples = 0;
  const selected: Selected[] = [];
  rollouts.forEach((r, i) => {
    const truth = normalizeAnswer(truths[i]);
    const answers = r.samples.map((x) => x.answer);
    st.majorityRatio += r.vote.ratio;
    for (const x of r.samples) {
      samples++;
      st.meanLength += x.tokens.length;
      if (x.answer !== null) st.parsable++;
    }
    if (truth !== null) {
      known++;
      if (r.vote.label === truth) labelRight++;
      if (r.vote.label !== null) {
        const est = rewards(answers, r.vote.label);
        const tru = rewards(answers, truth);
        rewardSamples += est.length;
        rewardRight += est.filter((x, j) => x === tru[j]).length;
      }
    }
    const label = s.reward === 'ground-truth' ? truth : r.vote.label;
    if (s.reward === 'ground-truth' && truth === null) throw new Error(`ground-truth rewards need an answer for ${JSON.stringify(r.question)}`);
    if (label === null) return void st.noLabel++;
    const mode = s.reward === 'ground-truth' ? 'grpo' : (s.advantage ?? 'grpo');
    if (s.reward === 'majority' && (s.refGate ?? 0) > 0 && support![i]! < s.refGate!) return void st.refGated++;
    const pick = () => rng.shuffle(r.samples.map((_, j) => j)).slice(0, Math.min(s.trainSamples, r.samples.length));
    if (s.reward === 'majority' && r.vote.ratio < s.gate) {
      if (mode !== 'restrain' || !(s.restrainPenalty! > 0)) return void st.gated++;
      selected.push({ rollout: r, label, picks: pick().map((index) => ({ index, advantage: -s.restrainPenalty! })) });
      st.penalized++;
      return;
    }
    const adv = advantagesOf(mode, answers, label, r.vote.counts, r.samples.length, r.vote.ratio);
    if (!adv) return void st.noSignal++;
    selected.push({ rollout: r, label, picks: pick().map((index) => ({ index, advantage: adv[index]! })) });
    st.trained++;
  });
  st.refSupport = support?.length ? support.reduce((a, b) => a + b, 0) / support.length : null;
  st.labelAccuracy = known ? labelRight / known : null;
  st.rewardAccuracy = rewardSamples ? rewardRight / rewardSamples : null;
  st.majorityRatio /= rollouts.length || 1;
  st.meanLength /= samples || 1;
  st.parsable /= samples || 1;
  return { selected, stats: st };
}

/** One question's advantages under a rule (see the top of this file); null when it gives no signal. */
export function advantagesOf(
  mode: AdvantageMode,
  answers: (string | null)[],
  label: string,
  counts: Record<string, number>,
  n: number,
  ratio: number,
): number[] | null {
  if (mode === 'restrain') {
    const soft = answers.map((a) => (a === null ? 0 : (counts[a] ?? 0) / n));
    const adv = groupAdvantages(soft);
    return adv && adv.map((x) => x * ratio);
  }
  const adv = groupAdvantages(rewards(answers, label));
  if (!adv || mode === 'grpo') return adv;
  const down = adv.map((x) => Math.min(0, x));
  return down.some((x) => x < 0) ? down : null;
}

/** The grouped GRPO batch of the selected samples, with their sampling log-probs for the PPO ratio. */
export function toGroups(selected: Selected[]): TrainGroup[] {
  return selected.map((s) => ({
    prompt: s.rollout.prompt,
    completions: s.picks.map(({ index, advantage }) => {
      const x = s.rollout.samples[index]!;
      return { tokens: x.tokens, advantage, oldLogprobs: x.logprobs };
    }),
  }));
}
