#!/usr/bin/env node
// The `ttrl` command: the compiled CLI, dist/cli.js, in plain node. dist/ is built by
// `npm run build`, which `npm ci` (prepare) and `npm start` (prestart) run.
//
// In a checkout whose src/ changed after the last build, and where tsx (a dev dependency) is
// installed, it runs src/cli.ts through tsx instead: a stale dist/ is never what runs while
// the sources are being edited (tests spawn this file). An install without tsx always runs dist/.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const src = join(root, 'src');
const compiled = join(root, 'dist', 'cli.js');
/** Written by bin/build-finish.js at the end of every build. */
const stamp = join(root, 'dist', '.build-stamp');

const newestMtime = (dir) =>
  readdirSync(dir, { withFileTypes: true }).reduce((m, e) => {
    const p = join(dir, e.name);
    return Math.max(m, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }, 0);

const fresh = () => existsSync(compiled) && existsSync(stamp) && (!existsSync(src) || newestMtime(src) <= statSync(stamp).mtimeMs);

function tsxApi() {
  try {
    return import.meta.resolve('tsx/esm/api');
  } catch {
    return null;
  }
}

const tsx = fresh() ? null : existsSync(join(src, 'cli.ts')) && tsxApi();
if (tsx) {
  (await import(tsx)).register();
  await import('../src/cli.ts');
} else if (existsSync(compiled)) {
  await import('../dist/cli.js');
} else {
  console.error('ttrl: dist/cli.js is missing: run `npm run build` (npm ci runs it)');
  process.exit(1);
}
