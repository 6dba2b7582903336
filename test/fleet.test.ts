// Several front-ends on one PostgreSQL database (a real server the file starts itself, see
// helpers/postgres.ts): one log with each answer's front-end, one version lineage, one
// trainer at a time that trains on the whole fleet's answers, one serving version reached by
// every front-end; a leader killed with SIGKILL mid-update is replaced and its candidate
// marked interrupted; the database stopped under load fails asks with store_unavailable and
// readiness with its reason, and both recover without a restart; a front-end on another base
// model is refused; an unsupported --db scheme is refused, naming it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { resolveSettings } from '../src/config/settings.ts';
import { startServer, type RunningServer } from '../src/server/server.ts';
import { startTestServer } from './helpers/server.ts';
import { startChildServer, type ChildServer } from './helpers/child-server.ts';
import { postgresMissing, startPostgres, type TestPostgres } from './helpers/postgres.ts';
import { scratch } from './helpers/scratch.ts';
import { STORIES } from './helpers/stories.ts';
import { suite } from '../src/tasks/suites.ts';
import { readSource } from '../src/replay/source.ts';

const skip = postgresMissing() ?? false;
const KEYS = ['fleet-key-a-0123456789', 'fleet-key-b-0123456789'];
const ADMIN = 'fleet-admin-token';
let postgres: TestPostgres;
let nextDb = 1;

before(async () => {
  if (!skip) postgres = await startPostgres();
});
after(() => postgres?.destroy());

/** A fresh database on the test cluster. */
function database(): string {
  const name = `fleet${nextDb++}`;
  postgres.createDatabase(name);
  return postgres.url(name);
}

/** Fleet settings that keep a test short: quick elections, heartbeats and polls. */
const FAST = { leaderPollMs: 200, heartbeatMs: 300, versionPollMs: 400, experiencePollMs: 100 };

interface Ready {
  ready: boolean;
  model_version: number;
  reasons: string[];
  fleet?: { frontend: string; leading: boolean; leader: string | null; versions_behind: number; frontends: { id: string }[] };
}
const readyz = async (url: string): Promise<{ status: number; body: Ready }> => {
  const r = await fetch(`${url}/readyz`);
  return { status: r.status, body: (await r.json()) as Ready };
};

async function until<T>(what: string, f: () => Promise<T | null | undefined | false>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ''}`);
}

const ask = (url: string, key: string, question: string) =>
  fetch(`${url}/v1/ask`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: JSON.stringify({ question }) });

async function sql<T extends pg.QueryResultRow>(url: string, text: string, values: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(text, values)).rows;
  } finally {
    await c.end();
  }
}

test('--db with a scheme no store takes is refused, naming it (not a folder named after it)', async () => {
  const dir = await scratch('ttrl-scheme-');
  await assert.rejects(
    startServer(resolveSettings({ port: 0, db: 'mysql://user@127.0.0.1/ttrl', versionsDir: dir, threads: 1, adapt: false }, {})),
    /the scheme mysql:\/\/ is not supported/,
  );
  await assert.rejects(startServer(resolveSettings({ port: 0, db: postgresLike(), threads: 1, adapt: false }, {})), /needs --versions-dir/);
});
const postgresLike = () => 'postgres://nobody@127.0.0.1:1/none';

test(
  "two front-ends, one database: one log, one lineage, one leader training on both front-ends' answers, one serving version",
  { skip, timeout: 240_000 },
  async () => {
    const db = database();
    const versionsDir = await scratch('ttrl-fleet-versions-');
    const common = {
      db,
      versionsDir,
      adapt: true,
      apiKeys: KEYS,
      adminToken: ADMIN,
      votes: 8,
      updateEvery: 24,
      gate: 0,
      probeQuestions: 0,
      anchors: 0,
      ...FAST,
    };
    const servers: RunningServer[] = [];
    try {
      servers.push(await startTestServer({ ...common, frontendId: 'fe-a' }));
      servers.push(await startTestServer({ ...common, frontendId: 'fe-b' }));
      const [a, b] = servers as [RunningServer, RunningServer];
      // Exactly one leads.
      const leaders = await until('one leader', async () => {
        const states = await Promise.all(servers.map((s) => readyz(s.url)));
        const leading = states.filter((r) => r.body.fleet?.leading).map((r) => r.body.fleet!.frontend);
        return leading.length === 1 && leading;
      });
      assert.equal(leaders.length, 1);
      // 16 questions through each front-end, each from its own client: an update takes 24, at
      // most half from one client (--max-client-share 0.5), so it needs both front-ends' answers.
      const qs = suite('4-operand', 32, 5).map((q) => q.question);
      const replies = await Promise.all(qs.map((q, i) => ask(i % 2 ? b.url : a.url, KEYS[i % 2]!, q)));
      assert.ok(replies.every((r) => r.status === 200));
      // The update runs on the leader and its version reaches both front-ends.
      const versionRow = await until(
        'a promoted or rejected update',
        async () => {
          const rows = await sql<{ version: number; status: string; stats: { frontends?: Record<string, number>; experiences?: number } }>(
            db,
            `SELECT version, status, stats FROM model_versions WHERE version > 0 AND status <> 'candidate' ORDER BY version LIMIT 1`,
          );
          return rows[0];
        },
        120_000,
      );
      assert.deepEqual(Object.keys(versionRow.stats.frontends ?? {}).sort(), ['fe-a', 'fe-b'], JSON.stringify(versionRow.stats));
      assert.equal(versionRow.stats.experiences, 24);
      const lineage = await sql<{ version: number; status: string; reason: string | null }>(
        db,
        'SELECT version, status, reason FROM model_versions ORDER BY version',
      );
      const active = lineage.find((v) => v.status === 'active')?.version;
      assert.notEqual(active, undefined, JSON.stringify(lineage));
      await until('both front-ends serve the active version', async () =>
        (await Promise.all(servers.map((s) => readyz(s.url)))).every((r) => r.body.model_version === active),
      );
      // One log: each answer once, with the front-end that answered it.
      const rows = await sql<{ frontend: string; n: number }>(
        db,
        `SELECT frontend, COUNT(*)::int AS n FROM questions WHERE status = 'answered' GROUP BY frontend ORDER BY frontend`,
      );
      assert.deepEqual(rows, [
        { frontend: 'fe-a', n: 16 },
        { frontend: 'fe-b', n: 16 },
      ]);
      // A replay reads the fleet's log as it reads a SQLite file's.
      const { kind, items } = await readSource(db);
      assert.equal(kind, 'db');
      assert.equal(items.length, 32);
      const versions = (await sql<{ version: number }>(db, 'SELECT version FROM model_versions ORDER BY version')).map((r) => r.version);
      assert.deepEqual(versions, [...versions.keys()], 'versions numbered once, 0, 1, 2, ...');
      // An admin activation on the front-end that does not lead reaches the leader too.
      const follower = servers[leaders[0] === 'fe-a' ? 1 : 0]!;
      const r = await fetch(`${follower.url}/admin/versions/0/activate`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` } });
      assert.equal(r.status, 200, await r.text());
      await until('both front-ends serve version 0', async () =>
        (await Promise.all(servers.map((s) => readyz(s.url)))).every((x) => x.body.model_version === 0),
      );
      // The dashboard's and status's word on why no update is due yet.
      const status = (await (await fetch(`${follower.url}/admin/status`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as {
        why_no_update_yet: string;
        fleet: { frontends: { id: string }[] };
      };
      assert.match(status.why_no_update_yet, /does not lead/);
      assert.deepEqual(status.fleet.frontends.map((f) => f.id).sort(), ['fe-a', 'fe-b']);
    } finally {
      for (const s of servers) await s.close();
    }
  },
);

test('a front-end on a database created with another base model is refused, naming both fingerprints', { skip, timeout: 120_000 }, async () => {
  const db = database();
  const versionsDir = await scratch('ttrl-fleet-versions-');
  const a = await startTestServer({ db, versionsDir, ...FAST });
  try {
    await assert.rejects(
      startTestServer({ db, versionsDir, model: STORIES, chatTemplate: false, maxNewTokens: 8, ...FAST }),
      /logs a different base model \(weights [0-9a-f]{16,}, this one [0-9a-f]{16,}/,
    );
  } finally {
    await a.close();
  }
});

test(
  'the leader killed with SIGKILL mid-update: another leads within seconds, the candidate is marked interrupted, nothing answered is lost, one version serves',
  { skip, timeout: 300_000 },
  async () => {
    const db = database();
    const versionsDir = await scratch('ttrl-fleet-versions-');
    const args = [
      '--db',
      db,
      '--versions-dir',
      versionsDir,
      '--threads',
      '1',
      '--train-threads',
      '1',
      '--votes',
      '8',
      '--update-every',
      '16',
      '--gate',
      '0',
      '--probe-questions',
      '0',
      '--anchors',
      '0',
    ];
    const fast = [
      '--leader-poll-ms',
      '200',
      '--heartbeat-ms',
      '300',
      '--version-poll-ms',
      '400',
      '--experience-poll-ms',
      '100',
      '--max-client-share',
      '1',
      '--admin-token',
      ADMIN,
    ];
    const children: ChildServer[] = [
      await startChildServer([...args, ...fast, '--frontend-id', 'fe-1']),
      await startChildServer([...args, ...fast, '--frontend-id', 'fe-2']),
    ];
    try {
      const leaderIndex = await until('a leader', async () => {
        const states = await Promise.all(children.map((c) => readyz(c.url)));
        const i = states.findIndex((r) => r.body.fleet?.leading);
        return i >= 0 ? i + 1 : 0;
      });
      const leader = children[leaderIndex - 1]!;
      const survivor = children[2 - leaderIndex]!;
      // Questions through both until the leader is mid-update.
      const received: { question: string; answer: unknown }[] = [];
      const qs = suite('4-operand', 400, 9).map((q) => q.question);
      let next = 0;
      const status = async (c: ChildServer) =>
        (await (await fetch(`${c.url}/admin/status`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as { adaptation: string };
      let stop = false;
      const load = (async () => {
        while (!stop && next < qs.length) {
          const q = qs[next++]!;
          const target = next % 2 && !stop ? leader : survivor;
          const r = await fetch(`${target.url}/v1/ask`, { method: 'POST', body: JSON.stringify({ question: q }) }).catch(() => null);
          if (r?.status === 200) received.push({ question: q, answer: ((await r.json()) as { answer: unknown }).answer });
        }
      })();
      // Mid-update: its candidate's number is reserved, training runs.
      await until(
        'the leader mid-update',
        async () => (await status(leader)).adaptation === 'updating' && (await sql(db, `SELECT 1 FROM model_versions WHERE status = 'candidate'`)).length > 0,
        120_000,
      );
      const killedAt = Date.now();
      process.kill(leader.pid, 'SIGKILL');
      await leader.exited;
      // The candidate the dead leader was training (its number is reserved as its update begins).
      const orphans = (await sql<{ version: number }>(db, `SELECT version FROM model_versions WHERE status = 'candidate'`)).map((r) => r.version);
      assert.equal(orphans.length, 1, JSON.stringify(orphans));
      const tookOver = await until('the survivor leads', async () => (await readyz(survivor.url)).body.fleet?.leading && Date.now(), 30_000);
      const takeoverMs = tookOver - killedAt;
      assert.ok(takeoverMs < 30_000, `took over after ${takeoverMs} ms`);
      console.log(`# takeover after SIGKILL of the leader: ${takeoverMs} ms`);
      stop = true;
      await load;
      // The dead leader's candidate is marked interrupted by the new leader.
      const settled = await sql<{ version: number; status: string; reason: string }>(
        db,
        'SELECT version, status, reason FROM model_versions WHERE version = ANY($1)',
        [orphans],
      );
      for (const r of settled) {
        assert.equal(r.status, 'rejected', JSON.stringify(r));
        assert.match(r.reason, /interrupted: the leader that trained it stopped/);
      }
      console.log(`# the dead leader's candidate(s): ${JSON.stringify(settled)}`);
      // Every answer a client received is in the log exactly once.
      const logged = await sql<{ question: string; answer: string; n: number }>(
        db,
        `SELECT question, answer, COUNT(*)::int AS n FROM questions WHERE status = 'answered' GROUP BY question, answer`,
      );
      const counts = new Map(logged.map((r) => [`${r.question}\u0000${r.answer}`, r.n]));
      for (const r of received) assert.ok((counts.get(`${r.question}\u0000${r.answer}`) ?? 0) >= 1, `${r.question} -> ${r.answer} is not in the log`);
      const total = (await sql<{ n: number }>(db, `SELECT COUNT(*)::int AS n FROM questions WHERE status = 'answered'`))[0]!.n;
      assert.ok(total >= received.length);
      // The survivor serves the fleet's active version.
      const active = (await sql<{ version: number }>(db, `SELECT version FROM model_versions WHERE status = 'active'`))[0]!.version;
      await until('the survivor serves the active version', async () => (await readyz(survivor.url)).body.model_version === active);
    } finally {
      for (const c of children) await c.stop('SIGKILL').catch(() => undefined);
    }
  },
);

test(
  'PostgreSQL stopped under load: asks get store_unavailable (503), /readyz 503 with the reason; started again, both recover with no restart',
  { skip, timeout: 240_000 },
  async () => {
    const db = database();
    const versionsDir = await scratch('ttrl-fleet-versions-');
    const s = await startTestServer({ db, versionsDir, ...FAST });
    try {
      assert.equal((await ask(s.url, '', '1+2=')).status, 200);
      postgres.stop();
      try {
        const r = await fetch(`${s.url}/v1/ask`, { method: 'POST', body: JSON.stringify({ question: '2+3=' }) });
        assert.equal(r.status, 503);
        assert.equal(((await r.json()) as { code: string }).code, 'store_unavailable');
        const ready = await until('readiness 503', async () => {
          const x = await readyz(s.url);
          return x.status === 503 && x;
        });
        assert.ok(
          ready.body.reasons.some((x) => /store|database|connect/i.test(x)),
          JSON.stringify(ready.body.reasons),
        );
      } finally {
        postgres.start();
      }
      await until('readiness back', async () => (await readyz(s.url)).status === 200, 60_000);
      const after = await fetch(`${s.url}/v1/ask`, { method: 'POST', body: JSON.stringify({ question: '3+4=' }) });
      assert.equal(after.status, 200);
      const rows = await sql<{ question: string; status: string }>(db, 'SELECT question, status FROM questions ORDER BY id');
      assert.deepEqual(
        rows.filter((r) => r.status === 'answered').map((r) => r.question),
        ['1+2=', '3+4='],
      );
    } finally {
      await s.close();
    }
  },
);
