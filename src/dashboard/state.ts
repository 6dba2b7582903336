// The live dashboard's state, bounded, and nothing of how it reaches a browser: the serving
// loop's observables feed a ring of recent questions and one of recent updates, the answer
// times and latencies of a sliding window, the last answers' confidences, the last labelled
// answers' confidence and correctness (calibration, when a client sends labels), and five
// minutes of one-second points. Each change is handed to `publish` as a named event (the
// transport, server/dashboard.ts, streams them); snapshot() is everything the page shows, as
// of now.
import type { Observable, Subscription } from 'rxjs';
import type { UpdateOutcome } from '../loop/adaptation.ts';
import type { Experience, LabelledAnswer } from '../loop/answerer.ts';
import type { Judged } from '../sampling/calibration.ts';
import type { Store, VersionRow } from '../store/store.ts';
import type { FleetStatus } from '../loop/fleet.ts';
import type { UpstreamStatus } from '../upstream/upstream.ts';
import { guarded } from '../util/guarded.ts';
import { silentLogger, type Logger } from '../util/log.ts';
import { Ring, Window } from './bounded.ts';
import {
  calibrationViewOf,
  numberOr,
  questionViewOf,
  updateViewOfRow,
  versionViewOf,
  type CalibrationView,
  type QuestionView,
  type StatsView,
  type UpdateView,
  type VersionView,
} from './views.ts';

/** Questions/s is counted over this window, latency percentiles over the longer one. */
export const RATE_WINDOW_S = 10;
export const LATENCY_WINDOW_S = 60;
/** The confidence distribution is of this many latest answers. */
export const CONFIDENCE_ANSWERS = 500;
const CONFIDENCE_BINS = 10;
/** Calibration is of this many latest labelled answers: recent enough to follow the serving version. */
export const CALIBRATION_ANSWERS = 500;
/** One point a second, this many kept: the charts' five minutes. */
const SERIES_POINTS = 300;
const RECENT_QUESTIONS = 30;
const RECENT_UPDATES = 100;
/** Versions listed to the page (the newest; the serving one and its parent always). */
const LISTED_VERSIONS = 100;
/** Most latencies kept in the window, whatever the rate (the newest win). */
const MAX_LATENCIES = 20_000;
/** New questions reach the page within this, batched. */
const QUESTION_FLUSH_MS = 200;

export type UpdateEvent = { phase: 'start' } | { phase: 'end'; outcome: UpdateOutcome };

export interface DashboardSources {
  experiences$: Observable<Experience>;
  /** Answers to questions asked with a label, scored against it. */
  labelled$: Observable<LabelledAnswer>;
  updates$: Observable<UpdateEvent>;
  /** The serving version, as it changes (a BehaviorSubject: its current value on subscribe). */
  versions$: Observable<number>;
  store: Store;
  adaptation: { readonly status: string; readonly pendingExperiences: number; whyNotYet(): string | null };
  /** The fleet this front-end is part of (a shared store), or none. */
  fleet?: { status(): FleetStatus } | null;
  /** The upstream inference servers sampled on (--upstream), or none. */
  upstreams?: { status(): UpstreamStatus[] } | null;
  answerer: { readonly queueDepth: number };
  logger?: Logger;
}

/** Hands a named change (questions, update, version, versions, stats) to whoever shows it. */
export type Publish = (event: string, data: unknown) => void;

export interface DashboardSnapshot {
  windows: { rate_s: number; latency_s: number; confidence_answers: number; calibration_answers: number };
  version: number;
  anchor_shift: number | null;
  /** Confidence against correctness over the last labelled answers; null until one is seen. */
  calibration: CalibrationView | null;
  stats: StatsView;
  /** uPlot's columns: seconds, questions/s, p50, p99. */
  series: (number | null)[][];
  questions: QuestionView[];
  updates: UpdateView[];
  versions: VersionView[];
}

/** Nearest-rank percentile of sorted values. */
function percentile(sorted: number[], p: number): number | null {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!;
}

export class DashboardState {
  private readonly answeredAt = new Window(RATE_WINDOW_S * 1000, Number.MAX_SAFE_INTEGER);
  private readonly latencies = new Window(LATENCY_WINDOW_S * 1000, MAX_LATENCIES);
  private readonly ratios = new Ring<number>(CONFIDENCE_ANSWERS);
  private readonly judged = new Ring<Judged>(CALIBRATION_ANSWERS);
  /** Labelled answers came since calibration was last published. */
  private judgedSinceTick = false;
  private readonly questions = new Ring<QuestionView>(RECENT_QUESTIONS);
  private readonly updates: UpdateView[] = [];
  private readonly series = new Ring<[number, number, number | null, number | null]>(SERIES_POINTS);
  private unsent: QuestionView[] = [];
  private flushTimer: NodeJS.Timeout | null = null;
  private answered = 0;
  private version = 0;
  private anchorShift: number | null = null;
  private nextUpdateId = 1;
  private stats: StatsView;
  private readonly subs: Subscription[] = [];
  private versionRows: VersionRow[] = [];
  private readonly ticker: NodeJS.Timeout;
  private readonly log: Logger;

  constructor(
    private readonly s: DashboardSources,
    private readonly publish: Publish,
  ) {
    // Earlier updates, from the versions they left (skipped and failed ones leave none): read
    // in the background, placed before any update seen meanwhile.
    void this.refreshVersions().then(() => {
      const history = this.versionRows
        .filter((r) => r.version > 0)
        .slice(-RECENT_UPDATES)
        .map((r) => updateViewOfRow(r, 0));
      for (const view of history) if (view.anchor_shift !== null) this.anchorShift ??= view.anchor_shift;
      this.updates.unshift(...history);
      this.updates.forEach((u, i) => (u.id = i + 1));
      this.nextUpdateId = this.updates.length + 1;
      this.updates.splice(0, Math.max(0, this.updates.length - RECENT_UPDATES));
    });
    this.stats = this.computeStats(Date.now());
    // The view is a bystander: a failure in it is logged and never reaches the serving loop.
    const log = s.logger ?? silentLogger;
    this.log = log;
    this.subs.push(
      s.experiences$.subscribe(guarded(log, 'dashboard question', (e: Experience) => this.onExperience(e))),
      s.labelled$.subscribe(guarded(log, 'dashboard labelled answer', (a: LabelledAnswer) => this.onLabelled(a))),
      s.updates$.subscribe(guarded(log, 'dashboard update', (u: UpdateEvent) => this.onUpdate(u))),
      s.versions$.subscribe(
        guarded(log, 'dashboard version', (v: number) => {
          this.version = v;
          return this.refreshVersions().then(() => this.publish('version', { version: v, versions: this.versionViews() }));
        }),
      ),
    );
    this.ticker = setInterval(
      guarded(log, 'dashboard tick', () => this.tick()),
      1000,
    );
    this.ticker.unref();
  }

  private onExperience(e: Experience): void {
    this.answered++;
    this.answeredAt.push(e.at, 1);
    this.latencies.push(e.at, e.latencyMs);
    this.ratios.push(e.rollout.vote.ratio);
    const q = questionViewOf(e);
    this.questions.push(q);
    this.unsent.push(q);
    if (this.unsent.length > RECENT_QUESTIONS) this.unsent.shift();
    this.flushTimer ??= setTimeout(
      guarded(this.log, 'dashboard flush', () => this.flushQuestions()),
      QUESTION_FLUSH_MS,
    );
  }

  private onLabelled(a: LabelledAnswer): void {
    this.judged.push({ confidence: a.confidence, correct: a.correct });
    this.judgedSinceTick = true;
  }

  private flushQuestions(): void {
    this.flushTimer = null;
    if (!this.unsent.length) return;
    const qs = this.unsent;
    this.unsent = [];
    this.publish('questions', { questions: qs, answered: this.answered });
  }

  private onUpdate(u: UpdateEvent): void {
    const now = Date.now();
    if (u.phase === 'start') {
      this.publish('update', this.runningUpdate(now));
      return;
    }
    const o = u.outcome;
    // The running one ends (an end without a start: a new entry).
    let view: UpdateView | undefined;
    for (let i = this.updates.length - 1; i >= 0 && !view; i--)
      if (this.updates[i]!.outcome === 'running' && this.updates[i]!.started_at !== null) view = this.updates[i];
    view ??= this.runningUpdate(null);
    const anchor = numberOr(o.stats?.anchor_shift);
    if (anchor !== null) this.anchorShift = anchor;
    Object.assign(view, {
      finished_at: now,
      outcome: o.outcome,
      version: o.version,
      reason: o.reason ?? null,
      anchor_shift: anchor,
      seconds: numberOr(o.stats?.seconds) ?? (view.started_at !== null ? (now - view.started_at) / 1000 : null),
      experiences: numberOr(o.stats?.experiences),
    });
    this.publish('update', { ...view, anchor_shift_now: this.anchorShift });
    // A rejected or promoted candidate is a new row.
    if (o.version !== null) void this.refreshVersions().then(() => this.publish('versions', { versions: this.versionViews() }));
  }

  /** A new running update at the end of the bounded list. */
  private runningUpdate(startedAt: number | null): UpdateView {
    const view: UpdateView = {
      id: this.nextUpdateId++,
      started_at: startedAt,
      finished_at: null,
      outcome: 'running',
      version: null,
      reason: null,
      anchor_shift: null,
      seconds: null,
      experiences: null,
    };
    this.updates.push(view);
    if (this.updates.length > RECENT_UPDATES) this.updates.shift();
    return view;
  }

  private computeStats(now: number): StatsView {
    this.answeredAt.prune(now);
    this.latencies.prune(now);
    const lat = this.latencies.values().sort((a, b) => a - b);
    const ratios = this.ratios.toArray();
    const bins = new Array<number>(CONFIDENCE_BINS).fill(0);
    for (const r of ratios) bins[Math.min(CONFIDENCE_BINS - 1, Math.max(0, Math.floor(r * CONFIDENCE_BINS + 1e-9)))]!++;
    const round = (x: number | null) => (x === null ? null : Math.round(x * 10) / 10);
    return {
      at: now,
      qps: this.answeredAt.count / RATE_WINDOW_S,
      p50_ms: round(percentile(lat, 0.5)),
      p99_ms: round(percentile(lat, 0.99)),
      latency_n: lat.length,
      answered: this.answered,
      queue_depth: this.s.answerer.queueDepth,
      adaptation: this.s.adaptation.status,
      pending_experiences: this.s.adaptation.pendingExperiences,
      why_no_update_yet: this.s.adaptation.whyNotYet(),
      fleet: this.fleetView(),
      upstreams:
        this.s.upstreams
          ?.status()
          .map((u) => ({ url: u.url, state: u.state, reason: u.reason, p50_ms: u.p50_ms, p99_ms: u.p99_ms, errors: u.errors, outstanding: u.outstanding })) ??
        null,
      confidence: bins,
      confidence_n: ratios.length,
      confidence_mean: ratios.length ? ratios.reduce((a, b) => a + b, 0) / ratios.length : null,
    };
  }

  private tick(): void {
    const now = Date.now();
    this.stats = this.computeStats(now);
    this.series.push([Math.round(now / 1000), this.stats.qps, this.stats.p50_ms, this.stats.p99_ms]);
    this.publish('stats', this.stats);
    // Published with the tick, not per answer: a fast replay would otherwise send 500 bins a question.
    if (this.judgedSinceTick) {
      this.judgedSinceTick = false;
      this.publish('calibration', this.calibrationView());
    }
  }

  private calibrationView(): CalibrationView | null {
    return calibrationViewOf(this.judged.toArray());
  }

  private fleetView(): StatsView['fleet'] {
    const f = this.s.fleet?.status();
    if (!f) return null;
    return {
      frontend: f.frontend,
      leader: f.leader,
      leading: f.leading,
      versions_behind: f.versions_behind,
      frontends: f.frontends.map((x) => ({ id: x.id, serving_version: x.serving_version, leader: x.leader })),
    };
  }

  /** The version rows the page lists, re-read when versions change (a store that fails keeps the last read). */
  private async refreshVersions(): Promise<void> {
    try {
      this.versionRows = await this.s.store.versions();
    } catch {
      // The store is failing: the page keeps the rows it had.
    }
  }

  private versionViews(): VersionView[] {
    const rows = this.versionRows;
    const serving = rows.find((r) => r.version === this.version);
    const keep = new Set([0, this.version, serving?.parent ?? 0]);
    return rows.filter((r, i) => i >= rows.length - LISTED_VERSIONS || keep.has(r.version)).map(versionViewOf);
  }

  /** Everything the page shows, as of now. */
  snapshot(): DashboardSnapshot {
    const series = this.series.toArray();
    return {
      windows: { rate_s: RATE_WINDOW_S, latency_s: LATENCY_WINDOW_S, confidence_answers: CONFIDENCE_ANSWERS, calibration_answers: CALIBRATION_ANSWERS },
      version: this.version,
      anchor_shift: this.anchorShift,
      calibration: this.calibrationView(),
      stats: this.stats,
      // uPlot's columns: seconds, questions/s, p50, p99.
      series: [series.map((p) => p[0]), series.map((p) => p[1]), series.map((p) => p[2]), series.map((p) => p[3])],
      questions: this.questions.toArray(),
      updates: this.updates,
      versions: this.versionViews(),
    };
  }

  /** Stops listening to the loop and publishing. */
  close(): void {
    for (const s of this.subs) s.unsubscribe();
    clearInterval(this.ticker);
    if (this.flushTimer) clearTimeout(this.flushTimer);
  }
}
