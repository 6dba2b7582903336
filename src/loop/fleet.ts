// Several front-ends on one PostgreSQL database: one log, one version lineage, one trainer at
// a time, one serving version. Every front-end answers and writes its answers (with the exact
// token ids drawn) to the shared log; the one that holds the leader lock (an advisory lock
// PostgreSQL releases when the leader's session ends, a kill -9 included) reads the whole
// fleet's answers back in commit order and trains on them, so the distinct-question rule and
// the per-client share cap apply across the fleet. A version it promotes, or one an admin
// activates on any front-end, is announced (NOTIFY) and also polled for: every front-end
// verifies it and hot-swaps between batches.
//
// Taking over: a front-end that does not lead tries the lock every leaderPollMs, so a dead
// leader is replaced within about that (plus the moment PostgreSQL needs to see its session
// gone). The new leader marks the candidate its predecessor left unjudged interrupted, and
// resumes reading the log where the last update began (kept in meta), so the experiences the
// dead leader held in memory are read again, not lost.
import { Subject } from 'rxjs';
import type { FleetSettings } from '../config/settings.ts';
import type { FleetCoordination, FrontendRow, Store, StoredExperience } from '../store/store.ts';
import type { Logger } from '../util/log.ts';
import type { Adaptation } from './adaptation.ts';
import type { Experience } from './answerer.ts';
import type { Metrics } from './metrics.ts';
import type { Versions } from './versions.ts';

/** Where the leader resumes reading the log: the cursor at the start of the last update. */
export const CURSOR_KEY = 'fleet_experience_cursor';
/** Experiences read per poll, at most. */
const READ_BATCH = 256;

export interface FleetStatus {
  frontend: string;
  leading: boolean;
  /** The front-end that leads (by the heartbeats), or null when none is seen. */
  leader: string | null;
  /** The version the store says serves, and the one served here: a gap is this front-end behind. */
  active_version: number | null;
  serving_version: number;
  versions_behind: number;
  /** Since when this front-end has served a version older than the active one (null: it is current). */
  behind_since: number | null;
  frontends: FrontendRow[];
  /** Why the store cannot be reached now (null: it can). */
  store_error: string | null;
}

export interface FleetOptions extends FleetSettings {
  frontend: string;
  address: string;
  /** Live updates on (--adapt): without, no front-end trains. */
  adapt: boolean;
}

export class Fleet {
  /** The fleet's experiences, as the leader reads them back (the adaptation loop's input). */
  readonly experiences$ = new Subject<Experience>();
  private readonly coordination: FleetCoordination;
  private timers: NodeJS.Timeout[] = [];
  private cursor: string | null = null;
  private reading = false;
  private following: Promise<void> | null = null;
  private followAgain = false;
  private closed = false;
  private startedAt = Date.now();
  private activeVersion: number | null = null;
  private behindSince: number | null = null;
  private seen: FrontendRow[] = [];
  private storeError: string | null = null;
  private becoming: Promise<void> | null = null;

  constructor(
    private readonly store: Store,
    private readonly versions: Versions,
    private readonly adaptation: Adaptation,
    private readonly o: FleetOptions,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    if (!store.fleet) throw new Error(`${store.location} is not a shared store: a fleet needs PostgreSQL`);
    this.coordination = store.fleet;
    adaptation.notLeading = "this front-end does not lead: the leader trains on the whole fleet's answers";
    // Each update begins with the experiences read so far: a successor resumes from there.
    adaptation.updates$.subscribe((u) => {
      if (u.phase === 'start' && this.cursor !== null) this.store.setMeta(CURSOR_KEY, this.cursor).catch(() => undefined);
    });
    this.coordination.onVersion(() => this.follow());
  }

  /** Starts the timers: the leader lock, heartbeats, the version poll, and (leading) reading the log. */
  start(): void {
    const every = (ms: number, f: () => Promise<void>) => {
      let running = false;
      const t = setInterval(() => {
        if (running || this.closed) return;
        running = true;
        f()
          .catch((e: Error) => this.onStoreError(e))
          .finally(() => (running = false));
      }, ms);
      t.unref();
      this.timers.push(t);
    };
    every(this.o.leaderPollMs, () => this.elect());
    every(this.o.heartbeatMs, () => this.heartbeat());
    every(this.o.versionPollMs, async () => {
      await this.coordination.connect();
      this.follow();
    });
    every(this.o.experiencePollMs, () => this.readExperiences());
    void this.elect().catch((e: Error) => this.onStoreError(e));
    void this.heartbeat().catch((e: Error) => this.onStoreError(e));
  }

  get leading(): boolean {
    return this.coordination.leading;
  }

  private onStoreError(e: Error): void {
    if (this.storeError !== e.message) this.log.warn({ err: e.message }, 'the shared store is unreachable');
    this.storeError = e.message;
    this.loseLead('its session to the database was lost');
  }

  /** Takes the lead when free. A session that dropped loses it: the lock went with the session. */
  private async elect(): Promise<void> {
    if (!this.o.adapt) return;
    if (this.adaptation.notLeading === null && !this.coordination.leading) this.loseLead('its session to the database was lost');
    if (this.coordination.leading || this.becoming) return;
    if (!(await this.coordination.tryLead())) return;
    this.storeError = null;
    this.becoming = this.becomeLeader().finally(() => (this.becoming = null));
    await this.becoming;
  }

  private async becomeLeader(): Promise<void> {
    const stale = await this.store.rejectStaleCandidates('interrupted: the leader that trained it stopped before it was judged');
    await this.store.event('leader', { frontend: this.o.frontend, stale_candidates: stale });
    this.log.info({ frontend: this.o.frontend, stale_candidates: stale }, 'leading: this front-end now trains for the fleet');
    // Serve what the store says serves before training on from it.
    await this.followNow();
    this.cursor = (await this.store.getMeta(CURSOR_KEY)) ?? (await this.store.experienceCursorNow());
    await this.adaptation.start();
    this.adaptation.notLeading = null;
    this.metrics.leader.set(1);
  }

  private loseLead(why: string): void {
    if (this.adaptation.notLeading !== null) return;
    this.adaptation.notLeading = `this front-end does not lead now (${why}); another takes over`;
    this.cursor = null;
    this.metrics.leader.set(0);
    this.log.warn({ frontend: this.o.frontend, why }, 'no longer leading');
  }

  /** The leader reads the fleet's new answers (its own included) and hands them to the adaptation loop. */
  private async readExperiences(): Promise<void> {
    if (this.reading || this.adaptation.notLeading !== null || this.cursor === null) return;
    this.reading = true;
    try {
      for (;;) {
        const { experiences, cursor } = await this.store.experiencesAfter(this.cursor, READ_BATCH);
        this.cursor = cursor;
        for (const e of experiences) this.experiences$.next(experienceOf(e));
        if (experiences.length < READ_BATCH) break;
      }
      this.storeError = null;
    } finally {
      this.reading = false;
    }
  }

  /** Serves the store's active version if it is not the one served here (coalescing calls). */
  follow(): void {
    if (this.closed) return;
    if (this.following) {
      this.followAgain = true;
      return;
    }
    this.following = this.followNow()
      .catch((e: Error) => this.log.warn({ err: e.message }, 'could not follow the serving version'))
      .finally(() => {
        this.following = null;
        if (this.followAgain) {
          this.followAgain = false;
          this.follow();
        }
      });
  }

  private async followNow(): Promise<void> {
    const row = await this.store.activeVersion();
    if (!row) return;
    this.activeVersion = row.version;
    if (row.version === this.versions.active.version) {
      this.behindSince = null;
      return;
    }
    this.behindSince ??= Date.now();
    // Between batches and updates; the trainer (if leading) continues from the new version.
    await this.adaptation.betweenUpdates(() => this.versions.follow());
    if (this.versions.active.version === row.version) this.behindSince = null;
  }

  private async heartbeat(): Promise<void> {
    await this.coordination.heartbeat({
      id: this.o.frontend,
      address: this.o.address,
      started_at: this.startedAt,
      serving_version: this.versions.active.version,
      leader: this.adaptation.notLeading === null,
    });
    this.seen = await this.coordination.frontends(Math.max(3 * this.o.heartbeatMs, 5000));
    this.storeError = null;
    this.metrics.versionsBehind.set(this.versionsBehind());
  }

  /** How many versions the one served here is behind the store's active one (as last read). */
  private versionsBehind(): number {
    return this.activeVersion === null ? 0 : Math.max(0, this.activeVersion - this.versions.active.version);
  }

  status(): FleetStatus {
    const serving = this.versions.active.version;
    return {
      frontend: this.o.frontend,
      leading: this.adaptation.notLeading === null,
      leader: this.seen.find((f) => f.leader)?.id ?? null,
      active_version: this.activeVersion,
      serving_version: serving,
      versions_behind: this.versionsBehind(),
      behind_since: this.behindSince,
      frontends: this.seen,
      store_error: this.storeError,
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    await this.following;
    await this.coordination.release().catch(() => undefined);
    this.experiences$.complete();
  }
}

/** A stored answer as the adaptation loop takes it: the rollout rebuilt from the exact tokens drawn. */
function experienceOf(e: StoredExperience): Experience {
  const count = e.answer === null ? 0 : (e.votes[e.answer] ?? 0);
  return {
    questionId: e.id,
    at: e.answeredAt,
    source: e.source,
    trainable: true,
    latencyMs: e.latencyMs,
    frontend: e.frontend,
    rollout: {
      question: e.question,
      prompt: e.promptIds,
      version: e.modelVersion,
      vote: { label: e.answer, count, ratio: e.majorityRatio, counts: e.votes, total: e.samples.length },
      samples: e.samples.map((s) => ({ tokens: s.tokenIds, logprobs: s.logprobs, stopped: s.stopped, text: s.text, answer: s.answer })),
    },
  };
}
