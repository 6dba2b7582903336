// Honest readiness and structured logs against the real server: /readyz says 503, with the reason, while
// database writes fail (this process's RLIMIT_FSIZE lowered with prlimit, so SQLite's
// writes fail with EFBIG as on a full disk) and while the sampler's worker is down, and it
// recovers by itself when they work again. The test file runs in its own process (node
// --test), so the lowered limit touches nothing else.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import type { RunningServer } from '../src/server/server.ts';
import { suite } from '../src/tasks/suites.ts';
import type { SqliteStore } from '../src/store/sqlite.ts';
import { scratch } from './helpers/scratch.ts';
import { assertJudged, startTestServer } from './helpers/server.ts';

const start = (db: string): Promise<RunningServer> => startTestServer({ db });

const readyz = async (s: RunningServer) => {
  const r = await fetch(`${s.url}/readyz`);
  return { status: r.status, ...((await r.json()) as { ready: boolean; reasons: string[] }) };
};
const ask = async (s: RunningServer, question: string) => {
  const r = await fetch(`${s.url}/v1/ask`, { method: 'POST', body: JSON.stringify({ question }) });
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
};
const fileSizeLimit = (bytes: number | 'unlimited') => execFileSync('prlimit', ['--pid', String(process.pid), `--fsize=${bytes}:unlimited`]);
const size = (f: string) => {
  try {
    return statSync(f).size;
  } catch {
    return 0;
  }
};

test('while database writes fail /readyz is 503 saying so, asks fail with store_unavailable (503), and it recovers by itself once writes work', async () => {
  const dir = await scratch('ttrl-ready-');
  const db = join(dir, 'ttrl.sqlite');
  const s = await start(db);
  try {
    assert.deepEqual(await readyz(s), { status: 200, ready: true, model_version: 0, reasons: [] });
    // No file may grow past its size now (plus a little): the next writes that need room fail.
    fileSizeLimit(Math.max(size(db), size(`${db}-wal`)) + 4096);
    const qs = suite('4-operand', 400, 1).map((q) => q.question);
    let failed: Record<string, unknown> | undefined;
    let failedStatus: number | undefined;
    for (const q of qs) {
      const r = await ask(s, q);
      if (r.status !== 200) {
        failed = r.body;
        failedStatus = r.status;
        break;
      }
    }
    assert.ok(failed, 'writes never failed under the file-size limit');
    assert.equal(failed.code, 'store_unavailable');
    assert.equal(failedStatus, 503);
    assert.match(String(failed.message), /could not store the answers/);
    const down = await readyz(s);
    assert.equal(down.status, 503);
    assert.equal(down.ready, false);
    assert.match(down.reasons.join('; '), /database writes fail/);
    fileSizeLimit('unlimited');
    // Recovery needs no traffic: the probe's own write (at most one a second) clears it.
    await new Promise((r) => setTimeout(r, 1100));
    assert.deepEqual((await readyz(s)).reasons, []);
    assert.equal((await ask(s, qs[0]!)).status, 200);
  } finally {
    fileSizeLimit('unlimited');
    await s.close();
  }
});

test('a sampler worker that dies is restarted on the serving version; while it cannot be, /readyz is 503 saying so, then recovers', async () => {
  const dir = await scratch('ttrl-ready-');
  const s = await start(join(dir, 'ttrl.sqlite'));
  try {
    // Its worker gone, the next batch starts a fresh one: the ask is answered.
    await s.versions.sampler.close();
    const first = await ask(s, '12+34=');
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.ok((await s.store.events(10)).some((e) => e.kind === 'sampler_restarted'));
    // Dead again within the restart backoff: not ready, with the reason, until it restarts.
    await s.versions.sampler.close();
    const down = await readyz(s);
    assert.equal(down.status, 503);
    assert.match(down.reasons.join('; '), /sampl.*down/);
    await new Promise((r) => setTimeout(r, 1100));
    assert.deepEqual(await readyz(s), { status: 200, ready: true, model_version: 0, reasons: [] });
    assert.equal((await ask(s, '1+2=')).status, 200);
  } finally {
    await s.close();
  }
});

test("logs: one JSON record per stage of a question, carried by one request id (an HTTP client's own X-Request-Id logged beside it), and one per update with its outcome", async () => {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'debug' }, { write: (r: string) => void lines.push(JSON.parse(r)) });
  // One HTTP client asks everything (so no --max-client-share cap) and any split vote is a
  // learning signal (--gate 0): the update is judged, not skipped.
  const s = await startTestServer(
    { adapt: true, votes: 8, updateEvery: 1000, probeQuestions: 0, anchors: 0, maxClientShare: 1, gate: 0, adminToken: 'admin-token-1' },
    { prefix: 'ttrl-logs-', logger },
  );
  try {
    const r = await fetch(`${s.url}/v1/ask`, { method: 'POST', headers: { 'x-request-id': 'req-42' }, body: JSON.stringify({ question: '12+34=' }) });
    // The request id is always the server's own (two clients may send the same one); the client's is logged beside it.
    assert.equal(r.headers.get('x-client-request-id'), 'req-42');
    const reqId = r.headers.get('x-request-id')!;
    assert.match(reqId, /^[0-9a-f]{6}-\w+$/);
    assert.equal(lines.find((l) => l.msg === 'question' && l.req_id === reqId)!.client_req_id, 'req-42');
    const questionId = ((s.store as SqliteStore).db.prepare('SELECT MAX(id) AS id FROM questions').get() as { id: number }).id;
    const mine = lines.filter((l) => l.req_id === reqId || (l.req_ids as string[] | undefined)?.includes(reqId));
    assert.deepEqual(
      mine.map((l) => l.msg),
      ['question', 'batch', 'answered'],
    );
    const batch = mine[1]!.batch;
    // Sampling and storing are per batch: the batch number ties them to the question.
    assert.deepEqual(
      lines.filter((l) => l.batch === batch).map((l) => l.msg),
      ['batch', 'sampled', 'stored', 'answered'],
    );
    assert.deepEqual(lines.find((l) => l.msg === 'stored' && l.batch === batch)!.question_ids, [questionId]);
    // A server-made id when the client brings none, or an odd one.
    const other = await fetch(`${s.url}/v1/ask`, {
      method: 'POST',
      headers: { 'x-request-id': 'bad id with spaces' },
      body: JSON.stringify({ question: '1+2=' }),
    });
    assert.match(other.headers.get('x-request-id')!, /^[0-9a-f]{6}-\w+$/);
    // Questions the shipped model's votes split on: something to learn from.
    for (const r of await Promise.all(suite('4-operand', 8, 1).map((q) => ask(s, q.question)))) assert.equal(r.status, 200, JSON.stringify(r.body));
    await fetch(`${s.url}/admin/adaptation/update`, { method: 'POST', headers: { authorization: 'Bearer admin-token-1' } });
    const updates = lines.filter((l) => l.update);
    assert.equal(updates.length, 1);
    assertJudged(updates[0]!.update as { outcome: string; reason?: string; stats?: unknown });
  } finally {
    await s.close();
  }
});
