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
// The soak FAILS (exit 1) on any error code but `overloaded`, a lost connection, an ask
// left without a reply, a missing/duplicate/mismatched/unreceived row, a failed
// integrity_check or file check, or an unclean server exit.
//
//   npm run bench:soak -- [--minutes 10] [--clients 16] [--in-flight 4] [--seed 0] [--repeat 0.5]
//                         [--set key=value ...] [--json] [--out FILE] [--keep]
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
  }>();

const log = (...a: unknown[]) => console.error(`[soak ${new Date().toISOString().slice(11, 19)}]`, ...a);
const MINUTES = Number(o.minutes);
const C = Number(o.clients);
const K = Number(o.inFlight);
const SEED = Number(o.seed);
const REPEAT = Number(o.repeat);
for (const [name, v, ok] of [
  ['--minutes', MINUTES, MINUTES > 0],
  ['--clients', C, Number.isInteger(C) && C > 0],
  ['--in-flight', K, Number.isInteger(K) && K > 0],
  ['--seed', SEED, Number.isInteger(SEED) && SEED >= 0],
  ['--repeat', REPEAT, REPEAT >= 0 && REPEAT <= 1],
] as const)
  if (!ok) throw new Error(`${name}: bad value ${v}`);

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const ADMIN_TOKEN = 'soak-admin-token';

/** --set key=value as `ttrl serve` flags; the soak owns port, db, seed and the admin token. */
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
    if (['port', 'db', 'adminToken', 'seed'].includes(name))
      throw new Error(`--set ${kv}: the soak sets ${name} itself${name === 'seed' ? ' (use --seed)' : ''}`);
    settings[name] = value;
    if (name === 'adapt') {
      if (['false', '0', 'no', 'off'].includes(value)) flags.push('--no-adapt');
    } else if (name === 'apiKeys') {
      for (const k of value.split(',').filter(Boolean)) (flags.push('--api-key', k), (apiKey ??= k));
    } else flags.push(flagName(name), value);
  }
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
    private apiKey?: string,
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

function checkDatabase(db: string, clients: Client[]) {
  const d = new Database(db, { readonly: true, fileMustExist: true });
  try {
    const integrity = (d.pragma('integrity_check') as { integrity_check: string }[]).map((r) => r.integrity_check);
    const conns = clients.map((c) => c.connection);
    const ph = conns.map(() => '?').join(',');
    const rows = d.prepare(`SELECT connection, client_id, status, error, answer, model_version FROM questions WHERE connection IN (${ph})`).all(...conns) as {
      connection: string;
      client_id: string;
      status: string;
      error: string | null;
      answer: string | null;
      model_version: number | null;
    }[];
    const answered = new Map<string, typeof rows>();
    const failedByError: Record<string, number> = {};
    for (const r of rows) {
      if (r.status !== 'answered') {
        const e = (r.error ?? '').split(':')[0]!;
        failedByError[e] = (failedByError[e] ?? 0) + 1;
        continue;
      }
      const k = `${r.connection}\u0000${r.client_id}`;
      answered.set(k, [...(answered.get(k) ?? []), r]);
    }
    let missing = 0;
    let duplicates = 0;
    let mismatched = 0;
    const seen = new Set<string>();
    for (const g of received) {
      const k = `${g.connection}\u0000${g.clientId}`;
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
    const eventCounts = Object.fromEntries(
      (d.prepare('SELECT kind, COUNT(*) AS n FROM events GROUP BY kind').all() as { kind: string; n: number }[]).map((e) => [e.kind, e.n]),
    );
    const versions = d.prepare('SELECT version, status, weights_path, weights_sha256, stats FROM model_versions ORDER BY version').all() as {
      version: number;
      status: string;
      weights_path: string | null;
      weights_sha256: string | null;
      stats: string | null;
    }[];
    const byStatus: Record<string, number> = {};
    for (const v of versions) if (v.version > 0) byStatus[v.status] = (byStatus[v.status] ?? 0) + 1;
    // Every kept version file must still match the sha256 recorded when it was written.
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
    const stats = versions.filter((v) => v.version > 0 && v.stats).map((v) => JSON.parse(v.stats!) as Record<string, number>);
    const meanSeconds = stats.length ? +(stats.reduce((a, s) => a + (s.seconds ?? 0), 0) / stats.length).toFixed(1) : null;
    const totals = d.prepare(`SELECT SUM(status = 'answered') AS answered, SUM(status = 'failed') AS failed FROM questions`).get() as {
      answered: number | null;
      failed: number | null;
    };
    return {
      integrity: integrity.join('; '),
      missing,
      duplicates,
      mismatched,
      unreceived,
      failedRows: failedByError,
      rowsAnswered: totals.answered ?? 0,
      rowsFailed: totals.failed ?? 0,
      events: eventCounts,
      versionsByStatus: byStatus,
      finalVersion: versions.find((v) => v.status === 'active')?.version ?? null,
      meanUpdateSeconds: meanSeconds,
      filesChecked,
      badFiles: badFiles.length,
    };
  } finally {
    d.close();
  }
}

// ---------- the run ----------

const { flags, settings, apiKey } = serverFlags(o.set ?? []);
const dir = await mkdtemp(join(tmpdir(), 'ttrl-soak-'));
const db = join(dir, 'soak.sqlite');
const logFile = join(dir, 'server.log');
let child: Child | null = null;
process.on('exit', () => {
  if (child && child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill('SIGKILL');
});
for (const sig of ['SIGINT', 'SIGTERM'] as const)
  process.once(sig, () => {
    log(`${sig}: stopping the server and quitting (kept ${dir})`);
    child?.proc.kill('SIGKILL');
    process.exit(130);
  });

const started = Date.now();
child = await startChild(db, logFile, flags);
const pid = child.proc.pid!;
const startSample = readProc(pid);
if (!startSample) throw new Error('cannot read /proc for the server (Linux only)');
log(`ready at ${child.url} (pid ${pid}), RSS ${mb(startSample.rssKb)} MB; ${C} clients x ${K} in flight for ${MINUTES} min`);

const samples: (ProcSample & { t: number })[] = [{ ...startSample, t: 0 }];
let queueMax = 0;
let statusFailures = 0;
t0 = performance.now();
const sampler = setInterval(() => {
  const s = readProc(pid);
  if (s) samples.push({ ...s, t: (performance.now() - t0) / 1000 });
}, 1000);
const admin = setInterval(async () => {
  try {
    const r = await fetch(`${child!.url}/admin/status`, { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` }, signal: AbortSignal.timeout(4000) });
    const s = (await r.json()) as { queue_depth?: number };
    queueMax = Math.max(queueMax, s.queue_depth ?? 0);
  } catch {
    statusFailures++;
  }
}, 5000);

const clients = Array.from({ length: C }, (_, i) => new Client(i, child!.wsUrl, apiKey));
await Promise.all(clients.map((c) => c.open()));
t0 = performance.now();
const slots = clients.flatMap((c) => Array.from({ length: K }, () => c.slot()));
const progress = setInterval(() => {
  const s = samples.at(-1)!;
  const secs = (performance.now() - t0) / 1000;
  log(
    `${secs.toFixed(0)} s: ${received.length} answered (${(received.length / secs).toFixed(1)}/s), version ${received.at(-1)?.version ?? 0}, RSS ${mb(s.rssKb)} MB, errors ${JSON.stringify(errors)}`,
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
const endSample = readProc(pid) ?? samples.at(-1)!;
samples.push({ ...endSample, t: (performance.now() - t0) / 1000 });

log('SIGTERM');
const tStop = performance.now();
child.proc.kill('SIGTERM');
const exit = await Promise.race([child.exited, new Promise<null>((r) => setTimeout(() => r(null), 120_000))]);
const shutdownS = (performance.now() - tStop) / 1000;
if (!exit) {
  fail('the server did not exit within 120 s of SIGTERM (killed)');
  child.proc.kill('SIGKILL');
  await child.exited;
} else if (exit.code !== 0) fail(`the server exited with ${exit.code ?? exit.signal} after SIGTERM; its log:\n${child.logTail()}`);

const versionsDir = `${db}.versions`;
const tempFiles = existsSync(versionsDir) ? readdirSync(versionsDir).filter((f) => f.endsWith('.tmp')).length : 0;
if (tempFiles) fail(`${tempFiles} unfinished-write temp files left in ${versionsDir}`);
const check = checkDatabase(db, clients);
if (check.integrity !== 'ok') fail(`integrity_check: ${check.integrity}`);
if (unanswered) fail(`${unanswered} asks got no reply`);
if (!received.length) fail('no question was answered');

// ---------- the report ----------

const lat = received.map((r) => r.latencyMs);
const total = received.map((r) => r.totalMs);
const rss = samples.map((s) => s.rssKb);
const half = samples.filter((s) => s.t >= askingS / 2 && s.t <= askingS);
const perClient = clients.map((c) => c.answered);
const byMinute = Array.from({ length: Math.max(1, Math.round(askingS / 60)) }, (_, m) => {
  const s = samples.filter((x) => x.t <= (m + 1) * 60).at(-1);
  return s ? mb(s.rssKb) : null;
});
const ev = check.events;
const disallowed = Object.entries(errors).filter(([code]) => code !== 'overloaded');
const pass = failures.length === 0 && disallowed.length === 0;
const r3 = (x: number | null) => (x === null ? null : Math.round(x));
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
  cpus: cpus().length,
  answered: received.length,
  questions_per_s: +(received.length / loadS).toFixed(2),
  asking_s: +askingS.toFixed(1),
  drain_s: +(loadS - askingS).toFixed(1),
  p50_ms: r3(quantile(lat, 0.5)),
  p99_ms: r3(quantile(lat, 0.99)),
  max_ms: r3(lat.length ? Math.max(...lat) : null),
  p99_with_retries_ms: r3(quantile(total, 0.99)),
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
  rss_mb: {
    start: mb(startSample.rssKb),
    peak: mb(Math.max(...rss, endSample.hwmKb)),
    peak_sampled: mb(Math.max(...rss)),
    end: mb(endSample.rssKb),
    second_half_min: half.length ? mb(Math.min(...half.map((s) => s.rssKb))) : null,
    second_half_max: half.length ? mb(Math.max(...half.map((s) => s.rssKb))) : null,
    by_minute: byMinute,
  },
  threads: { start: startSample.threads, max: Math.max(...samples.map((s) => s.threads)), end: endSample.threads },
  fds: { start: startSample.fds, max: Math.max(...samples.map((s) => s.fds)), end: endSample.fds },
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
  server_exit: exit ? (exit.code ?? exit.signal) : 'killed',
  shutdown_s: +shutdownS.toFixed(2),
  wall_s: +((Date.now() - started) / 1000).toFixed(1),
  failures,
};

const summary = [
  `soak ${pass ? 'PASSED' : 'FAILED'}: ${C} clients x ${K} in flight, ${MINUTES} min, adaptation ${flags.includes('--no-adapt') ? 'off' : 'on'}${Object.keys(settings).length ? `, settings ${JSON.stringify(settings)}` : ''}`,
  `  answered     ${out.answered} (${out.questions_per_s}/s; per client ${out.answered_per_client.min}-${out.answered_per_client.max}); drain ${out.drain_s} s`,
  `  latency      p50 ${out.p50_ms} ms, p99 ${out.p99_ms} ms, max ${out.max_ms} ms (p99 with overloaded retries ${out.p99_with_retries_ms} ms)`,
  `  errors       ${Object.keys(errors).length ? JSON.stringify(errors) : 'none'}${abandoned ? `; ${abandoned} abandoned after overloaded at the end` : ''}; queue depth max ${queueMax}`,
  `  updates      promoted ${out.updates.promoted}, rejected ${out.updates.rejected}, failed ${out.updates.failed}; final version ${out.updates.final_version}; mean update ${out.updates.mean_update_s} s`,
  `  RSS (MB)     start ${out.rss_mb.start}, peak ${out.rss_mb.peak} (sampled ${out.rss_mb.peak_sampled}), end ${out.rss_mb.end}; second half ${out.rss_mb.second_half_min}-${out.rss_mb.second_half_max}; by minute ${out.rss_mb.by_minute.join(' ')}`,
  `  threads      ${out.threads.start} -> max ${out.threads.max} -> ${out.threads.end}; fds ${out.fds.start} -> max ${out.fds.max} -> ${out.fds.end}`,
  `  database     integrity_check ${check.integrity}; missing ${check.missing}, duplicates ${check.duplicates}, mismatched ${check.mismatched}, unreceived ${check.unreceived}; ${check.rowsAnswered} answered rows, ${check.rowsFailed} failed rows; version files ${check.filesChecked} checked, ${check.badFiles} bad; temp files ${tempFiles}`,
  `  shutdown     SIGTERM -> exit ${out.server_exit} in ${out.shutdown_s} s`,
  ...failures.map((f) => `  FAIL         ${f.split('\n')[0]}`),
];
if (o.json) console.log(JSON.stringify(out));
else console.log(summary.join('\n'));
if (o.out) writeFileSync(o.out, JSON.stringify(out, null, 2) + '\n');
if (o.keep || !pass) log(`kept ${dir} (database, versions, server.log)`);
else await rm(dir, { recursive: true, force: true });
process.exit(pass ? 0 : 1);
