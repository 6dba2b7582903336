// The live dashboard. GET / serves a static page (./dashboard/, found next to this module:
// the build copies it to dist/ beside the compiled file) and uPlot from node_modules at
// /assets/uplot/; the page is fed by server-sent events at GET /dashboard/events (a snapshot
// on connect, then deltas) and acts through the /admin routes with the token the user types.
//
// All of the dashboard's state lives here, bounded: the serving loop's observables feed a
// ring of recent questions and one of recent updates, the answer times and latencies of a
// sliding window, the last answers' confidences, and five minutes of one-second points.
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Observable, Subscription } from 'rxjs';
import type { UpdateOutcome } from '../loop/adaptation.ts';
import type { Experience } from '../loop/answerer.ts';
import type { Store, VersionRow } from '../store/store.ts';
import { ApiKeys } from './auth.ts';
import { errorMessage } from './protocol.ts';
import { guarded } from '../util/guarded.ts';
import { silentLogger, type Logger } from '../util/log.ts';

/** The page, its script and stylesheet. */
export const DASHBOARD_DIR = fileURLToPath(new URL('./dashboard/', import.meta.url));
/** uPlot's built files (uPlot.iife.min.js, uPlot.min.css), served as they are installed. */
export const UPLOT_DIR = dirname(createRequire(import.meta.url).resolve('uplot'));

/** Questions/s is counted over this window, latency percentiles over the longer one. */
export const RATE_WINDOW_S = 10;
export const LATENCY_WINDOW_S = 60;
/** The confidence distribution is of this many latest answers. */
export const CONFIDENCE_ANSWERS = 500;
const CONFIDENCE_BINS = 10;
/** One point a second, this many kept: the charts' five minutes. */
const SERIES_POINTS = 300;
const RECENT_QUESTIONS = 30;
const RECENT_UPDATES = 100;
/** Versions listed to the page (the newest; the serving one and its parent always). */
const LISTED_VERSIONS = 100;
/** Most latencies kept in the window, whatever the rate (the newest win). */
const MAX_LATENCIES = 20_000;
/** A question's text and an answer's label as shown; votes beyond the top ones are summed as "other". */
const QUESTION_CHARS = 160;
const LABEL_CHARS = 40;
const TOP_VOTES = 6;
/** New questions reach the page within this, batched. */
const QUESTION_FLUSH_MS = 200;
/** A client that leaves this much of the stream unread is dropped (its page reconnects). */
const MAX_UNREAD_BYTES = 1 << 20;
const HEARTBEAT_MS = 15_000;

export interface DashboardSources {
  experiences$: Observable<Experience>;
  updates$: Observable<{ phase: 'start' } | { phase: 'end'; outcome: UpdateOutcome }>;
  /** The serving version, as it changes (a BehaviorSubject: its current value on subscribe). */
  versions$: Observable<number>;
  store: Store;
  adaptation: { readonly status: string; readonly pendingExperiences: number };
  answerer: { readonly queueDepth: number };
  keys: ApiKeys;
  logger?: Logger;
}

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
  /** Counts of the latest answers' majority ratios in ten bins of 0.1 (1.0 in the last). */
  confidence: number[];
  confidence_n: number;
  confidence_mean: number | null;
}

const numberOr = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const clip = (s: string, n: number) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

/** Nearest-rank percentile of sorted values. */
function percentile(sorted: number[], p: number): number | null {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!;
}

/** A fixed-size ring, oldest first when read. */
class Ring<T> {
  private items: T[] = [];
  private head = 0;
  constructor(private readonly size: number) {}
  push(x: T): void {
    if (this.items.length < this.size) this.items.push(x);
    else {
      this.items[this.head] = x;
      this.head = (this.head + 1) % this.size;
    }
  }
  toArray(): T[] {
    return [...this.items.slice(this.head), ...this.items.slice(0, this.head)];
  }
  get length(): number {
    return this.items.length;
  }
}

/** Values with their times, dropped from the front as they leave the window. */
class Window {
  private t: number[] = [];
  private v: number[] = [];
  private start = 0;
  constructor(private readonly ms: number, private readonly cap: number) {}
  push(at: number, value: number): void {
    this.t.push(at);
    this.v.push(value);
    if (this.t.length - this.start > this.cap) this.start++;
  }
  prune(now: number): void {
    while (this.start < this.t.length && this.t[this.start]! < now - this.ms) this.start++;
    // Compact once the dead front outweighs the live part.
    if (this.start > 1024 && this.start * 2 > this.t.length) {
      this.t = this.t.slice(this.start);
      this.v = this.v.slice(this.start);
      this.start = 0;
    }
  }
  get count(): number {
    return this.t.length - this.start;
  }
  values(): number[] {
    return this.v.slice(this.start);
  }
}

export class Dashboard {
  private readonly answeredAt = new Window(RATE_WINDOW_S * 1000, Number.MAX_SAFE_INTEGER);
  private readonly latencies = new Window(LATENCY_WINDOW_S * 1000, MAX_LATENCIES);
  private readonly ratios = new Ring<number>(CONFIDENCE_ANSWERS);
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
  private readonly clients = new Set<Response>();
  private readonly subs: Subscription[] = [];
  private readonly ticker: NodeJS.Timeout;
  private readonly heartbeat: NodeJS.Timeout;
  private closed = false;

  constructor(private readonly s: DashboardSources) {
    // Earlier updates, from the versions they left (skipped and failed ones leave none).
    const rows = s.store.versions().filter((r) => r.version > 0).slice(-RECENT_UPDATES);
    for (const r of rows) {
      const anchor = numberOr((r.stats as Record<string, unknown> | null)?.anchor_shift);
      if (anchor !== null) this.anchorShift = anchor;
      this.updates.push({
        id: this.nextUpdateId++,
        started_at: null,
        finished_at: r.created_at,
        outcome: r.status === 'rejected' ? 'rejected' : r.status === 'candidate' ? 'running' : 'promoted',
        version: r.version,
        reason: r.reason,
        anchor_shift: anchor,
        seconds: numberOr((r.stats as Record<string, unknown> | null)?.seconds),
        experiences: numberOr((r.stats as Record<string, unknown> | null)?.experiences),
      });
    }
    this.stats = this.computeStats(Date.now());
    // The view is a bystander: a failure in it is logged and never reaches the serving loop.
    const log = s.logger ?? silentLogger;
    this.subs.push(
      s.experiences$.subscribe(guarded(log, 'dashboard question', (e: Experience) => this.onExperience(e))),
      s.updates$.subscribe(guarded(log, 'dashboard update', (u: Parameters<Dashboard['onUpdate']>[0]) => this.onUpdate(u))),
      s.versions$.subscribe(
        guarded(log, 'dashboard version', (v: number) => {
          this.version = v;
          this.send('version', { version: v, versions: this.versionViews() });
        }),
      ),
    );
    this.ticker = setInterval(guarded(log, 'dashboard tick', () => this.tick()), 1000);
    this.ticker.unref();
    this.heartbeat = setInterval(guarded(log, 'dashboard heartbeat', () => this.comment('keep-alive')), HEARTBEAT_MS);
    this.heartbeat.unref();
  }

  private onExperience(e: Experience): void {
    const r = e.rollout;
    this.answered++;
    this.answeredAt.push(e.at, 1);
    this.latencies.push(e.at, e.latencyMs);
    this.ratios.push(r.vote.ratio);
    // The majority answer first (a tie leaves others with as many votes), then by votes.
    const sorted = Object.entries(r.vote.counts).sort((a, b) => Number(b[0] === r.vote.label) - Number(a[0] === r.vote.label) || b[1] - a[1]);
    const top = sorted.slice(0, TOP_VOTES);
    const total = sorted.reduce((a, [, n]) => a + n, 0);
    const q: QuestionView = {
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
    this.questions.push(q);
    this.unsent.push(q);
    if (this.unsent.length > RECENT_QUESTIONS) this.unsent.shift();
    this.flushTimer ??= setTimeout(guarded(this.s.logger ?? silentLogger, 'dashboard flush', () => this.flushQuestions()), QUESTION_FLUSH_MS);
  }

  private flushQuestions(): void {
    this.flushTimer = null;
    if (!this.unsent.length) return;
    const qs = this.unsent;
    this.unsent = [];
    this.send('questions', { questions: qs, answered: this.answered });
  }

  private onUpdate(u: { phase: 'start' } | { phase: 'end'; outcome: UpdateOutcome }): void {
    const now = Date.now();
    if (u.phase === 'start') {
      this.send('update', this.runningUpdate(now));
      return;
    }
    const o = u.outcome;
    // The running one ends (an end without a start: a new entry).
    let view: UpdateView | undefined;
    for (let i = this.updates.length - 1; i >= 0 && !view; i--) if (this.updates[i]!.outcome === 'running' && this.updates[i]!.started_at !== null) view = this.updates[i];
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
    this.send('update', { ...view, anchor_shift_now: this.anchorShift });
    // A rejected or promoted candidate is a new row.
    if (o.version !== null) this.send('versions', { versions: this.versionViews() });
  }

  /** A new running update at the end of the bounded list. */
  private runningUpdate(startedAt: number | null): UpdateView {
    const view: UpdateView = { id: this.nextUpdateId++, started_at: startedAt, finished_at: null, outcome: 'running', version: null, reason: null, anchor_shift: null, seconds: null, experiences: null };
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
      confidence: bins,
      confidence_n: ratios.length,
      confidence_mean: ratios.length ? ratios.reduce((a, b) => a + b, 0) / ratios.length : null,
    };
  }

  private tick(): void {
    const now = Date.now();
    this.stats = this.computeStats(now);
    this.series.push([Math.round(now / 1000), this.stats.qps, this.stats.p50_ms, this.stats.p99_ms]);
    this.send('stats', this.stats);
  }

  private versionViews(): VersionView[] {
    let rows: VersionRow[];
    try {
      rows = this.s.store.versions();
    } catch {
      return [];
    }
    const serving = rows.find((r) => r.version === this.version);
    const keep = new Set([0, this.version, serving?.parent ?? 0]);
    return rows
      .filter((r, i) => i >= rows.length - LISTED_VERSIONS || keep.has(r.version))
      .map((r) => ({
        version: r.version,
        parent: r.parent,
        status: r.status,
        created_at: r.created_at,
        activated_at: r.activated_at,
        reason: r.reason,
        anchor_shift: numberOr((r.stats as Record<string, unknown> | null)?.anchor_shift),
      }));
  }

  /** Everything the page shows, as of now. */
  snapshot() {
    const series = this.series.toArray();
    return {
      windows: { rate_s: RATE_WINDOW_S, latency_s: LATENCY_WINDOW_S, confidence_answers: CONFIDENCE_ANSWERS },
      version: this.version,
      anchor_shift: this.anchorShift,
      stats: this.stats,
      // uPlot's columns: seconds, questions/s, p50, p99.
      series: [series.map((p) => p[0]), series.map((p) => p[1]), series.map((p) => p[2]), series.map((p) => p[3])],
      questions: this.questions.toArray(),
      updates: this.updates,
      versions: this.versionViews(),
    };
  }

  private write(res: Response, chunk: string): void {
    if (res.destroyed || res.writableEnded) return void this.clients.delete(res);
    if (res.writableLength > MAX_UNREAD_BYTES) {
      this.clients.delete(res);
      res.end();
      return;
    }
    res.write(chunk);
  }

  private send(event: string, data: unknown): void {
    if (!this.clients.size) return;
    const chunk = `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    for (const res of this.clients) this.write(res, chunk);
  }

  private comment(text: string): void {
    for (const res of this.clients) this.write(res, `: ${text}\n\n`);
  }

  /** With API keys set, the stream and the snapshot need one: ?key=KEY (EventSource cannot set headers) or Authorization: Bearer KEY. */
  private access = (req: Request, res: Response, next: NextFunction) => {
    if (!this.s.keys.enabled) return next();
    const q = req.query.key;
    if (this.s.keys.check(typeof q === 'string' ? q : ApiKeys.presented(req))) return next();
    res.set('WWW-Authenticate', 'Bearer');
    res.status(401).json(errorMessage('unauthorized', 'the dashboard stream needs an API key: ?key=KEY or Authorization: Bearer KEY'));
  };

  router(): Router {
    const r = express.Router();
    const pageHeaders = (res: Response) =>
      res.set({
        'Content-Security-Policy': "default-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        'Referrer-Policy': 'no-referrer',
        'X-Content-Type-Options': 'nosniff',
      });
    r.get('/', (_req, res) => {
      pageHeaders(res);
      res.sendFile('index.html', { root: DASHBOARD_DIR });
    });
    r.use('/dashboard/static', express.static(DASHBOARD_DIR, { index: false, setHeaders: (res) => res.setHeader('X-Content-Type-Options', 'nosniff') }));
    r.use('/assets/uplot', express.static(UPLOT_DIR, { index: false }));
    r.get('/dashboard/state', this.access, (_req, res) => {
      res.set('Cache-Control', 'no-store').json(this.snapshot());
    });
    r.get('/dashboard/events', this.access, (req, res) => {
      if (this.closed) return res.status(503).json(errorMessage('shutting_down', 'the server is shutting down'));
      res.status(200).set({ 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-store', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
      res.flushHeaders();
      req.socket.setNoDelay(true);
      res.write(`retry: 2000\nevent: snapshot\ndata: ${JSON.stringify(this.snapshot())}\n\n`);
      this.clients.add(res);
      const drop = () => this.clients.delete(res);
      req.on('close', drop);
      res.on('error', drop);
    });
    return r;
  }

  /** Stops listening and ends every stream (the HTTP server then closes without waiting on them). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.subs) s.unsubscribe();
    clearInterval(this.ticker);
    clearInterval(this.heartbeat);
    if (this.flushTimer) clearTimeout(this.flushTimer);
    for (const res of this.clients) res.end();
    this.clients.clear();
  }
}
