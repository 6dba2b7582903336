// Serving benchmark: the server on the shipped model, C WebSocket clients over loopback
// (closed loop: each has one question in flight), two streams of four-operand questions:
//   recurring: a pool of 256 questions, each asked about 8 times in random order
//   fresh:     every question new
// For each seed and stream it runs adaptation off, on (default lr) and on at 3x lr, and
// reports questions/s, p50/p99 latency (and p99 of answers that overlapped an update), and
// the served accuracy of the last quarter of the stream, scored afterwards with the suite's
// answers. Then the PyTorch peer's raw sampling speed at the same shape, for the ratio.
//
//   npm run bench:serve -- [--json] [--clients 16] [--questions 2000] [--seeds 3] [--first-seed 0] [--streams recurring,fresh]
//                          [--modes off,on,on3x] [--lr X] [--set key=value ...] [--no-peer]
//   BENCH_KEEP=1 keeps each run's database and versions (bench/guard-study.ts reads them).
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
  }>();

const log = (...a: unknown[]) => console.error(...a);
const N = Number(o.questions);
const C = Number(o.clients);
const extra = Object.fromEntries((o.set ?? []).map((kv) => kv.split('=') as [string, string]));
const baseLr = o.lr ? Number(o.lr) : lrOf({ loraRank: Number(extra.loraRank ?? 0) });
const tail = { from: Math.floor(N * 0.75), to: N }; // questions 1,501-2,000 of 2,000

function stream(kind: string, seed: number): Question[] {
  if (kind === 'fresh') {
    const seen = new Set<string>();
    return suite('4-operand', N * 2, 20_000 + seed)
      .filter((q) => !seen.has(q.question) && seen.add(q.question))
      .slice(0, N);
  }
  if (kind !== 'recurring') throw new Error(`unknown stream ${kind}`);
  const pool = suite('4-operand', 256, 10_000 + seed);
  const all = Array.from({ length: Math.ceil(N / pool.length) }, () => pool).flat();
  return new Rng(seed).shuffle(all).slice(0, N);
}

async function run(kind: string, seed: number, mode: string) {
  const questions = stream(kind, seed);
  const dir = await mkdtemp(join(tmpdir(), 'ttrl-bench-'));
  const lr = mode === 'on3x' ? 3 * baseLr : baseLr;
  const settings = resolveSettings({ port: 0, db: join(dir, 'b.sqlite'), seed, adapt: mode !== 'off', lr, ...extra }, {});
  const server = await startServer(settings);
  const updates: { start: number; end?: number; outcome?: string }[] = [];
  server.adaptation.updates$.subscribe((e) =>
    e.phase === 'start' ? updates.push({ start: performance.now() }) : Object.assign(updates.at(-1)!, { end: performance.now(), outcome: e.outcome.outcome }),
  );
  const served: { answer: string | null; version: number; sent: number; got: number }[] = new Array(N);
  let next = 0;
  const t0 = performance.now();
  const client = async () => {
    const ws = new WebSocket(server.wsUrl);
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
          served[i] = { answer: m.answer as string | null, version: m.model_version as number, sent, got: performance.now() };
          break;
        }
        if (m.code !== 'overloaded') throw new Error(`question ${i}: ${m.code} ${m.message}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    ws.close();
  };
  await Promise.all(Array.from({ length: C }, client));
  const wall = (performance.now() - t0) / 1000;
  await server.adaptation.idle(); // let an update in flight finish before closing
  const versions = server.store.versions();
  await server.close();
  if (process.env.BENCH_KEEP) log(`kept ${dir}`);
  else await rm(dir, { recursive: true, force: true });
  const lat = served.map((s) => s.got - s.sent);
  const during = served.filter((s) => updates.some((u) => s.sent < (u.end ?? Infinity) && s.got > u.start)).map((s) => s.got - s.sent);
  const outside = served.filter((s) => !updates.some((u) => s.sent < (u.end ?? Infinity) && s.got > u.start)).map((s) => s.got - s.sent);
  const acc = (a: number, b: number) => served.slice(a, b).filter((s, j) => s.answer === questions[a + j]!.answer).length / (b - a);
  const r = {
    stream: kind,
    seed,
    mode,
    lr: mode === 'off' ? null : lr,
    questions_per_s: +(N / wall).toFixed(2),
    p50_ms: Math.round(quantile(lat, 0.5)!),
    p99_ms: Math.round(quantile(lat, 0.99)!),
    p99_no_update_ms: outside.length ? Math.round(quantile(outside, 0.99)!) : null,
    p99_update_in_flight_ms: during.length ? Math.round(quantile(during, 0.99)!) : null,
    answers_during_updates: during.length,
    accuracy_first_quarter: +acc(0, Math.floor(N / 4)).toFixed(4),
    accuracy_tail: +acc(tail.from, tail.to).toFixed(4),
    updates: updates.length,
    promoted: versions.filter((v) => v.version > 0 && v.status !== 'rejected').length,
    rejected: versions.filter((v) => v.status === 'rejected').length,
    final_version: served.at(-1)!.version,
    ...updateCosts(versions),
  };
  log(JSON.stringify(r));
  return r;
}

/** What the updates did: optimizer steps in all, and mean seconds per update (training, and with the guard's probe). */
function updateCosts(versions: { version: number; stats: unknown }[]) {
  const stats = versions.filter((v) => v.version > 0).map((v) => (v.stats ?? {}) as Record<string, number>);
  const mean = (k: string) => (stats.length ? +(stats.reduce((a, s) => a + (s[k] ?? 0), 0) / stats.length).toFixed(2) : null);
  return { optimizer_steps: stats.reduce((a, s) => a + (s.steps ?? 0), 0), update_s: mean('seconds'), update_train_s: mean('train_seconds') };
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
for (let seed = Number(o.firstSeed); seed < Number(o.firstSeed) + Number(o.seeds); seed++)
  for (const kind of o.streams.split(',')) for (const mode of o.modes.split(',')) runs.push(await run(kind, seed, mode));

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
const out = {
  bench: 'serve',
  date: new Date().toISOString().slice(0, 10),
  clients: C,
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
if (!o.json) log(JSON.stringify(summary, null, 2));
console.log(JSON.stringify(out));
