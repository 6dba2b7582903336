// The experience store: one SQLite file (WAL). Every answered question is written with its
// samples and vote in one transaction per batch, before any answer of the batch is sent.
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { migrate } from './migrate.ts';

export interface SampleRecord {
  text: string;
  answer: string | null;
  tokens: number;
  logprobSum: number;
  stopped: boolean;
}

export interface QuestionMeta {
  clientId: string | null;
  connection: string | null;
  question: string;
  votesRequested: number;
  receivedAt: number;
}

export interface AnsweredRecord extends QuestionMeta {
  answeredAt: number;
  answer: string | null;
  majorityRatio: number;
  votes: Record<string, number>;
  modelVersion: number;
  latencyMs: number;
  samples: SampleRecord[];
}

export type VersionStatus = 'candidate' | 'active' | 'retired' | 'rejected' | 'corrupt';

export interface VersionRow {
  version: number;
  parent: number | null;
  status: VersionStatus;
  weights_path: string | null;
  created_at: number;
  activated_at: number | null;
  stats: unknown;
  reason: string | null;
  /** Hex sha256 of the weight file as written (null: version 0, or a row older than verification). */
  weights_sha256: string | null;
}

export interface QuestionRow {
  id: number;
  client_id: string | null;
  connection: string | null;
  question: string;
  votes_requested: number;
  received_at: number;
  answered_at: number | null;
  status: 'answered' | 'failed';
  error: string | null;
  answer: string | null;
  majority_ratio: number | null;
  votes: Record<string, number> | null;
  model_version: number | null;
  latency_ms: number | null;
}

export const DATABASE_ID_KEY = 'database_id';

export class Store {
  private constructor(
    readonly db: Database.Database,
    readonly file: string,
  ) {}

  static open(file: string): Store {
    if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true });
    let db: Database.Database;
    try {
      db = new Database(file);
    } catch (e) {
      throw new Error(`cannot open the database ${file}: ${(e as Error).message}`);
    }
    try {
      db.pragma('journal_mode = WAL');
      // FULL: a commit is on disk before the answer it records is sent.
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      db.pragma('busy_timeout = 5000');
      migrate(db);
    } catch (e) {
      db.close();
      throw new Error(`${file}: ${(e as Error).message}`);
    }
    return new Store(db, file);
  }

  /** How often each question was asked before (answered or failed). */
  askCounts(questions: string[]): Map<string, number> {
    const q = this.db.prepare('SELECT COUNT(*) AS n FROM questions WHERE question = ?');
    return new Map([...new Set(questions)].map((text) => [text, (q.get(text) as { n: number }).n]));
  }

  recordAnswered(batch: AnsweredRecord[]): number[] {
    const q = this.db.prepare(
      `INSERT INTO questions (client_id, connection, question, votes_requested, received_at, answered_at, status, answer, majority_ratio, votes, model_version, latency_ms)
       VALUES (?, ?, ?, ?, ?, ?, 'answered', ?, ?, ?, ?, ?)`,
    );
    const s = this.db.prepare('INSERT INTO samples (question_id, idx, text, answer, tokens, logprob_sum, stopped) VALUES (?, ?, ?, ?, ?, ?, ?)');
    return this.db.transaction(() =>
      batch.map((r) => {
        const id = Number(
          q.run(
            r.clientId,
            r.connection,
            r.question,
            r.votesRequested,
            r.receivedAt,
            r.answeredAt,
            r.answer,
            r.majorityRatio,
            JSON.stringify(r.votes),
            r.modelVersion,
            r.latencyMs,
          ).lastInsertRowid,
        );
        r.samples.forEach((x, i) => s.run(id, i, x.text, x.answer, x.tokens, x.logprobSum, x.stopped ? 1 : 0));
        return id;
      }),
    )();
  }

  recordFailed(batch: (QuestionMeta & { error: string })[]): void {
    const q = this.db.prepare(
      `INSERT INTO questions (client_id, connection, question, votes_requested, received_at, answered_at, status, error) VALUES (?, ?, ?, ?, ?, ?, 'failed', ?)`,
    );
    const now = Date.now();
    this.db.transaction(() => batch.forEach((r) => q.run(r.clientId, r.connection, r.question, r.votesRequested, r.receivedAt, now, r.error)))();
  }

  // ---------- model versions ----------

  /** Adds the next version number; weightsPath may depend on it (null: weights not kept). */
  addVersion(v: {
    parent: number | null;
    status: VersionStatus;
    weightsPath: string | null | ((version: number) => string);
    stats?: unknown;
    reason?: string;
  }): number {
    return this.db.transaction(() => {
      const next = ((this.db.prepare('SELECT MAX(version) AS v FROM model_versions').get() as { v: number | null }).v ?? -1) + 1;
      const path = typeof v.weightsPath === 'function' ? v.weightsPath(next) : v.weightsPath;
      this.db
        .prepare('INSERT INTO model_versions (version, parent, status, weights_path, created_at, stats, reason) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .run(next, v.parent, v.status, path, Date.now(), v.stats === undefined ? null : JSON.stringify(v.stats), v.reason ?? null);
      return next;
    })();
  }

  /** Candidates left by a crash mid-update: never promoted, so marked rejected. */
  rejectStaleCandidates(): number {
    return this.db
      .prepare(
        `UPDATE model_versions SET status = 'rejected', reason = 'interrupted: the server stopped before this candidate was judged' WHERE status = 'candidate'`,
      )
      .run().changes;
  }

  /** Makes `version` the one serving version; the previous one is retired. */
  activate(version: number): void {
    this.db.transaction(() => {
      const row = this.version(version);
      if (!row) throw new Error(`no model version ${version}`);
      this.db.prepare(`UPDATE model_versions SET status = 'retired' WHERE status = 'active'`).run();
      this.db.prepare(`UPDATE model_versions SET status = 'active', activated_at = ?, reason = NULL WHERE version = ?`).run(Date.now(), version);
    })();
  }

  /** Records the sha256 of a version's weight file (the bytes written, or a legacy file's first verified load). */
  setWeightsSha256(version: number, sha256: string): void {
    this.db.prepare('UPDATE model_versions SET weights_sha256 = ? WHERE version = ?').run(sha256, version);
  }

  /** A retired version whose weight file was deleted to bound the disk: its row and stats stay. */
  pruneWeights(version: number, reason: string): void {
    this.db
      .prepare(`UPDATE model_versions SET weights_path = NULL, weights_sha256 = NULL, reason = ? WHERE version = ? AND status = 'retired'`)
      .run(reason, version);
  }

  /** A version whose weight file failed verification: never served again until it verifies. */
  markCorrupt(version: number, reason: string): void {
    this.db.prepare(`UPDATE model_versions SET status = 'corrupt', reason = ? WHERE version = ?`).run(reason, version);
  }

  reject(version: number, reason: string, stats?: unknown): void {
    this.db
      .prepare(`UPDATE model_versions SET status = 'rejected', reason = ?, stats = COALESCE(?, stats) WHERE version = ?`)
      .run(reason, stats === undefined ? null : JSON.stringify(stats), version);
  }

  setStats(version: number, stats: unknown): void {
    this.db.prepare('UPDATE model_versions SET stats = ? WHERE version = ?').run(JSON.stringify(stats), version);
  }

  version(v: number): VersionRow | undefined {
    const row = this.db.prepare('SELECT * FROM model_versions WHERE version = ?').get(v) as VersionRow | undefined;
    return row && parseVersion(row);
  }

  activeVersion(): VersionRow | undefined {
    const row = this.db.prepare(`SELECT * FROM model_versions WHERE status = 'active'`).get() as VersionRow | undefined;
    return row && parseVersion(row);
  }

  versions(): VersionRow[] {
    return (this.db.prepare('SELECT * FROM model_versions ORDER BY version').all() as VersionRow[]).map(parseVersion);
  }

  // ---------- meta and events ----------

  getMeta(key: string): string | undefined {
    return (this.db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value;
  }

  setMeta(key: string, value: string): void {
    this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  /**
   * This database's random id, made on first use: every version file it writes carries it,
   * so a file written for another database (same folder, same name) is refused on load.
   */
  databaseId(): string {
    const known = this.getMeta(DATABASE_ID_KEY);
    if (known) return known;
    const id = randomBytes(8).toString('hex');
    this.setMeta(DATABASE_ID_KEY, id);
    return id;
  }

  /** A small real write (readiness probes it while writes fail); throws while they do. */
  probeWrite(): void {
    this.setMeta('readiness_probe_at', String(Date.now()));
  }

  event(kind: string, detail: unknown): void {
    this.db.prepare('INSERT INTO events (at, kind, detail) VALUES (?, ?, ?)').run(Date.now(), kind, JSON.stringify(detail));
  }

  events(limit = 100): { id: number; at: number; kind: string; detail: unknown }[] {
    return (this.db.prepare('SELECT * FROM events ORDER BY id DESC LIMIT ?').all(limit) as { id: number; at: number; kind: string; detail: string }[]).map(
      (e) => ({
        ...e,
        detail: JSON.parse(e.detail),
      }),
    );
  }

  // ---------- reading the log back ----------

  /** Questions in arrival order, optionally within [since, until) in epoch ms. */
  *questions(o: { since?: number; until?: number; status?: 'answered' | 'failed' } = {}): Generator<QuestionRow> {
    const rows = this.db
      .prepare(`SELECT * FROM questions WHERE received_at >= ? AND received_at < ? ${o.status ? 'AND status = ?' : ''} ORDER BY received_at, id`)
      .iterate(...[o.since ?? 0, o.until ?? Number.MAX_SAFE_INTEGER, ...(o.status ? [o.status] : [])]) as IterableIterator<
      QuestionRow & { votes: string | null }
    >;
    for (const r of rows) yield { ...r, votes: r.votes ? JSON.parse(r.votes) : null };
  }

  samplesOf(questionId: number): SampleRecord[] {
    return (
      this.db.prepare('SELECT * FROM samples WHERE question_id = ? ORDER BY idx').all(questionId) as {
        text: string;
        answer: string | null;
        tokens: number;
        logprob_sum: number;
        stopped: number;
      }[]
    ).map((s) => ({ text: s.text, answer: s.answer, tokens: s.tokens, logprobSum: s.logprob_sum, stopped: s.stopped === 1 }));
  }

  counts(): { answered: number; failed: number; samples: number } {
    const q = this.db.prepare(`SELECT SUM(status = 'answered') AS answered, SUM(status = 'failed') AS failed FROM questions`).get() as {
      answered: number | null;
      failed: number | null;
    };
    const s = this.db.prepare('SELECT COUNT(*) AS n FROM samples').get() as { n: number };
    return { answered: q.answered ?? 0, failed: q.failed ?? 0, samples: s.n };
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

function parseVersion(r: VersionRow): VersionRow {
  return { ...r, stats: typeof r.stats === 'string' ? JSON.parse(r.stats) : r.stats };
}
