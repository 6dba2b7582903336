// The one way tests start a real server in-process: the shipped model, a SQLite file in a
// scratch folder (removed when the file's tests end), and small settings (any free port, one
// sampler and one trainer thread at normal priority, 4 votes, no live adaptation). A test
// names only what it is about; whatever the shell's TTRL_* variables say is not read.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { DEFAULT_MODEL_DIR, resolveSettings, type SettingName, type Settings } from '../../src/config/settings.ts';
import { startServer, type RunningServer } from '../../src/server/server.ts';
import type { Logger } from '../../src/util/log.ts';
import { scratch } from './scratch.ts';

export type SettingOverrides = Partial<Record<SettingName, unknown>>;

/** What every test server has unless the test says otherwise. */
export const TEST_SERVER_DEFAULTS = {
  port: 0,
  model: DEFAULT_MODEL_DIR,
  threads: 1,
  trainThreads: 1,
  trainNice: 0,
  votes: 4,
  adapt: false,
} as const satisfies SettingOverrides;

/** The test defaults, then `overrides`; the environment is not read. */
export function testSettings(overrides: SettingOverrides = {}): Settings {
  return resolveSettings({ ...TEST_SERVER_DEFAULTS, ...overrides }, {});
}

export interface StartTestServerOptions {
  /** Folder of the database (`DIR/ttrl.sqlite`), e.g. to start again on the same log; default: a fresh scratch folder. Ignored when the overrides name `db`. */
  dir?: string;
  /** Prefix of the scratch folder's name. */
  prefix?: string;
  /** The server's logger; default: silent. */
  logger?: Logger;
}

/** Starts a server on `testSettings(overrides)`; the caller closes it. */
export async function startTestServer(overrides: SettingOverrides = {}, o: StartTestServerOptions = {}): Promise<RunningServer> {
  const db = overrides.db ?? join(o.dir ?? (await scratch(o.prefix ?? 'ttrl-server-')), 'ttrl.sqlite');
  return startServer(testSettings({ ...overrides, db }), o.logger);
}

/**
 * Fails unless an update judged a candidate: `promoted` or `rejected` (or only those of
 * `want`). An update is `skipped` when no question had a learning signal (every sample
 * agreed, or no vote passed --gate) or no client was under its share; a test that accepts
 * that can pass having judged nothing, so it fails here and says why.
 */
export function assertJudged(
  u: { outcome: string; reason?: string; stats?: unknown },
  want: readonly ('promoted' | 'rejected')[] = ['promoted', 'rejected'],
): void {
  if (u.outcome === 'skipped')
    assert.fail(
      `the update was skipped (${u.reason ?? 'no reason given'}), so this test judged nothing: its questions must give a learning signal ` +
        `(votes that disagree, a majority at or above --gate, clients under --max-client-share); stats: ${JSON.stringify(u.stats)}`,
    );
  assert.ok((want as readonly string[]).includes(u.outcome), `the update was ${u.outcome}, expected ${want.join(' or ')}: ${JSON.stringify(u)}`);
}
