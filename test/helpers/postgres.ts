// A throwaway PostgreSQL server for a test file: initdb and pg_ctl in a temporary folder (as
// the `postgres` user when the tests run as root, which PostgreSQL refuses to run as), on
// 127.0.0.1 and a free port, trust authentication, stopped and removed when the file is done.
// Never a shared or system-wide server. Where PostgreSQL is not installed the caller skips,
// saying so (`.ci/run` installs it).
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const PG_ROOT = '/usr/lib/postgresql';

/** The folder of PostgreSQL's server binaries (the newest installed), or null. */
export function postgresBin(): string | null {
  if (!existsSync(PG_ROOT)) return null;
  const versions = readdirSync(PG_ROOT)
    .filter((v) => existsSync(join(PG_ROOT, v, 'bin', 'pg_ctl')))
    .sort((a, b) => Number(b) - Number(a));
  return versions.length ? join(PG_ROOT, versions[0]!, 'bin') : null;
}

/** Why PostgreSQL tests cannot run here, or null when they can. */
export const postgresMissing = (): string | null =>
  postgresBin() ? null : `PostgreSQL is not installed (${PG_ROOT}/*/bin/pg_ctl): apt-get install -y postgresql`;

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface TestPostgres {
  /** postgres://USER@127.0.0.1:PORT/DB for a fresh database of this server. */
  url(db?: string): string;
  port: number;
  /** Creates a database (each test may take its own). */
  createDatabase(name: string): void;
  /** Stops the server (fast: open sessions are cut), as an outage. */
  stop(): void;
  /** Starts it again on the same folder and port. */
  start(): void;
  /** Stops it and removes its folder. */
  destroy(): void;
}

/** fsync: on for a benchmark's honest write rate; off (the default) for tests, which need speed, not durability. */
export async function startPostgres(o: { fsync?: boolean } = {}): Promise<TestPostgres> {
  const bin = postgresBin();
  if (!bin) throw new Error(postgresMissing()!);
  const asRoot = process.getuid?.() === 0;
  const user = asRoot ? 'postgres' : (process.env.USER ?? 'postgres');
  const dir = mkdtempSync(join(tmpdir(), 'ttrl-pg-'));
  // The postgres user must be able to reach and own its data folder.
  chmodSync(dir, 0o777);
  const data = join(dir, 'data');
  const log = join(dir, 'log');
  const run = (cmd: string, args: string[]) => {
    const full = asRoot ? ['-u', 'postgres', '--', join(bin, cmd), ...args] : args;
    const r = spawnSync(asRoot ? 'runuser' : join(bin, cmd), full, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr || r.stdout}`);
    return r.stdout;
  };
  run('initdb', ['-D', data, '-A', 'trust', '-U', user, '--no-sync', '-E', 'UTF8']);
  const port = await freePort();
  // Unix sockets in our folder (not /var/run), TCP on loopback only; fsync off for tests.
  const opts = `-c listen_addresses=127.0.0.1 -c port=${port} -c unix_socket_directories=${dir} ${o.fsync ? '' : '-c fsync=off -c synchronous_commit=off -c full_page_writes=off'} -c max_connections=200`;
  const start = () => run('pg_ctl', ['-D', data, '-l', log, '-w', '-t', '60', '-o', opts, 'start']);
  const stop = () => run('pg_ctl', ['-D', data, '-m', 'fast', '-w', '-t', '60', 'stop']);
  start();
  const psql = (sql: string) =>
    execFileSync(join(bin, 'psql'), ['-h', '127.0.0.1', '-p', String(port), '-U', user, '-d', 'postgres', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
      encoding: 'utf8',
    });
  let stopped = false;
  return {
    port,
    url: (db = 'postgres') => `postgres://${user}@127.0.0.1:${port}/${db}`,
    createDatabase: (name) => void psql(`CREATE DATABASE "${name}"`),
    stop: () => {
      stop();
      stopped = true;
    },
    start: () => {
      start();
      stopped = false;
    },
    destroy: () => {
      try {
        if (!stopped) stop();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
