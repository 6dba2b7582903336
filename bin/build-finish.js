#!/usr/bin/env node
// The end of `npm run build`, after tsc has compiled src/ into dist/: copies src/'s files
// that are not TypeScript (assets a module finds next to itself by import.meta.url) to the
// same place under dist/, and writes dist/.build-stamp, by which bin/ttrl.js knows dist/ is
// at least as new as src/.
import { cpSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const dist = join(root, 'dist');
cpSync(join(root, 'src'), dist, { recursive: true, filter: (from) => !/\.(c|m)?tsx?$/.test(from) });
writeFileSync(join(dist, '.build-stamp'), `${new Date().toISOString()}\n`);
