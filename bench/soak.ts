// Soak benchmark (issue 13): the real server as a child process (`node bin/ttrl.js serve`) on
// the shipped model with adaptation on, a fresh temporary database, C WebSocket clients for
// M minutes, each keeping K questions in flight (arithmetic chains: a share repeated from a
// shared pool, the rest fresh), retrying `overloaded` with jittered exponential backoff.
// The server's RSS is read from /proc every second (VmRSS; VmHWM for the kernel's peak).
//
// At the end the clients stop asking and wait for every answer, disconnect, and the server
// is stopped with SIGTERM (graceful: it must exit 0). Then the database is opened and
// checked: every answer a client received is a row of `questions` with status 'answered',
// matched by (connection id from the hello, client id), exactly once, with the same answer
// and model version; no answered row of the soak's connections went unreceived; PRAGMA
// integrity_check says ok; every kept version file matches its recorded sha256; no
// unfinished-write temp file is left in the versions folder.
//
// --frontends N (N > 1): N servers (child processes, `--frontend-id fe-1..fe-N`, each with
// --threads 1 --train-threads 1 unless --set says otherwise) on one PostgreSQL database the
// soak starts itself (fsync on; test/helpers/postgres.ts) and one versions folder, client i
// on front-end i mod N; the load starts once a leader is elected. When the clients are done,
// adaptation is paused on every front-end (POST /admin/adaptation/pause), the update in
// flight finishes, and every front-end must serve the database's active version (/readyz
// model_version) before SIGTERM goes to all of them. The checks above then run against the
// shared database, rows matched by (front-end, connection, client id), pg_amcheck (heap and
// B-tree indexes) in place of integrity_check; and one version lineage: versions numbered
// 0..k once, exactly one active. Memory is read per front-end (the report's rss_mb, threads
// and fds are the front-ends' sums; `fleet.frontends` has each one's own, and its answers).
//
// The soak FAILS (exit 1) on any error code but `overloaded`, a lost connection, an ask
// left without a reply, a missing/duplicate/mismatched/unreceived row, a failed
// integrity_check or file check, or an unclean server exit; with --frontends N > 1 also on
// a broken lineage or a front-end that does not serve the active version at the end.
//
//   npm run bench:soak -- [--minutes 10] [--clients 16] [--in-flight 4] [--seed 0] [--repeat 0.5]
//                         [--set key=value ...] [--json] [--out FILE] [--keep] [--frontends 1]
//   --set takes server settings by name (updateEvery=32, lora-rank=16, adapt=false), as `ttrl serve` flags.
import Database from 'better-sqlite3';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import WebSocket from 'ws';
import { flagName, SETTINGS } from '../src/config/settings.ts';
import { drawFrom, type Mixture } from '../src/tasks/suites.ts';
import { Rng, seedOf } from '../src/util/rng.ts';
import { quantile } from '../src/util/stats.ts';
import { readyz, sql, startBenchPostgres, waitForLeader, type BenchPostgres } from './fleet-db.ts';

const o = new Command()
  .option('--minutes <m>', 'how long the clients ask', '10')
  .option('--clients <n>', 'concurrent WebSocket clients (connections)', '16')
  .option('--in-flight <k>', 'questions each client keeps in flight', '4')
  .option('--seed <s>', 'seed of the questions, the backoff jitter and the server (--seed)', '0')
  .option('--repeat <p>', 'share of asks drawn from a shared pool of 512 questions (the rest are new)', '0.5')
  .option('--set <k=v...>', 'other server settings, e.g. --set updateEvery=32 (repeatable)')
  .option('--drain-timeout <s>', 'seconds the clients wait for their last answers once asking stops', '180')
  .option('--json', 'print only the JSON line on stdout')
  .option('--out <file>', 'also write the JSON result to this file')
  .option('--keep', 'keep the temporary database, versions and server log')
  .option('--frontends <n>', 'servers on one PostgreSQL database the soak starts (1: one server on SQLite)', '1')
  .parse()
  .opts<{
    minutes: string;
    clients: string;
    inFlight: string;
    seed: string;
    repeat: string;
    set?: string[];
    drainTimeout: string;
    json?: boolean;
    out?: string;
    keep?: boolean;
    frontends: string;
  }>();

const log = (...a: unknown[]) => console.error(`[soak ${new Date().toISOString().slice(11, 19)}]`, ...a);
const MINUTES = Number(o.minutes);
const C = Number(o.clients);
const K = Number(o.inFlight);
const SEED = Number(o.seed);
const REPEAT = Number(o.repeat);
const F = Number(o.frontends);
for (const [name, v, ok] of [
  ['--minutes', MINUTES, MINUTES > 0],
  ['--clients', C, Number.isInteger(C) && C > 0],
  ['--in-flight', K, Number.isInteger(K) && K > 0],
  ['--seed', SEED, Number.isInteger(SEED) && SEED >= 0],
  ['--repeat', REPEAT, REPEAT >= 0 && REPEAT <= 1],
  ['--frontends', F, Number.isInteger(F) && F > 0 && F <= C],
] as const)
  if (!ok) throw new Error(`${name}: bad value ${v}`);

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const ADMIN_TOKEN = 'soak-admin-token';

/** --set key=value as `ttrl serve` flags; the soak owns port, db, seed and the admin token (and in a fleet the versions folder and front-end ids). */
function serverFlags(sets: string[]): { flags: string[]; settings: Record<string, string>; apiKey?: string } {
  const settings: Record<string, string> = {};
  const flags: string[] = [];
  let apiKey: string | undefined;
  for (const kv of sets) {
    const eq = kv.indexOf('=');
    if (eq < 1) throw new Error(`--set ${kv}: expected KEY=VALUE`);
    const raw = kv.slice(0, eq).replace(/^--/, '');
    const value = kv.slice(eq + 1);
    const key = raw.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase()); // kebab or camel
    const name = key === 'apiKey' ? 'apiKeys' : key;
    if (!(name in SETTINGS)) throw new Error(`--set ${kv}: no server setting ${JSON.stringify(raw)}; one of ${Object.keys(SETTINGS).join(', ')}`);
    if (['port', 'db', 'adminToken', 'seed', ...(F > 1 ? ['versionsDir', 'frontendId'] : [])].includes(name))
      throw new Error(`--set ${kv}: the soak sets ${name} itself${name === 'seed' ? ' (use --seed)' : ''}`);
    settings[name] = value;
    if (name === 'adapt') {
      if (['false', '0', 'no', 'off'].includes(value)) flags.push('--no-adapt');
    } else if (name === 'apiKeys') {
      for (const k of value.split(',').filter(Boolean)) (flags.push('--api-key', k), (apiKey ??= k));
    } else flags.push(flagName(name), value);
  }
  // A fleet on this machine's cores: one sampler and one trainer thread per front-end, as bench/serve.ts.
  if (F > 1) for (const name of ['threads', 'trainThreads'] as const) if (!(name in settings)) flags.push(flagName(name), '1');
  return { flags, settings, apiKey };
}

// ---------- the server's memory, from /proc ----------

interface ProcSample {
  rssKb: number;
  hwmKb: number;
  threads: number;
  fds: number;
}

/** The process's VmRSS, VmHWM and threads, plus those of any child processes (the server uses worker threads, so normally none). */
function readProc(pid: number): ProcSample | null {
  const one = (p: number): ProcSample | null => {
    try {
      const s = readFileSync(`/proc/${p}/status`, 'utf8');
      const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s)?.[1] ?? 0);
      let fds = 0;
      try {
        fds = readdirSync(`/proc/${p}/fd`).length;
      } catch {}
      return { rssKb: kb('VmRSS'), hwmKb: kb('VmHWM'), threads: kb('Threads'), fds };
    } catch {
      return null;
    }
  };
  const children = (p: number): number[] => {
    try {
      return readdirSync(`/proc/${p}/task`).flatMap((t) =>
        readFileSync(`/proc/${p}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number),
      );
    } catch {
      return [];
    }
  };
  const me = one(pid);
  if (!me) return null;
  for (const c of children(pid)) {
    const s = readProc(c);
    if (s) ((me.rssKb += s.rssKb), (me.hwmKb += s.hwmKb), (me.threads += s.threads), (me.fds += s.fds));
  }
  return me;
}
const mb = (kb: number) => Math.round(kb / 1024);

// ---------- the server ----------

interface Child {
  proc: ChildProcess;
  url: string;
  wsUrl: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  logTail: () => string;
  versionsServed: number[];
}

async function startChild(db: string, logFile: string, flags: string[]): Promise<Child> {
  const args = [join(ROOT, 'bin/ttrl.js'), 'serve', '--port', '0', '--db', db, '--seed', String(SEED), '--admin-token', ADMIN_TOKEN, ...flags];
  log(`starting: node ${args.map((a) => (a.startsWith(ROOT) ? a.slice(ROOT.length) : a)).join(' ')}`);
  const proc = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  const out = createWriteStream(logFile);
  const tail: string[] = [];
  const versionsServed: number[] = [];
  let buf = '';
  let onLine: ((line: string) => void) | null = null;
  proc.stderr!.on('data', (d: Buffer) => {
    out.write(d);
    buf += d.toString('utf8');
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      tail.push(line);
      if (tail.length > 40) tail.shift();
      const v = /model version (\d+) is serving/.exec(line);
      if (v) versionsServed.push(Number(v[1]));
      onLine?.(line);
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) =>
    proc.once('exit', (code, signal) => (out.end(), res({ code, signal }))),
  );
  const logTail = () => tail.join('\n');
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not start within 180 s; its log:\n${logTail()}`)), 180_000);
    onLine = (line) => {
      const m = / at (http:\/\/\S+)/.exec(line);
      if (m && line.includes('serving ')) (clearTimeout(timer), resolve(m[1]!));
    };
    void exited.then((e) => (clearTimeout(timer), reject(new Error(`the server exited (${e.code ?? e.signal}) before it was ready; its log:\n${logTail()}`))));
  });
  onLine = null;
  for (let i = 0; ; i++) {
    const r = await fetch(`${url}/readyz`).catch(() => null);
    if (r?.status === 200) break;
    if (i > 300) throw new Error(`/readyz did not answer 200 (last: ${r?.status})`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { proc, url, wsUrl: url.replace(/^http/, 'ws') + '/v1/ws', exited, logTail, versionsServed };
}

// ---------- the questions ----------

const twoDigit = (operands: number) => ({ operands, min: 0, max: 99 });
/** What the soak asks: mostly the 4-operand chains the model adapts on, with the 2- and 3-operand ones it knows. */
const MIX: Mixture = [
  { shape: twoDigit(2), weight: 0.25 },
  { shape: twoDigit(3), weight: 0.25 },
  { shape: twoDigit(4), weight: 0.5 },
];
const POOL = (() => {
  const rng = new Rng(seedOf('soak-pool', SEED));
  return Array.from({ length: 512 }, () => drawFrom(MIX, rng).question);
})();

// ---------- the clients ----------

interface Received {
  /** The front-end the client is connected to (a fleet's id; 'server' for one server). */
  frontend: string;
  connection: string;
  clientId: string;
  question: string;
  answer: string | null;
  version: number;
  latencyMs: number; // send to answer, the attempt that was answered
  totalMs: number; // first send to answer, overloaded retries and their backoff included
  at: number; // ms since the load started
}

const errors: Record<string, number> = {};
const failures: string[] = [];
const fail = (why: string) => {
  if (failures.length < 50) failures.push(why);
  log(`FAIL: ${why}`);
};
const countError = (code: string, message: string) => {
  errors[code] = (errors[code] ?? 0) + 1;
  if (code !== 'overloaded' && (errors[code] ?? 0) <= 3) fail(`error ${code}: ${message}`);
};
const received: Received[] = [];
let stopAsking = false;
let t0 = 0;
let abandoned = 0; // overloaded, and asking had stopped before the retry
let unanswered = 0; // no reply by the drain deadline

class Client {
  ws!: WebSocket;
  connection = '';
  answered = 0;
  modelMessages = 0;
  private pending = new Map<string, (m: Record<string, unknown>) => void>();
  private next = 0;
  private rng: Rng;
  closedByUs = false;
  lost = false;

  constructor(
    readonly index: number,
    private url: string,
    private apiKey: string | undefined,
    readonly frontend: string,
  ) {
    this.rng = new Rng(seedOf('soak-client', SEED, index));
  }

  async open(): Promise<void> {
    this.ws = new WebSocket(this.url, this.apiKey ? { headers: { Authorization: `Bearer ${this.apiKey}` } } : {});
    const hello = new Promise<Record<string, unknown>>((resolve, reject) => {
      this.ws.once('error', reject);
      this.ws.once('unexpected-response', (_req, res) => reject(new Error(`client ${this.index}: upgrade refused with HTTP ${res.statusCode}`)));
      this.ws.on('message', (d) => {
        let m: Record<string, unknown>;
        try {
          m = JSON.parse(String(d));
        } catch {
          return fail(`client ${this.index}: a message that is not JSON: ${String(d).slice(0, 200)}`);
        }
        if (m.type === 'hello') return resolve(m);
        if (m.type === 'model') return void this.modelMessages++;
        const id = typeof m.id === 'string' ? m.id : undefined;
        const waiter = id === undefined ? undefined : this.pending.get(id);
        if (waiter) {
          this.pending.delete(id!);
          return waiter(m);
        }
        if (m.type === 'error') return countError(String(m.code), `client ${this.index} (no ask waiting${id ? ` for id ${id}` : ''}): ${m.message}`);
        fail(`client ${this.index}: unexpected message ${JSON.stringify(m).slice(0, 200)}`);
      });
    });
    const h = await hello;
    this.connection = String(h.connection);
    this.ws.on('error', (e) => fail(`client ${this.index} (${this.connection}): socket error ${e.message}`));
    this.ws.on('close', (code, reason) => {
      if (this.closedByUs) return;
      this.lost = true;
      fail(`client ${this.index} (${this.connection}): connection closed by the server (${code} ${reason})`);
      for (const [, w] of this.pending) w({ type: 'error', code: 'connection_lost', message: `closed ${code}` });
      this.pending.clear();
    });
  }

  private question(): string {
    return this.rng.next() < REPEAT ? POOL[Math.floor(this.rng.next() * POOL.length)]! : drawFrom(MIX, this.rng).question;
  }

  private send(id: string, question: string): Promise<Record<string, unknown>> {
    return new Promise((resolve) => {
      if (this.lost || this.ws.readyState !== WebSocket.OPEN) return resolve({ type: 'error', code: 'connection_lost', message: 'not open' });
      this.pending.set(id, resolve);
      this.ws.send(JSON.stringify({ type: 'ask', id, question }));
    });
  }

  /** One slot: ask, wait, ask again, until asking stops; `overloaded` is retried with backoff under the same id. */
  async slot(): Promise<void> {
    while (!stopAsking && !this.lost) {
      const id = `q${this.next++}`;
      const question = this.question();
      const first = performance.now();
      for (let attempt = 0; ; attempt++) {
        const sent = performance.now();
        const m = await this.send(id, question);
        if (m.type === 'answer') {
          const got = performance.now();
          this.answered++;
          received.push({
            frontend: this.frontend,
            connection: this.connection,
            clientId: id,
            question,
            answer: (m.answer ?? null) as string | null,
            version: Number(m.model_version),
            latencyMs: got - sent,
            totalMs: got - first,
            at: got - t0,
          });
          break;
        }
        if (m.type === 'error' && m.code === 'no_reply') return void unanswered++;
        countError(String(m.code ?? m.type), `client ${this.index} (${this.connection}) id ${id}: ${String(m.message ?? JSON.stringify(m)).slice(0, 300)}`);
        if (m.code !== 'overloaded') return; // anything else fails the soak; this slot stops
        if (stopAsking) return void abandoned++;
        const backoff = Math.min(2000, 25 * 2 ** Math.min(attempt, 7)) * (0.5 + this.rng.next());
        await new Promise((r) => setTimeout(r, backoff));
      }
    }
  }

  /** At the drain deadline: every ask still waiting ends as no_reply. */
  giveUp(): void {
    for (const [, w] of this.pending) w({ type: 'error', code: 'no_reply' });
    this.pending.clear();
  }

  async close(): Promise<void> {
    this.closedByUs = true;
    if (this.ws.readyState === WebSocket.CLOSED) return;
    await new Promise<void>((r) => {
      const t = setTimeout(() => (this.ws.terminate(), r()), 5000);
      this.ws.once('close', () => (clearTimeout(t), r()));
      this.ws.close(1000, 'soak done');
    });
  }
}

// ---------- the database, afterwards ----------

interface Row {
  frontend: string | null;
  connection: string;
  client_id: string;
  status: string;
  error: string | null;
  answer: string | null;
  model_version: number | null;
}

/** Every answer a client received against the rows of the soak's connections: missing, duplicate, mismatched, unreceived. */
function compareReceived(rows: Row[], keyOf: (r: { frontend: string | null; connection: string }, clientId: string) => string) {
  const answered = new Map<string, Row[]>();
  const failedByError: Record<string, number> = {};
  for (const r of rows) {
    if (r.status !== 'answered') {
      const e = (r.error ?? '').split(':')[0]!;
      failedByError[e] = (failedByError[e] ?? 0) + 1;
      continue;
    }
    const k = keyOf(r, r.client_id);
    answered.set(k, [...(answered.get(k) ?? []), r]);
  }
  let missing = 0;
  let duplicates = 0;
  let mismatched = 0;
  const seen = new Set<string>();
  for (const g of received) {
    const k = keyOf(g, g.clientId);
    seen.add(k);
    const rs = answered.get(k) ?? [];
    if (!rs.length) {
      if (missing++ < 3) fail(`answer of ${g.connection}/${g.clientId} (${g.question}) is not in the database`);
    } else if (rs.length > 1) {
      if (duplicates++ < 3) fail(`answer of ${g.connection}/${g.clientId} is in the database ${rs.length} times`);
    } else if (rs[0]!.answer !== g.answer || rs[0]!.model_version !== g.version) {
      if (mismatched++ < 3)
        fail(
          `${g.connection}/${g.clientId}: the client got ${JSON.stringify(g.answer)} (v${g.version}), the database has ${JSON.stringify(rs[0]!.answer)} (v${rs[0]!.model_version})`,
        );
    }
  }
  const unreceived = [...answered.keys()].filter((k) => !seen.has(k)).length;
  if (unreceived) fail(`${unreceived} questions answered in the database on the soak's connections never reached their client`);
  return { missing, duplicates, mismatched, unreceived, failedRows: failedByError };
}

interface VersionRecord {
  version: number;
  status: string;
  weights_path: string | null;
  weights_sha256: string | null;
  stats: Record<string, number> | null;
}

/** Every kept version file must still match the sha256 recorded when it was written; and the mean update time. */
function checkVersionFiles(versions: VersionRecord[]) {
  let filesChecked = 0;
  const badFiles: string[] = [];
  for (const v of versions) {
    if (!v.weights_path || v.version === 0 || v.status === 'rejected') continue;
    filesChecked++;
    if (!existsSync(v.weights_path)) badFiles.push(`v${v.version}: ${v.weights_path} is missing`);
    else if (!v.weights_sha256) badFiles.push(`v${v.version}: no sha256 recorded`);
    else if (createHash('sha256').update(readFileSync(v.weights_path)).digest('hex') !== v.weights_sha256)
      badFiles.push(`v${v.version}: ${v.weights_path} does not match its sha256`);
  }
  for (const b of badFiles) fail(`version file: ${b}`);
  const byStatus: Record<string, number> = {};
  for (const v of versions) if (v.version > 0) byStatus[v.status] = (byStatus[v.status] ?? 0) + 1;
  const stats = versions.filter((v) => v.version > 0 && v.stats).map((v) => v.stats!);
  const meanSeconds = stats.length ? +(stats.reduce((a, s) => a + (s.seconds ?? 0), 0) / stats.length).toFixed(1) : null;
  return {
    versionsByStatus: byStatus,
    finalVersion: versions.find((v) => v.status === 'active')?.version ?? null,
    meanUpdateSeconds: meanSeconds,
    filesChecked,
    badFiles: badFiles.length,
  };
}

function checkDatabase(db: string, clients: Client[]) {
  const d = new Database(db, { readonly: true, fileMustExist: true });
  try {
    const integrity = (d.pragma('integrity_check') as { integrity_check: string }[]).map((r) => r.integrity_check);
    const conns = clients.map((c) => c.connection);
    const ph = conns.map(() => '?').join(',');
    const rows = d
      .prepare(`SELECT frontend, connection, client_id, status, error, answer, model_version FROM questions WHERE connection IN (${ph})`)
      .all(...conns) as Row[];
    const compared = compareReceived(rows, (r, id) => `${r.connection}\u0000${id}`);
    const eventCounts = Object.fromEntries(
      (d.prepare('SELECT kind, COUNT(*) AS n FROM events GROUP BY kind').all() as { kind: string; n: number }[]).map((e) => [e.kind, e.n]),
    );
    const versions = (
      d.prepare('SELECT version, status, weights_path, weights_sha256, stats FROM model_versions ORDER BY version').all() as (Omit<VersionRecord, 'stats'> & {
        stats: string | null;
      })[]
    ).map((v) => ({ ...v, stats: v.stats ? (JSON.parse(v.stats) as Record<string, number>) : null }));
    const totals = d.prepare(`SELECT SUM(status = 'answered') AS answered, SUM(status = 'failed') AS failed FROM questions`).get() as {
      answered: number | null;
      failed: number | null;
    };
    return {
      integrity: integrity.join('; '),
      ...compared,
      rowsAnswered: totals.answered ?? 0,
      rowsFailed: totals.failed ?? 0,
      events: eventCounts,
      ...checkVersionFiles(versions),
      fleet: null,
    };
  } finally {
    d.close();
  }
}

/** The same checks on the fleet's PostgreSQL database, and its one lineage and answers per front-end. */
async function checkPostgres(pgdb: BenchPostgres, name: string, clients: Client[]) {
  const url = pgdb.url(name);
  const integrity = pgdb.amcheck(name);
  const mine = new Set(clients.map((c) => `${c.frontend}\u0000${c.connection}`));
  const rows = (
    await sql<Row>(url, 'SELECT frontend, connection, client_id, status, error, answer, model_version FROM questions WHERE connection = ANY($1)', [
      [...new Set(clients.map((c) => c.connection))],
    ])
  ).filter((r) => mine.has(`${r.frontend}\u0000${r.connection}`));
  // Connection ids are per process (c1, c2, ... on every front-end): a row is its front-end's.
  const compared = compareReceived(rows, (r, id) => `${r.frontend}\u0000${r.connection}\u0000${id}`);
  const events = Object.fromEntries(
    (await sql<{ kind: string; n: number }>(url, 'SELECT kind, COUNT(*)::int AS n FROM events GROUP BY kind')).map((e) => [e.kind, e.n]),
  );
  const versions = await sql<VersionRecord & { reason: string | null }>(
    url,
    'SELECT version, status, weights_path, weights_sha256, stats, reason FROM model_versions ORDER BY version',
  );
  const byFrontend = await sql<{ frontend: string | null; answered: number; failed: number }>(
    url,
    `SELECT frontend, COUNT(*) FILTER (WHERE status = 'answered')::int AS answered, COUNT(*) FILTER (WHERE status = 'failed')::int AS failed
       FROM questions GROUP BY frontend ORDER BY frontend`,
  );
  const numbers = versions.map((v) => v.version);
  const numberedOnce = numbers.every((v, i) => v === i);
  const active = versions.filter((v) => v.status === 'active').map((v) => v.version);
  if (!numberedOnce) fail(`versions are not numbered 0..k once: ${JSON.stringify(numbers)}`);
  if (active.length !== 1) fail(`${active.length} versions are active (${JSON.stringify(active)}), not exactly one`);
  const trainedOn: Record<string, number> = {};
  for (const v of versions)
    for (const [fe, n] of Object.entries((v.stats as { frontends?: Record<string, number> } | null)?.frontends ?? {})) trainedOn[fe] = (trainedOn[fe] ?? 0) + n;
  return {
    integrity,
    ...compared,
    rowsAnswered: byFrontend.reduce((a, r) => a + r.answered, 0),
    rowsFailed: byFrontend.reduce((a, r) => a + r.failed, 0),
    events,
    ...checkVersionFiles(versions),
    fleet: {
      versions: numbers.length,
      numbered_once: numberedOnce,
      active,
      candidates_left: versions.filter((v) => v.status === 'candidate').map((v) => v.version),
      interrupted: versions.filter((v) => v.status === 'rejected' && /^interrupted/.test(v.reason ?? '')).map((v) => v.version),
      rows_by_frontend: Object.fromEntries(byFrontend.map((r) => [r.frontend ?? 'none', { answered: r.answered, failed: r.failed }])),
      trained_on_by_frontend: trainedOn,
    },
  };
}

// ---------- the run ----------

async function until<T>(what: string, f: () => Promise<T | null | undefined | false>, ms: number): Promise<T | null> {
  const end = Date.now() + ms;
  let last = '';
  while (Date.now() < end) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = ` (last error: ${(e as Error).message})`;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  fail(`timed out after ${ms / 1000} s waiting for ${what}${last}`);
  return null;
}
const adminHeaders = { Authorization: `Bearer ${ADMIN_TOKEN}` };
const adminStatus = async (url: string) =>
  (await (await fetch(`${url}/admin/status`, { headers: adminHeaders, signal: AbortSignal.timeout(4000) })).json()) as {
    queue_depth?: number;
    adaptation?: string;
  };

const { flags, settings, apiKey } = serverFlags(o.set ?? []);
const adapting = !flags.includes('--no-adapt');
const dir = await mkdtemp(join(tmpdir(), 'ttrl-soak-'));
const children: Child[] = [];
const alive = (c: Child) => c.proc.exitCode === null && c.proc.signalCode === null;
// Registered before the PostgreSQL server's own exit handler: the servers go first.
process.on('exit', () => {
  for (const c of children) if (alive(c)) c.proc.kill('SIGKILL');
});
const postgres = F > 1 ? await startBenchPostgres() : null;
const DB_NAME = 'soak';
const db = postgres ? postgres.create(DB_NAME) : join(dir, 'soak.sqlite');
const versionsDir = postgres ? join(dir, 'versions') : `${db}.versions`;
const ids = postgres ? Array.from({ length: F }, (_, k) => `fe-${k + 1}`) : ['server'];
for (const sig of ['SIGINT', 'SIGTERM'] as const)
  process.once(sig, () => {
    log(`${sig}: stopping the server${F > 1 ? 's and PostgreSQL' : ''} and quitting (kept ${dir})`);
    for (const c of children) c.proc.kill('SIGKILL');
    process.exit(130);
  });

const started = Date.now();
for (const id of ids)
  children.push(
    await startChild(
      db,
      join(dir, postgres ? `server-${id}.log` : 'server.log'),
      postgres ? [...flags, '--versions-dir', versionsDir, '--frontend-id', id] : flags,
    ),
  );
const leader = postgres && adapting ? await waitForLeader(children.map((c) => c.url)) : null;
const pids = children.map((c) => c.proc.pid!);
const startSamples = pids.map((p) => readProc(p));
if (startSamples.some((s) => !s)) throw new Error('cannot read /proc for the server (Linux only)');
if (!postgres) log(`ready at ${children[0]!.url} (pid ${pids[0]}), RSS ${mb(startSamples[0]!.rssKb)} MB; ${C} clients x ${K} in flight for ${MINUTES} min`);
else {
  for (const [k, c] of children.entries())
    log(`${ids[k]} ready at ${c.url} (pid ${pids[k]}), RSS ${mb(startSamples[k]!.rssKb)} MB${leader === ids[k] ? ' (leads)' : ''}`);
  log(`${C} clients x ${K} in flight for ${MINUTES} min, over ${F} front-ends on one PostgreSQL database`);
}

/** Each front-end's samples, taken at the same moments. */
const samples: (ProcSample & { t: number })[][] = startSamples.map((s) => [{ ...s!, t: 0 }]);
let queueMax = 0;
let statusFailures = 0;
t0 = performance.now();
const sampler = setInterval(() => {
  const now = pids.map((p) => readProc(p));
  if (now.every(Boolean)) now.forEach((s, k) => samples[k]!.push({ ...s!, t: (performance.now() - t0) / 1000 }));
}, 1000);
const admin = setInterval(async () => {
  for (const c of children)
    try {
      queueMax = Math.max(queueMax, (await adminStatus(c.url)).queue_depth ?? 0);
    } catch {
      statusFailures++;
    }
}, 5000);

const clients = Array.from({ length: C }, (_, i) => new Client(i, children[i % F]!.wsUrl, apiKey, ids[i % F]!));
await Promise.all(clients.map((c) => c.open()));
t0 = performance.now();
const slots = clients.flatMap((c) => Array.from({ length: K }, () => c.slot()));
/** The front-ends' samples added up, moment by moment (one server: its own). */
const total = (k: number) => samples.reduce((a, ss) => a + (ss[k]?.rssKb ?? 0), 0);
const progress = setInterval(() => {
  const secs = (performance.now() - t0) / 1000;
  log(
    `${secs.toFixed(0)} s: ${received.length} answered (${(received.length / secs).toFixed(1)}/s), version ${received.at(-1)?.version ?? 0}, RSS ${mb(total(samples[0]!.length - 1))} MB, errors ${JSON.stringify(errors)}`,
  );
}, 30_000);
await new Promise((r) => setTimeout(r, MINUTES * 60_000));
stopAsking = true;
const askingS = (performance.now() - t0) / 1000;
log(`asking stopped after ${askingS.toFixed(0)} s; waiting for the answers in flight`);
const drainTimer = setTimeout(
  () => {
    fail(`answers still missing ${o.drainTimeout} s after asking stopped`);
    clients.forEach((c) => c.giveUp());
  },
  Number(o.drainTimeout) * 1000,
);
await Promise.all(slots);
clearTimeout(drainTimer);
const loadS = (performance.now() - t0) / 1000;
clearInterval(progress);
clearInterval(admin);
await Promise.all(clients.map((c) => c.close()));
clearInterval(sampler);
const endSamples = pids.map((p, k) => readProc(p) ?? samples[k]!.at(-1)!);
endSamples.forEach((s, k) => samples[k]!.push({ ...s, t: (performance.now() - t0) / 1000 }));

// A fleet, at the end: no update starts, the one in flight ends, and every front-end serves the active version.
let servingAtEnd: Record<string, number> | null = null;
let activeAtEnd: number | null = null;
let convergeS: number | null = null;
if (postgres) {
  const tc = performance.now();
  for (const c of children) {
    const r = await fetch(`${c.url}/admin/adaptation/pause`, { method: 'POST', headers: adminHeaders }).catch((e: Error) => e);
    if (r instanceof Error || r.status !== 200) fail(`pausing adaptation on ${c.url}: ${r instanceof Error ? r.message : r.status}`);
  }
  await until(
    'the update in flight to end',
    async () => (await Promise.all(children.map((c) => adminStatus(c.url)))).every((s) => s.adaptation !== 'updating'),
    600_000,
  );
  const served = await until(
    'every front-end to serve the active version',
    async () => {
      const active = (await sql<{ version: number }>(db, `SELECT version FROM model_versions WHERE status = 'active'`))[0]?.version;
      const states = await Promise.all(children.map((c) => readyz(c.url)));
      return active !== undefined && states.every((s) => s.model_version === active) && { active, states };
    },
    60_000,
  );
  const states = served?.states ?? (await Promise.all(children.map((c) => readyz(c.url).catch(() => null))));
  servingAtEnd = Object.fromEntries(ids.map((id, k) => [id, states[k]?.model_version ?? -1]));
  activeAtEnd = served?.active ?? null;
  convergeS = +((performance.now() - tc) / 1000).toFixed(2);
  log(`active version ${activeAtEnd}; serving at the end ${JSON.stringify(servingAtEnd)} (${convergeS} s)`);
}

log('SIGTERM');
const tStop = performance.now();
const exits = await Promise.all(
  children.map(async (c) => {
    c.proc.kill('SIGTERM');
    const e = await Promise.race([c.exited, new Promise<null>((r) => setTimeout(() => r(null), 120_000))]);
    return { e, s: (performance.now() - tStop) / 1000 };
  }),
);
const shutdownS = Math.max(...exits.map((x) => x.s));
for (const [k, { e }] of exits.entries()) {
  const c = children[k]!;
  const who = postgres ? `${ids[k]}` : 'the server';
  if (!e) {
    fail(`${who} did not exit within 120 s of SIGTERM (killed)`);
    c.proc.kill('SIGKILL');
    await c.exited;
  } else if (e.code !== 0) fail(`${who} exited with ${e.code ?? e.signal} after SIGTERM; its log:\n${c.logTail()}`);
}
const exit = exits.length === 1 ? exits[0]!.e : null;

const tempFiles = existsSync(versionsDir) ? readdirSync(versionsDir).filter((f) => f.endsWith('.tmp')).length : 0;
if (tempFiles) fail(`${tempFiles} unfinished-write temp files left in ${versionsDir}`);
const check = postgres ? await checkPostgres(postgres, DB_NAME, clients) : checkDatabase(db, clients);
if (check.integrity !== 'ok') fail(`${postgres ? 'pg_amcheck' : 'integrity_check'}: ${check.integrity}`);
if (unanswered) fail(`${unanswered} asks got no reply`);
if (!received.length) fail('no question was answered');
if (postgres) {
  for (const [id, v] of Object.entries(servingAtEnd!))
    if (v !== activeAtEnd) fail(`${id} serves version ${v} at the end, the active version is ${activeAtEnd}`);
  if (check.finalVersion !== activeAtEnd) fail(`the active version changed after the front-ends were checked: ${activeAtEnd} -> ${check.finalVersion}`);
}
const postgresVersion = postgres ? await postgres.serverVersion() : null;
if (postgres && (o.keep || failures.length))
  try {
    postgres.dump(DB_NAME, join(dir, 'soak.dump'));
  } catch (e) {
    log(`could not keep the database: ${(e as Error).message}`);
  }
postgres?.destroy();

// ---------- the report ----------

function memory(ss: (ProcSample & { t: number })[], start: ProcSample, end: ProcSample) {
  const rss = ss.map((s) => s.rssKb);
  const half = ss.filter((s) => s.t >= askingS / 2 && s.t <= askingS);
  const byMinute = Array.from({ length: Math.max(1, Math.round(askingS / 60)) }, (_, m) => {
    const s = ss.filter((x) => x.t <= (m + 1) * 60).at(-1);
    return s ? mb(s.rssKb) : null;
  });
  return {
    rss_mb: {
      start: mb(start.rssKb),
      peak: mb(Math.max(...rss, end.hwmKb)),
      peak_sampled: mb(Math.max(...rss)),
      end: mb(end.rssKb),
      second_half_min: half.length ? mb(Math.min(...half.map((s) => s.rssKb))) : null,
      second_half_max: half.length ? mb(Math.max(...half.map((s) => s.rssKb))) : null,
      by_minute: byMinute,
    },
    threads: { start: start.threads, max: Math.max(...ss.map((s) => s.threads)), end: end.threads },
    fds: { start: start.fds, max: Math.max(...ss.map((s) => s.fds)), end: end.fds },
  };
}
const add = (xs: ProcSample[]): ProcSample => ({
  rssKb: xs.reduce((a, x) => a + x.rssKb, 0),
  hwmKb: xs.reduce((a, x) => a + x.hwmKb, 0), // each one's peak added: at least the fleet's peak
  threads: xs.reduce((a, x) => a + x.threads, 0),
  fds: xs.reduce((a, x) => a + x.fds, 0),
});
const each = children.map((_, k) => memory(samples[k]!, startSamples[k]!, endSamples[k]!));
const all =
  F === 1
    ? each[0]!
    : memory(
        samples[0]!.map((s, i) => ({ ...add(samples.map((ss) => ss[i]!)), t: s.t })),
        add(startSamples.map((s) => s!)),
        add(endSamples),
      );

const lat = received.map((r) => r.latencyMs);
const totalMs = received.map((r) => r.totalMs);
const perClient = clients.map((c) => c.answered);
const ev = check.events;
const disallowed = Object.entries(errors).filter(([code]) => code !== 'overloaded');
const pass = failures.length === 0 && disallowed.length === 0;
const r3 = (x: number | null) => (x === null ? null : Math.round(x));
const fleet =
  postgres && check.fleet
    ? {
        postgres: { version: postgresVersion, fsync: true },
        leader_at_start: leader,
        leader_events: ev.leader ?? 0,
        frontend_flags: flags
          .filter((f, i) => ['--threads', '--train-threads'].includes(f) || ['--threads', '--train-threads'].includes(flags[i - 1] ?? ''))
          .join(' '),
        versions: check.fleet.versions,
        numbered_once: check.fleet.numbered_once,
        active: check.fleet.active,
        candidates_left: check.fleet.candidates_left,
        interrupted: check.fleet.interrupted,
        active_at_end: activeAtEnd,
        serving_at_end: servingAtEnd,
        converge_s: convergeS,
        trained_on_by_frontend: check.fleet.trained_on_by_frontend,
        frontends: ids.map((id, k) => ({
          id,
          clients: clients.filter((c) => c.frontend === id).length,
          answered: received.filter((r) => r.frontend === id).length,
          rows: check.fleet!.rows_by_frontend[id] ?? { answered: 0, failed: 0 },
          ...each[k]!,
          exit: exits[k]!.e ? (exits[k]!.e!.code ?? exits[k]!.e!.signal) : 'killed',
          shutdown_s: +exits[k]!.s.toFixed(2),
        })),
      }
    : null;
const out = {
  bench: 'soak',
  date: new Date().toISOString().slice(0, 10),
  pass,
  minutes: MINUTES,
  clients: C,
  in_flight: K,
  seed: SEED,
  repeat: REPEAT,
  settings,
  store: postgres ? 'postgres' : 'sqlite',
  frontends: F,
  cpus: cpus().length,
  answered: received.length,
  questions_per_s: +(received.length / loadS).toFixed(2),
  asking_s: +askingS.toFixed(1),
  drain_s: +(loadS - askingS).toFixed(1),
  p50_ms: r3(quantile(lat, 0.5)),
  p99_ms: r3(quantile(lat, 0.99)),
  max_ms: r3(lat.length ? Math.max(...lat) : null),
  p99_with_retries_ms: r3(quantile(totalMs, 0.99)),
  answered_per_client: { min: Math.min(...perClient), max: Math.max(...perClient) },
  errors,
  abandoned_after_overloaded: abandoned,
  unanswered,
  queue_depth_max: queueMax,
  admin_status_failures: statusFailures,
  updates: {
    promoted: ev.version_promoted ?? 0,
    rejected: ev.version_rejected ?? 0,
    failed: ev.update_failed ?? 0,
    versions_by_status: check.versionsByStatus,
    final_version: check.finalVersion,
    versions_seen_by_clients: new Set(received.map((r) => r.version)).size,
    mean_update_s: check.meanUpdateSeconds,
  },
  ...all,
  db: {
    integrity_check: check.integrity,
    missing: check.missing,
    duplicates: check.duplicates,
    mismatched: check.mismatched,
    unreceived: check.unreceived,
    failed_rows_of_soak_connections: check.failedRows,
    rows_answered: check.rowsAnswered,
    rows_failed: check.rowsFailed,
    version_files_checked: check.filesChecked,
    version_files_bad: check.badFiles,
    temp_files_left: tempFiles,
  },
  ...(fleet ? { fleet } : {}),
  server_exit: exit
    ? (exit.code ?? exit.signal)
    : F === 1
      ? 'killed'
      : exits.every((x) => x.e?.code === 0)
        ? 0
        : exits.map((x) => (x.e ? (x.e.code ?? x.e.signal) : 'killed')).join(','),
  shutdown_s: +shutdownS.toFixed(2),
  wall_s: +((Date.now() - started) / 1000).toFixed(1),
  failures,
};

const summary = [
  `soak ${pass ? 'PASSED' : 'FAILED'}: ${C} clients x ${K} in flight, ${MINUTES} min, adaptation ${adapting ? 'on' : 'off'}${Object.keys(settings).length ? `, settings ${JSON.stringify(settings)}` : ''}`,
  `  answered     ${out.answered} (${out.questions_per_s}/s; per client ${out.answered_per_client.min}-${out.answered_per_client.max}); drain ${out.drain_s} s`,
  `  latency      p50 ${out.p50_ms} ms, p99 ${out.p99_ms} ms, max ${out.max_ms} ms (p99 with overloaded retries ${out.p99_with_retries_ms} ms)`,
  `  errors       ${Object.keys(errors).length ? JSON.stringify(errors) : 'none'}${abandoned ? `; ${abandoned} abandoned after overloaded at the end` : ''}; queue depth max ${queueMax}`,
  `  updates      promoted ${out.updates.promoted}, rejected ${out.updates.rejected}, failed ${out.updates.failed}; final version ${out.updates.final_version}; mean update ${out.updates.mean_update_s} s`,
  `  RSS (MB)     ${F > 1 ? `all ${F} front-ends: ` : ''}start ${out.rss_mb.start}, peak ${out.rss_mb.peak} (sampled ${out.rss_mb.peak_sampled}), end ${out.rss_mb.end}; second half ${out.rss_mb.second_half_min}-${out.rss_mb.second_half_max}; by minute ${out.rss_mb.by_minute.join(' ')}`,
  `  threads      ${out.threads.start} -> max ${out.threads.max} -> ${out.threads.end}; fds ${out.fds.start} -> max ${out.fds.max} -> ${out.fds.end}`,
  `  database     ${postgres ? `PostgreSQL ${postgresVersion}, pg_amcheck` : 'integrity_check'} ${check.integrity}; missing ${check.missing}, duplicates ${check.duplicates}, mismatched ${check.mismatched}, unreceived ${check.unreceived}; ${check.rowsAnswered} answered rows, ${check.rowsFailed} failed rows; version files ${check.filesChecked} checked, ${check.badFiles} bad; temp files ${tempFiles}`,
  ...(fleet
    ? [
        `  lineage      versions 0..${fleet.versions - 1}${fleet.numbered_once ? ' numbered once' : ' NOT numbered 0..k once'}; active ${JSON.stringify(fleet.active)}; candidates left ${JSON.stringify(fleet.candidates_left)}; serving at the end ${JSON.stringify(fleet.serving_at_end)} (after ${fleet.converge_s} s)`,
        ...fleet.frontends.map(
          (f) =>
            `  ${f.id.padEnd(12)} ${f.clients} clients, ${f.answered} answered (rows: ${f.rows.answered} answered, ${f.rows.failed} failed); trained on ${fleet.trained_on_by_frontend[f.id] ?? 0}; RSS ${f.rss_mb.start} -> peak ${f.rss_mb.peak} -> ${f.rss_mb.end} MB, second half ${f.rss_mb.second_half_min}-${f.rss_mb.second_half_max}; threads ${f.threads.start} -> ${f.threads.max} -> ${f.threads.end}; exit ${f.exit} in ${f.shutdown_s} s${f.id === leader ? ' (led at the start)' : ''}`,
        ),
      ]
    : []),
  `  shutdown     SIGTERM -> exit ${out.server_exit} in ${out.shutdown_s} s`,
  ...failures.map((f) => `  FAIL         ${f.split('\n')[0]}`),
];
if (o.json) console.log(JSON.stringify(out));
else console.log(summary.join('\n'));
if (o.out) writeFileSync(o.out, JSON.stringify(out, null, 2) + '\n');
if (o.keep || !pass) log(`kept ${dir} (database${postgres ? ' dump' : ''}, versions, server log${postgres ? 's' : ''})`);
else await rm(dir, { recursive: true, force: true });
process.exit(pass ? 0 : 1);
