// Offline TTRL on a fixed set of unlabeled questions: sample N votes per question, label by
// majority, GRPO-update on M of them, hand the new weights to the sampler, repeat; evaluate
// every K steps; roll back to the last healthy weights when the guard sees a collapse.
import { Rng } from '../util/rng.ts';
import { Sampler } from '../engine/sampler.ts';
import { inMemory, type Model } from '../formats/checkpoint.ts';
import type { Weights } from '../model/family.ts';
import type { QuestionRecord } from '../tasks/question-file.ts';
import { ARITHMETIC_TASK, type Task } from '../tasks/task.ts';
import { anchorAgreement, CollapseGuard, GUARD_DEFAULTS, pickAnchors, type GuardSettings as CollapseGuardSettings } from './collapse-guard.ts';
import { selectForTraining } from './grpo.ts';
import { referenceSupport } from './reference.ts';
import { Scorer } from '../engine/scorer.ts';
import { accuracy, rollout, type Accuracy, type Rollout } from '../sampling/rollout.ts';
import { TTRLUpdater } from './updater.ts';
import { lrOf, resolveGroups, type ConfidenceSettings, type OfflineAdaptSettings, type SamplingSettings, type TrainSettings } from '../config/settings.ts';
import { LOW_SUPPORT, judgeConfidence } from './candidate-checks.ts';
import { initAdapters, loraConfigFor, mergeAdapters } from '../model/lora.ts';

/**
 * `ttrl adapt`'s settings: its own group (reward, steps, evaluations, the collapse guard),
 * the train group (what each update does, LoRA included), and the sampling it votes with.
 * config/settings.ts holds every default.
 */
export type AdaptSettings = OfflineAdaptSettings &
  TrainSettings &
  ConfidenceSettings &
  Pick<SamplingSettings, 'votes' | 'temperature' | 'seed' | 'threads'> & {
    /** How questions become prompts and answers are read (default: the arithmetic task). */
    task?: Task;
    /** The collapse guard's thresholds (default: GUARD_DEFAULTS); used while `guard` is on. */
    collapseGuard?: CollapseGuardSettings;
  };

/** The recommended settings: what `ttrl adapt` runs without flags (bench/RESULTS.md), read from the settings table. */
export const ADAPT_DEFAULTS: AdaptSettings = resolveGroups(['offlineAdapt', 'train', 'confidence', 'sampling'], {}, {}) as AdaptSettings;

export interface StepRow {
  step: number;
  lr: number;
  label_accuracy: number | null;
  reward_accuracy: number | null;
  majority_ratio: number;
  entropy: number | null;
  mean_len: number;
  parsable: number;
  loss: number | null;
  trained: number;
  /** Mean reference support of the step's majorities (with --ref-gate). */
  ref_support: number | null;
  /** With --confidence-rise: the model's share of votes for its majorities minus the shipped model's support of them, on the questions it does not back. */
  confidence_rise: number | null;
  pass_at_1: number | null;
  maj_at_n: number | null;
  /** Share of the guard's anchors that kept their initial answer (when checked). */
  anchor_agreement: number | null;
  event: string;
}

export interface AdaptResult {
  before: Accuracy | null;
  after: Accuracy | null;
  rows: StepRow[];
  weights: Weights;
  rollbacks: number;
  wallS: number;
}

export async function adapt(model: Model, questions: QuestionRecord[], s: AdaptSettings, onStep?: (row: StepRow) => void): Promise<AdaptResult> {
  const t0 = performance.now();
  const tok = model.tokenizer;
  const task = s.task ?? ARITHMETIC_TASK;
  // Every prompt must encode before any worker starts (`ttrl adapt` checks their lengths too).
  for (const q of questions) task.encode(tok, q.question);
  const truths = questions.map((q) => q.answer);
  const hasAnswers = truths.every((a) => a !== undefined);
  if (s.reward === 'ground-truth' && !hasAnswers) throw new Error('ground-truth rewards need an answer for every question');
  const rng = new Rng(s.seed);
  const initialWeights = await inMemory(model.weights);
  const collapse = s.guard ? (s.collapseGuard ?? GUARD_DEFAULTS) : null;
  // With LoRA the trainer holds adapters on the frozen base, and the sampler serves them merged.
  const lora = s.loraRank > 0 ? loraConfigFor(model.config, { rank: s.loraRank, alpha: s.loraAlpha, targets: s.loraTargets }) : undefined;
  const sampler = await Sampler.create({ config: model.config, weights: initialWeights, threads: s.threads });
  let updater: TTRLUpdater | undefined;
  let reference: Scorer | undefined;
  try {
    const fresh = lora ? initAdapters(model.config, lora, new Rng(s.seed ^ 0x10a)) : undefined;
    updater = await TTRLUpdater.create({
      config: model.config,
      tokenizer: tok,
      weights: initialWeights,
      settings: { ...s, lr: lrOf(s) },
      threads: s.threads,
      lora,
      adapters: fresh,
    });
    /** What the trainer holds now (the whole model, or the adapters), and how to serve and restore it. */
    const trained = () => (lora ? updater!.getAdapters() : updater!.getWeights());
    const restore = (w: Weights) => (lora ? updater!.setAdapters(w) : updater!.setWeights(w));
    const served = (w: Weights) => (lora ? mergeAdapters(model.config, lora, initialWeights, w) : w);
    // One fixed evaluation seed: every evaluation sees the same uniforms (common random numbers).
    const evalSeed = (s.seed ^ 0x5eed) >>> 0;
    const evalRollout = () =>
      rollout(
        sampler,
        tok,
        questions.map((q) => q.question),
        { task, votes: s.votes, temperature: s.temperature, seed: evalSeed },
      );
    const evaluate = async () => (hasAnswers ? accuracy(await evalRollout(), truths as string[]) : null);
    // The first look at the questions: the evaluation before (when answers are known) and the guard's anchors.
    const initial = await evalRollout();
    const before = hasAnswers ? accuracy(initial, truths as string[]) : null;
    const anchors = collapse ? pickAnchors(initial, collapse) : [];
    const anchorSeed = (s.seed ^ 0xa9c4) >>> 0;
    const agreement = async () =>
      anchorAgreement(
        anchors,
        anchors.length
          ? await rollout(
              sampler,
              tok,
              anchors.map((a) => a.question),
              { task, votes: s.votes, temperature: s.temperature, seed: anchorSeed },
            )
          : [],
      );
    const rows: StepRow[] = [];
    let order: number[] = [];
    let lr = lrOf(s);
    let version = 0;
    let guard: CollapseGuard | undefined;
    // Rollback points: the initial weights, then every state that passed an anchor check.
    const snapshots: { step: number; weights: Weights }[] = [{ step: 0, weights: fresh ?? initialWeights }];
    let rollbacks = 0;
    for (let step = 1; step <= s.steps; step++) {
      // Questions for this step: walk a fresh shuffle of the set each epoch.
      const batch: number[] = [];
      while (batch.length < Math.min(s.questionsPerStep, questions.length)) {
        if (!order.length) order = rng.shuffle(questions.map((_, i) => i));
        batch.push(order.pop()!);
      }
      const rollouts = await rollout(
        sampler,
        tok,
        batch.map((i) => questions[i]!.question),
        { task, votes: s.votes, temperature: s.temperature, seed: rng.nextU32() },
      );
      // The reference gate reads the initial model, whatever the trained one became.
      const support =
        (s.refGate > 0 || s.confidenceRise !== undefined) && s.reward === 'majority'
          ? await referenceSupport(
              (reference ??= await Scorer.create({ config: model.config, weights: initialWeights, threads: s.threads })),
              rollouts,
              tok.padId,
              model.config.contextLength,
            )
          : undefined;
      const { selected, stats } = selectForTraining(
        rollouts,
        batch.map((i) => truths[i]),
        s,
        rng,
        s.refGate > 0 ? support : undefined,
      );
      let event = '';
      const rollBack = async (reason: string) => {
        const target = snapshots[snapshots.length - 1]!;
        await restore(target.weights);
        await sampler.setWeights(served(target.weights), ++version);
        guard?.reset();
        lr *= s.rollbackLrFactor;
        rollbacks++;
        event = `rollback to step ${target.step}: ${reason}`;
      };
      const signals = { meanLength: stats.meanLength, parsable: stats.parsable, majorityRatio: stats.majorityRatio };
      if (collapse) {
        guard ??= new CollapseGuard(collapse, signals);
        const reason = guard.observe(signals);
        if (reason) await rollBack(reason);
      }
      // Confidence without support: the model drew these samples, so its own probability of a
      // majority is its share of the votes; the shipped model's is the reference support.
      const shift = support ? confidenceShift(rollouts, support) : null;
      if (!event && shift) {
        const reason = judgeConfidence(shift, s.confidenceRise);
        if (reason) await rollBack(reason);
      }
      const u = event ? null : await updater.update(selected, lr);
      if (u?.updated) await sampler.setWeights(served(await trained()), ++version);
      if (u && !u.updated) event = 'non-finite gradient: update skipped';
      let checked: number | null = null;
      if (!event && collapse && step % collapse.anchorEvery === 0) {
        const a = (checked = await agreement());
        if (a < collapse.anchorAgreement) await rollBack(`${((1 - a) * 100).toFixed(0)}% of ${anchors.length} anchor answers changed`);
        else snapshots.push({ step, weights: await trained() });
      }
      const ev = s.evalEvery && step % s.evalEvery === 0 && step !== s.steps ? await evaluate() : null;
      const row: StepRow = {
        step,
        lr,
        label_accuracy: stats.labelAccuracy,
        reward_accuracy: stats.rewardAccuracy,
        majority_ratio: stats.majorityRatio,
        entropy: u?.entropy ?? null,
        mean_len: stats.meanLength,
        parsable: stats.parsable,
        loss: u?.loss ?? null,
        trained: stats.trained,
        ref_support: stats.refSupport,
        confidence_rise: shift && shift.questions ? shift.rise : null,
        pass_at_1: ev?.pass_at_1 ?? null,
        maj_at_n: ev?.maj_at_n ?? null,
        anchor_agreement: checked,
        event,
      };
      rows.push(row);
      onStep?.(row);
    }
    const after = await evaluate();
    if (after && rows.length) Object.assign(rows[rows.length - 1]!, { pass_at_1: after.pass_at_1, maj_at_n: after.maj_at_n });
    return { before, after, rows, weights: served(await trained()), rollbacks, wallS: (performance.now() - t0) / 1000 };
  } finally {
    await Promise.all([sampler.close(), updater?.close(), reference?.close()]);
  }
}

/** How much surer than the shipped model the sampling model is of the majorities the shipped model does not back. */
function confidenceShift(rollouts: Rollout[], support: number[]): { questions: number; rise: number } {
  let n = 0,
    rise = 0;
  rollouts.forEach((r, i) => {
    if (r.vote.label === null || support[i]! >= LOW_SUPPORT || !r.samples.length) return;
    n++;
    rise += r.samples.filter((x) => x.answer === r.vote.label).length / r.samples.length - support[i]!;
  });
  return { questions: n, rise: n ? rise / n : 0 };
}
