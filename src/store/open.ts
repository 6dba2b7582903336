// Which store a location names: a path (or file:) is a SQLite file, postgres:// or
// postgresql:// a PostgreSQL database. Any other URL scheme is refused, naming it: a
// location like "mysql://..." must not become a folder named "mysql:" with SQLite inside.
import { fileURLToPath } from 'node:url';
import { PostgresStore } from './postgres.ts';
import { SqliteStore } from './sqlite.ts';
import type { Store } from './store.ts';

export type StoreKind = 'sqlite' | 'postgres';

/** The kind of store a location names; throws on a scheme no store takes. */
export function storeKind(location: string): StoreKind {
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(location)?.[1]?.toLowerCase();
  if (scheme === undefined || scheme === 'file') return 'sqlite';
  if (scheme === 'postgres' || scheme === 'postgresql') return 'postgres';
  throw new Error(`--db ${hidePassword(location)}: the scheme ${scheme}:// is not supported; use a SQLite file path or a postgres:// URL`);
}

/** A location safe to log: a URL's password replaced. */
export function hidePassword(location: string): string {
  return location.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*:)[^@]*@/i, '$1***@').replace(/([?&]password=)[^&#]*/gi, '$1***');
}

/** The file a SQLite location names (a path, or a file:// URL). */
export const sqlitePath = (location: string): string => (location.startsWith('file://') ? fileURLToPath(location) : location);

export async function openStore(location: string): Promise<Store> {
  const kind = storeKind(location);
  if (kind === 'postgres') return PostgresStore.open(location);
  return SqliteStore.open(sqlitePath(location));
}
