// The shared store: one PostgreSQL database behind any number of front-ends (node-postgres,
// a small pool per process). The same log and lineage as SQLite (one schema, two dialects:
// migrations/postgres/), and what a fleet coordinates through (FleetCoordination): a leader
// lock (a session-level advisory lock: PostgreSQL itself releases it when the leader's
// session ends, a kill -9 included), version-change notices (LISTEN/NOTIFY), heartbeats.
//
// Version numbers are given under a transaction-level advisory lock, so two front-ends never
// number one alike; experiences are read back in commit order (see experiencesAfter).
import pg from 'pg';
import { randomBytes } from 'node:crypto';
import { migratePostgres } from './migrate.ts';
import { inTransaction } from './pg-transaction.ts';
import { hidePassword } from './open.ts';
import { experienceOf, loggedSampleOf, sampleOf, type ExperienceRow, type SampleRow } from './sqlite.ts';
import {
  DATABASE_ID_KEY,
  packFloats,
  packInts,
  unpackInts,
  type AnsweredRecord,
  type EventRow,
  type ExperienceCursor,
  type FleetCoordination,
  type FrontendRow,
  type LoggedQuestion,
  type NewVersion,
  type QuestionMeta,
  type QuestionRow,
  type SampleRecord,
  type Store,
  type StoreCounts,
  type StoredExperience,
  type VersionRow,
} from './store.ts';

/** Advisory lock keys (one namespace per purpose; any two 32-bit ints PostgreSQL can hold). */
const LOCK_NAMESPACE = 0x7771;
const LEADER_LOCK = 1;
const VERSIONS_LOCK = 2;
/** The channel version changes are announced on. */
export const VERSION_CHANNEL = 'ttrl_versions';

/** BIGINT columns (ids, epoch ms) as numbers: they stay below 2^53. */
const types = {
  getTypeParser: (oid: number, format?: 'text' | 'binary') => (oid === 20 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format)),
};

export class PostgresStore implements Store {
  readonly kind = 'postgres';
  readonly fleet: PostgresFleet;

  private constructor(
    private readonly pool: pg.Pool,
    readonly location: string,
    url: string,
  ) {
    this.fleet = new PostgresFleet(url);
  }

  static async open(url: string, o: { poolSize?: number } = {}): Promise<PostgresStore> {
    const pool = new pg.Pool({ connectionString: url, max: o.poolSize ?? 8, types, connectionTimeoutMillis: 5000 });
    // An idle client that loses its connection (the server restarted) must not crash the process.
    pool.on('error', () => undefined);
    try {
      await migratePostgres(pool);
    } catch (e) {
      await pool.end();
      throw new Error(`${hidePassword(url)}: ${(e as Error).message}`);
    }
    return new PostgresStore(pool, hidePassword(url), url);
  }

  private q<R extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<pg.QueryResult<R>> {
    return this.pool.query<R>(text, noNul(values));
  }

  /** Runs f in one transaction on one connection. */
  private tx<T>(f: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    return inTransaction(this.pool, f);
  }

  // ---------- the log ----------

  async askCounts(questions: string[]): Promise<Map<string, number>> {
    const distinct = [...new Set(questions)];
    const r = await this.q<{ question: string; n: number }>('SELECT question, COUNT(*)::int AS n FROM questions WHERE question = ANY($1) GROUP BY question', [
      distinct,
    ]);
    const stored = new Map(r.rows.map((row) => [row.question, row.n]));
    // As stored: a U+0000 is kept as U+FFFD (see noNul).
    return new Map(distinct.map((q) => [q, stored.get(cleanText(q) as string) ?? 0]));
  }

  async recordAnswered(batch: AnsweredRecord[], frontend: string | null = null): Promise<number[]> {
    if (!batch.length) return [];
    return this.tx(async (c) => {
      // One statement for the batch's questions and one for all their samples: a round trip each.
      const qs = await c.query<{ id: number }>(
        `INSERT INTO questions (client_id, connection, question, votes_requested, received_at, answered_at, status, answer, majority_ratio, votes, model_version, latency_ms, frontend, source, trainable, prompt_ids, sampled_on, sampled_model, label)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::float8[], $10::jsonb[], $11::int[], $12::float8[], $13::text[], $14::text[], $15::bool[], $16::bytea[], $17::text[], $18::text[], $19::text[])
         RETURNING id`,
        noNul([
          batch.map((r) => r.clientId),
          batch.map((r) => r.connection),
          batch.map((r) => r.question),
          batch.map((r) => r.votesRequested),
          batch.map((r) => r.receivedAt),
          batch.map((r) => r.answeredAt),
          batch.map(() => 'answered'),
          batch.map((r) => r.answer),
          batch.map((r) => r.majorityRatio),
          batch.map((r) => json(r.votes)),
          batch.map((r) => r.modelVersion),
          batch.map((r) => r.latencyMs),
          batch.map(() => frontend),
          batch.map((r) => r.source),
          batch.map((r) => r.trainable),
          batch.map((r) => (r.trainable ? packInts(r.promptIds) : null)),
          batch.map((r) => r.sampledOn ?? null),
          batch.map((r) => r.sampledModel ?? null),
          batch.map((r) => r.label ?? null),
        ]),
      );
      const ids = qs.rows.map((r) => r.id);
      const rows = batch.flatMap((r, i) => r.samples.map((s, k) => ({ id: ids[i]!, k, s, keep: r.trainable })));
      await c.query(
        `INSERT INTO samples (question_id, idx, text, answer, tokens, logprob_sum, stopped, token_ids, logprobs)
         SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::int[], $6::float8[], $7::bool[], $8::bytea[], $9::bytea[])`,
        noNul([
          rows.map((x) => x.id),
          rows.map((x) => x.k),
          rows.map((x) => x.s.text),
          rows.map((x) => x.s.answer),
          rows.map((x) => x.s.tokens),
          rows.map((x) => x.s.logprobSum),
          rows.map((x) => x.s.stopped),
          // Only what the leader may train on carries its token ids and log-probs.
          rows.map((x) => (x.keep ? packInts(x.s.tokenIds) : null)),
          rows.map((x) => (x.keep ? packFloats(x.s.logprobs) : null)),
        ]),
      );
      return ids;
    });
  }

  async recordFailed(batch: (QuestionMeta & { error: string })[], frontend: string | null = null): Promise<void> {
    if (!batch.length) return;
    const now = Date.now();
    await this.q(
      `INSERT INTO questions (client_id, connection, question, votes_requested, received_at, answered_at, status, error, frontend, label)
       SELECT c, n, q, v, r, $6::bigint, 'failed', e, $7::text, l FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bigint[], $8::text[], $9::text[]) AS t(c, n, q, v, r, e, l)`,
      [
        batch.map((r) => r.clientId),
        batch.map((r) => r.connection),
        batch.map((r) => r.question),
        batch.map((r) => r.votesRequested),
        batch.map((r) => r.receivedAt),
        now,
        frontend,
        batch.map((r) => r.error),
        batch.map((r) => r.label ?? null),
      ],
    );
  }

  /**
   * Commit order, not id order: front-ends insert concurrently, so a question with a smaller
   * id may commit after one with a larger id that was already read. Each row carries its
   * transaction id; rows are read in (tx, id) order, and only those whose transaction is
   * older than every transaction still open (the snapshot's xmin): none can commit behind them.
   */
  async experiencesAfter(cursor: ExperienceCursor, limit: number): Promise<{ experiences: StoredExperience[]; cursor: ExperienceCursor }> {
    const [tx, id] = parseCursor(cursor);
    const r = await this.q<ExperienceRow & { tx: number }>(
      `SELECT id, question, source, frontend, answered_at, latency_ms, model_version, answer, majority_ratio, votes, prompt_ids, tx FROM questions
       WHERE trainable AND prompt_ids IS NOT NULL AND (tx, id) > ($1, $2) AND tx < txid_snapshot_xmin(txid_current_snapshot())
       ORDER BY tx, id LIMIT $3`,
      [tx, id, limit],
    );
    if (!r.rows.length) return { experiences: [], cursor };
    const samples = await this.q<SampleRow & { question_id: number }>(
      'SELECT question_id, text, answer, tokens, logprob_sum, stopped, token_ids, logprobs FROM samples WHERE question_id = ANY($1) ORDER BY question_id, idx',
      [r.rows.map((x) => x.id)],
    );
    const byQuestion = new Map<number, SampleRow[]>();
    for (const s of samples.rows) {
      const list = byQuestion.get(s.question_id) ?? [];
      list.push(s);
      byQuestion.set(s.question_id, list);
    }
    const last = r.rows.at(-1)!;
    return { experiences: r.rows.map((x) => experienceOf(x, byQuestion.get(x.id) ?? [])), cursor: `${last.tx}:${last.id}` };
  }

  async experienceCursorNow(): Promise<ExperienceCursor> {
    // Everything committed before the oldest open transaction is behind us; what is open may still land after.
    const r = await this.q<{ tx: number }>('SELECT txid_snapshot_xmin(txid_current_snapshot()) - 1 AS tx');
    return `${r.rows[0]!.tx}:${Number.MAX_SAFE_INTEGER}`;
  }

  async *questions(o: { since?: number; until?: number; status?: 'answered' | 'failed' } = {}): AsyncGenerator<QuestionRow> {
    // Pages in arrival order, as SQLite gives it (received_at, then id), so that a long log is
    // never held in memory at once. Not by id: front-ends insert when they answer, so ids do
    // not follow arrival across front-ends.
    let after: [number, number] = [-1, 0];
    for (;;) {
      const r = await this.q<QuestionRow>(
        `SELECT id, client_id, connection, question, votes_requested, received_at, answered_at, status, error, answer, majority_ratio, votes, model_version, latency_ms, frontend, sampled_on, sampled_model, label
         FROM questions WHERE received_at >= $1 AND received_at < $2 AND ($3::text IS NULL OR status = $3::text) AND (received_at, id) > ($4::bigint, $5::bigint)
         ORDER BY received_at, id LIMIT 1000`,
        [o.since ?? 0, o.until ?? Number.MAX_SAFE_INTEGER, o.status ?? null, after[0], after[1]],
      );
      if (!r.rows.length) return;
      for (const row of r.rows) yield row;
      const last = r.rows.at(-1)!;
      after = [last.received_at, last.id];
    }
  }

  async samplesOf(questionId: number): Promise<SampleRecord[]> {
    return (
      await this.q<SampleRow>('SELECT text, answer, tokens, logprob_sum, stopped FROM samples WHERE question_id = $1 ORDER BY idx', [questionId])
    ).rows.map(sampleOf);
  }

  async counts(): Promise<StoreCounts> {
    const q = await this.q<{ answered: number; failed: number }>(
      `SELECT COUNT(*) FILTER (WHERE status = 'answered')::int AS answered, COUNT(*) FILTER (WHERE status = 'failed')::int AS failed FROM questions`,
    );
    const s = await this.q<{ n: number }>('SELECT COUNT(*)::int AS n FROM samples');
    return { answered: q.rows[0]!.answered, failed: q.rows[0]!.failed, samples: s.rows[0]!.n };
  }

  // ---------- model versions ----------

  private async addVersionIn(c: pg.PoolClient, v: NewVersion & { activate?: boolean }): Promise<number> {
    await c.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_NAMESPACE, VERSIONS_LOCK]);
    const next = ((await c.query<{ v: number | null }>('SELECT MAX(version) AS v FROM model_versions')).rows[0]!.v ?? -1) + 1;
    const path = typeof v.weightsPath === 'function' ? v.weightsPath(next) : v.weightsPath;
    await c.query('INSERT INTO model_versions (version, parent, status, weights_path, created_at, stats, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)', [
      next,
      v.parent,
      v.status,
      path,
      Date.now(),
      v.stats === undefined ? null : json(v.stats),
      v.reason ?? null,
    ]);
    if (v.activate) await activateIn(c, next);
    return next;
  }

  addVersion(v: NewVersion & { activate?: boolean }): Promise<number> {
    return this.tx((c) => this.addVersionIn(c, v));
  }

  async ensureBaseVersion(base: Omit<NewVersion, 'status' | 'parent'>): Promise<void> {
    await this.tx(async (c) => {
      await c.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_NAMESPACE, VERSIONS_LOCK]);
      if ((await c.query('SELECT 1 FROM model_versions LIMIT 1')).rowCount) return;
      await this.addVersionIn(c, { ...base, parent: null, status: 'candidate', activate: true });
    });
  }

  async rejectStaleCandidates(reason = 'interrupted: the server stopped before this candidate was judged'): Promise<number> {
    return (
      (
        await this.q(`UPDATE model_versions SET status = 'rejected', reason = $1, weights_path = NULL, weights_sha256 = NULL WHERE status = 'candidate'`, [
          reason,
        ])
      ).rowCount ?? 0
    );
  }

  activate(version: number): Promise<void> {
    return this.tx((c) => activateIn(c, version));
  }

  async setWeightsSha256(version: number, sha256: string): Promise<void> {
    await this.q('UPDATE model_versions SET weights_sha256 = $1 WHERE version = $2', [sha256, version]);
  }

  async pruneWeights(version: number, reason: string): Promise<void> {
    await this.q(`UPDATE model_versions SET weights_path = NULL, weights_sha256 = NULL, reason = $1 WHERE version = $2 AND status = 'retired'`, [
      reason,
      version,
    ]);
  }

  async markCorrupt(version: number, reason: string): Promise<void> {
    await this.q(`UPDATE model_versions SET status = 'corrupt', reason = $1 WHERE version = $2`, [reason, version]);
  }

  async reject(version: number, reason: string, stats?: unknown): Promise<void> {
    await this.q(
      `UPDATE model_versions SET status = 'rejected', reason = $1, stats = COALESCE($2::jsonb, stats), weights_path = NULL, weights_sha256 = NULL WHERE version = $3`,
      [reason, stats === undefined ? null : json(stats), version],
    );
  }

  async setStats(version: number, stats: unknown): Promise<void> {
    await this.q('UPDATE model_versions SET stats = $1 WHERE version = $2', [json(stats), version]);
  }

  async version(v: number): Promise<VersionRow | undefined> {
    const row = (await this.q<VersionRow>('SELECT * FROM model_versions WHERE version = $1', [v])).rows[0];
    return row && versionOf(row);
  }

  async activeVersion(): Promise<VersionRow | undefined> {
    const row = (await this.q<VersionRow>(`SELECT * FROM model_versions WHERE status = 'active'`)).rows[0];
    return row && versionOf(row);
  }

  async versions(): Promise<VersionRow[]> {
    return (await this.q<VersionRow>('SELECT * FROM model_versions ORDER BY version')).rows.map(versionOf);
  }

  // ---------- meta, events, health ----------

  async getMeta(key: string): Promise<string | undefined> {
    return (await this.q<{ value: string }>('SELECT value FROM meta WHERE key = $1', [key])).rows[0]?.value;
  }

  async setMeta(key: string, value: string, o: { onlyIfAbsent?: boolean } = {}): Promise<string> {
    if (o.onlyIfAbsent) {
      await this.q('INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING', [key, value]);
      return (await this.getMeta(key))!;
    }
    await this.q('INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [key, value]);
    return value;
  }

  databaseId(): Promise<string> {
    return this.setMeta(DATABASE_ID_KEY, randomBytes(8).toString('hex'), { onlyIfAbsent: true });
  }

  async probeWrite(): Promise<void> {
    await this.setMeta('readiness_probe_at', String(Date.now()));
  }

  async event(kind: string, detail: unknown): Promise<void> {
    await this.q('INSERT INTO events (at, kind, detail) VALUES ($1, $2, $3)', [Date.now(), kind, json(detail ?? null)]);
  }

  async events(limit = 100): Promise<EventRow[]> {
    return (await this.q<EventRow>('SELECT id, at, kind, detail FROM events ORDER BY id DESC LIMIT $1', [limit])).rows;
  }

  // ---------- copying a whole store ----------

  async *exportLog(): AsyncGenerator<LoggedQuestion> {
    for (let after = 0; ;) {
      const r = await this.q<Omit<LoggedQuestion, 'prompt_ids' | 'samples'> & { prompt_ids: Buffer | null }>(
        `SELECT id, client_id, connection, question, votes_requested, received_at, answered_at, status, error, answer, majority_ratio, votes, model_version, latency_ms, frontend, sampled_on, sampled_model, label, source, trainable, prompt_ids
         FROM questions WHERE id > $1 ORDER BY id LIMIT 500`,
        [after],
      );
      if (!r.rows.length) return;
      const samples = await this.q<SampleRow & { question_id: number }>(
        'SELECT question_id, text, answer, tokens, logprob_sum, stopped, token_ids, logprobs FROM samples WHERE question_id = ANY($1::bigint[]) ORDER BY question_id, idx',
        [r.rows.map((x) => x.id)],
      );
      const byQuestion = groupBy(samples.rows, (s) => s.question_id);
      for (const x of r.rows)
        yield { ...x, prompt_ids: x.prompt_ids ? unpackInts(x.prompt_ids) : null, samples: (byQuestion.get(x.id) ?? []).map(loggedSampleOf) };
      after = r.rows.at(-1)!.id;
    }
  }

  importLog(rows: LoggedQuestion[]): Promise<number[]> {
    if (!rows.length) return Promise.resolve([]);
    return this.tx(async (c) => {
      const qs = await c.query<{ id: number }>(
        `INSERT INTO questions (client_id, connection, question, votes_requested, received_at, answered_at, status, error, answer, majority_ratio, votes, model_version, latency_ms, frontend, source, trainable, prompt_ids, sampled_on, sampled_model, label)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::float8[], $11::jsonb[], $12::int[], $13::float8[], $14::text[], $15::text[], $16::bool[], $17::bytea[], $18::text[], $19::text[], $20::text[])
         RETURNING id`,
        noNul([
          rows.map((r) => r.client_id),
          rows.map((r) => r.connection),
          rows.map((r) => r.question),
          rows.map((r) => r.votes_requested),
          rows.map((r) => r.received_at),
          rows.map((r) => r.answered_at),
          rows.map((r) => r.status),
          rows.map((r) => r.error),
          rows.map((r) => r.answer),
          rows.map((r) => r.majority_ratio),
          rows.map((r) => (r.votes === null ? null : json(r.votes))),
          rows.map((r) => r.model_version),
          rows.map((r) => r.latency_ms),
          rows.map((r) => r.frontend),
          rows.map((r) => r.source),
          rows.map((r) => r.trainable),
          rows.map((r) => (r.prompt_ids ? packInts(r.prompt_ids) : null)),
          rows.map((r) => r.sampled_on ?? null),
          rows.map((r) => r.sampled_model ?? null),
          rows.map((r) => r.label ?? null),
        ]),
      );
      const ids = qs.rows.map((r) => r.id);
      if (ids.length !== rows.length) throw new Error(`importLog: ${rows.length} questions given, ${ids.length} ids returned`);
      const samples = rows.flatMap((r, i) => r.samples.map((s, k) => ({ id: ids[i]!, k, s })));
      await c.query(
        `INSERT INTO samples (question_id, idx, text, answer, tokens, logprob_sum, stopped, token_ids, logprobs)
         SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::int[], $6::float8[], $7::bool[], $8::bytea[], $9::bytea[])`,
        noNul([
          samples.map((x) => x.id),
          samples.map((x) => x.k),
          samples.map((x) => x.s.text),
          samples.map((x) => x.s.answer),
          samples.map((x) => x.s.tokens),
          samples.map((x) => x.s.logprobSum),
          samples.map((x) => x.s.stopped),
          samples.map((x) => (x.s.tokenIds ? packInts(x.s.tokenIds) : null)),
          samples.map((x) => (x.s.logprobs ? packFloats(x.s.logprobs) : null)),
        ]),
      );
      return ids;
    });
  }

  async importVersions(rows: VersionRow[]): Promise<void> {
    await this.tx(async (c) => {
      await c.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_NAMESPACE, VERSIONS_LOCK]);
      for (const v of [...rows].sort((a, b) => a.version - b.version))
        await c.query(
          'INSERT INTO model_versions (version, parent, status, weights_path, created_at, activated_at, stats, reason, weights_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9)',
          [v.version, v.parent, v.status, v.weights_path, v.created_at, v.activated_at, v.stats == null ? null : json(v.stats), v.reason, v.weights_sha256],
        );
    });
  }

  async exportMeta(): Promise<Map<string, string>> {
    return new Map((await this.q<{ key: string; value: string }>('SELECT key, value FROM meta ORDER BY key')).rows.map((r) => [r.key, r.value]));
  }

  async *exportEvents(): AsyncGenerator<EventRow> {
    for (let after = 0; ;) {
      const r = await this.q<EventRow>('SELECT id, at, kind, detail FROM events WHERE id > $1 ORDER BY id LIMIT 1000', [after]);
      if (!r.rows.length) return;
      yield* r.rows;
      after = r.rows.at(-1)!.id;
    }
  }

  async importEvents(rows: Omit<EventRow, 'id'>[]): Promise<void> {
    if (!rows.length) return;
    await this.q('INSERT INTO events (at, kind, detail) SELECT * FROM unnest($1::bigint[], $2::text[], $3::jsonb[])', [
      rows.map((e) => e.at),
      rows.map((e) => e.kind),
      rows.map((e) => json(e.detail ?? null)),
    ]);
  }

  private closing: Promise<void> | null = null;

  close(): Promise<void> {
    return (this.closing ??= (async () => {
      await bounded(this.fleet.close());
      // pool.end() waits for every client checked out: one stuck on a database that went away
      // must not hold the process's shutdown for ever.
      await bounded(this.pool.end());
    })());
  }
}

async function activateIn(c: pg.PoolClient, version: number): Promise<void> {
  // Under the versions lock: two activations at once would each retire the old active row and
  // both set theirs, and the second would fail on the one-active index.
  await c.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_NAMESPACE, VERSIONS_LOCK]);
  if (!(await c.query('SELECT 1 FROM model_versions WHERE version = $1', [version])).rowCount) throw new Error(`no model version ${version}`);
  await c.query(`UPDATE model_versions SET status = 'retired' WHERE status = 'active'`);
  await c.query(`UPDATE model_versions SET status = 'active', activated_at = $1, reason = NULL WHERE version = $2`, [Date.now(), version]);
}

/**
 * PostgreSQL's text cannot hold U+0000, nor its JSONB the escape \u0000; a sample the model
 * drew (byte-level tokenizers can draw a 0 byte) or a question a tokenizer accepted may hold
 * one, and would fail its whole batch's write. Here it is stored as U+FFFD (SQLite keeps it).
 */
const NUL = /\u0000/g;
const cleanText = (v: unknown): unknown =>
  typeof v === 'string' ? (v.includes('\u0000') ? v.replace(NUL, '\ufffd') : v) : Array.isArray(v) ? v.map(cleanText) : v;
/** Query parameters with U+0000 in strings (and arrays of strings) replaced. */
const noNul = (values: unknown[]): unknown[] => values.map(cleanText);
/** JSON for a JSONB column: an escaped U+0000 (an even run of backslashes before it: not itself escaped) as U+FFFD. */
const json = (v: unknown): string => (JSON.stringify(v) ?? 'null').replace(/(?<!\\)((?:\\\\)*)\\u0000/g, '$1\\ufffd');

/** A model_versions row as node-postgres gives it: stats is JSONB, parsed already (a JSON string stays a string). */
const versionOf = (r: VersionRow): VersionRow => r;

function groupBy<T>(rows: T[], key: (r: T) => number): Map<number, T[]> {
  const out = new Map<number, T[]>();
  for (const r of rows) {
    const list = out.get(key(r));
    if (list) list.push(r);
    else out.set(key(r), [r]);
  }
  return out;
}

/** A cursor of this store ("tx:id"; "" or "0": the start). Another form is refused: read as the start, it would train on the whole log again. */
function parseCursor(c: ExperienceCursor): [number, number] {
  if (c === '' || c === '0') return [0, 0];
  const m = /^(\d+):(\d+)$/.exec(c);
  if (!m) throw new Error(`${JSON.stringify(c)} is not an experience cursor of a PostgreSQL store (tx:id)`);
  return [Number(m[1]), Number(m[2])];
}

/**
 * The coordination session: one connection of its own, which holds the leader lock (a
 * session lock: released by PostgreSQL when the session ends, however the process died) and
 * listens for version notices. When the connection drops, leadership is gone with it; the
 * session reconnects on the next call, and listeners are told to re-read (version null).
 */
export class PostgresFleet implements FleetCoordination {
  private client: pg.Client | null = null;
  private connecting: Promise<pg.Client> | null = null;
  private held = false;
  private trying: Promise<boolean> | null = null;
  private closed = false;
  private listeners: ((version: number | null) => void)[] = [];
  private heartbeatPool: pg.Pool | null = null;

  constructor(private readonly url: string) {}

  get leading(): boolean {
    return this.held;
  }

  private session(): Promise<pg.Client> {
    if (this.closed) return Promise.reject(new Error('the store is closed'));
    if (this.client) return Promise.resolve(this.client);
    return (this.connecting ??= (async () => {
      const c = new pg.Client({ connectionString: this.url, types, connectionTimeoutMillis: 5000, keepAlive: true });
      const lost = () => {
        if (this.client !== c) return;
        this.client = null;
        this.held = false;
        // Notices may have been missed meanwhile: every listener re-reads the serving version.
        this.tell(null);
      };
      c.on('error', lost);
      c.on('end', lost);
      c.on('notification', (n) => {
        if (n.channel !== VERSION_CHANNEL) return;
        const v = Number(n.payload);
        this.tell(Number.isInteger(v) ? v : null);
      });
      try {
        await c.connect();
        await c.query(`LISTEN ${VERSION_CHANNEL}`);
        // Closed meanwhile: this session must not outlive the store (it would hold the process open).
        if (this.closed) throw new Error('the store is closed');
      } catch (e) {
        await c.end().catch(() => undefined);
        throw e;
      }
      this.client = c;
      return c;
    })().finally(() => (this.connecting = null)));
  }

  /** Each listener hears of a version change; one that throws must not stop the others, nor the process. */
  private tell(version: number | null): void {
    for (const f of this.listeners) {
      try {
        f(version);
      } catch {
        // A listener's own failure is its own: the next notice or poll tries again.
      }
    }
  }

  tryLead(): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    if (this.held) return Promise.resolve(true);
    // One try at a time: a session's advisory locks stack, so two tries at once would take the
    // lock twice, and release() (one unlock) would leave it held.
    return (this.trying ??= (async () => {
      const c = await this.session();
      this.held = (await c.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1, $2) AS ok', [LOCK_NAMESPACE, LEADER_LOCK])).rows[0]!.ok;
      return this.held;
    })().finally(() => (this.trying = null)));
  }

  /** Keeps the session (and its LISTEN) up; call it now and then. Throws while the database is unreachable. */
  async connect(): Promise<void> {
    await this.session();
  }

  async release(): Promise<void> {
    if (!this.held || !this.client) return;
    this.held = false;
    await this.client.query('SELECT pg_advisory_unlock($1, $2)', [LOCK_NAMESPACE, LEADER_LOCK]).catch(() => undefined);
  }

  async announceVersion(version: number): Promise<void> {
    const c = await this.session();
    await c.query('SELECT pg_notify($1, $2)', [VERSION_CHANNEL, String(version)]);
  }

  onVersion(f: (version: number | null) => void): void {
    this.listeners.push(f);
  }

  private pool(): pg.Pool {
    if (!this.heartbeatPool) {
      this.heartbeatPool = new pg.Pool({ connectionString: this.url, max: 1, types, connectionTimeoutMillis: 5000 });
      this.heartbeatPool.on('error', () => undefined);
    }
    return this.heartbeatPool;
  }

  async heartbeat(f: Omit<FrontendRow, 'last_seen' | 'started_at'> & { started_at: number }): Promise<void> {
    await this.pool().query(
      `INSERT INTO frontends (id, address, started_at, last_seen, serving_version, leader) VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (id) DO UPDATE SET address = excluded.address, last_seen = excluded.last_seen, serving_version = excluded.serving_version, leader = excluded.leader`,
      [f.id, f.address, f.started_at, Date.now(), f.serving_version, f.leader],
    );
  }

  async frontends(withinMs: number): Promise<FrontendRow[]> {
    return (await this.pool().query<FrontendRow>('SELECT * FROM frontends WHERE last_seen >= $1 ORDER BY id', [Date.now() - withinMs])).rows;
  }

  async close(): Promise<void> {
    this.closed = true;
    const c = this.client;
    this.client = null;
    this.held = false;
    await bounded(c?.end() ?? Promise.resolve());
    await bounded(this.heartbeatPool?.end() ?? Promise.resolve());
  }
}

/** How long closing waits for the database before it lets go. */
const CLOSE_TIMEOUT_MS = 5000;

/** Waits for p, at most CLOSE_TIMEOUT_MS; its failure is not the caller's (it is closing). */
async function bounded(p: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p.catch(() => undefined), new Promise((r) => (timer = setTimeout(r, CLOSE_TIMEOUT_MS)))]);
  clearTimeout(timer);
}
