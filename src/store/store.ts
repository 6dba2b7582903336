// The store seam: what the serving loop, replay, export and the CLI need of the experience
// log, as one asynchronous interface with two implementations. SQLite (sqlite.ts) is the
// embedded default: one process, one file, no server to install. PostgreSQL (postgres.ts)
// is for several front-ends sharing one log and one version lineage (docs/scale.md); it also
// brings what only a shared server can give: a leader lock and version-change notices
// (FleetCoordination). openStore() picks one by the location's form.

export interface SampleRecord {
  text: string;
  answer: string | null;
  tokens: number;
  logprobSum: number;
  stopped: boolean;
}

/** A sample as training needs it: the exact token ids drawn and their log-probs. */
export interface TrainableSample extends SampleRecord {
  tokenIds: number[];
  logprobs: number[];
}

export interface QuestionMeta {
  clientId: string | null;
  connection: string | null;
  question: string;
  /** The question's known answer, as the client sent it (a labelled replay), for measurement only. Null or absent: none. */
  label?: string | null;
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
  /** Who asked, for the update share (an API key's id, a connection, an address). */
  source: string | null;
  /** Sampled as the server samples: an update may train on it (its samples carry token ids). */
  trainable: boolean;
  /** The prompt's token ids (the task's encoding of the question). */
  promptIds: number[];
  samples: TrainableSample[];
  /**
   * Where the samples were drawn when an upstream inference server drew them: its base URL
   * (several, comma-separated, when the votes went to more than one). Null or absent: in this process.
   */
  sampledOn?: string | null;
  /** The model or LoRA adapter name the upstream was asked for (e.g. `ttrl-v3`). Null or absent: in this process. */
  sampledModel?: string | null;
}

/** An answered, trainable question as the leader reads it back to train on (the fleet's experiences). */
export interface StoredExperience {
  id: number;
  question: string;
  source: string | null;
  frontend: string | null;
  answeredAt: number;
  latencyMs: number;
  modelVersion: number;
  answer: string | null;
  majorityRatio: number;
  votes: Record<string, number>;
  promptIds: number[];
  samples: TrainableSample[];
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
  /** The front-end that answered (null: a single-process server's own log, or rows from before the fleet). */
  frontend: string | null;
  /** The upstream base URL(s) the samples were drawn on, comma-separated (null: in-process, a failed question, or rows from before upstreams). */
  sampled_on: string | null;
  /** The model or LoRA adapter name the upstream was asked for (null where sampled_on is). */
  sampled_model: string | null;
  /** The question's known answer as the client sent it (null: none sent, or rows from before labels). Never trained on. */
  label: string | null;
}

export interface NewVersion {
  parent: number | null;
  status: VersionStatus;
  /** Where its weights go; may depend on the number given (null: weights not kept). */
  weightsPath: string | null | ((version: number) => string);
  stats?: unknown;
  reason?: string;
}

export interface FrontendRow {
  id: string;
  address: string;
  started_at: number;
  last_seen: number;
  serving_version: number;
  leader: boolean;
}

export interface StoreCounts {
  answered: number;
  failed: number;
  samples: number;
}

export const DATABASE_ID_KEY = 'database_id';

/** A sample as stored, token ids and log-probs included where they were kept (null: not kept). */
export interface LoggedSample extends SampleRecord {
  tokenIds: number[] | null;
  logprobs: number[] | null;
}

/** A question as stored, everything included: what `ttrl copy` carries from one store to another. */
export interface LoggedQuestion extends QuestionRow {
  source: string | null;
  trainable: boolean;
  /** The prompt's token ids where they were kept (null: not kept). */
  prompt_ids: number[] | null;
  samples: LoggedSample[];
}

export interface EventRow {
  id: number;
  at: number;
  kind: string;
  detail: unknown;
}

/** Where the leader has read the log to (opaque: each store has its own form). */
export type ExperienceCursor = string;

export interface Store {
  readonly kind: 'sqlite' | 'postgres';
  /** Where it is, safe to log (a URL's password hidden). */
  readonly location: string;

  // ---------- the log ----------
  /** How often each question was asked before (answered or failed), across every front-end. */
  askCounts(questions: string[]): Promise<Map<string, number>>;
  /** A batch's answers in one transaction (before any answer of the batch is sent); their ids, in order. */
  recordAnswered(batch: AnsweredRecord[], frontend?: string | null): Promise<number[]>;
  recordFailed(batch: (QuestionMeta & { error: string })[], frontend?: string | null): Promise<void>;
  /**
   * Answered, trainable questions stored with their token ids, after `cursor` in commit
   * order (at most `limit`), and the cursor past them. No question is skipped while another
   * front-end's transaction is still open: the cursor only moves past committed ones.
   */
  experiencesAfter(cursor: ExperienceCursor, limit: number): Promise<{ experiences: StoredExperience[]; cursor: ExperienceCursor }>;
  /** The cursor at the end of the log now: experiences from here on are new. */
  experienceCursorNow(): Promise<ExperienceCursor>;
  /** Questions in arrival order, optionally within [since, until) in epoch ms. */
  questions(o?: { since?: number; until?: number; status?: 'answered' | 'failed' }): AsyncIterable<QuestionRow>;
  samplesOf(questionId: number): Promise<SampleRecord[]>;
  counts(): Promise<StoreCounts>;

  // ---------- model versions ----------
  /** Adds the next version number (numbered once across the fleet); with `activate`, it serves at once. */
  addVersion(v: NewVersion & { activate?: boolean }): Promise<number>;
  /** On an empty lineage, adds `base` as version 0, active: once, however many front-ends start together. */
  ensureBaseVersion(base: Omit<NewVersion, 'status' | 'parent'>): Promise<void>;
  /** Candidates left unjudged (a crash, a leader that died): marked rejected, the reason says so. */
  rejectStaleCandidates(reason?: string): Promise<number>;
  /** Makes `version` the one serving version; the previous one is retired. */
  activate(version: number): Promise<void>;
  setWeightsSha256(version: number, sha256: string): Promise<void>;
  pruneWeights(version: number, reason: string): Promise<void>;
  markCorrupt(version: number, reason: string): Promise<void>;
  reject(version: number, reason: string, stats?: unknown): Promise<void>;
  setStats(version: number, stats: unknown): Promise<void>;
  version(v: number): Promise<VersionRow | undefined>;
  activeVersion(): Promise<VersionRow | undefined>;
  versions(): Promise<VersionRow[]>;

  // ---------- meta, events, health ----------
  getMeta(key: string): Promise<string | undefined>;
  /** Sets a key; with `onlyIfAbsent`, keeps an existing value and returns the value that stands. */
  setMeta(key: string, value: string, o?: { onlyIfAbsent?: boolean }): Promise<string>;
  /** This database's random id, made on first use (version files carry it). */
  databaseId(): Promise<string>;
  /** A small real write; throws while writes fail (readiness). */
  probeWrite(): Promise<void>;
  event(kind: string, detail: unknown): Promise<void>;
  /** The newest `limit` events, newest first. */
  events(limit?: number): Promise<EventRow[]>;

  // ---------- copying a whole store (ttrl copy) ----------
  /** Every question as stored, with its samples, in id order (read in pages). */
  exportLog(): AsyncIterable<LoggedQuestion>;
  /** Appends questions as they were stored (given new ids, in order), in one transaction; their new ids. */
  importLog(rows: LoggedQuestion[]): Promise<number[]>;
  /** Writes version rows exactly as given (numbers, status, times, sha256), in one transaction; parents first. */
  importVersions(rows: VersionRow[]): Promise<void>;
  /** Every meta row. */
  exportMeta(): Promise<Map<string, string>>;
  /** Every event, oldest first (read in pages). */
  exportEvents(): AsyncIterable<EventRow>;
  /** Appends events as they were (their times kept, given new ids, in order). */
  importEvents(rows: Omit<EventRow, 'id'>[]): Promise<void>;

  /** The fleet's shared state: PostgreSQL only (SQLite serves one process). */
  readonly fleet?: FleetCoordination;

  close(): Promise<void>;
}

/** What several front-ends on one database coordinate through. */
export interface FleetCoordination {
  /** Opens the coordination session if it dropped (its LISTEN with it); throws while the database is unreachable. */
  connect(): Promise<void>;
  /** Takes the leader lock if free (held until release() or this process's session ends); true when held. */
  tryLead(): Promise<boolean>;
  /** Whether this process holds the lock now (false once its session to the database was lost). */
  readonly leading: boolean;
  release(): Promise<void>;
  /** Tells every front-end that the serving version changed (LISTEN/NOTIFY). */
  announceVersion(version: number): Promise<void>;
  /** Calls f with the version each time one is announced (and after a reconnect, with no version: re-read). */
  onVersion(f: (version: number | null) => void): void;
  /** Records this front-end as alive (every few seconds): what it serves, whether it leads. */
  heartbeat(f: Omit<FrontendRow, 'last_seen' | 'started_at'> & { started_at: number }): Promise<void>;
  /** The front-ends seen within `withinMs`. */
  frontends(withinMs: number): Promise<FrontendRow[]>;
}

/** Little-endian int32 / float32 arrays as bytes, for token ids and log-probs. */
export const packInts = (xs: number[]) => Buffer.from(Int32Array.from(xs).buffer);
export const packFloats = (xs: number[]) => Buffer.from(Float32Array.from(xs).buffer);
export const unpackInts = (b: Uint8Array | null): number[] => (b ? [...new Int32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength))] : []);
export const unpackFloats = (b: Uint8Array | null): number[] => (b ? [...new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength))] : []);
