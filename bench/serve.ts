// Serving benchmark: the server on the shipped model, C WebSocket clients over loopback
// (closed loop: each has one question in flight), two streams of four-operand questions:
//   recurring: a pool of 256 questions, each asked about 8 times in random order
//   fresh:     every question new
// For each seed and stream it runs adaptation off, on (default lr) and on at 3x lr, and
// reports questions/s, p50/p99 latency (and p99 of answers that overlapped an update), and
// the served accuracy of the last quarter of the stream, scored afterwards with the suite's
// answers. Then the PyTorch peer's raw sampling speed at the same shape, for the ratio.
//
// --frontends N (N > 1) runs each stream/seed/mode as a fleet: N front-ends (in this process,
// as the tests run them) on one PostgreSQL database the bench starts itself (fsync on, a fresh
// database per run, one versions folder all read), the clients spread evenly over them, each
// client keeping to one front-end (a load balancer with sticky connections). Each front-end
// gets threads 1 and trainThreads 1 (unless --set says otherwise), so that two front-ends
// share the 2 cores as two processes on them would: one sampler thread each, and one trainer
// thread on the leader (the front-ends share this process's main thread for their sockets and
// database calls, which two processes would not). Elections, heartbeats and polls are the
// defaults; the load starts once a leader is elected (with adaptation on). Accuracy is scored
// on what every client received; the update counts, versions and per-version accuracy come
// from the shared database (every front-end's answers; the run fails unless it holds exactly
// one answered row per question). N = 1 (the default) is one server on SQLite, as before.
//
// --upstreams N samples on N ttrl-server processes (upstream/pool.ts, as a GPU fleet of vLLM
// servers would be used), each `ttrl serve --no-adapt --threads T` with T = 2 / N (the cores
// the in-process sampler would have had) and the front-end's --lora-rank, started fresh for
// each run; the front-end trains and publishes. Compare with the same command without it.
//
// --window W adds each run's served accuracy, confidence and calibration error per W questions
// (`windows`), and --svg FILE plots them against questions served (the long runs of issue 23).
// --suite picks the questions (4-operand by default; 3-digit has no prior: nothing to learn).
//
//   npm run bench:serve -- [--json] [--clients 16] [--questions 2000] [--seeds 3] [--first-seed 0] [--streams recurring,fresh]
//                          [--modes off,on,on3x] [--lr X] [--set key=value ...] [--no-peer] [--frontends 1] [--upstreams 0]
//                          [--suite 4-operand] [--window W] [--svg FILE]
//   BENCH_KEEP=1 keeps each run's database and versions (bench/guard-study.ts reads them); with
//   --frontends N > 1, the versions folder and a pg_dump of the run's database (db.dump).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import WebSocket from 'ws';
import { Rng } from '../src/util/rng.ts';
import { lrOf, resolveSettings, SETTINGS } from '../src/config/settings.ts';
import { startServer } from '../src/server/server.ts';
import { suite } from '../src/tasks/suites.ts';
import type { Question } from '../src/tasks/arithmetic.ts';
import { quantile } from '../src/util/stats.ts';
import { calibration } from '../src/sampling/calibration.ts';
import { windowsPlot } from './windows-plot.ts';
import { writeFileSync } from 'node:fs';
import { readyz, startBenchPostgres, waitForLeader, type BenchPostgres } from './fleet-db.ts';
import { startUpstream, type UpstreamServer } from './upstream-servers.ts';

const o = new Command()
  .option('--json', 'print only the JSON line on stdout')
  .option('--clients <n>', 'concurrent WebSocket clients', '16')
  .option('--questions <n>', 'questions per stream', '2000')
  .option('--seeds <n>', 'seeds (first..first+n-1)', '3')
  .option('--first-seed <k>', 'the first seed (settings are chosen on seeds the recorded runs do not use)', '0')
  .option('--streams <list>', 'recurring and/or fresh', 'recurring,fresh')
  .option('--modes <list>', 'off, on (default lr), on3x (3x lr)', 'off,on,on3x')
  .option('--lr <x>', 'learning rate of "on" (default: the server default)')
  .option('--set <k=v...>', 'other server settings for every run, e.g. --set updateEvery=32')
  .option('--no-peer', 'skip the PyTorch peer')
  .option('--frontends <n>', 'front-ends on one PostgreSQL database the bench starts (1: one server on SQLite)', '1')
  .option('--upstreams <n>', 'sample on this many ttrl-server upstream processes (0: in this process)', '0')
  .option('--suite <name>', 'the questions of both streams (src/tasks/suites.ts)', '4-operand')
  .option('--window <n>', "add each run's accuracy, confidence and ECE per this many questions")
  .option('--svg <file>', 'plot the windows (accuracy, confidence, ECE against questions served) to this file')
  .parse()
  .opts<{
    json?: boolean;
    clients: string;
    questions: string;
    seeds: string;
    firstSeed: string;
    streams: string;
    modes: string;
    lr?: string;
    set?: string[];
    peer: boolean;
    frontends: string;
    upstreams: string;
    suite: string;
    window?: string;
    svg?: string;
  }>();

const log = (...a: unknown[]) => console.error(...a);
const N = Number(o.questions);
const C = Number(o.clients);
const extra = Object.fromEntries((o.set ?? []).map((kv) => kv.split('=') as [string, string]));
const baseLr = o.lr ? Number(o.lr) : lrOf({ loraRank: Number(extra.loraRank ?? 0) });
const tail = { from: Math.floor(N * 0.75), to: N }; // questions 1,501-2,000 of 2,000
const F = Number(o.frontends);
const U = Number(o.upstreams);
const W = o.window ? Number(o.window) : o.svg ? Math.max(1, Math.floor(N / 20)) : 0;
if (!Number.isInteger(W) || W < 0) throw new Error(`--window: bad value ${o.window}`);
if (!Number.isInteger(U) || U < 0) throw new Error(`--upstreams: bad value ${o.upstreams}`);
if (!Number.isInteger(F) || F < 1) throw new Error(`--frontends: bad value ${o.frontends}`);
if (C < F) throw new Error(`--clients ${C} < --frontends ${F}: a front-end would have no client`);
const STORE = F > 1 ? 'postgres' : 'sqlite';
/** What each front-end of a fleet gets unless --set says otherwise: the 2 cores shared as two processes would. */
const FLEET_THREADS = { threads: 1, trainThreads: 1 };
const postgres: BenchPostgres | null = F > 1 ? await startBenchPostgres() : null;
if (postgres)
  for (const sig of ['SIGINT', 'SIGTERM'] as const)
    process.once(sig, () => {
      postgres.destroy();
      process.exit(130);
    });
let runNumber = 0;

function stream(kind: string, seed: number): Question[] {
  if (kind === 'fresh') {
    const seen = new Set<string>();
    return suite(o.suite, N * 2, 20_000 + seed)
      .filter((q) => !seen.has(q.question) && seen.add(q.question))
      .slice(0, N);
  }
  if (kind !== 'recurring') throw new Error(`unknown stream ${kind}`);
  const pool = suite(o.suite, 256, 10_000 + seed);
  const all = Array.from({ length: Math.ceil(N / pool.length) }, () => pool).flat();
  return new Rng(seed).shuffle(all).slice(0, N);
}

async function run(kind: string, seed: number, mode: string) {
  const questions = stream(kind, seed);
  const dir = await mkdtemp(join(tmpdir(), 'ttrl-bench-'));
  const lr = mode === 'on3x' ? 3 * baseLr : baseLr;
  const dbName = `serve_${++runNumber}_${kind}_${seed}_${mode}`;
  const db = postgres ? postgres.create(dbName) : join(dir, 'b.sqlite');
  const upstreams: UpstreamServer[] = [];
  for (let k = 0; k < U; k++)
    upstreams.push(
      await startUpstream([
        '--threads',
        String(Math.max(1, Math.floor(2 / U))),
        ...(extra.loraRank ? ['--lora-rank', String(extra.loraRank)] : []),
        '--seed',
        String(seed),
      ]),
    );
  const base = { port: 0, db, seed, adapt: mode !== 'off', lr, ...(U ? { upstreams: upstreams.map((u) => u.base), adapterDir: join(dir, 'adapters') } : {}) };
  const servers: Awaited<ReturnType<typeof startServer>>[] = [];
  const ids = Array.from({ length: F }, (_, k) => `fe-${k + 1}`);
  const settings = ids.map((id) =>
    resolveSettings(postgres ? { ...base, versionsDir: join(dir, 'versions'), frontendId: id, ...FLEET_THREADS, ...extra } : { ...base, ...extra }, {}),
  );
  try {
    for (const s of settings) servers.push(await startServer(s));
  } catch (e) {
    for (const s of servers) await s.close();
    throw e;
  }
  // The update in flight on each front-end (only the leader trains; a new leader would too).
  const updates: { start: number; end?: number; outcome?: string; frontend: string }[] = [];
  servers.forEach((server, k) => {
    let current: (typeof updates)[number] | null = null;
    server.adaptation.updates$.subscribe((e) => {
      if (e.phase === 'start') updates.push((current = { start: performance.now(), frontend: ids[k]! }));
      else if (current) Object.assign(current, { end: performance.now(), outcome: e.outcome.outcome });
    });
  });
  const leader = postgres && settings[0]!.adapt ? await waitForLeader(servers.map((s) => s.url)) : null;
  // With upstreams: when each version was first answered from each upstream (publish latency).
  const firstFrom = new Map<string, number>();
  if (U)
    servers[0]!.pipeline.answerer.experiences$.subscribe((e) => {
      const by = e.rollout.sampledBy;
      if (!by) return;
      for (const u of by.upstream.split(',')) {
        const key = `${e.rollout.version} ${u}`;
        if (!firstFrom.has(key)) firstFrom.set(key, e.at);
      }
    });
  const served: { answer: string | null; version: number; confidence: number; sent: number; got: number }[] = new Array(N);
  let next = 0;
  const t0 = performance.now();
  // Client c keeps to front-end c mod F: 16 clients, 2 front-ends, 8 each.
  const client = async (c: number) => {
    const ws = new WebSocket(servers[c % F]!.wsUrl);
    await new Promise((res, rej) => (ws.once('open', res), ws.once('error', rej)));
    const waiting = new Map<string, (m: Record<string, unknown>) => void>();
    ws.on('message', (d) => {
      const m = JSON.parse(String(d));
      if (m.id !== undefined) waiting.get(m.id)?.(m);
    });
    while (next < N) {
      const i = next++;
      for (;;) {
        const sent = performance.now();
        const m = await new Promise<Record<string, unknown>>((r) => {
          waiting.set(String(i), r);
          ws.send(JSON.stringify({ type: 'ask', id: String(i), question: questions[i]!.question }));
        });
        if (m.type === 'answer') {
          served[i] = {
            answer: m.answer as string | null,
            version: m.model_version as number,
            confidence: m.confidence as number,
            sent,
            got: performance.now(),
          };
          break;
        }
        if (m.code !== 'overloaded') throw new Error(`question ${i}: ${m.code} ${m.message}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    ws.close();
  };
  await Promise.all(Array.from({ length: C }, (_, c) => client(c)));
  const wall = (performance.now() - t0) / 1000;
  await Promise.all(servers.map((s) => s.adaptation.idle())); // let an update in flight finish before closing
  // From the store: with a fleet the shared database, every front-end's answers and the one lineage.
  const store = servers[0]!.store;
  const versions = await store.versions();
  // Promotion (its event, before the adapter is written and loaded) to the first answer drawn with it on every upstream.
  const publishMs: number[] = [];
  if (U)
    for (const ev of (await store.events(10_000)).filter((x) => x.kind === 'version_promoted')) {
      const v = (ev.detail as { version: number }).version;
      const firsts = upstreams.map((u) => firstFrom.get(`${v} ${u.base}`));
      if (firsts.every((t) => t !== undefined)) publishMs.push(Math.max(...(firsts as number[])) - ev.at);
    }
  const logged = await fromLog(store, questions);
  const serving = postgres ? await Promise.all(servers.map((s) => readyz(s.url).then((r) => r.model_version))) : null;
  for (const s of servers) await s.close();
  for (const u of upstreams) await u.stop();
  if (process.env.BENCH_KEEP) {
    if (postgres) postgres.dump(dbName, join(dir, 'db.dump'));
    log(`kept ${dir}`);
  } else await rm(dir, { recursive: true, force: true });
  if (postgres) await postgres.drop(dbName);
  // Every question was answered once (the clients retry only `overloaded`): one answered row each.
  if (logged.answered !== N) throw new Error(`${kind} seed ${seed} ${mode}: the store holds ${logged.answered} answered questions, the clients received ${N}`);
  const lat = served.map((s) => s.got - s.sent);
  const during = served.filter((s) => updates.some((u) => s.sent < (u.end ?? Infinity) && s.got > u.start)).map((s) => s.got - s.sent);
  const outside = served.filter((s) => !updates.some((u) => s.sent < (u.end ?? Infinity) && s.got > u.start)).map((s) => s.got - s.sent);
  const acc = (a: number, b: number) => served.slice(a, b).filter((s, j) => s.answer === questions[a + j]!.answer).length / (b - a);
  // Served confidence against correctness, over the same tail the accuracy is read on.
  const cal = calibration(
    served.slice(tail.from, tail.to).map((s, j) => ({ confidence: s.confidence, correct: s.answer === questions[tail.from + j]!.answer })),
  );
  // Per window of W questions (stream order): what was served, and how honest its confidence was.
  const windows = W
    ? Array.from({ length: Math.ceil(N / W) }, (_, k) => {
        const [from, to] = [k * W, Math.min(N, (k + 1) * W)];
        const c = calibration(served.slice(from, to).map((s, j) => ({ confidence: s.confidence, correct: s.answer === questions[from + j]!.answer })));
        return {
          to,
          accuracy: +acc(from, to).toFixed(4),
          confidence: +c.mean_confidence!.toFixed(4),
          ece: +c.ece!.toFixed(4),
          version: served[to - 1]!.version,
        };
      })
    : undefined;
  const r = {
    stream: kind,
    seed,
    mode,
    suite: o.suite,
    store: STORE,
    frontends: F,
    upstreams: U,
    ...(U
      ? { publish_ms_p50: quantile(publishMs, 0.5) ?? null, publish_ms_max: publishMs.length ? Math.max(...publishMs) : null, publishes_seen: publishMs.length }
      : {}),
    lr: mode === 'off' ? null : lr,
    questions_per_s: +(N / wall).toFixed(2),
    p50_ms: Math.round(quantile(lat, 0.5)!),
    p99_ms: Math.round(quantile(lat, 0.99)!),
    p99_no_update_ms: outside.length ? Math.round(quantile(outside, 0.99)!) : null,
    p99_update_in_flight_ms: during.length ? Math.round(quantile(during, 0.99)!) : null,
    answers_during_updates: during.length,
    accuracy_first_quarter: +acc(0, Math.floor(N / 4)).toFixed(4),
    accuracy_tail: +acc(tail.from, tail.to).toFixed(4),
    confidence_tail: +cal.mean_confidence!.toFixed(4),
    ece_tail: +cal.ece!.toFixed(4),
    updates: updates.length,
    promoted: versions.filter((v) => v.version > 0 && v.status !== 'rejected').length,
    rejected: versions.filter((v) => v.status === 'rejected').length,
    final_version: served.at(-1)!.version,
    ...updateCosts(versions),
    // From the store, all front-ends together: answered questions by the version that served them.
    accuracy_by_version: logged.byVersion,
    ...(windows ? { window: W, windows } : {}),
    ...(postgres
      ? {
          leader,
          updates_by_frontend: Object.fromEntries(ids.map((id) => [id, updates.filter((u) => u.frontend === id).length])),
          answers_by_frontend: logged.byFrontend,
          // The experiences each update took, by the front-end that answered them (versions' stats.frontends).
          trained_on_by_frontend: trainedOn(versions),
          serving_at_end: Object.fromEntries(ids.map((id, k) => [id, serving![k]!])),
        }
      : {}),
  };
  log(JSON.stringify(r));
  return r;
}

/** The answered questions in the store: how many, by front-end, and by version with the suite's answers scored. */
async function fromLog(
  store: {
    questions(o: { status: 'answered' }): AsyncIterable<{ question: string; answer: string | null; model_version: number | null; frontend: string | null }>;
  },
  qs: Question[],
) {
  const truth = new Map(qs.map((q) => [q.question, q.answer]));
  const byFrontend: Record<string, number> = {};
  const byVersion = new Map<number, { n: number; right: number }>();
  let answered = 0;
  for await (const q of store.questions({ status: 'answered' })) {
    answered++;
    const fe = q.frontend ?? 'single';
    byFrontend[fe] = (byFrontend[fe] ?? 0) + 1;
    const v = byVersion.get(q.model_version ?? -1) ?? { n: 0, right: 0 };
    v.n++;
    if (q.answer === truth.get(q.question)) v.right++;
    byVersion.set(q.model_version ?? -1, v);
  }
  return {
    answered,
    byFrontend,
    byVersion: Object.fromEntries([...byVersion].sort((a, b) => a[0] - b[0]).map(([v, x]) => [v, { answered: x.n, accuracy: +(x.right / x.n).toFixed(4) }])),
  };
}

/** The experiences the updates trained on (as they were read from the log), by the front-end that answered them. */
function trainedOn(versions: { version: number; stats: unknown }[]) {
  const out: Record<string, number> = {};
  for (const v of versions)
    for (const [fe, n] of Object.entries(((v.stats ?? {}) as { frontends?: Record<string, number> }).frontends ?? {})) out[fe] = (out[fe] ?? 0) + n;
  return out;
}

/**
 * What the updates did: optimizer steps in all, mean seconds per update (training, and with the
 * guard's probe), and the mean first-step |log-ratio| and clipped share (the sampler's gap to
 * the trainer: what quantized serving changes for GRPO).
 */
function updateCosts(versions: { version: number; stats: unknown }[]) {
  const stats = versions.filter((v) => v.version > 0).map((v) => (v.stats ?? {}) as Record<string, number | null>);
  const mean = (k: string, digits: number) => {
    const xs = stats.map((s) => s[k]).filter((x): x is number => typeof x === 'number');
    return xs.length ? +(xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(digits) : null;
  };
  return {
    optimizer_steps: stats.reduce((a, s) => a + (s.steps ?? 0), 0),
    update_s: mean('seconds', 2),
    update_train_s: mean('train_seconds', 2),
    first_step_abs_logratio: mean('first_step_abs_logratio', 5),
    clipped_share: mean('clipped_share', 4),
  };
}

function runPeer(): { questions_per_s: number; sample_tok_s: number; peer: string } | { error: string } {
  const script = fileURLToPath(new URL('../../shared/peers/torch_ttrl_peer.py', import.meta.url));
  if (!existsSync(script)) return { error: `peer not found at ${script}` };
  // The same shape as a full serving batch: 16 questions x 16 votes, 33 new tokens (the mean 4-operand completion).
  const r = spawnSync('/usr/bin/python3', [script, '--threads', '2', '--P', String(C), '--G', '16', '--T', '33', '--reps', '5'], { encoding: 'utf8' });
  if (r.status !== 0)
    return {
      error: `peer failed (${r.status}): ${(r.stderr || r.error?.message || '').trim().split('\n').at(-1)} -- apt-get install -y python3-torch libopenblas0-pthread`,
    };
  const p = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
  return { peer: p.peer, sample_tok_s: p.sample_tok_s, questions_per_s: +(C / p.sample_s).toFixed(2) };
}

const runs: Awaited<ReturnType<typeof run>>[] = [];
const postgresVersion = postgres ? await postgres.serverVersion() : null;
try {
  for (let seed = Number(o.firstSeed); seed < Number(o.firstSeed) + Number(o.seeds); seed++)
    for (const kind of o.streams.split(',')) for (const mode of o.modes.split(',')) runs.push(await run(kind, seed, mode));
} finally {
  postgres?.destroy();
}

const summary: Record<string, unknown> = {};
for (const kind of o.streams.split(',')) {
  const pick = (mode: string) => runs.filter((r) => r.stream === kind && r.mode === mode);
  const off = pick('off');
  const margins = (mode: string) =>
    pick(mode).flatMap((r) => {
      const base = off.find((x) => x.seed === r.seed);
      return base ? [+(r.accuracy_tail - base.accuracy_tail).toFixed(4)] : [];
    });
  const mean = (xs: number[]) => (xs.length ? +(xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(4) : null);
  summary[kind] = {
    accuracy_tail_off: mean(off.map((r) => r.accuracy_tail)),
    accuracy_tail_on: mean(pick('on').map((r) => r.accuracy_tail)),
    margin_on: margins('on'),
    margin_on_mean: mean(margins('on')),
    margin_on3x: margins('on3x'),
    // p99 of answers that overlapped an update, over the p99 of the same stream with adaptation off
    // (within an "on" run updates are in flight nearly all the time, so its own "no update" set is tiny).
    p99_ratio_update_in_flight: pick('on').map((r) => {
      const base = off.find((x) => x.seed === r.seed);
      return r.p99_update_in_flight_ms && base ? +(r.p99_update_in_flight_ms / base.p99_ms).toFixed(2) : null;
    }),
  };
}
const peer = o.peer ? runPeer() : { error: 'skipped (--no-peer)' };
const offRuns = runs.filter((r) => r.mode === 'off');
const ours = offRuns.length ? +(offRuns.reduce((a, r) => a + r.questions_per_s, 0) / offRuns.length).toFixed(2) : null;
function pick(o: Record<string, string>, keys: string[]) {
  return Object.fromEntries(Object.entries(o).filter(([k]) => keys.includes(k)));
}
const out = {
  bench: 'serve',
  date: new Date().toISOString().slice(0, 10),
  clients: C,
  store: STORE,
  frontends: F,
  ...(postgres
    ? { postgres: { version: postgresVersion, fsync: true }, frontend_settings: { ...FLEET_THREADS, ...pick(extra, Object.keys(FLEET_THREADS)) } }
    : {}),
  questions: N,
  votes: SETTINGS.votes.default,
  lr: baseLr,
  settings: extra,
  summary,
  questions_per_s_off: ours,
  peer: 'error' in peer ? peer.error : peer,
  peer_ratio: 'error' in peer || !ours ? null : +(ours / peer.questions_per_s).toFixed(2),
  runs,
};
if (o.svg) {
  // One chart per measure, a line per run (stream, seed, mode).
  const title = `${o.suite}, ${N} questions, ${o.set?.join(' ') || 'defaults'}`;
  writeFileSync(
    o.svg,
    windowsPlot(
      runs.map((r) => ({ name: `${r.stream} s${r.seed} ${r.mode}`, windows: r.windows ?? [] })),
      title,
    ),
  );
  log(`wrote ${o.svg}`);
}
if (!o.json) log(JSON.stringify(summary, null, 2));
console.log(JSON.stringify(out));
