// One PostgreSQL transaction on one pooled connection, for the store and its migrations alike.
import type pg from 'pg';

/**
 * Runs f in one transaction on one pooled connection. While the connection is checked out,
 * node-postgres has nobody listening for its 'error' event (the pool listens only to idle
 * ones): a server that goes away mid-transaction would throw it uncaught and end the process.
 * A connection that failed is destroyed rather than handed back.
 */
export async function inTransaction<T>(pool: pg.Pool, f: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const c = await pool.connect();
  let lost: Error | undefined;
  const onError = (e: Error) => void (lost ??= e);
  c.on('error', onError);
  try {
    await c.query('BEGIN');
    const r = await f(c);
    await c.query('COMMIT');
    return r;
  } catch (e) {
    await c.query('ROLLBACK').catch((r: Error) => void (lost ??= r));
    throw e;
  } finally {
    c.removeListener('error', onError);
    c.release(lost);
  }
}
