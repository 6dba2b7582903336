// The write rate each store sustains for the answerer's batches: recordAnswered of batches of
// answered questions, each with its samples (16 by default, 40 tokens each, with their token
// ids and log-probs on PostgreSQL, as a fleet writes them), from several writers at once (as
// several front-ends write). SQLite is one file and one writer (WAL, synchronous FULL);
// PostgreSQL is a throwaway server this bench starts (test/helpers/postgres.ts), with fsync on.
//
//   npm run bench:store -- [--seconds 10] [--batch 32] [--samples 16] [--writers 1,2,4] [--json]
import { Command } from 'commander';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PostgresStore } from '../src/store/postgres.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { AnsweredRecord, Store } from '../src/store/store.ts';
import { startPostgres } from '../test/helpers/postgres.ts';

const o = new Command()
  .option('--seconds <s>', 'seconds per run', '10')
  .option('--batch <n>', 'questions per batch (one transaction)', '32')
  .option('--samples <n>', 'samples per question', '16')
  .option('--tokens <n>', 'tokens per sample', '40')
  .option('--writers <list>', 'concurrent writers (front-ends) on PostgreSQL', '1,2,4')
  .option('--json', 'print only the JSON line')
  .parse()
  .opts();
const seconds = Number(o.seconds);
const B = Number(o.batch);
const S = Number(o.samples);
const T = Number(o.tokens);
const say = (line: string) => (o.json ? process.stderr.write(line + '\n') : console.log(line));

let n = 0;
function batch(): AnsweredRecord[] {
  const now = Date.now();
  return Array.from({ length: B }, () => {
    const q = `${n++}+1=`;
    return {
      clientId: null,
      connection: 'bench',
      question: q,
      votesRequested: S,
      receivedAt: now,
      answeredAt: now,
      answer: '1',
      majorityRatio: 0.5,
      votes: { '1': S / 2, '2': S / 2 },
      modelVersion: 0,
      latencyMs: 10,
      source: 'bench',
      trainable: true,
      promptIds: Array.from({ length: 8 }, (_, i) => i),
      samples: Array.from({ length: S }, (_, k) => ({
        text: `${k};1=2#2`,
        answer: '2',
        tokens: T,
        logprobSum: -3,
        stopped: true,
        tokenIds: Array.from({ length: T }, (_, i) => i % 17),
        logprobs: Array.from({ length: T }, () => -0.1),
      })),
    };
  });
}

async function run(stores: Store[]): Promise<{ questions_per_s: number; samples_per_s: number; batch_ms_p50: number; batch_ms_p99: number }> {
  // Answers name the version that gave them: version 0 must exist.
  for (const s of stores) await s.ensureBaseVersion({ weightsPath: null, stats: { base: 'bench' } });
  const end = performance.now() + seconds * 1000;
  const times: number[] = [];
  let questions = 0;
  await Promise.all(
    stores.map(async (s, i) => {
      while (performance.now() < end) {
        const t0 = performance.now();
        await s.recordAnswered(batch(), `bench-${i}`);
        times.push(performance.now() - t0);
        questions += B;
      }
    }),
  );
  times.sort((a, b) => a - b);
  const pct = (p: number) => +times[Math.min(times.length - 1, Math.floor(p * times.length))]!.toFixed(1);
  return {
    questions_per_s: Math.round(questions / seconds),
    samples_per_s: Math.round((questions * S) / seconds),
    batch_ms_p50: pct(0.5),
    batch_ms_p99: pct(0.99),
  };
}

const results: Record<string, unknown> = { bench: 'store-write', date: new Date().toISOString().slice(0, 10), batch: B, samples: S, tokens: T, seconds };
const dir = mkdtempSync(join(tmpdir(), 'ttrl-bench-store-'));
try {
  const sqlite = SqliteStore.open(join(dir, 'bench.sqlite'));
  results.sqlite = await run([sqlite]);
  say(`sqlite, 1 writer: ${JSON.stringify(results.sqlite)}`);
  await sqlite.close();
  const pg = await startPostgres({ fsync: true });
  try {
    for (const w of String(o.writers).split(',').map(Number)) {
      pg.createDatabase(`bench${w}`);
      const stores = await Promise.all(Array.from({ length: w }, () => PostgresStore.open(pg.url(`bench${w}`))));
      const r = await run(stores);
      results[`postgres_${w}`] = r;
      say(`postgres, ${w} writer(s): ${JSON.stringify(r)}`);
      for (const s of stores) await s.close();
    }
  } finally {
    pg.destroy();
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
console.log(JSON.stringify(results));
