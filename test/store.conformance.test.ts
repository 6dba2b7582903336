// One set of tests, run against both stores: SqliteStore on a temporary file and
// PostgresStore on a database of a throwaway PostgreSQL server started once for this file
// (test/helpers/postgres.ts). What the serving loop relies on must hold alike on both: the
// log (answered and failed questions with their samples, who answered and who asked), ask
// counts, the version lineage, meta, events, the readiness write and the migrations. Where
// they differ by design it is tested as such: SQLite keeps no token ids (one process trains
// from memory), so it has no experiences to read back; PostgreSQL keeps them exactly.
// Without PostgreSQL installed, the PostgreSQL half skips, saying why.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import pg from 'pg';
import Database from 'better-sqlite3';
import { loadMigrations, migrate, migratePostgres, MIGRATIONS_DIR, POSTGRES_MIGRATIONS_DIR, type Migration } from '../src/store/migrate.ts';
import { copyStore } from '../src/store/copy.ts';
import { hidePassword, openStore, storeKind } from '../src/store/open.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { QuestionRow, Store } from '../src/store/store.ts';
import { postgresMissing, startPostgres, type TestPostgres } from './helpers/postgres.ts';
import { answered, failed } from './helpers/store-records.ts';
import { scratch } from './helpers/scratch.ts';

/** What a test needs of a kind of store: a fresh empty one, and raw SQL on its database. */
interface Kind {
  name: 'sqlite' | 'postgres';
  skip: string | false;
  /** A new, empty store's location. */
  fresh(): Promise<string>;
  /** Runs SQL on the location's database directly (not through the store). */
  sql(location: string, text: string, values?: unknown[]): Promise<Record<string, unknown>[]>;
  migrationsDir: string;
  /** Applies only these migrations to a fresh location (a database as an older ttrl-server left it), then runs SQL on it. */
  oldSchema(location: string, migrations: Migration[], text: string): Promise<void>;
}

let server: TestPostgres | undefined;
let databases = 0;
const missing = postgresMissing();

const kinds: Kind[] = [
  {
    name: 'sqlite',
    skip: false,
    fresh: async () => join(await scratch('ttrl-conf-'), 'log.sqlite'),
    sql: async (location, text, values = []) => {
      const s = SqliteStore.open(location);
      try {
        const st = s.db.prepare(text);
        return st.reader ? (st.all(...values) as Record<string, unknown>[]) : (st.run(...values), []);
      } finally {
        await s.close();
      }
    },
    migrationsDir: MIGRATIONS_DIR,
    oldSchema: async (location, migrations, text) => {
      const db = new Database(location);
      try {
        migrate(db, migrations);
        db.exec(text);
      } finally {
        db.close();
      }
    },
  },
  {
    name: 'postgres',
    skip: missing ?? false,
    fresh: async () => {
      const name = `conformance_${++databases}`;
      server!.createDatabase(name);
      return server!.url(name);
    },
    sql: async (location, text, values = []) => {
      const c = new pg.Client({ connectionString: location });
      await c.connect();
      try {
        return (await c.query(text, values)).rows as Record<string, unknown>[];
      } finally {
        await c.end();
      }
    },
    migrationsDir: POSTGRES_MIGRATIONS_DIR,
    oldSchema: async (location, migrations, text) => {
      const pool = new pg.Pool({ connectionString: location, max: 1 });
      try {
        await migratePostgres(pool, migrations);
        await pool.query(text);
      } finally {
        await pool.end();
      }
    },
  },
];

/** Opens a fresh store, runs f, closes it. */
async function withStore<T>(kind: Kind, f: (s: Store, location: string) => Promise<T>): Promise<T> {
  const location = await kind.fresh();
  const s = await openStore(location);
  try {
    return await f(s, location);
  } finally {
    await s.close();
  }
}

const all = async <T>(it: AsyncIterable<T>): Promise<T[]> => {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
};

const base = { weightsPath: '/models/base', stats: { base: '/models/base' } };

for (const kind of kinds) {
  describe(`store conformance: ${kind.name}`, { skip: kind.skip }, () => {
    if (kind.name === 'postgres') {
      before(async () => {
        server = await startPostgres();
      });
      after(() => server?.destroy());
    }

    test('answered and failed questions round-trip with their samples, front-end and source', async () => {
      await withStore(kind, async (s) => {
        assert.equal(s.kind, kind.name);
        await s.ensureBaseVersion(base);
        const a = answered('1+2=', { receivedAt: 2000 });
        const b = answered('2+2=', { receivedAt: 1000, trainable: false, source: null, answer: null, votes: {}, majorityRatio: 0 });
        const ids = await s.recordAnswered([a, b], 'front-a');
        assert.equal(ids.length, 2);
        assert.ok(ids[1]! > ids[0]!, 'ids in the batch order');
        assert.deepEqual(await s.recordAnswered([]), []);
        await s.recordFailed([failed('9/0=', { receivedAt: 1500 })], 'front-b');
        await s.recordFailed([]);
        const c = answered('1+2=', { receivedAt: 3000, connection: null, clientId: null });
        const [idC] = await s.recordAnswered([c]);

        assert.deepEqual(await s.counts(), { answered: 3, failed: 1, samples: 6 });
        const rows = await all(s.questions());
        // Arrival order (received_at), not id order.
        assert.deepEqual(
          rows.map((r) => [r.question, r.received_at]),
          [
            ['2+2=', 1000],
            ['9/0=', 1500],
            ['1+2=', 2000],
            ['1+2=', 3000],
          ],
        );
        const byId = new Map(rows.map((r) => [r.id, r]));
        const rowA = byId.get(ids[0]!)!;
        assert.deepEqual(rowA, {
          id: ids[0],
          client_id: a.clientId,
          connection: a.connection,
          question: a.question,
          votes_requested: a.votesRequested,
          received_at: a.receivedAt,
          answered_at: a.answeredAt,
          status: 'answered',
          error: null,
          answer: '3',
          majority_ratio: 0.5,
          votes: { '3': 1, '4': 1 },
          model_version: 0,
          latency_ms: 12.5,
          frontend: 'front-a',
          sampled_on: null,
          sampled_model: null,
          label: null,
        } satisfies QuestionRow);
        assert.equal(byId.get(ids[1]!)!.answer, null);
        assert.deepEqual(byId.get(ids[1]!)!.votes, {});
        assert.equal(byId.get(idC!)!.frontend, null, 'no front-end given: null');
        assert.equal(byId.get(idC!)!.client_id, null);
        const f = rows.find((r) => r.status === 'failed')!;
        assert.equal(f.error, 'sampling failed');
        assert.equal(f.frontend, 'front-b');
        assert.equal(f.answer, null);
        assert.equal(f.votes, null);
        assert.equal(f.model_version, null);
        assert.equal(typeof f.answered_at, 'number');

        assert.deepEqual(
          await s.samplesOf(ids[0]!),
          a.samples.map(({ text, answer, tokens, logprobSum, stopped }) => ({ text, answer, tokens, logprobSum, stopped })),
        );
        assert.deepEqual(await s.samplesOf(123456), []);

        // Filters: status, and the time range [since, until).
        assert.deepEqual(
          (await all(s.questions({ status: 'failed' }))).map((r) => r.question),
          ['9/0='],
        );
        assert.deepEqual(
          (await all(s.questions({ since: 1500, until: 3000 }))).map((r) => r.received_at),
          [1500, 2000],
        );
        assert.deepEqual(
          (await all(s.questions({ since: 1000, until: 2001, status: 'answered' }))).map((r) => r.received_at),
          [1000, 2000],
        );

        // Ask counts: answered and failed alike; a question never asked counts 0; repeats counted once.
        const counts = await s.askCounts(['1+2=', '9/0=', 'never', '1+2=']);
        assert.deepEqual([...counts].sort(), [
          ['1+2=', 2],
          ['9/0=', 1],
          ['never', 0],
        ]);
        assert.equal((await s.askCounts([])).size, 0);
      });
    });

    test('where the samples were drawn: the upstream URL(s) and model read back, survive a copy, and are null when sampled in-process', async () => {
      const one = { sampledOn: 'http://vllm-a:8000/v1', sampledModel: 'ttrl-v3' };
      const two = { sampledOn: 'http://vllm-a:8000/v1,http://vllm-b:8000/v1', sampledModel: 'ttrl-v3' };
      const rowsOf = async (s: Store) => (await all(s.questions())).map((r) => [r.question, r.status, r.sampled_on, r.sampled_model]);
      const expected = [
        ['up1', 'answered', one.sampledOn, one.sampledModel],
        ['local', 'answered', null, null],
        ['up2', 'answered', two.sampledOn, two.sampledModel],
        ['nulls', 'answered', null, null],
        ['failed', 'failed', null, null],
      ];
      await withStore(kind, async (s, location) => {
        await s.ensureBaseVersion(base);
        // One batch (one statement on PostgreSQL) mixing upstream and in-process answers.
        await s.recordAnswered(
          [
            answered('up1', { receivedAt: 1, ...one }),
            answered('local', { receivedAt: 2 }),
            answered('up2', { receivedAt: 3, ...two }),
            answered('nulls', { receivedAt: 4, sampledOn: null, sampledModel: null }),
          ],
          'front-a',
        );
        await s.recordFailed([failed('failed', { receivedAt: 5 })]);
        assert.deepEqual(await rowsOf(s), expected);
        // Stored as NULL, not as an empty string.
        assert.deepEqual(await kind.sql(location, `SELECT question FROM questions WHERE sampled_on IS NULL AND sampled_model IS NULL ORDER BY received_at`), [
          { question: 'local' },
          { question: 'nulls' },
          { question: 'failed' },
        ]);
        const log = await all(s.exportLog());
        assert.deepEqual(
          log.map((q) => [q.question, q.sampled_on, q.sampled_model]),
          expected.map(([q, , on, model]) => [q, on, model]),
        );

        // Copied (exportLog, then importLog on a fresh store of the same kind): kept.
        const toLocation = await kind.fresh();
        const to = await openStore(toLocation);
        try {
          await copyStore(s, to, { versionsDir: join(await scratch('ttrl-conf-versions-'), 'v') });
          assert.deepEqual(await rowsOf(to), expected);
          assert.deepEqual(
            (await all(to.exportLog())).map(({ id: _id, ...q }) => q),
            log.map(({ id: _id, ...q }) => q),
          );
        } finally {
          await to.close();
        }
      });
    });

    // Each column a migration added: a row written before it reads back null, a new row its value.
    for (const [migration, columns, written, values] of [
      ['sampled_on', ['sampled_on', 'sampled_model'], { sampledOn: 'http://up:8000/v1', sampledModel: 'base' }, ['http://up:8000/v1', 'base']],
      ['label', ['label'], { label: '3' }, ['3']],
    ] as const) {
      test(`a log written before the ${migration} migration reads back null for ${columns.join(' and ')} once migrated`, async () => {
        const location = await kind.fresh();
        const migrations = loadMigrations(kind.migrationsDir);
        const at = migrations.findIndex((m) => m.name === migration);
        assert.ok(at > 0, `a ${migration} migration`);
        await kind.oldSchema(
          location,
          migrations.slice(0, at),
          `INSERT INTO questions (question, votes_requested, received_at, answered_at, status, answer) VALUES ('old', 1, 5, 6, 'answered', '7')`,
        );
        const s = await openStore(location);
        try {
          const read = async () =>
            (await all(s.questions({ status: 'answered' }))).map((r) => [r.question, ...columns.map((k) => (r as unknown as Record<string, unknown>)[k])]);
          assert.deepEqual(await read(), [['old', ...columns.map(() => null)]]);
          await s.ensureBaseVersion(base);
          await s.recordAnswered([answered('new', written)]);
          assert.deepEqual(await read(), [
            ['old', ...columns.map(() => null)],
            ['new', ...values],
          ]);
        } finally {
          await s.close();
        }
      });
    }

    test("a question's label reads back as the client sent it, answered or failed, survives a copy, and is never part of an experience", async () => {
      const rowsOf = async (s: Store) => (await all(s.questions())).map((r) => [r.question, r.status, r.label]);
      const expected = [
        ['right', 'answered', '3'],
        ['unlabelled', 'answered', null],
        // Kept as sent, not normalised: scoring normalises both sides when it compares.
        ['as sent', 'answered', ' +3.0 '],
        ['nulls', 'answered', null],
        ['failed', 'failed', '7'],
        ['failed unlabelled', 'failed', null],
      ];
      await withStore(kind, async (s, location) => {
        await s.ensureBaseVersion(base);
        const start = await s.experienceCursorNow();
        await s.recordAnswered(
          [
            answered('right', { receivedAt: 1, label: '3' }),
            answered('unlabelled', { receivedAt: 2 }),
            answered('as sent', { receivedAt: 3, label: ' +3.0 ' }),
            answered('nulls', { receivedAt: 4, label: null }),
          ],
          'front-a',
        );
        await s.recordFailed([failed('failed', { receivedAt: 5, label: '7' }), failed('failed unlabelled', { receivedAt: 6 })]);
        assert.deepEqual(await rowsOf(s), expected);
        // Stored as NULL, not as an empty string.
        assert.deepEqual(await kind.sql(location, `SELECT question FROM questions WHERE label IS NULL ORDER BY received_at`), [
          { question: 'unlabelled' },
          { question: 'nulls' },
          { question: 'failed unlabelled' },
        ]);
        const log = await all(s.exportLog());
        assert.deepEqual(
          log.map((q) => [q.question, q.status, q.label]),
          expected,
        );

        // What a fleet's leader reads back to train on has no label (SQLite keeps no experiences: see below).
        const { experiences } = await s.experiencesAfter(start, 10);
        assert.equal(experiences.length, kind.name === 'postgres' ? 4 : 0);
        for (const e of experiences) {
          assert.ok(!('label' in e), `experience ${e.question} carries a label`);
          assert.ok(!JSON.stringify(e).includes('+3.0'), `experience ${e.question} carries the label's text`);
        }

        const toLocation = await kind.fresh();
        const to = await openStore(toLocation);
        try {
          await copyStore(s, to, { versionsDir: join(await scratch('ttrl-conf-versions-'), 'v') });
          assert.deepEqual(await rowsOf(to), expected);
        } finally {
          await to.close();
        }
      });
    });

    test('a U+0000 in a question, a sample or a vote does not fail the write (PostgreSQL keeps it as U+FFFD)', async () => {
      await withStore(kind, async (s) => {
        await s.ensureBaseVersion(base);
        const nul = kind.name === 'sqlite' ? '\u0000' : '\ufffd';
        const r = answered('a\u0000b', { answer: '\u0000', votes: { '\u0000': 2, '\\u0000': 1 } });
        r.samples[0]!.text = 'x\u0000y';
        const [id] = await s.recordAnswered([r], 'f\u0000');
        await s.recordFailed([failed('c\u0000', { error: 'e\u0000' })]);
        await s.event('odd', { text: '\u0000', literal: '\\u0000' });
        const rows = await all(s.questions());
        const row = rows.find((q) => q.id === id)!;
        assert.deepEqual([row.question, row.answer, row.votes, row.frontend], [`a${nul}b`, nul, { [nul]: 2, '\\u0000': 1 }, `f${nul}`]);
        assert.equal((await s.samplesOf(id!))[0]!.text, `x${nul}y`);
        assert.equal(rows.find((q) => q.status === 'failed')!.error, `e${nul}`);
        assert.deepEqual((await s.events(1))[0]!.detail, { text: nul, literal: '\\u0000' });
        assert.deepEqual(
          [...(await s.askCounts(['a\u0000b', 'c\u0000']))],
          [
            ['a\u0000b', 1],
            ['c\u0000', 1],
          ],
        );
      });
    });

    test('questions() pages through a long log in arrival order', async () => {
      await withStore(kind, async (s) => {
        await s.ensureBaseVersion(base);
        // Ids and arrival times in opposite orders, more than a page (1000) of them.
        const n = 2100;
        const batch = Array.from({ length: n }, (_, i) => answered(`q${i}`, { receivedAt: 10_000 - (i % 1500), samples: [] }));
        await s.recordAnswered(batch);
        const rows = await all(s.questions());
        assert.equal(rows.length, n);
        for (let i = 1; i < n; i++) {
          const [p, q] = [rows[i - 1]!, rows[i]!];
          assert.ok(p.received_at < q.received_at || (p.received_at === q.received_at && p.id < q.id), `row ${i} out of order`);
        }
        assert.equal(new Set(rows.map((r) => r.id)).size, n);
      });
    });

    test(
      kind.name === 'postgres'
        ? 'experiences: trainable answers come back with their exact token ids and log-probs, once each'
        : 'experiences: SQLite keeps no token ids, so there are none to read back',
      async () => {
        await withStore(kind, async (s, location) => {
          await s.ensureBaseVersion(base);
          const start = await s.experienceCursorNow();
          const a = answered('3+4=', { receivedAt: 100 });
          const plain = answered('5+5=', { receivedAt: 101, trainable: false });
          const b = answered('6+1=', { receivedAt: 102, source: null, latencyMs: 3 });
          const ids = await s.recordAnswered([a, plain, b], 'front-x');
          await s.recordFailed([failed('x=')]);
          const got = await s.experiencesAfter(start, 10);
          // A cursor of another form is refused (read as the start, it would read the whole log again).
          await assert.rejects(s.experiencesAfter(kind.name === 'sqlite' ? '12:34' : '34', 10), /is not an experience cursor/);
          await assert.rejects(s.experiencesAfter('garbage', 10), /is not an experience cursor/);
          if (kind.name === 'sqlite') {
            assert.deepEqual(got.experiences, []);
            assert.equal(got.cursor, start, 'nothing read: the cursor stays');
            // The samples themselves are kept (without token ids).
            assert.equal((await s.samplesOf(ids[0]!)).length, 2);
            return;
          }
          const expect = (id: number, r: typeof a) => ({
            id,
            question: r.question,
            source: r.source,
            frontend: 'front-x',
            answeredAt: r.answeredAt,
            latencyMs: r.latencyMs,
            modelVersion: r.modelVersion,
            answer: r.answer,
            majorityRatio: r.majorityRatio,
            votes: r.votes,
            promptIds: r.promptIds,
            samples: r.samples,
          });
          assert.deepEqual(got.experiences, [expect(ids[0]!, a), expect(ids[2]!, b)]);
          assert.notEqual(got.cursor, start);
          assert.deepEqual(await s.experiencesAfter(got.cursor, 10), { experiences: [], cursor: got.cursor });
          // A limit pages through them, each once.
          const one = await s.experiencesAfter(start, 1);
          assert.deepEqual(
            one.experiences.map((e) => e.id),
            [ids[0]],
          );
          const two = await s.experiencesAfter(one.cursor, 1);
          assert.deepEqual(
            two.experiences.map((e) => e.id),
            [ids[2]],
          );
          assert.deepEqual((await s.experiencesAfter(two.cursor, 1)).experiences, []);
          // The cursor "now" is past everything written; later answers follow it.
          const now = await s.experienceCursorNow();
          assert.deepEqual((await s.experiencesAfter(now, 10)).experiences, []);
          const [idD] = await s.recordAnswered([answered('8+0=')]);
          assert.deepEqual(
            (await s.experiencesAfter(now, 10)).experiences.map((e) => e.id),
            [idD],
          );
          // A non-trainable question's samples keep no token ids; samplesOf is the same either way.
          assert.deepEqual(
            (await kind.sql(location, 'SELECT token_ids, logprobs FROM samples WHERE question_id = $1', [ids[1]])).map((r) => [r.token_ids, r.logprobs]),
            [
              [null, null],
              [null, null],
            ],
          );
        });
      },
    );

    test('the version lineage: base version once, add, activate, reject, stale candidates, corrupt, prune, sha256', async () => {
      await withStore(kind, async (s) => {
        assert.deepEqual(await s.versions(), []);
        assert.equal(await s.activeVersion(), undefined);
        await s.ensureBaseVersion(base);
        await s.ensureBaseVersion({ weightsPath: '/elsewhere' });
        const [v0] = await s.versions();
        assert.equal((await s.versions()).length, 1, 'version 0 added once');
        assert.equal(v0!.version, 0);
        assert.equal(v0!.status, 'active');
        assert.equal(v0!.parent, null);
        assert.equal(v0!.weights_path, '/models/base');
        assert.deepEqual(v0!.stats, { base: '/models/base' });
        assert.equal(typeof v0!.created_at, 'number');
        assert.equal(typeof v0!.activated_at, 'number');
        assert.equal(v0!.weights_sha256, null);
        assert.deepEqual(await s.activeVersion(), v0);

        const v1 = await s.addVersion({
          parent: 0,
          status: 'candidate',
          weightsPath: (v) => `/versions/v${v}.safetensors`,
          stats: { loss: 1.5, steps: [1, 2] },
        });
        assert.equal(v1, 1);
        const r1 = (await s.version(1))!;
        assert.equal(r1.weights_path, '/versions/v1.safetensors');
        assert.equal(r1.status, 'candidate');
        assert.equal(r1.parent, 0);
        assert.deepEqual(r1.stats, { loss: 1.5, steps: [1, 2] });
        assert.equal(r1.activated_at, null);
        assert.equal(r1.reason, null);

        await s.setWeightsSha256(1, 'ab'.repeat(32));
        await s.activate(1);
        assert.deepEqual(
          (await s.versions()).map((v) => [v.version, v.status]),
          [
            [0, 'retired'],
            [1, 'active'],
          ],
        );
        assert.equal((await s.activeVersion())!.version, 1);
        assert.equal((await s.version(1))!.weights_sha256, 'ab'.repeat(32));
        assert.equal(typeof (await s.version(1))!.activated_at, 'number');

        // Added and activated at once; a string as stats stays a string.
        const v2 = await s.addVersion({ parent: 1, status: 'candidate', weightsPath: '/versions/v2.safetensors', stats: 'plain', activate: true });
        assert.equal(v2, 2);
        assert.equal((await s.activeVersion())!.version, 2);
        assert.equal((await s.version(2))!.stats, 'plain');
        assert.equal((await s.version(1))!.status, 'retired');

        // Rejected: reason, and stats replaced only when given.
        const v3 = await s.addVersion({ parent: 2, status: 'candidate', weightsPath: null, stats: { kept: true } });
        await s.reject(v3, 'entropy collapsed');
        assert.deepEqual(await s.version(v3).then((r) => [r!.status, r!.reason, r!.stats]), ['rejected', 'entropy collapsed', { kept: true }]);
        await s.reject(v3, 'anchors drifted', { drift: 0.3 });
        assert.deepEqual(await s.version(v3).then((r) => [r!.reason, r!.stats]), ['anchors drifted', { drift: 0.3 }]);
        // A rejection recorded as such from the start.
        const v4 = await s.addVersion({ parent: 2, status: 'rejected', weightsPath: null, reason: 'probe failed' });
        assert.equal((await s.version(v4))!.reason, 'probe failed');

        // Candidates left unjudged: rejected with the reason given (or the default).
        const v5 = await s.addVersion({ parent: 2, status: 'candidate', weightsPath: '/versions/v5.safetensors' });
        const v6 = await s.addVersion({ parent: 2, status: 'candidate', weightsPath: '/versions/v6.safetensors' });
        assert.equal(await s.rejectStaleCandidates('the leader died'), 2);
        assert.deepEqual(
          (await s.versions()).filter((v) => v.version === v5 || v.version === v6).map((v) => [v.status, v.reason]),
          [
            ['rejected', 'the leader died'],
            ['rejected', 'the leader died'],
          ],
        );
        assert.equal(await s.rejectStaleCandidates(), 0);
        const v7 = await s.addVersion({ parent: 2, status: 'candidate', weightsPath: null });
        assert.equal(await s.rejectStaleCandidates(), 1);
        assert.match((await s.version(v7))!.reason!, /interrupted/);

        // Stats set later.
        await s.setStats(v7, { judged: false });
        assert.deepEqual((await s.version(v7))!.stats, { judged: false });

        // Corrupt: status and reason.
        await s.markCorrupt(1, '/versions/v1.safetensors was damaged');
        assert.deepEqual(await s.version(1).then((r) => [r!.status, r!.reason]), ['corrupt', '/versions/v1.safetensors was damaged']);

        // Pruning only touches a retired version: its path and hash go, the row and stats stay.
        await s.activate(0);
        await s.setWeightsSha256(2, 'cd'.repeat(32));
        await s.pruneWeights(0, 'not retired: untouched');
        assert.equal((await s.version(0))!.weights_path, '/models/base');
        await s.pruneWeights(2, 'kept the newest 0');
        const r2 = (await s.version(2))!;
        assert.deepEqual([r2.status, r2.weights_path, r2.weights_sha256, r2.reason, r2.stats], ['retired', null, null, 'kept the newest 0', 'plain']);

        // Activation clears the reason; an unknown version is refused and changes nothing.
        await s.activate(3);
        assert.equal((await s.version(3))!.reason, null);
        await assert.rejects(s.activate(99), /no model version 99/);
        assert.equal((await s.activeVersion())!.version, 3);
        assert.equal(await s.version(99), undefined);
        assert.deepEqual(
          (await s.versions()).map((v) => v.version),
          [0, 1, 2, 3, 4, 5, 6, 7],
        );
        assert.equal((await s.versions()).filter((v) => v.status === 'active').length, 1);
      });
    });

    test('meta: set, set only if absent (the first value stands), the database id', async () => {
      const location = await withStore(kind, async (s, location) => {
        assert.equal(await s.getMeta('k'), undefined);
        assert.equal(await s.setMeta('k', 'first', { onlyIfAbsent: true }), 'first');
        assert.equal(await s.setMeta('k', 'second', { onlyIfAbsent: true }), 'first');
        assert.equal(await s.getMeta('k'), 'first');
        assert.equal(await s.setMeta('k', 'third'), 'third');
        assert.equal(await s.getMeta('k'), 'third');
        const big = JSON.stringify(Array.from({ length: 500 }, (_, i) => ({ question: `${i}+${i}=`, ref: -i / 3 })));
        await s.setMeta('anchors', big);
        assert.equal(await s.getMeta('anchors'), big);
        const id = await s.databaseId();
        assert.match(id, /^[0-9a-f]{16}$/);
        assert.equal(await s.databaseId(), id);
        assert.equal(await s.getMeta('database_id'), id);
        const [x, y] = await Promise.all([s.databaseId(), s.databaseId()]);
        assert.equal(x, id);
        assert.equal(y, id);
        return location;
      });
      // Reopened: the same id.
      const again = await openStore(location);
      try {
        assert.equal(await again.getMeta('k'), 'third');
        const id = await again.getMeta('database_id');
        assert.equal(await again.databaseId(), id);
      } finally {
        await again.close();
      }
    });

    test('events, newest first; the readiness write', async () => {
      await withStore(kind, async (s) => {
        assert.deepEqual(await s.events(), []);
        const before = Date.now();
        await s.event('activate', { version: 1, by: 'admin' });
        await s.event('rollback', { version: 0, note: 'ünïcode ✓' });
        await s.event('nothing', null);
        await s.event('list', [1, 'two']);
        const e = await s.events();
        assert.deepEqual(
          e.map((x) => [x.kind, x.detail]),
          [
            ['list', [1, 'two']],
            ['nothing', null],
            ['rollback', { version: 0, note: 'ünïcode ✓' }],
            ['activate', { version: 1, by: 'admin' }],
          ],
        );
        assert.ok(e.every((x) => typeof x.id === 'number' && x.at >= before && x.at <= Date.now()));
        assert.ok(e[0]!.id > e[1]!.id);
        assert.deepEqual(
          (await s.events(2)).map((x) => x.kind),
          ['list', 'nothing'],
        );

        await s.probeWrite();
        const at = Number(await s.getMeta('readiness_probe_at'));
        assert.ok(at >= before);
      });
    });

    test('migrations are applied in order and recorded; a schema newer than the code is refused', async () => {
      const location = await kind.fresh();
      const s = await openStore(location);
      await s.close();
      const expected = loadMigrations(kind.migrationsDir);
      const recorded = await kind.sql(location, 'SELECT version, name, applied_at FROM schema_migrations ORDER BY version');
      assert.deepEqual(
        recorded.map((r) => [Number(r.version), r.name]),
        expected.map((m) => [m.version, m.name]),
      );
      assert.ok(recorded.every((r) => Number(r.applied_at) > 0));
      // Opened again: nothing applied twice.
      await (await openStore(location)).close();
      assert.equal((await kind.sql(location, 'SELECT version FROM schema_migrations')).length, expected.length);

      const future = expected.length + 1;
      await kind.sql(location, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (${future}, 'from_the_future', 0)`);
      await assert.rejects(openStore(location), (e: Error) => {
        assert.match(e.message, new RegExp(`schema is at version ${future}, newer than this ttrl-server knows \\(${expected.length}\\)`));
        assert.ok(e.message.startsWith(hidePassword(location)), `the message names the database: ${e.message}`);
        return true;
      });
    });
  });
}

test('store locations: a path or file: is SQLite, postgres:// is PostgreSQL, another scheme is refused naming it', () => {
  assert.equal(storeKind('data/ttrl.sqlite'), 'sqlite');
  assert.equal(storeKind('/abs/x.db'), 'sqlite');
  assert.equal(storeKind('file:///tmp/x.sqlite'), 'sqlite');
  assert.equal(storeKind('postgres://u@h/db'), 'postgres');
  assert.equal(storeKind('POSTGRESQL://u@h/db'), 'postgres');
  assert.throws(
    () => storeKind('mysql://root:secret@h/db'),
    (e: Error) => {
      assert.match(e.message, /mysql:\/\/ is not supported/);
      assert.doesNotMatch(e.message, /secret/);
      return true;
    },
  );
  assert.equal(hidePassword('postgres://u:pw@h:5432/db'), 'postgres://u:***@h:5432/db');
  assert.equal(hidePassword('postgres://u@h/db'), 'postgres://u@h/db');
  assert.equal(hidePassword('postgresql://h/db?user=u&password=pw&sslmode=require'), 'postgresql://h/db?user=u&password=***&sslmode=require');
});
