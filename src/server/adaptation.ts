// Live TTRL: voted experiences stream in from the answerer; every `updateEvery` of them (or
// every `updateIntervalS` seconds with new ones) a GRPO update runs in the trainer worker on
// the completions already sampled for voting. The result is a candidate version: written to
// disk atomically, judged by the guard (finite update, entropy above a floor, sensible greedy
// answers on a probe set of earlier questions, and still as sure of the shipped model's surest
// answers as the shipped model was), then promoted to the sampler or rejected.
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { filter, interval, Subject, type Subscription } from 'rxjs';
import { Rng } from '../util/rng.ts';
import { Sampler } from '../engine/sampler.ts';
import { Scorer } from '../engine/scorer.ts';
import { checkWeights, type Weights } from '../model/family.ts';
import { paramSpecsOf, type ModelConfig } from '../model/families.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { weightsToTensors } from '../model/checkpoint.ts';
import { readSafetensors, writeSafetensors } from '../model/safetensors.ts';
import type { Store } from '../store/store.ts';
import { selectForTraining } from '../ttrl/grpo.ts';
import { GREEDY_TOP_P, rolloutBatch, type Rollout } from '../ttrl/rollout.ts';
import { anchorShiftOf, completionAnchorOf, judgeAnchors, judgeProbe, judgeUpdate, MIN_ANCHORS, MIN_PROBE_QUESTIONS, probeStatsOf, type AnchorShift, type CompletionAnchor, type ProbeStats } from '../ttrl/guard.ts';
import { completionLogprobs, sum, TTRLUpdater, type UpdateResult } from '../ttrl/updater.ts';
import type { Answerer, Experience } from './answerer.ts';
import type { Metrics } from './metrics.ts';

export interface AdaptationOptions {
  updateEvery: number;
  updateIntervalS: number;
  lr: number;
  gate: number;
  trainSamples: number;
  questionsPerStep: number;
  kl: number;
  entropyFloor: number;
  probeQuestions: number;
  /** Most anchors kept (0: no anchor check). */
  anchors: number;
  /** Nats of log-prob per anchor completion a candidate may lose on average. */
  anchorSlack: number;
  temperature: number;
  seed: number;
  trainThreads: number;
  /** Nice value of the trainer, prober and anchor scorer threads: they take the cycles serving leaves. */
  trainNice: number;
  versionsDir: string;
  /** Start paused (admin resumes). */
  paused?: boolean;
  /** The shipped weights: the anchor check compares candidates with them. */
  baseWeights: Weights;
}

export interface UpdateOutcome {
  version: number | null;
  outcome: 'promoted' | 'rejected' | 'skipped' | 'failed';
  reason?: string;
  stats?: Record<string, unknown>;
}

export class Adaptation {
  private buffer: Experience[] = [];
  private fresh = 0;
  private updating: Promise<UpdateOutcome> | null = null;
  private updater: TTRLUpdater | null = null;
  private prober: Sampler | null = null;
  private subs: Subscription[] = [];
  /** By version and probe-set size (the set grows until it is full). */
  private probeCache = new Map<string, ProbeStats>();
  private probeSet: MetaList<string>;
  private anchorSet: MetaList<CompletionAnchor>;
  /** Scores anchors under the shipped weights (see start()). */
  private reference: Scorer | null = null;
  private rng: Rng;
  private closed = false;
  paused: boolean;
  lastOutcome: UpdateOutcome | null = null;
  /** Start and end of every update (the benchmark times answers against them). */
  readonly updates$ = new Subject<{ phase: 'start' } | { phase: 'end'; outcome: UpdateOutcome }>();

  constructor(
    answerer: Answerer,
    private store: Store,
    private config: ModelConfig,
    private tok: Tokenizer,
    private o: AdaptationOptions,
    private metrics: Metrics,
    /** The serving side: make `version` (with these weights) the one that answers. */
    private promote: (version: number, weights: Weights) => Promise<void>,
    private active: () => { version: number; weights: Weights },
  ) {
    this.paused = o.paused ?? false;
    this.probeSet = new MetaList(store, 'probe_questions');
    this.anchorSet = new MetaList(store, 'anchors');
    this.rng = new Rng(o.seed ^ 0xada97);
    mkdirSync(o.versionsDir, { recursive: true });
    this.subs.push(
      answerer.experiences$.subscribe((e) => {
        this.buffer.push(e);
        this.fresh++;
        this.rememberProbe(e.rollout.question);
        this.rememberAnchor(e);
        // Keep a bounded window of recent experiences.
        if (this.buffer.length > 4 * this.o.updateEvery) this.buffer.splice(0, this.buffer.length - 4 * this.o.updateEvery);
        if (this.fresh >= this.o.updateEvery) void this.updateNow('count');
      }),
    );
    if (o.updateIntervalS > 0)
      this.subs.push(
        interval(o.updateIntervalS * 1000)
          .pipe(filter(() => this.fresh > 0))
          .subscribe(() => void this.updateNow('timer')),
      );
  }

  get status(): 'updating' | 'paused' | 'idle' {
    return this.updating ? 'updating' : this.paused ? 'paused' : 'idle';
  }

  get pendingExperiences(): number {
    return this.fresh;
  }

  /** Starts an update unless one is running, adaptation is paused (unless forced) or nothing is new. */
  updateNow(trigger: 'count' | 'timer' | 'admin'): Promise<UpdateOutcome> {
    if (this.updating) return this.updating;
    if (this.closed) return Promise.resolve({ version: null, outcome: 'skipped', reason: 'shutting down' });
    if (this.paused && trigger !== 'admin') return Promise.resolve({ version: null, outcome: 'skipped', reason: 'paused' });
    this.updates$.next({ phase: 'start' });
    this.updating = this.runUpdate(trigger)
      .catch((e): UpdateOutcome => {
        // A crashed trainer loses nothing: the serving version is untouched. Start a fresh worker next time.
        const reason = `update failed: ${(e as Error).message}`;
        void this.updater?.close().catch(() => {});
        this.updater = null;
        if (!this.closed) this.store.event('update_failed', { reason });
        this.metrics.updates.inc({ outcome: 'failed' });
        return { version: null, outcome: 'failed', reason };
      })
      .then((r) => {
        this.lastOutcome = r;
        this.updates$.next({ phase: 'end', outcome: r });
        return r;
      })
      .finally(() => (this.updating = null));
    return this.updating;
  }

  private async runUpdate(trigger: string): Promise<UpdateOutcome> {
    const t0 = performance.now();
    // The newest `updateEvery` experiences: an update's size (and so its drift and its time)
    // stays bounded however many questions arrived while the last one ran.
    const taken = this.buffer.slice(-Math.min(Math.max(this.fresh, 1), this.o.updateEvery));
    const dropped = Math.max(0, this.fresh - this.o.updateEvery);
    this.fresh = 0;
    if (!taken.length) return { version: null, outcome: 'skipped', reason: 'no experiences yet' };
    const parent = this.active();
    // The grouped batch needs the same number of samples per question.
    const trainable = taken.filter((e) => e.rollout.samples.length >= this.o.trainSamples);
    const { selected, stats: groupStats } = selectForTraining(trainable.map((e) => e.rollout), [], { reward: 'majority', trainSamples: this.o.trainSamples, gate: this.o.gate }, this.rng);
    if (!selected.length) {
      this.metrics.updates.inc({ outcome: 'skipped' });
      return { version: null, outcome: 'skipped', reason: 'no question passed the gate with a learning signal', stats: { ...groupStats } };
    }
    await this.start();
    const updater = this.updater!;
    const steps: UpdateResult[] = [];
    for (let i = 0; i < selected.length; i += this.o.questionsPerStep) {
      if (this.closed) throw new Error('shutting down');
      const r = await updater.update(selected.slice(i, i + this.o.questionsPerStep));
      if (r) steps.push(r);
    }
    const weights = await updater.getWeights();
    const mean = (k: 'loss' | 'entropy' | 'gradNorm') => steps.reduce((a, s) => a + s[k], 0) / steps.length;
    const stats: Record<string, unknown> = {
      trigger,
      experiences: taken.length,
      not_trained_on: dropped,
      ...groupStats,
      steps: steps.length,
      skipped_steps: steps.reduce((a, s) => a + s.skipped, 0),
      loss: mean('loss'),
      entropy: mean('entropy'),
      grad_norm: mean('gradNorm'),
      lr: this.o.lr,
    };
    stats.train_seconds = (performance.now() - t0) / 1000;
    let reason = judgeUpdate(steps, weights, this.o.entropyFloor);
    let probe: ProbeStats | null = null;
    if (!reason && this.o.anchors > 0) {
      const shift = await this.anchorShift();
      if (shift) {
        Object.assign(stats, { anchors: shift.anchors, anchor_shift: shift.mean, anchors_up: shift.up });
        this.metrics.anchorShift.set(shift.mean);
        this.metrics.anchors.set(shift.anchors);
        reason = judgeAnchors(shift, this.o.anchorSlack);
      }
    }
    if (!reason && this.o.probeQuestions > 0) {
      const parentProbe = await this.probe(parent.version, parent.weights);
      probe = parentProbe && (await this.probe(-1, weights));
      if (probe) Object.assign(stats, { probe: summary(probe), parent_probe: summary(parentProbe!) });
      reason = parentProbe && probe ? judgeProbe(parentProbe, probe) : null;
    }
    stats.seconds = (performance.now() - t0) / 1000;
    if (this.closed) throw new Error('shutting down');
    // Reserve the number, write the weights (atomically), then promote: a crash in between
    // leaves a candidate row that start-up marks as interrupted, and the old version serving.
    const version = this.store.addVersion({ parent: parent.version, status: 'candidate', stats, weightsPath: reason ? null : (v) => join(this.o.versionsDir, `v${v}.safetensors`) });
    if (!reason) await writeSafetensors(this.store.version(version)!.weights_path!, weightsToTensors(this.config, weights), { version: String(version), parent: String(parent.version) });
    this.metrics.updateSeconds.observe(stats.seconds as number);
    if (reason) {
      this.store.reject(version, reason);
      this.store.event('version_rejected', { version, parent: parent.version, reason });
      // Back to the serving weights, with fresh optimizer moments.
      await updater.setWeights(parent.weights);
      this.metrics.updates.inc({ outcome: 'rejected' });
      return { version, outcome: 'rejected', reason, stats };
    }
    // The candidate's probe is the next update's parent probe.
    if (probe) this.probeCache.set(`${version}:${probe.questions}`, probe);
    this.store.activate(version);
    this.store.event('version_promoted', { version, parent: parent.version });
    await this.promote(version, weights);
    this.metrics.updates.inc({ outcome: 'promoted' });
    return { version, outcome: 'promoted', stats };
  }

  /**
   * Starts the trainer, the prober and the anchor scorer (each once; the trainer again after
   * a crash). The server calls it before serving: worker start-up is CPU-heavy for a moment,
   * and then it does not fall on answers.
   */
  async start(): Promise<void> {
    const threads = { threads: this.o.trainThreads, nice: this.o.trainNice, spin: false };
    this.updater ??= await TTRLUpdater.create({
      config: this.config,
      tokenizer: this.tok,
      weights: this.active().weights,
      ...threads,
      settings: { lr: this.o.lr, klCoef: this.o.kl, entropyCoef: 0, epochs: 1, clipEps: 0.2, maxGradNorm: 1, temperature: this.o.temperature },
    });
    if (this.o.probeQuestions > 0) this.prober ??= await Sampler.create({ config: this.config, weights: this.o.baseWeights, ...threads });
    if (this.o.anchors > 0)
      this.reference ??= await Scorer.create({ config: this.config, weights: this.o.baseWeights, ...threads });
  }

  // ---------- the probe set: earlier questions, kept across restarts ----------

  /** Called for every answered question: cheap once the set is full, written only when it grows. */
  private rememberProbe(question: string): void {
    const set = this.probeSet.items();
    if (set.length >= this.o.probeQuestions || set.includes(question)) return;
    set.push(question);
    this.probeSet.save();
  }

  /**
   * Greedy answers of a version on the probe set (cached by version; -1: uncached candidate):
   * one completion per question, the version's most likely answer. Null until the set has 8 questions.
   */
  private async probe(version: number, weights: Weights): Promise<ProbeStats | null> {
    const questions = [...this.probeSet.items()];
    const key = `${version}:${questions.length}`;
    const cached = this.probeCache.get(key);
    if (cached) return cached;
    if (questions.length < Math.min(MIN_PROBE_QUESTIONS, this.o.probeQuestions)) return null;
    const prober = this.prober!;
    await prober.setWeights(weights, version);
    // Same seed for every version: differences come from the weights, not the dice.
    const rollouts: Rollout[] = await rolloutBatch(prober, this.tok, questions, { votes: 1, temperature: 1, topP: GREEDY_TOP_P, seed: this.o.seed ^ 0x9b0be });
    const s = probeStatsOf(rollouts);
    if (version >= 0) this.probeCache.set(key, s);
    return s;
  }

  // ---------- anchors: the shipped model's surest answers, kept across restarts ----------

  /** A question the shipped model answered with near-unanimous votes becomes an anchor. */
  private rememberAnchor(e: Experience): void {
    const set = this.anchorSet.items();
    if (set.length >= this.o.anchors) return;
    const anchor = completionAnchorOf(e.rollout);
    if (!anchor || set.some((a) => a.question === anchor.question)) return;
    set.push(anchor);
    this.anchorSet.save();
  }

  /** How the candidate's log-probs of the anchor completions moved from the shipped model's. */
  private async anchorShift(): Promise<AnchorShift | null> {
    const anchors = this.anchorSet.items();
    if (anchors.length < MIN_ANCHORS) return null;
    const unscored = anchors.filter((a) => a.ref === null);
    if (unscored.length) {
      const refs = await completionLogprobs(this.reference!, unscored, this.tok.padId, this.config.contextLength);
      unscored.forEach((a, i) => (a.ref = sum(refs[i]!)));
      this.anchorSet.save();
    }
    return anchorShiftOf(anchors, await this.updater!.sequenceLogprobs(anchors));
  }

  /** Resolves when no update is running (offline replay waits here between batches). */
  async idle(): Promise<void> {
    while (this.updating) await this.updating;
  }

  /** After an admin rollback the trainer continues from the activated weights. */
  async resetTo(weights: Weights): Promise<void> {
    await this.updating;
    await this.updater?.setWeights(weights);
    this.buffer = [];
    this.fresh = 0;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const s of this.subs) s.unsubscribe();
    // An update in flight stops after its current step; its candidate is never promoted.
    await this.updating?.catch(() => {});
    await Promise.allSettled([this.updater?.close(), this.prober?.close(), this.reference?.close()]);
  }
}

const summary = (p: ProbeStats) => ({ questions: p.questions, distinct: p.distinct, parsable: p.parsable, meanLength: p.meanLength });

/** A JSON list in the store's meta table (probe questions, anchors): read once, written whole when it changes. */
class MetaList<T> {
  private list: T[] | null = null;
  constructor(
    private store: Store,
    private key: string,
  ) {}
  items(): T[] {
    return (this.list ??= JSON.parse(this.store.getMeta(this.key) ?? '[]') as T[]);
  }
  save(): void {
    this.store.setMeta(this.key, JSON.stringify(this.items()));
  }
}

export async function loadVersionWeights(path: string, config: ModelConfig): Promise<Weights> {
  const { tensors } = await readSafetensors(path);
  const w: Weights = new Map();
  for (const [k, t] of tensors) w.set(k, t.data as Float32Array);
  checkWeights(paramSpecsOf(config), w);
  return w;
}
