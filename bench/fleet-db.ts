// What bench/serve.ts and bench/soak.ts share when they run several front-ends on one
// PostgreSQL database (--frontends N > 1): a throwaway PostgreSQL server they start
// themselves (test/helpers/postgres.ts, with fsync on: a benchmark's honest write rate), a
// fresh database per run, queries against it, and waiting for the fleet to elect a leader.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import pg from 'pg';
import { postgresBin, startPostgres, type TestPostgres } from '../test/helpers/postgres.ts';

export interface BenchPostgres {
  /** A fresh database on the bench's server; its postgres:// URL. */
  create(name: string): string;
  drop(name: string): Promise<void>;
  /** pg_dump -Fc of a database to a file (BENCH_KEEP / --keep: the cluster itself goes at exit). */
  dump(name: string, file: string): void;
  /** pg_amcheck of a database (heap and B-tree indexes): 'ok', or what it reported. */
  amcheck(name: string): string;
  /** The server's version string (SHOW server_version). */
  serverVersion(): Promise<string>;
  url(name: string): string;
  /** Stops the server and removes its folder (once; later calls do nothing). */
  destroy(): void;
}

/** Starts PostgreSQL with fsync on; destroyed at process exit if the caller does not first. */
export async function startBenchPostgres(): Promise<BenchPostgres> {
  const server: TestPostgres = await startPostgres({ fsync: true });
  let gone = false;
  const destroy = () => {
    if (gone) return;
    gone = true;
    server.destroy();
  };
  process.on('exit', destroy);
  const user = new URL(server.url()).username;
  const bin = postgresBin()!;
  const tool = (cmd: string, args: string[]) =>
    spawnSync(join(bin, cmd), ['-h', '127.0.0.1', '-p', String(server.port), '-U', user, ...args], { encoding: 'utf8' });
  return {
    create: (name) => (server.createDatabase(name), server.url(name)),
    drop: async (name) => void (await sql(server.url(), `DROP DATABASE IF EXISTS "${name}"`)),
    dump: (name, file) => {
      const r = tool('pg_dump', ['-Fc', '-f', file, name]);
      if (r.status !== 0) throw new Error(`pg_dump ${name} failed (${r.status}): ${r.stderr}`);
    },
    amcheck: (name) => {
      const r = tool('pg_amcheck', ['--install-missing', '--heapallindexed', '-d', name]);
      const said = `${r.stdout}${r.stderr}`.trim();
      return r.status === 0 && !said ? 'ok' : `pg_amcheck exit ${r.status ?? r.error?.message}: ${said.split('\n').slice(0, 5).join('; ')}`;
    },
    serverVersion: async () => (await sql<{ server_version: string }>(server.url(), 'SHOW server_version'))[0]!.server_version,
    url: (name) => server.url(name),
    destroy,
  };
}

/** One query on a fresh connection. */
export async function sql<T extends pg.QueryResultRow>(url: string, text: string, values: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(text, values)).rows;
  } finally {
    await c.end();
  }
}

export interface Readyz {
  status: number;
  ready: boolean;
  model_version: number;
  reasons: string[];
  fleet?: { frontend: string; leading: boolean; leader: string | null; versions_behind: number };
}

export async function readyz(url: string): Promise<Readyz> {
  const r = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(5000) });
  return { status: r.status, ...((await r.json()) as Omit<Readyz, 'status'>) };
}

/**
 * Waits until exactly one front-end leads (by /readyz), and returns its id. The leader trains
 * on the log from where it took the lead, so the load starts only once one has.
 */
export async function waitForLeader(urls: string[], timeoutMs = 60_000): Promise<string> {
  const end = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < end) {
    try {
      const states = await Promise.all(urls.map(readyz));
      const leading = states.filter((s) => s.fleet?.leading).map((s) => s.fleet!.frontend);
      if (leading.length === 1) return leading[0]!;
      last = `${leading.length} leading`;
    } catch (e) {
      last = (e as Error).message;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no single leader within ${timeoutMs} ms (${last})`);
}
