// Several front-ends on one PostgreSQL database: two PostgresStore instances (two pools, two
// coordination sessions, as two processes would have) on a throwaway server started once for
// this file. Version numbers given once under concurrency, experiences read in commit order
// past a transaction still open, the leader lock passing on when the leader goes, version
// notices surviving a lost session, heartbeats, and the database going away and coming back.
// Skipped, saying why, where PostgreSQL is not installed.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { PostgresStore } from '../src/store/postgres.ts';
import { packFloats, packInts, type StoredExperience } from '../src/store/store.ts';
import { postgresMissing, startPostgres, type TestPostgres } from './helpers/postgres.ts';
import { answered } from './helpers/store-records.ts';

const missing = postgresMissing();
let server: TestPostgres;
let databases = 0;
const open: PostgresStore[] = [];

/** A new database, and its URL with an application_name that names the front-end (pg_stat_activity shows it). */
function freshDatabase(): string {
  const name = `fleet_${++databases}`;
  server.createDatabase(name);
  return server.url(name);
}

const as = (url: string, app: string) => `${url}?application_name=${app}`;

async function store(url: string): Promise<PostgresStore> {
  const s = await PostgresStore.open(url);
  open.push(s);
  return s;
}

/** Raw SQL on its own connection (an operator's psql). */
async function sql<R extends pg.QueryResultRow = Record<string, unknown>>(url: string, text: string, values: unknown[] = []): Promise<R[]> {
  const c = new pg.Client({ connectionString: url });
  c.on('error', () => undefined);
  await c.connect();
  try {
    return (await c.query<R>(text, values)).rows;
  } finally {
    await c.end();
  }
}

/** Ends every session of one front-end, as the server does to a lost or killed client. */
const terminate = (url: string, app: string) =>
  sql<{ n: number }>(url, 'SELECT COUNT(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()', [
    app,
  ]);

async function until(what: string, check: () => Promise<boolean> | boolean, ms = 3000): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (await check()) return Date.now() - t0;
    if (Date.now() - t0 > ms) assert.fail(`${what}: not within ${ms} ms`);
    await sleep(25);
  }
}

describe('PostgreSQL: two front-ends on one database', { skip: missing ?? false }, () => {
  before(async () => {
    server = await startPostgres();
  });
  after(async () => {
    for (const s of open) await s.close().catch(() => undefined);
    server?.destroy();
  });

  test('version numbers are given once: concurrent adds from two front-ends, and version 0 made once', async () => {
    const url = freshDatabase();
    // Version 0 from both at once, several times over, on an empty database.
    const [a, b] = await Promise.all([store(as(url, 'a')), store(as(url, 'b'))]);
    const base = { weightsPath: '/models/base', stats: { base: '/models/base' } };
    await Promise.all([a, b, a, b, a, b].map((s) => s.ensureBaseVersion(base)));
    const v0 = await a.versions();
    assert.deepEqual(
      v0.map((v) => [v.version, v.status]),
      [[0, 'active']],
    );

    const numbers = await Promise.all([
      ...Array.from({ length: 20 }, (_, i) => a.addVersion({ parent: 0, status: 'candidate', weightsPath: (v) => `/v/a${i}-${v}` })),
      ...Array.from({ length: 20 }, (_, i) => b.addVersion({ parent: 0, status: 'candidate', weightsPath: (v) => `/v/b${i}-${v}` })),
    ]);
    assert.deepEqual(
      [...numbers].sort((x, y) => x - y),
      Array.from({ length: 40 }, (_, i) => i + 1),
    );
    const rows = await b.versions();
    assert.deepEqual(
      rows.map((r) => r.version),
      Array.from({ length: 41 }, (_, i) => i),
    );
    // Each path was made from the number its row got.
    for (const r of rows.slice(1)) assert.match(r.weights_path!, new RegExp(`-${r.version}$`));

    // Activations from both at once: one active version at the end, none refused.
    await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).activate(i + 1)));
    const active = (await a.versions()).filter((r) => r.status === 'active');
    assert.equal(active.length, 1);
    assert.deepEqual(await b.activeVersion(), active[0]);
    // A version added and activated at once by each, concurrently: still one active.
    await Promise.all([a, b].map((s) => s.addVersion({ parent: 0, status: 'candidate', weightsPath: null, activate: true })));
    assert.equal((await a.versions()).filter((r) => r.status === 'active').length, 1);
    assert.equal((await a.activeVersion())!.version >= 41, true);
  });

  test('commit order: a transaction still open holds the cursor back, and every question is read exactly once', async () => {
    const url = freshDatabase();
    const [a, b] = await Promise.all([store(as(url, 'a')), store(as(url, 'b'))]);
    await a.ensureBaseVersion({ weightsPath: '/models/base' });
    const seen: StoredExperience[] = [];
    let cursor = await a.experienceCursorNow();
    const read = async () => {
      for (;;) {
        const r = await a.experiencesAfter(cursor, 2);
        cursor = r.cursor;
        seen.push(...r.experiences);
        if (!r.experiences.length) return;
      }
    };

    // Committed before anything else is open: read at once.
    const [early] = await b.recordAnswered([answered('early')], 'b');
    await read();
    assert.deepEqual(
      seen.map((e) => e.id),
      [early],
    );

    // A front-end's transaction opened by hand: it takes its id and its transaction id first.
    const slow = new pg.Client({ connectionString: as(url, 'slow') });
    slow.on('error', () => undefined);
    await slow.connect();
    await slow.query('BEGIN');
    const slowId = Number(
      (
        await slow.query<{ id: string }>(
          `INSERT INTO questions (question, votes_requested, received_at, answered_at, status, answer, majority_ratio, votes, model_version, latency_ms, frontend, source, trainable, prompt_ids)
           VALUES ('slow', 1, 1, 2, 'answered', '7', 1, '{"7":1}', 0, 1, 'slow', null, true, $1) RETURNING id`,
          [packInts([1, 2, 3])],
        )
      ).rows[0]!.id,
    );
    await slow.query(
      `INSERT INTO samples (question_id, idx, text, answer, tokens, logprob_sum, stopped, token_ids, logprobs) VALUES ($1, 0, '7', '7', 1, -0.5, true, $2, $3)`,
      [slowId, packInts([55]), packFloats([-0.5])],
    );
    const whileOpen = await a.experienceCursorNow();

    // Another front-end commits after it (a larger id), several batches.
    const later = [...(await b.recordAnswered([answered('later-1'), answered('later-2')], 'b')), ...(await a.recordAnswered([answered('later-3')], 'a'))];
    assert.ok(later.every((id) => id > slowId));
    await read();
    // The cursor did not pass the open transaction: nothing after it was read yet.
    assert.deepEqual(
      seen.map((e) => e.id),
      [early],
    );

    await slow.query('COMMIT');
    await slow.end();
    await read();
    // The slow one, then the later ones: each exactly once, in commit-safe order.
    assert.deepEqual(
      seen.map((e) => e.id),
      [early, slowId, ...later],
    );
    const slowExp = seen[1]!;
    assert.deepEqual([slowExp.question, slowExp.promptIds, slowExp.samples[0]!.tokenIds, slowExp.samples[0]!.logprobs], ['slow', [1, 2, 3], [55], [-0.5]]);
    await read();
    assert.equal(seen.length, 5);
    assert.equal(new Set(seen.map((e) => e.id)).size, 5);

    // A cursor taken while it was open does not skip it either.
    const fromThen = await a.experiencesAfter(whileOpen, 100);
    assert.deepEqual(
      fromThen.experiences.map((e) => e.id),
      [slowId, ...later],
    );

    // A transaction that rolls back leaves nothing behind to read.
    const gone = new pg.Client({ connectionString: url });
    await gone.connect();
    await gone.query('BEGIN');
    await gone.query(
      `INSERT INTO questions (question, votes_requested, received_at, status, trainable, prompt_ids) VALUES ('gone', 1, 1, 'answered', true, $1)`,
      [packInts([1])],
    );
    const [last] = await b.recordAnswered([answered('after-rollback')], 'b');
    await read();
    assert.equal(seen.length, 5);
    await gone.query('ROLLBACK');
    await gone.end();
    await read();
    assert.deepEqual(
      seen.slice(5).map((e) => e.id),
      [last],
    );
  });

  test('the leader lock: one leads; when its session ends or its store closes, the other takes over within a second or two', async () => {
    const url = freshDatabase();
    const a = await store(as(url, 'lead-a'));
    const b = await store(as(url, 'lead-b'));
    assert.equal(await a.fleet.tryLead(), true);
    assert.equal(await a.fleet.tryLead(), true, 'asked again: still held');
    assert.equal(await b.fleet.tryLead(), false);
    assert.equal(a.fleet.leading, true);
    assert.equal(b.fleet.leading, false);

    // Released: the other takes it.
    await a.fleet.release();
    assert.equal(a.fleet.leading, false);
    assert.equal(await b.fleet.tryLead(), true);
    await b.fleet.release();
    // Tries at once from one front-end take the lock once: one release frees it.
    assert.deepEqual(await Promise.all([a.fleet.tryLead(), a.fleet.tryLead(), a.fleet.tryLead()]), [true, true, true]);
    await a.fleet.release();
    assert.equal(a.fleet.leading, false);
    assert.equal(await b.fleet.tryLead(), true);
    assert.equal(await a.fleet.tryLead(), false);

    // The leader's session killed by the server (a crashed or cut-off process): it knows it no
    // longer leads, and the other takes over.
    const killed = await sql<{ pid: number }>(
      url,
      `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objid = 1 AND objsubid = 2 AND granted`,
      [0x7771],
    );
    assert.equal(killed.length, 1, 'one session holds the leader lock');
    await sql(url, 'SELECT pg_terminate_backend($1)', [killed[0]!.pid]);
    await until('the old leader notices', () => !b.fleet.leading);
    const took = await until('the other front-end leads', () => a.fleet.tryLead(), 2000);
    assert.ok(took < 2000, `took over in ${took} ms`);
    assert.equal(await b.fleet.tryLead(), false, 'reconnected: the lock is taken');

    // The leader's store closed (a process shutting down): the other takes over.
    await a.close();
    await a.close();
    assert.equal(a.fleet.leading, false);
    await until('leadership passes on close', () => b.fleet.tryLead(), 2000);
    assert.equal(await a.fleet.tryLead(), false, 'a closed store never leads');
    await assert.rejects(a.fleet.announceVersion(1), /closed/);
  });

  test('version notices reach the other front-end; after its session is lost it is told to re-read, and notices resume once reconnected', async () => {
    const url = freshDatabase();
    const a = await store(as(url, 'note-a'));
    const b = await store(as(url, 'note-b'));
    const heard: (number | null)[] = [];
    b.fleet.onVersion((v) => heard.push(v));
    await b.fleet.connect();
    await a.fleet.announceVersion(7);
    await until('notice 7', () => heard.includes(7), 2000);
    assert.deepEqual([...heard], [7]);

    // The server ends every session of b (its coordination session among them).
    const { n } = (await terminate(url, 'note-b'))[0]!;
    assert.ok(n >= 1);
    await until('told to re-read', () => heard.includes(null), 2000);
    assert.deepEqual(heard, [7, null]);
    // Announced while b has no session: not heard (hence the re-read).
    await a.fleet.announceVersion(8);
    await sleep(200);
    assert.deepEqual(heard, [7, null]);

    await b.fleet.connect();
    await a.fleet.announceVersion(9);
    await until('notice 9 after reconnecting', () => heard.includes(9), 2000);
    assert.deepEqual(heard, [7, null, 9]);
    // b's pool reconnects too: its queries work.
    assert.equal((await b.versions()).length, 0);
    // Both directions.
    const heardByA: (number | null)[] = [];
    a.fleet.onVersion((v) => heardByA.push(v));
    await b.fleet.announceVersion(10);
    await until('a hears b', () => heardByA.includes(10), 2000);
  });

  test('a database that cannot be reached is refused, naming it without its password', async () => {
    await assert.rejects(PostgresStore.open(`postgres://someone:secret-pw@127.0.0.1:${server.port + 1}/nowhere`), (e: Error) => {
      assert.match(e.message, /^postgres:\/\/someone:\*\*\*@127\.0\.0\.1:\d+\/nowhere: /);
      assert.doesNotMatch(e.message, /secret-pw/);
      return true;
    });
    await assert.rejects(PostgresStore.open(server.url('no_such_database')), /no_such_database.*does not exist/);
  });

  test('heartbeats: the front-ends seen recently, each as it last said', async () => {
    const url = freshDatabase();
    const a = await store(url);
    const b = await store(url);
    const t0 = Date.now();
    await a.fleet.heartbeat({ id: 'fe-a', address: '10.0.0.1:8080', started_at: t0 - 5000, serving_version: 3, leader: true });
    await b.fleet.heartbeat({ id: 'fe-b', address: '10.0.0.2:8080', started_at: t0 - 1000, serving_version: 2, leader: false });
    const seen = await b.fleet.frontends(10_000);
    assert.deepEqual(
      seen.map((f) => [f.id, f.address, f.started_at, f.serving_version, f.leader]),
      [
        ['fe-a', '10.0.0.1:8080', t0 - 5000, 3, true],
        ['fe-b', '10.0.0.2:8080', t0 - 1000, 2, false],
      ],
    );
    assert.ok(seen.every((f) => f.last_seen >= t0 && f.last_seen <= Date.now()));

    // A later beat updates what it serves and whether it leads; its start stays the first.
    await a.fleet.heartbeat({ id: 'fe-a', address: '10.0.0.1:8080', started_at: t0, serving_version: 4, leader: false });
    const fa = (await a.fleet.frontends(10_000)).find((f) => f.id === 'fe-a')!;
    assert.deepEqual([fa.serving_version, fa.leader, fa.started_at], [4, false, t0 - 5000]);

    // One not seen for a minute is not listed.
    await sql(url, 'UPDATE frontends SET last_seen = $1 WHERE id = $2', [Date.now() - 60_000, 'fe-b']);
    assert.deepEqual(
      (await a.fleet.frontends(30_000)).map((f) => f.id),
      ['fe-a'],
    );
  });

  test('the database stopped and started again: calls fail while it is down and work after, on the same store', async () => {
    const url = freshDatabase();
    const a = await store(as(url, 'outage-a'));
    await a.ensureBaseVersion({ weightsPath: '/models/base' });
    await a.recordAnswered([answered('before')], 'a');
    const heard: (number | null)[] = [];
    a.fleet.onVersion((v) => heard.push(v));
    assert.equal(await a.fleet.tryLead(), true);
    await a.fleet.heartbeat({ id: 'a', address: 'a:1', started_at: 1, serving_version: 0, leader: true });

    // A transaction of the store waiting (on the versions lock, held here) when the server stops.
    const holder = new pg.Client({ connectionString: url });
    holder.on('error', () => undefined);
    await holder.connect();
    await holder.query('BEGIN');
    await holder.query('SELECT pg_advisory_xact_lock($1, $2)', [0x7771, 2]);
    const waiting = a.addVersion({ parent: 0, status: 'candidate', weightsPath: null });
    waiting.catch(() => undefined);
    await until(
      'the add waits for the lock',
      async () => (await sql(url, `SELECT 1 FROM pg_stat_activity WHERE application_name = 'outage-a' AND wait_event_type = 'Lock'`)).length > 0,
    );

    server.stop();
    try {
      await assert.rejects(waiting, 'the transaction under way fails (and the process lives on)');
      await assert.rejects(a.counts());
      await assert.rejects(a.recordAnswered([answered('during')], 'a'));
      await assert.rejects(a.addVersion({ parent: 0, status: 'candidate', weightsPath: null }));
      await assert.rejects(a.probeWrite());
      await assert.rejects(a.fleet.heartbeat({ id: 'a', address: 'a:1', started_at: 1, serving_version: 0, leader: true }));
      await assert.rejects(a.fleet.connect());
      await until('the leader knows it no longer leads', () => !a.fleet.leading);
      assert.ok(heard.includes(null), 'listeners told to re-read');
    } finally {
      server.start();
    }

    // The same store, no reopening: the pool reconnects.
    await a.recordAnswered([answered('after')], 'a');
    assert.deepEqual(await a.counts(), { answered: 2, failed: 0, samples: 4 });
    await a.probeWrite();
    await a.fleet.heartbeat({ id: 'a', address: 'a:1', started_at: 1, serving_version: 0, leader: false });
    assert.equal((await a.fleet.frontends(10_000)).length, 1);
    assert.equal(await a.fleet.tryLead(), true, 'the lock is free again after the restart');
    assert.deepEqual(
      (await a.versions()).map((v) => v.version),
      [0],
      'the add that was under way never happened',
    );
  });
});
