// Live TTRL: when, update, judge, hand over. Voted experiences stream in from the answerer;
// every `updateEvery` of them (or every `updateIntervalS` seconds with new ones) a GRPO update
// runs in the trainer worker on the completions already sampled for voting. The result is a
// candidate that the judge (the guard's checks) passes or fails; versions then serve it or
// record its rejection.
//
// Traffic cannot steer it: an update's questions are distinct (a question asked again only
// refreshes its experience, and does not count towards the next update), and no one client
// supplies more than `maxClientShare` of them, so an update needs questions from at least
// 1/maxClientShare clients. (Experiences with no source, an offline replay's, are the
// operator's own stream and are not capped.)
import { filter, interval, Subject, type Observable, type Subscription } from 'rxjs';
import { Rng } from '../util/rng.ts';
import { inMemory } from '../formats/checkpoint.ts';
import type { ModelConfig } from '../model/families.ts';
import type { LoraConfig } from '../model/lora.ts';
import type { Tokenizer } from '../tokenizers/tokenizer.ts';
import type { Store } from '../store/store.ts';
import { selectForTraining } from '../ttrl/grpo.ts';
import { referenceSupport } from '../ttrl/reference.ts';
import { LOW_SUPPORT } from '../ttrl/candidate-checks.ts';
import type { Rollout } from '../sampling/rollout.ts';
import { sum, TTRLUpdater, type UpdateResult } from '../ttrl/updater.ts';
import { lrOf, type ConfidenceSettings, type SamplingSettings, type ScheduleSettings, type TrainSettings } from '../config/settings.ts';
import type { Experience } from './answerer.ts';
import type { CandidateJudge, Unbacked } from './judge.ts';
import type { Metrics } from './metrics.ts';
import type { ServingVersion, Versions } from './versions.ts';
import { silentLogger, type Logger } from '../util/log.ts';
import { guarded } from '../util/guarded.ts';

/**
 * Live adaptation takes whole setting groups (config/settings.ts): when updates run
 * (schedule), what each does (train), and the sampling temperature and seed; the LoRA shape
 * is resolved against the model once (pipeline.ts).
 */
/** Majority samples per unbacked question the candidate scores for --confidence-rise. */
const UNBACKED_SAMPLES = 8;

export type AdaptationOptions = ScheduleSettings & TrainSettings & Pick<SamplingSettings, 'temperature' | 'seed'> & ConfidenceSettings & { lora?: LoraConfig };

export interface UpdateOutcome {
  version: number | null;
  outcome: 'promoted' | 'rejected' | 'skipped' | 'failed';
  reason?: string;
  stats?: Record<string, unknown>;
}

export class Adaptation {
  /** The next update's experiences, one per question (the newest), oldest first. */
  private pending = new Map<string, Experience>();
  /** How many of them each source supplied. */
  private perSource = new Map<string, number>();
  /** Since the last update: repeats merged, experiences refused by the share cap, and the oldest dropped to keep the bound. */
  private merged = 0;
  private capped = 0;
  private dropped = 0;
  private readonly sourceCap: number;
  private updating: Promise<UpdateOutcome> | null = null;
  /** A change of the serving version from outside (admin) in progress: no update starts meanwhile. */
  private changing: Promise<unknown> | null = null;
  private updater: TTRLUpdater | null = null;
  private subs: Subscription[] = [];
  private rng: Rng;
  private closed = false;
  private paused: boolean;
  lastOutcome: UpdateOutcome | null = null;
  /** Start and end of every update (the benchmark times answers against them). */
  readonly updates$ = new Subject<{ phase: 'start' } | { phase: 'end'; outcome: UpdateOutcome }>();

  constructor(
    experiences$: Observable<Experience>,
    private versions: Versions,
    private judge: CandidateJudge,
    private store: Store,
    private config: ModelConfig,
    private tok: Tokenizer,
    private o: AdaptationOptions,
    private metrics: Metrics,
    private log: Logger = silentLogger,
  ) {
    // With --no-adapt the loop starts paused: questions are logged, an admin may still resume.
    this.paused = !o.adapt;
    this.rng = new Rng(o.seed ^ 0xada97);
    if (o.updateMax > 0 && o.updateMax < o.updateEvery)
      throw new Error(`--update-max ${o.updateMax} is below --update-every ${o.updateEvery}: no update could ever start; raise it (or 0: --update-every)`);
    this.sourceCap = o.maxClientShare >= 1 ? Infinity : Math.floor(o.maxClientShare * o.updateEvery);
    if (this.sourceCap < 1)
      throw new Error(
        `an update of ${o.updateEvery} questions with at most ${o.maxClientShare} of them from one client leaves no client a question; raise --update-every or --max-client-share`,
      );
    // A failure here must not reach rxjs, which would rethrow it out of a timer and stop the
    // process: it is logged, and the answer already sent stands.
    this.subs.push(
      experiences$.subscribe(
        guarded(this.log, 'adaptation experience', (e: Experience) => {
          // Sampled otherwise than the policy (a request's own temperature, length or stop): logged, not learnt from.
          if (!e.trainable) return;
          // The guard's probe set and anchors see the answer before an update it triggers.
          this.judge.observe(e.rollout);
          this.admit(e);
          if (this.pending.size >= this.o.updateEvery) return this.updateNow('count');
        }),
      ),
    );
    if (o.updateIntervalS > 0)
      this.subs.push(
        interval(o.updateIntervalS * 1000)
          .pipe(filter(() => this.pending.size > 0))
          .subscribe(guarded(this.log, 'adaptation timer', () => this.updateNow('timer'))),
      );
  }

  get status(): 'updating' | 'paused' | 'idle' {
    return this.updating ? 'updating' : this.paused ? 'paused' : 'idle';
  }

  get pendingExperiences(): number {
    return this.pending.size;
  }

  /** Adds an experience to the next update, unless it repeats a question already there or its source has its share. */
  private admit(e: Experience): void {
    const q = e.rollout.question;
    const known = this.pending.get(q);
    if (known) {
      // The newest samples, in the same place and on the first asker's account.
      this.pending.set(q, { ...e, source: known.source });
      this.merged++;
      return;
    }
    if (e.source !== null && (this.perSource.get(e.source) ?? 0) >= this.sourceCap) {
      this.capped++;
      return;
    }
    this.pending.set(q, e);
    if (e.source !== null) this.perSource.set(e.source, (this.perSource.get(e.source) ?? 0) + 1);
    // While an update runs the next one's fill; past its size the oldest make room.
    if (this.pending.size > (this.o.updateMax || this.o.updateEvery)) {
      const [oldest, old] = this.pending.entries().next().value as [string, Experience];
      this.pending.delete(oldest);
      if (old.source !== null) this.perSource.set(old.source, this.perSource.get(old.source)! - 1);
      this.dropped++;
    }
  }

  /**
   * This update's experiences, and resets the pending set. An update smaller than
   * updateEvery (the timer's) is trimmed until no source has more than its share of it.
   */
  private takePending(): { taken: Experience[]; stats: Record<string, number> } {
    let taken = [...this.pending.values()];
    const stats = { repeats_merged: this.merged, capped_by_share: this.capped, not_trained_on: this.dropped };
    this.pending.clear();
    this.perSource.clear();
    this.merged = this.capped = this.dropped = 0;
    if (this.o.maxClientShare < 1) {
      for (;;) {
        const cap = Math.floor(this.o.maxClientShare * taken.length);
        const seen = new Map<string, number>();
        // Newest first: a source over the cap keeps its newest questions.
        const kept = taken
          .reverse()
          .filter((e) => {
            if (e.source === null) return true;
            const n = (seen.get(e.source) ?? 0) + 1;
            seen.set(e.source, n);
            return n <= cap;
          })
          .reverse();
        stats.capped_by_share += taken.length - kept.length;
        const done = kept.length === taken.length;
        taken = kept;
        if (done || !taken.length) break;
      }
    }
    return { taken, stats };
  }

  /** An event for the operator's record; a store that fails to take it costs nothing else. */
  private record(kind: string, detail: unknown): void {
    this.store.event(kind, detail).catch((e: Error) => this.log.warn({ kind, err: e.message }, 'could not record an event'));
  }

  pause(by: string): void {
    this.paused = true;
    this.record('adaptation_paused', { by });
  }

  resume(by: string): void {
    this.paused = false;
    this.record('adaptation_resumed', { by });
  }

  /**
   * Why this process runs no update now, whatever its queue holds (null: it may). A front-end
   * of a fleet that does not lead says so (fleet.ts sets it): the leader trains for all.
   */
  notLeading: string | null = null;
  /**
   * Why this process may not adapt at all, whatever it serves (null: it may): the upstreams it
   * samples on do not serve the model it trains (upstream/check.ts), or cannot take versions.
   */
  refused: string | null = null;
  /** The number reserved by the update running now, until it is promoted or rejected. */
  private unsettled: number | null = null;

  /** The majority completions (up to 4 a question) of the update's questions whose majority the reference backs less than LOW_SUPPORT. */
  private async unbacked(rollouts: Rollout[], support?: number[]): Promise<Unbacked> {
    const s = support ?? (await referenceSupport(await this.judge.referenceScorer(), rollouts, this.tok.padId, this.config.contextLength));
    const out: Unbacked = { questions: [], seqs: [] };
    rollouts.forEach((r, i) => {
      if (r.vote.label === null || s[i]! >= LOW_SUPPORT) return;
      const majority = r.samples.filter((x) => x.answer === r.vote.label);
      const from = out.seqs.length;
      // Some of the majority's samples stand for all of them (the estimate scales by their count).
      for (const x of majority.slice(0, UNBACKED_SAMPLES))
        out.seqs.push({ tokens: [...r.prompt, ...x.tokens], promptLength: r.prompt.length, sampledLogprob: sum(x.logprobs) });
      out.questions.push({ reference: s[i]!, votes: r.samples.length, majority: majority.length, from, to: out.seqs.length });
    });
    return out;
  }

  /** In words, why no update is due yet (the dashboard and /admin/status say it), or null when one is running or due. */
  whyNotYet(): string | null {
    if (this.updating) return null;
    if (this.refused) return `adaptation is refused: ${this.refused}`;
    if (this.notLeading) return this.notLeading;
    if (this.paused) return 'adaptation is paused';
    const n = this.pending.size;
    const need = this.o.updateEvery;
    if (n >= need) return null;
    const atCap = [...this.perSource.values()].filter((k) => k >= this.sourceCap).length;
    const share =
      this.capped > 0 || atCap > 0
        ? `; ${this.capped} more came from ${atCap || 'a'} client${atCap === 1 ? '' : 's'} already holding ${this.o.maxClientShare} of an update (--max-client-share): questions from more clients are needed`
        : '';
    const timer = this.o.updateIntervalS > 0 && n > 0 ? `, or on the timer (every ${this.o.updateIntervalS} s)` : '';
    return `${n} of the ${need} distinct questions an update takes are pending${timer}${share}`;
  }

  /** Starts an update unless one is running, adaptation is paused (unless forced) or nothing is new. */
  updateNow(trigger: 'count' | 'timer' | 'admin'): Promise<UpdateOutcome> {
    if (this.updating) return this.updating;
    if (this.closed) return Promise.resolve({ version: null, outcome: 'skipped', reason: 'shutting down' });
    if (this.refused) return Promise.resolve({ version: null, outcome: 'skipped', reason: `adaptation is refused: ${this.refused}` });
    if (this.notLeading) return Promise.resolve({ version: null, outcome: 'skipped', reason: this.notLeading });
    if (this.changing) return Promise.resolve({ version: null, outcome: 'skipped', reason: 'the serving version is being changed' });
    if (this.paused && trigger !== 'admin') return Promise.resolve({ version: null, outcome: 'skipped', reason: 'paused' });
    this.updates$.next({ phase: 'start' });
    this.updating = this.runUpdate(trigger)
      .catch((e): UpdateOutcome => {
        // A crashed trainer loses nothing: the serving version is untouched. Start a fresh worker next time.
        const reason = `update failed: ${(e as Error).message}`;
        void this.updater?.close().catch(() => {});
        this.updater = null;
        // Its reserved number is settled: the candidate was never judged.
        if (this.unsettled !== null) void this.versions.abandon(this.unsettled, `interrupted: ${reason}`).catch(() => undefined);
        this.unsettled = null;
        if (!this.closed) this.record('update_failed', { reason });
        this.metrics.updates.inc({ outcome: 'failed' });
        return { version: null, outcome: 'failed', reason };
      })
      .then((r) => {
        // One record per update, whatever its outcome.
        this.log[r.outcome === 'failed' ? 'error' : 'info'](
          { update: { trigger, version: r.version, outcome: r.outcome, reason: r.reason, stats: r.stats } },
          `update ${r.outcome}${r.version === null ? '' : ` (version ${r.version})`}${r.reason ? `: ${r.reason}` : ''}`,
        );
        this.lastOutcome = r;
        this.updates$.next({ phase: 'end', outcome: r });
        return r;
      })
      .finally(() => (this.updating = null));
    return this.updating;
  }

  private async runUpdate(trigger: string): Promise<UpdateOutcome> {
    const t0 = performance.now();
    // At most `updateMax` (else `updateEvery`) distinct questions: an update's size (and so
    // its drift and its time) stays bounded however many questions arrived while the last
    // one ran.
    const { taken, stats: intake } = this.takePending();
    if (!taken.length)
      return {
        version: null,
        outcome: 'skipped',
        reason: intake.capped_by_share ? 'no client under its share of the update (--max-client-share)' : 'no experiences yet',
        stats: intake,
      };
    const parent = this.versions.active;
    // The grouped batch needs the same number of samples per question.
    const trainable = taken.filter((e) => e.rollout.samples.length >= this.o.trainSamples);
    const rollouts = trainable.map((e) => e.rollout);
    // The reference gate reads the shipped model: what it backs, however sure the served model grew.
    const support =
      this.o.refGate > 0 ? await referenceSupport(await this.judge.referenceScorer(), rollouts, this.tok.padId, this.config.contextLength) : undefined;
    const { selected, stats: groupStats } = selectForTraining(
      rollouts,
      [],
      {
        reward: 'majority',
        trainSamples: this.o.trainSamples,
        gate: this.o.gate,
        advantage: this.o.advantage,
        restrainPenalty: this.o.restrainPenalty,
        refGate: this.o.refGate,
      },
      this.rng,
      support,
    );
    if (!selected.length) {
      this.metrics.updates.inc({ outcome: 'skipped' });
      return {
        version: null,
        outcome: 'skipped',
        reason: 'no question passed the gate with a learning signal',
        stats: { experiences: taken.length, ...intake, ...groupStats },
      };
    }
    await this.start();
    // The candidate's number, reserved now: a crash from here on leaves a `candidate` row that
    // the next start (or, in a fleet, the next leader) marks interrupted.
    const frontends: Record<string, number> = {};
    for (const e of taken) if (e.frontend) frontends[e.frontend] = (frontends[e.frontend] ?? 0) + 1;
    const reserved = await this.versions.reserve(parent.version, {
      trigger,
      started_at: Date.now(),
      experiences: taken.length,
      ...(Object.keys(frontends).length ? { frontends } : {}),
    });
    this.unsettled = reserved;
    const updater = this.updater!;
    const steps: UpdateResult[] = [];
    for (let i = 0; i < selected.length; i += this.o.questionsPerStep) {
      if (this.closed) throw new Error('shutting down');
      const r = await updater.update(selected.slice(i, i + this.o.questionsPerStep));
      if (r) steps.push(r);
    }
    // With LoRA the candidate is its adapters: the base never changes.
    const weights = this.o.lora ? await updater.getAdapters() : await updater.getWeights();
    const candidate = this.o.lora ? { weights: parent.weights, adapters: weights } : { weights };
    const mean = (k: 'loss' | 'entropy' | 'gradNorm') => steps.reduce((a, s) => a + s[k], 0) / steps.length;
    const stats: Record<string, unknown> = {
      trigger,
      experiences: taken.length,
      ...(Object.keys(frontends).length ? { frontends } : {}),
      ...intake,
      ...groupStats,
      steps: steps.length,
      skipped_steps: steps.reduce((a, s) => a + s.skipped, 0),
      loss: mean('loss'),
      entropy: mean('entropy'),
      grad_norm: mean('gradNorm'),
      // The sampler's log-prob gap to the trainer at the first step (nothing trained yet: the
      // kernels' and quantization's share), and how much of the update the clip bounded.
      first_step_abs_logratio: steps[0]?.absLogratio ?? null,
      clipped_share: steps.length && steps.every((s) => s.clippedShare !== null) ? steps.reduce((a, s) => a + s.clippedShare!, 0) / steps.length : null,
      lr: lrOf(this.o),
    };
    stats.train_seconds = (performance.now() - t0) / 1000;
    const verdict = await this.judge.judge(
      {
        version: reserved,
        steps,
        weights,
        serving: candidate,
        sequenceLogprobs: (seqs) => updater.sequenceLogprobs(seqs),
        ...(this.o.confidenceRise !== undefined ? { unbacked: await this.unbacked(rollouts, support) } : {}),
      },
      parent,
    );
    Object.assign(stats, verdict.stats);
    stats.seconds = (performance.now() - t0) / 1000;
    if (this.closed) throw new Error('shutting down');
    this.metrics.updateSeconds.observe(stats.seconds as number);
    if (verdict.reason) {
      const version = await this.versions.reject({ version: reserved, parent: parent.version, stats, reason: verdict.reason });
      this.unsettled = null;
      // Back to the serving weights, with fresh optimizer moments.
      await this.resetTrainer(parent);
      this.metrics.updates.inc({ outcome: 'rejected' });
      return { version, outcome: 'rejected', reason: verdict.reason, stats };
    }
    const version = await this.versions.promote({ version: reserved, parent: parent.version, weights, stats });
    this.unsettled = null;
    this.judge.promoted(version);
    this.metrics.updates.inc({ outcome: 'promoted' });
    return { version, outcome: 'promoted', stats };
  }

  /**
   * Starts the trainer (once; again after a crash) and the judge's workers. The pipeline calls
   * it before serving: worker start-up is CPU-heavy for a moment, and then it does not fall
   * on answers.
   */
  async start(): Promise<void> {
    this.updater ??= await TTRLUpdater.create({
      config: this.config,
      tokenizer: this.tok,
      // A mapped base stays mapped here: the trainer reads its own copy in its worker.
      weights: this.versions.active.weights,
      lora: this.o.lora,
      adapters: this.versions.active.adapters,
      threads: this.o.trainThreads,
      nice: this.o.trainNice,
      spin: false,
      settings: { ...this.o, lr: lrOf(this.o) },
    });
    await this.judge.start();
  }

  /** The trainer continues from a serving version, with fresh optimizer moments. */
  private async resetTrainer(v: ServingVersion): Promise<void> {
    if (!this.updater) return;
    if (this.o.lora) await this.updater.setAdapters(v.adapters!);
    else await this.updater.setWeights(await inMemory(v.weights));
  }

  /** Resolves when no update is running (offline replay waits here between batches). */
  async idle(): Promise<void> {
    while (this.updating) await this.updating;
  }

  /**
   * Runs `change` (an admin activation) between updates: after the one in flight, with none
   * starting meanwhile. The trainer then continues from the weights serving, and the
   * experiences of the version before are not trained on.
   */
  async betweenUpdates<T>(change: () => Promise<T>): Promise<T> {
    while (this.changing) await this.changing.catch(() => {});
    const run = (async () => {
      await this.idle();
      const r = await change();
      await this.resetTrainer(this.versions.active);
      this.takePending();
      return r;
    })();
    this.changing = run;
    try {
      return await run;
    } finally {
      if (this.changing === run) this.changing = null;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const s of this.subs) s.unsubscribe();
    // An update in flight stops after its current step; its candidate is never promoted.
    await this.updating?.catch(() => {});
    await Promise.allSettled([this.updater?.close(), this.judge.close()]);
  }
}
