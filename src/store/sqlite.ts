// The embedded store: one SQLite file (WAL), one process. Every answered question is written
// with its samples and vote in one transaction per batch, before any answer of the batch is
// sent (synchronous = FULL: on disk first). better-sqlite3 is synchronous, and fast for it:
// the interface is asynchronous for PostgreSQL's sake, and here each call completes at once.
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { migrate } from './migrate.ts';
import {
  DATABASE_ID_KEY,
  type ExperienceCursor,
  packFloats,
  packInts,
  unpackFloats,
  unpackInts,
  type AnsweredRecord,
  type EventRow,
  type LoggedQuestion,
  type LoggedSample,
  type NewVersion,
  type QuestionMeta,
  type QuestionRow,
  type SampleRecord,
  type Store,
  type StoreCounts,
  type StoredExperience,
  type VersionRow,
} from './store.ts';

export class SqliteStore implements Store {
  readonly kind = 'sqlite';
  readonly fleet = undefined;

  private constructor(
    /** The connection itself, for tests and tools that read the file directly. */
    readonly db: Database.Database,
    readonly location: string,
  ) {}

  static open(file: string): SqliteStore {
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
    return new SqliteStore(db, file);
  }

  /** The file's path (kept for messages that name it). */
  get file(): string {
    return this.location;
  }

  // ---------- the log ----------

  async askCounts(questions: string[]): Promise<Map<string, number>> {
    const q = this.db.prepare('SELECT COUNT(*) AS n FROM questions WHERE question = ?');
    return new Map([...new Set(questions)].map((text) => [text, (q.get(text) as { n: number }).n]));
  }

  async recordAnswered(batch: AnsweredRecord[], frontend: string | null = null): Promise<number[]> {
    const q = this.db.prepare(
      `INSERT INTO questions (client_id, connection, question, votes_requested, received_at, answered_at, status, answer, majority_ratio, votes, model_version, latency_ms, frontend, source, trainable, sampled_on, sampled_model, label)
       VALUES (?, ?, ?, ?, ?, ?, 'answered', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    const s = this.db.prepare('INSERT INTO samples (question_id, idx, text, answer, tokens, logprob_sum, stopped) VALUES (?, ?, ?, ?, ?, ?, ?)');
    // One process trains from memory: the token ids and log-probs are not written here (see 004_fleet.sql).
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
            frontend,
            r.source,
            r.trainable ? 1 : 0,
            r.sampledOn ?? null,
            r.sampledModel ?? null,
            r.label ?? null,
          ).lastInsertRowid,
        );
        r.samples.forEach((x, i) => s.run(id, i, x.text, x.answer, x.tokens, x.logprobSum, x.stopped ? 1 : 0));
        return id;
      }),
    )();
  }

  async recordFailed(batch: (QuestionMeta & { error: string })[], frontend: string | null = null): Promise<void> {
    const q = this.db.prepare(
      `INSERT INTO questions (client_id, connection, question, votes_requested, received_at, answered_at, status, error, frontend, label) VALUES (?, ?, ?, ?, ?, ?, 'failed', ?, ?, ?)`,
    );
    const now = Date.now();
    this.db.transaction(() =>
      batch.forEach((r) => q.run(r.clientId, r.connection, r.question, r.votesRequested, r.receivedAt, now, r.error, frontend, r.label ?? null)),
    )();
  }

  // One writer: ids grow in commit order, so the cursor is the last id read.
  async experiencesAfter(cursor: ExperienceCursor, limit: number): Promise<{ experiences: StoredExperience[]; cursor: ExperienceCursor }> {
    const rows = this.db
      .prepare(
        `SELECT id, question, source, frontend, answered_at, latency_ms, model_version, answer, majority_ratio, votes, prompt_ids FROM questions
         WHERE id > ? AND status = 'answered' AND trainable = 1 AND prompt_ids IS NOT NULL ORDER BY id LIMIT ?`,
      )
      .all(sqliteCursor(cursor), limit) as ExperienceRow[];
    const samples = this.db.prepare('SELECT text, answer, tokens, logprob_sum, stopped, token_ids, logprobs FROM samples WHERE question_id = ? ORDER BY idx');
    const experiences = rows.map((r) => experienceOf(r, samples.all(r.id) as SampleRow[]));
    return { experiences, cursor: experiences.length ? String(experiences.at(-1)!.id) : cursor };
  }

  async experienceCursorNow(): Promise<ExperienceCursor> {
    return String((this.db.prepare('SELECT MAX(id) AS id FROM questions').get() as { id: number | null }).id ?? 0);
  }

  async *questions(o: { since?: number; until?: number; status?: 'answered' | 'failed' } = {}): AsyncGenerator<QuestionRow> {
    // Read the rows first: a connection iterating one statement cannot run another meanwhile.
    const rows = this.db
      .prepare(
        `SELECT id, client_id, connection, question, votes_requested, received_at, answered_at, status, error, answer, majority_ratio, votes, model_version, latency_ms, frontend, sampled_on, sampled_model, label
         FROM questions WHERE received_at >= ? AND received_at < ? ${o.status ? 'AND status = ?' : ''} ORDER BY received_at, id`,
      )
      .all(...[o.since ?? 0, o.until ?? Number.MAX_SAFE_INTEGER, ...(o.status ? [o.status] : [])]) as (QuestionRow & { votes: string | null })[];
    for (const r of rows) yield { ...r, votes: r.votes ? JSON.parse(r.votes) : null };
  }

  async samplesOf(questionId: number): Promise<SampleRecord[]> {
    return (this.db.prepare('SELECT * FROM samples WHERE question_id = ? ORDER BY idx').all(questionId) as SampleRow[]).map(sampleOf);
  }

  async counts(): Promise<StoreCounts> {
    const q = this.db.prepare(`SELECT SUM(status = 'answered') AS answered, SUM(status = 'failed') AS failed FROM questions`).get() as {
      answered: number | null;
      failed: number | null;
    };
    const s = this.db.prepare('SELECT COUNT(*) AS n FROM samples').get() as { n: number };
    return { answered: q.answered ?? 0, failed: q.failed ?? 0, samples: s.n };
  }

  // ---------- model versions ----------

  async addVersion(v: NewVersion & { activate?: boolean }): Promise<number> {
    return this.db.transaction(() => {
      const next = ((this.db.prepare('SELECT MAX(version) AS v FROM model_versions').get() as { v: number | null }).v ?? -1) + 1;
      const path = typeof v.weightsPath === 'function' ? v.weightsPath(next) : v.weightsPath;
      this.db
        .prepare('INSERT INTO model_versions (version, parent, status, weights_path, created_at, stats, reason) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .run(next, v.parent, v.status, path, Date.now(), v.stats === undefined ? null : JSON.stringify(v.stats), v.reason ?? null);
      if (v.activate) this.activateNow(next);
      return next;
    })();
  }

  async ensureBaseVersion(base: Omit<NewVersion, 'status' | 'parent'>): Promise<void> {
    // One transaction: a crash here must not leave version 0 an unjudged candidate.
    this.db.transaction(() => {
      if (this.db.prepare('SELECT 1 FROM model_versions LIMIT 1').get()) return;
      this.db
        .prepare('INSERT INTO model_versions (version, parent, status, weights_path, created_at, activated_at, stats) VALUES (0, NULL, ?, ?, ?, ?, ?)')
        .run(
          'active',
          typeof base.weightsPath === 'function' ? base.weightsPath(0) : base.weightsPath,
          Date.now(),
          Date.now(),
          base.stats === undefined ? null : JSON.stringify(base.stats),
        );
    })();
  }

  async rejectStaleCandidates(reason = 'interrupted: the server stopped before this candidate was judged'): Promise<number> {
    return this.db
      .prepare(`UPDATE model_versions SET status = 'rejected', reason = ?, weights_path = NULL, weights_sha256 = NULL WHERE status = 'candidate'`)
      .run(reason).changes;
  }

  async activate(version: number): Promise<void> {
    this.db.transaction(() => this.activateNow(version))();
  }

  private activateNow(version: number): void {
    if (!this.db.prepare('SELECT 1 FROM model_versions WHERE version = ?').get(version)) throw new Error(`no model version ${version}`);
    this.db.prepare(`UPDATE model_versions SET status = 'retired' WHERE status = 'active'`).run();
    this.db.prepare(`UPDATE model_versions SET status = 'active', activated_at = ?, reason = NULL WHERE version = ?`).run(Date.now(), version);
  }

  async setWeightsSha256(version: number, sha256: string): Promise<void> {
    this.db.prepare('UPDATE model_versions SET weights_sha256 = ? WHERE version = ?').run(sha256, version);
  }

  async pruneWeights(version: number, reason: string): Promise<void> {
    this.db
      .prepare(`UPDATE model_versions SET weights_path = NULL, weights_sha256 = NULL, reason = ? WHERE version = ? AND status = 'retired'`)
      .run(reason, version);
  }

  async markCorrupt(version: number, reason: string): Promise<void> {
    this.db.prepare(`UPDATE model_versions SET status = 'corrupt', reason = ? WHERE version = ?`).run(reason, version);
  }

  async reject(version: number, reason: string, stats?: unknown): Promise<void> {
    this.db
      .prepare(
        `UPDATE model_versions SET status = 'rejected', reason = ?, stats = COALESCE(?, stats), weights_path = NULL, weights_sha256 = NULL WHERE version = ?`,
      )
      .run(reason, stats === undefined ? null : JSON.stringify(stats), version);
  }

  async setStats(version: number, stats: unknown): Promise<void> {
    this.db.prepare('UPDATE model_versions SET stats = ? WHERE version = ?').run(JSON.stringify(stats), version);
  }

  async version(v: number): Promise<VersionRow | undefined> {
    const row = this.db.prepare('SELECT * FROM model_versions WHERE version = ?').get(v) as VersionRow | undefined;
    return row && parseVersion(row);
  }

  async activeVersion(): Promise<VersionRow | undefined> {
    const row = this.db.prepare(`SELECT * FROM model_versions WHERE status = 'active'`).get() as VersionRow | undefined;
    return row && parseVersion(row);
  }

  async versions(): Promise<VersionRow[]> {
    return (this.db.prepare('SELECT * FROM model_versions ORDER BY version').all() as VersionRow[]).map(parseVersion);
  }

  // ---------- meta and events ----------

  async getMeta(key: string): Promise<string | undefined> {
    return (this.db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value;
  }

  async setMeta(key: string, value: string, o: { onlyIfAbsent?: boolean } = {}): Promise<string> {
    if (o.onlyIfAbsent) this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING').run(key, value);
    else this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value').run(key, value);
    return (await this.getMeta(key))!;
  }

  async databaseId(): Promise<string> {
    return this.setMeta(DATABASE_ID_KEY, randomBytes(8).toString('hex'), { onlyIfAbsent: true });
  }

  async probeWrite(): Promise<void> {
    await this.setMeta('readiness_probe_at', String(Date.now()));
  }

  async event(kind: string, detail: unknown): Promise<void> {
    this.db.prepare('INSERT INTO events (at, kind, detail) VALUES (?, ?, ?)').run(Date.now(), kind, JSON.stringify(detail ?? null));
  }

  async events(limit = 100): Promise<EventRow[]> {
    return (this.db.prepare('SELECT * FROM events ORDER BY id DESC LIMIT ?').all(limit) as { id: number; at: number; kind: string; detail: string }[]).map(
      (e) => ({
        ...e,
        detail: JSON.parse(e.detail),
      }),
    );
  }

  // ---------- copying a whole store ----------

  async *exportLog(): AsyncGenerator<LoggedQuestion> {
    const page = this.db.prepare(
      `SELECT id, client_id, connection, question, votes_requested, received_at, answered_at, status, error, answer, majority_ratio, votes, model_version, latency_ms, frontend, sampled_on, sampled_model, label, source, trainable, prompt_ids
       FROM questions WHERE id > ? ORDER BY id LIMIT 500`,
    );
    const samples = this.db.prepare('SELECT text, answer, tokens, logprob_sum, stopped, token_ids, logprobs FROM samples WHERE question_id = ? ORDER BY idx');
    for (let after = 0; ;) {
      // A page at a time, read whole before it is handed out (see questions()).
      const rows = (
        page.all(after) as (Omit<LoggedQuestion, 'votes' | 'trainable' | 'prompt_ids' | 'samples'> & {
          votes: string | null;
          trainable: number;
          prompt_ids: Uint8Array | null;
        })[]
      ).map((r) => ({
        ...r,
        votes: r.votes ? JSON.parse(r.votes) : null,
        trainable: r.trainable === 1,
        prompt_ids: r.prompt_ids ? unpackInts(r.prompt_ids) : null,
        samples: (samples.all(r.id) as SampleRow[]).map(loggedSampleOf),
      }));
      if (!rows.length) return;
      yield* rows;
      after = rows.at(-1)!.id;
    }
  }

  async importLog(rows: LoggedQuestion[]): Promise<number[]> {
    const q = this.db.prepare(
      `INSERT INTO questions (client_id, connection, question, votes_requested, received_at, answered_at, status, error, answer, majority_ratio, votes, model_version, latency_ms, frontend, source, trainable, prompt_ids, sampled_on, sampled_model, label)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    const s = this.db.prepare(
      'INSERT INTO samples (question_id, idx, text, answer, tokens, logprob_sum, stopped, token_ids, logprobs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    return this.db.transaction(() =>
      rows.map((r) => {
        const id = Number(
          q.run(
            r.client_id,
            r.connection,
            r.question,
            r.votes_requested,
            r.received_at,
            r.answered_at,
            r.status,
            r.error,
            r.answer,
            r.majority_ratio,
            r.votes === null ? null : JSON.stringify(r.votes),
            r.model_version,
            r.latency_ms,
            r.frontend,
            r.source,
            r.trainable ? 1 : 0,
            r.prompt_ids ? packInts(r.prompt_ids) : null,
            r.sampled_on ?? null,
            r.sampled_model ?? null,
            r.label ?? null,
          ).lastInsertRowid,
        );
        r.samples.forEach((x, i) =>
          s.run(
            id,
            i,
            x.text,
            x.answer,
            x.tokens,
            x.logprobSum,
            x.stopped ? 1 : 0,
            x.tokenIds ? packInts(x.tokenIds) : null,
            x.logprobs ? packFloats(x.logprobs) : null,
          ),
        );
        return id;
      }),
    )();
  }

  async importVersions(rows: VersionRow[]): Promise<void> {
    const ins = this.db.prepare(
      'INSERT INTO model_versions (version, parent, status, weights_path, created_at, activated_at, stats, reason, weights_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    this.db.transaction(() => {
      for (const v of [...rows].sort((a, b) => a.version - b.version))
        ins.run(
          v.version,
          v.parent,
          v.status,
          v.weights_path,
          v.created_at,
          v.activated_at,
          v.stats == null ? null : JSON.stringify(v.stats),
          v.reason,
          v.weights_sha256,
        );
    })();
  }

  async exportMeta(): Promise<Map<string, string>> {
    return new Map((this.db.prepare('SELECT key, value FROM meta ORDER BY key').all() as { key: string; value: string }[]).map((r) => [r.key, r.value]));
  }

  async *exportEvents(): AsyncGenerator<EventRow> {
    const page = this.db.prepare('SELECT id, at, kind, detail FROM events WHERE id > ? ORDER BY id LIMIT 1000');
    for (let after = 0; ;) {
      const rows = (page.all(after) as { id: number; at: number; kind: string; detail: string }[]).map((e) => ({
        ...e,
        detail: JSON.parse(e.detail) as unknown,
      }));
      if (!rows.length) return;
      yield* rows;
      after = rows.at(-1)!.id;
    }
  }

  async importEvents(rows: Omit<EventRow, 'id'>[]): Promise<void> {
    const ins = this.db.prepare('INSERT INTO events (at, kind, detail) VALUES (?, ?, ?)');
    this.db.transaction(() => rows.forEach((e) => ins.run(e.at, e.kind, JSON.stringify(e.detail ?? null))))();
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}

/** A cursor of this store (the last question id read; "": the start). Another form is refused: read as the start, it would train on the whole log again. */
function sqliteCursor(c: ExperienceCursor): number {
  if (c === '') return 0;
  if (!/^\d+$/.test(c)) throw new Error(`${JSON.stringify(c)} is not an experience cursor of a SQLite store (a question id)`);
  return Number(c);
}

/** A questions row as experiencesAfter reads it (both stores share the shape). */
export interface ExperienceRow {
  id: number;
  question: string;
  source: string | null;
  frontend: string | null;
  answered_at: number;
  latency_ms: number;
  model_version: number;
  answer: string | null;
  majority_ratio: number;
  votes: string | Record<string, number>;
  prompt_ids: Uint8Array | null;
}

export interface SampleRow {
  text: string;
  answer: string | null;
  tokens: number;
  logprob_sum: number;
  stopped: number | boolean;
  token_ids?: Uint8Array | null;
  logprobs?: Uint8Array | null;
}

export const sampleOf = (s: SampleRow): SampleRecord => ({
  text: s.text,
  answer: s.answer,
  tokens: s.tokens,
  logprobSum: s.logprob_sum,
  stopped: s.stopped === 1 || s.stopped === true,
});

export const loggedSampleOf = (s: SampleRow): LoggedSample => ({
  ...sampleOf(s),
  tokenIds: s.token_ids ? unpackInts(s.token_ids) : null,
  logprobs: s.logprobs ? unpackFloats(s.logprobs) : null,
});

export function experienceOf(r: ExperienceRow, samples: SampleRow[]): StoredExperience {
  return {
    id: Number(r.id),
    question: r.question,
    source: r.source,
    frontend: r.frontend,
    answeredAt: Number(r.answered_at),
    latencyMs: r.latency_ms,
    modelVersion: r.model_version,
    answer: r.answer,
    majorityRatio: r.majority_ratio,
    votes: typeof r.votes === 'string' ? JSON.parse(r.votes) : r.votes,
    promptIds: unpackInts(r.prompt_ids),
    samples: samples.map((s) => ({ ...sampleOf(s), tokenIds: unpackInts(s.token_ids ?? null), logprobs: unpackFloats(s.logprobs ?? null) })),
  };
}

export function parseVersion(r: VersionRow): VersionRow {
  return { ...r, stats: typeof r.stats === 'string' ? JSON.parse(r.stats) : r.stats };
}
