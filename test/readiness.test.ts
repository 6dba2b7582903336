// Honest readiness against the real server: /readyz says 503, with the reason, while
// database writes fail (this process's RLIMIT_FSIZE lowered with prlimit, so SQLite's
// writes fail with EFBIG as on a full disk) and while the sampler's worker is down, and it
// recovers by itself when they work again. The test file runs in its own process (node
// --test), so the lowered limit touches nothing else.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { resolveSettings } from '../src/server/config.ts';
import { startServer, type RunningServer } from '../src/server/server.ts';
import { suite } from '../src/tasks/suites.ts';
import { scratch } from './helpers/scratch.ts';

async function start(db: string): Promise<RunningServer> {
  return startServer(resolveSettings({ port: 0, db, threads: 1, votes: 4, adapt: false }, {}));
}

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

test('while database writes fail /readyz is 503 saying so, asks fail with internal, and it recovers by itself once writes work', async () => {
  const dir = await scratch('ttrl-ready-');
  const db = join(dir, 'ttrl.sqlite');
  const s = await start(db);
  try {
    assert.deepEqual(await readyz(s), { status: 200, ready: true, model_version: 0, reasons: [] });
    // No file may grow past its size now (plus a little): the next writes that need room fail.
    fileSizeLimit(Math.max(size(db), size(`${db}-wal`)) + 4096);
    const qs = suite('4-operand', 400, 1).map((q) => q.question);
    let failed: Record<string, unknown> | undefined;
    for (const q of qs) {
      const r = await ask(s, q);
      if (r.status !== 200) {
        failed = r.body;
        break;
      }
    }
    assert.ok(failed, 'writes never failed under the file-size limit');
    assert.equal(failed.code, 'internal');
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
    assert.ok(s.store.events(10).some((e) => e.kind === 'sampler_restarted'));
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
