// Schema migrations: numbered .sql files in migrations/ (001_init.sql, 002_...), applied in
// order, each in its own transaction, and recorded in schema_migrations. A database whose
// schema is newer than this code knows is refused rather than misread.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type Database from 'better-sqlite3';
import type pg from 'pg';
import { inTransaction } from './pg-transaction.ts';

/** The migrations of each store, in their own folders: one schema, two dialects. */
export const MIGRATIONS_DIR = fileURLToPath(new URL('../../migrations/sqlite/', import.meta.url));
export const POSTGRES_MIGRATIONS_DIR = fileURLToPath(new URL('../../migrations/postgres/', import.meta.url));

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export function loadMigrations(dir = MIGRATIONS_DIR): Migration[] {
  const out: Migration[] = [];
  for (const file of readdirSync(dir).sort()) {
    if (!file.endsWith('.sql')) continue;
    const m = /^(\d+)_([\w-]+)\.sql$/.exec(file);
    if (!m) throw new Error(`migrations: ${file} is not named NNN_name.sql`);
    out.push({ version: Number(m[1]), name: m[2]!, sql: readFileSync(join(dir, file), 'utf8') });
  }
  out.forEach((m, i) => {
    if (m.version !== i + 1)
      throw new Error(`migrations: expected version ${i + 1}, found ${m.version} (${m.name}); versions must run 1, 2, 3, ... without gaps`);
  });
  return out;
}

/** Applies pending migrations; returns the versions applied. */
export function migrate(db: Database.Database, migrations = loadMigrations()): number[] {
  db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`);
  const current = (db.prepare('SELECT MAX(version) AS v FROM schema_migrations').get() as { v: number | null }).v ?? 0;
  const known = migrations.length;
  if (current > known)
    throw new Error(`the database schema is at version ${current}, newer than this ttrl-server knows (${known}); upgrade ttrl-server or use another --db`);
  const applied: number[] = [];
  // Foreign keys off while a migration runs: a migration that rebuilds a table (SQLite's way
  // to change a constraint) drops the table others refer to. They can only be switched
  // outside a transaction; every key is checked before the migration commits.
  const foreignKeys = db.pragma('foreign_keys', { simple: true }) as number;
  db.pragma('foreign_keys = OFF');
  try {
    for (const m of migrations.slice(current)) {
      db.transaction(() => {
        db.exec(m.sql);
        const broken = db.pragma('foreign_key_check') as { table: string; rowid: number; parent: string }[];
        if (broken.length)
          throw new Error(
            `migration ${m.version} (${m.name}) breaks ${broken.length} foreign key(s), first ${broken[0]!.table} row ${broken[0]!.rowid} -> ${broken[0]!.parent}`,
          );
        db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(m.version, m.name, Date.now());
      })();
      applied.push(m.version);
    }
  } finally {
    db.pragma(`foreign_keys = ${foreignKeys ? 'ON' : 'OFF'}`);
  }
  return applied;
}

/**
 * The same rules on PostgreSQL: applied in order (all pending ones in one transaction), recorded, a
 * newer schema refused. Front-ends starting together take turns (a transaction-level
 * advisory lock), so each migration runs once.
 */
export async function migratePostgres(pool: pg.Pool, migrations = loadMigrations(POSTGRES_MIGRATIONS_DIR)): Promise<number[]> {
  return inTransaction(pool, async (c) => {
    await c.query('SELECT pg_advisory_xact_lock(30577, 0)');
    await c.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)');
    const current = Number((await c.query<{ v: number | null }>('SELECT MAX(version) AS v FROM schema_migrations')).rows[0]!.v ?? 0);
    if (current > migrations.length)
      throw new Error(
        `the database schema is at version ${current}, newer than this ttrl-server knows (${migrations.length}); upgrade ttrl-server or use another --db`,
      );
    const applied: number[] = [];
    for (const m of migrations.slice(current)) {
      await c.query(m.sql);
      await c.query('INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)', [m.version, m.name, Date.now()]);
      applied.push(m.version);
    }
    return applied;
  });
}
