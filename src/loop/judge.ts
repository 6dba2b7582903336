// Judging a candidate version before it may serve. The decisions are the guard's
// (ttrl/candidate-checks.ts); this stage gathers what they are made on, and runs the workers
// that measure it: a prober sampler (greedy answers of a version on the probe questions) and
// a scorer holding the shipped weights (the anchors' reference log-probs). It sees every
// served rollout first, to fill the probe set and the anchors.
import { Sampler, type Generator } from '../engine/sampler.ts';
import type { UpstreamPool } from '../upstream/pool.ts';
import { Scorer } from '../engine/scorer.ts';
import type { Weights } from '../model/family.ts';
import type { ModelConfig } from '../model/families.ts';
import type { Tokenizer } from '../tokenizers/tokenizer.ts';
import type { WeightSource } from '../formats/weight-file.ts';
import type { LoraConfig } from '../model/lora.ts';
import type { TrainSequence } from '../engine/batch.ts';
import type { Store } from '../store/store.ts';
import type { Task } from '../tasks/task.ts';
import type { ConfidenceSettings, GuardSettings, SamplingSettings, TrainSettings } from '../config/settings.ts';
import {
  anchorShiftOf,
  judgeAnchors,
  judgeConfidence,
  judgeProbe,
  judgeUpdate,
  MIN_ANCHORS,
  MIN_PROBE_QUESTIONS,
  probeStatsOf,
  type AnchorShift,
  type ProbeStats,
  type StepHealth,
} from '../ttrl/candidate-checks.ts';
import { GREEDY_TOP_P, rolloutBatch, type Rollout } from '../sampling/rollout.ts';
import { completionLogprobs, sum } from '../ttrl/updater.ts';
import { importanceSupport } from '../ttrl/reference.ts';
import { CompletionAnchors, ProbeQuestions } from './guard-sets.ts';
import type { Metrics } from './metrics.ts';

/**
 * The guard group (config/settings.ts), the seed, and the train group's threads and nice
 * value (the judge's workers take the cycles serving leaves, as the trainer's do); the served
 * task, so that probe questions are asked as the server asks them.
 */
export type JudgeOptions = GuardSettings &
  ConfidenceSettings &
  Pick<TrainSettings, 'trainThreads' | 'trainNice'> &
  Pick<SamplingSettings, 'seed'> & { task: Task };

/**
 * A candidate as the judge sees it: the update's steps, what it trained (every weight, or
 * with LoRA its adapters), how a sampler would serve it, and its own log-probs of given completions.
 */
export interface Candidate {
  /** Its reserved version number (an upstream loads it under a candidate name). */
  version: number;
  steps: StepHealth[];
  weights: Weights;
  serving: Served;
  sequenceLogprobs(seqs: TrainSequence[]): Promise<number[]>;
  /** The update's questions the reference does not back, with majority completions as sampled (for --confidence-rise). */
  unbacked?: Unbacked;
}

/**
 * Questions whose majority answer the reference backs less than LOW_SUPPORT: per question its
 * reference support, its votes, how many were for the majority, and which of `seqs` (some of
 * the majority's samples, with their log-probs as drawn) are its own.
 */
export interface Unbacked {
  questions: { reference: number; votes: number; majority: number; from: number; to: number }[];
  seqs: (TrainSequence & { sampledLogprob: number; tokens: number[] })[];
}

/** Weights as a sampler takes them: full ones, or the base with LoRA adapters. */
export interface Served {
  weights: WeightSource;
  adapters?: Weights;
}

export interface Verdict {
  /** Why the candidate may not serve; null: it may. */
  reason: string | null;
  /** What was measured (anchor shift, probe signals), for the version's statistics. */
  stats: Record<string, unknown>;
}

export class CandidateJudge {
  private probeSet: ProbeQuestions;
  private anchorSet: CompletionAnchors;
  /** By version and probe-set size (the set grows until it is full). */
  private probeCache = new Map<string, ProbeStats>();
  /** The last candidate's probe: its next parent's, once it is promoted. */
  private candidateProbe: ProbeStats | null = null;
  private prober: Sampler | null = null;
  /** Scores anchors under the shipped weights. */
  private reference: Promise<Scorer> | null = null;
  /** Probes run on an upstream instead of the prober (the candidate loaded there under a candidate name). */
  private upstream: UpstreamPool | null = null;

  constructor(
    store: Store,
    private config: ModelConfig,
    private tok: Tokenizer,
    /** The shipped weights: anchors are compared with them. */
    private base: WeightSource,
    private o: JudgeOptions,
    private metrics: Metrics,
    /** Candidates are LoRA adapters of this shape on the base (the prober applies them in its graph). */
    private lora?: LoraConfig,
  ) {
    this.probeSet = new ProbeQuestions(store, o.probeQuestions);
    this.anchorSet = new CompletionAnchors(store, o.anchors);
  }

  /** Every served rollout, before an update it triggers. */
  observe(r: Rollout): void {
    this.probeSet.remember(r.question);
    this.anchorSet.remember(r);
  }

  /** Reads the probe questions and anchors kept in the store: before the first observe(). */
  async load(): Promise<void> {
    await Promise.all([this.probeSet.load(), this.anchorSet.load()]);
  }

  /** Probes on the upstream fleet from now on: versions are judged as they will serve. */
  probeOn(pool: UpstreamPool): void {
    this.upstream = pool;
  }

  /**
   * The scorer holding the shipped weights, started once: the anchors' reference log-probs, and
   * the reference support adaptation reads (--ref-gate, --confidence-rise).
   */
  referenceScorer(): Promise<Scorer> {
    return (this.reference ??= Scorer.create({ config: this.config, weights: this.base, threads: this.o.trainThreads, nice: this.o.trainNice, spin: false }));
  }

  /** Starts the prober and the reference scorer (each once), when their checks are on. */
  async start(): Promise<void> {
    const threads = { threads: this.o.trainThreads, nice: this.o.trainNice, spin: false };
    if (this.o.probeQuestions > 0 && !this.upstream)
      this.prober ??= await Sampler.create({ config: this.config, weights: this.base, lora: this.lora, ...threads });
    if (this.o.anchors > 0) await this.referenceScorer();
  }

  /** The checks in order of cost; the first that fails is the reason. */
  async judge(c: Candidate, parent: Served & { version: number }): Promise<Verdict> {
    const stats: Record<string, unknown> = {};
    this.candidateProbe = null;
    let reason = judgeUpdate(c.steps, c.weights, this.o.entropyFloor);
    if (!reason && this.o.anchors > 0) {
      const shift = await this.anchorShift(c);
      if (shift) {
        Object.assign(stats, { anchors: shift.anchors, anchor_shift: shift.mean, anchors_up: shift.up });
        this.metrics.anchorShift.set(shift.mean);
        this.metrics.anchors.set(shift.anchors);
        reason = judgeAnchors(shift, this.o.anchorSlack);
      }
    }
    if (!reason && this.o.confidenceRise !== undefined && c.unbacked?.seqs.length) {
      const { questions, seqs } = c.unbacked;
      const now = await c.sequenceLogprobs(seqs);
      // The candidate's probability of each unbacked majority answer, from the same samples as the reference's.
      const candidate = questions.map((q) =>
        importanceSupport(
          seqs.slice(q.from, q.to).map((x, j) => ({ target: now[q.from + j]!, sampled: x.sampledLogprob })),
          q.votes,
          q.majority,
        ),
      );
      const mean = (xs: number[]) => sum(xs) / xs.length;
      const rise = mean(candidate) - mean(questions.map((q) => q.reference));
      Object.assign(stats, {
        unbacked_questions: questions.length,
        unbacked_reference_support: mean(questions.map((q) => q.reference)),
        unbacked_candidate_support: mean(candidate),
      });
      reason = judgeConfidence({ questions: questions.length, rise }, this.o.confidenceRise);
    }
    if (!reason && this.o.probeQuestions > 0) {
      const parentProbe = await this.probe(parent.version, parent);
      const probe = parentProbe && (await this.probe(-1, c.serving, c.version));
      if (probe) Object.assign(stats, { probe: { ...probe }, parent_probe: { ...parentProbe! } });
      reason = parentProbe && probe ? judgeProbe(parentProbe, probe) : null;
      this.candidateProbe = probe;
    }
    return { reason, stats };
  }

  /** The judged candidate now serves as `version`: its probe is the next update's parent probe. */
  promoted(version: number): void {
    if (this.candidateProbe) this.probeCache.set(`${version}:${this.candidateProbe.questions}`, this.candidateProbe);
    this.candidateProbe = null;
  }

  /**
   * Greedy answers of a version on the probe set (cached by version; -1: an uncached
   * candidate): one completion per question, the version's most likely answer. Null until
   * the set has enough questions.
   */
  private async probe(version: number, served: Served, candidate?: number): Promise<ProbeStats | null> {
    const questions = this.probeSet.items();
    const key = `${version}:${questions.length}`;
    const cached = this.probeCache.get(key);
    if (cached) return cached;
    if (questions.length < Math.min(MIN_PROBE_QUESTIONS, this.o.probeQuestions)) return null;
    // Same seed for every version: differences come from the weights, not the dice.
    const greedy = (g: Generator) =>
      rolloutBatch(g, this.tok, questions, { task: this.o.task, votes: 1, temperature: 1, topP: GREEDY_TOP_P, seed: this.o.seed ^ 0x9b0be });
    let rollouts: Rollout[];
    if (this.upstream) {
      // The parent is the version serving on the fleet; a candidate is loaded on one upstream under a name of its own.
      if (version >= 0) rollouts = await greedy(this.upstream.servingGenerator());
      else if (served.adapters && candidate !== undefined) rollouts = await this.upstream.withCandidate(candidate, served.adapters, greedy);
      else throw new Error('the guard probes candidates on upstreams as LoRA adapters only');
    } else {
      const prober = this.prober!;
      if (served.adapters) await prober.setAdapters(served.adapters, version);
      else await prober.setWeights(served.weights, version);
      rollouts = await greedy(prober);
    }
    const s = probeStatsOf(rollouts);
    if (version >= 0) this.probeCache.set(key, s);
    return s;
  }

  /** How the candidate's log-probs of the anchor completions moved from the shipped model's; null below MIN_ANCHORS. */
  private async anchorShift(c: Candidate): Promise<AnchorShift | null> {
    const anchors = this.anchorSet.items();
    if (anchors.length < MIN_ANCHORS) return null;
    const unscored = anchors.filter((a) => a.ref === null);
    if (unscored.length) {
      const refs = await completionLogprobs(await this.referenceScorer(), unscored, this.tok.padId, this.config.contextLength);
      unscored.forEach((a, i) => (a.ref = sum(refs[i]!)));
      await this.anchorSet.save();
    }
    return anchorShiftOf(anchors, await c.sequenceLogprobs(anchors));
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.prober?.close(), this.reference?.then((r) => r.close())]);
  }
}
