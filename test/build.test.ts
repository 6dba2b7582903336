// The compiled build, `npm start` and its signals, and the install policy (issue 14): what a
// user gets from `npm ci && npm start`, checked through npm itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
const linux = process.platform === 'linux';

/** The environment of a user's shell: none of the variables that would mask what npm reads from the project. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (/^(npm_config_onnxruntime|onnxruntime_node_install|ttrl_)/i.test(k) || k === 'NODE_OPTIONS') delete env[k];
  return { ...env, ...extra };
}

function build(): void {
  const r = spawnSync('npm', ['run', 'build'], { cwd: ROOT, env: cleanEnv(), encoding: 'utf8' });
  assert.equal(r.status, 0, `npm run build failed:\n${r.stdout}\n${r.stderr}`);
}

const walk = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)]));

test('npm run build: dist/ mirrors src/ at its depth, in JavaScript that imports no .ts module', () => {
  build();
  const sources = walk(join(ROOT, 'src')).filter((f) => f.endsWith('.ts'));
  for (const s of sources) {
    const out = join(ROOT, 'dist', relative(join(ROOT, 'src'), s)).replace(/\.ts$/, '.js');
    assert.ok(existsSync(out), `${relative(ROOT, out)} missing`);
    const js = readFileSync(out, 'utf8');
    // Static imports and re-exports, and literal dynamic imports: all rewritten to .js.
    const tsSpecifiers = [...js.matchAll(/(?:from\s*|import\s*\(\s*)(['"])(\.{1,2}\/[^'"]*)\1/g)].map((m) => m[2]!).filter((p) => !p.endsWith('.js'));
    assert.deepEqual(tsSpecifiers, [], `${relative(ROOT, out)} imports modules that are not .js`);
  }
  // Worker entries and the objective seam are found next to the module by import.meta.url.
  for (const w of ['sampler', 'scorer', 'trainer']) assert.ok(existsSync(join(ROOT, 'dist/engine', `${w}.worker.js`)));
  assert.ok(existsSync(join(ROOT, 'dist/.build-stamp')), 'bin/build-finish.js writes the stamp bin/ttrl.js checks');
});

test('package.json: the ttrl bin, and "exports" whose targets the build produces (./client for the typed client)', () => {
  assert.equal(pkg.bin.ttrl, 'bin/ttrl.js');
  assert.deepEqual(pkg.exports['./client'], { types: './dist/client/index.d.ts', default: './dist/client/index.js' });
  assert.match(pkg.scripts.start, /^exec node dist\/cli\.js serve$/, 'exec: the shell is replaced by node, so the signals npm forwards reach the server');
  assert.equal(pkg.dependencies.tsx, undefined, 'tsx is a dev dependency: nothing at run time needs it');
  for (const [entry, target] of Object.entries(pkg.exports as Record<string, string | Record<string, string>>)) {
    for (const file of typeof target === 'string' ? [target] : Object.values(target)) {
      assert.ok(existsSync(join(ROOT, file)), `exports ${entry}: ${file} missing after the build`);
    }
  }
  // Plain node, no tsx: the package imports itself by name, as a user's code would import it.
  const r = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      "const m = await import('ttrl-server/client'); if (typeof m.TtrlClient !== 'function') throw new Error('no TtrlClient'); console.log('ok')",
    ],
    { cwd: ROOT, env: cleanEnv(), encoding: 'utf8' },
  );
  assert.equal(r.stdout.trim(), 'ok', r.stderr);
});

test(
  "install: onnxruntime-node's install script is denied by allowScripts (no CUDA download), with no npm warning",
  { skip: !linux && 'the probe uses NODE_OPTIONS and POSIX paths' },
  () => {
    assert.equal(
      existsSync(join(ROOT, '.npmrc')) && /onnxruntime/.test(readFileSync(join(ROOT, '.npmrc'), 'utf8')),
      false,
      '.npmrc must not hold onnxruntime-node-install: npm 11 warns "Unknown project config" on every command',
    );
    assert.equal(pkg.allowScripts['onnxruntime-node'], false);
    // A probe preloaded into every node npm starts: when onnxruntime-node's install script
    // starts, it records that and exits before the script can download anything.
    const dir = mkdtempSync(join(tmpdir(), 'ttrl-install-'));
    try {
      const marker = join(dir, 'ran');
      const probe = join(dir, 'probe.cjs');
      writeFileSync(
        probe,
        `if (/onnxruntime-node[\\\\/]script[\\\\/]install/.test(process.argv[1] || '')) { require('fs').writeFileSync(${JSON.stringify(marker)}, 'ran'); process.exit(0); }\n`,
      );
      const rebuild = (...flags: string[]) =>
        spawnSync('npm', ['rebuild', 'onnxruntime-node', '--foreground-scripts', ...flags], {
          cwd: ROOT,
          env: cleanEnv({ NODE_OPTIONS: `--require ${probe}` }),
          encoding: 'utf8',
        });
      const r = rebuild();
      assert.equal(r.status, 0, r.stderr);
      const out = r.stdout + r.stderr;
      assert.doesNotMatch(out, /Unknown \w+ config/);
      assert.doesNotMatch(out, /install-scripts|allowScripts/, 'every dependency with install scripts is approved or denied in package.json');
      assert.equal(existsSync(marker), false, "onnxruntime-node's install script ran: it would download CUDA libraries");
      // The probe itself works: with the policy bypassed, the script does start.
      assert.equal(rebuild('--dangerously-allow-all-scripts').status, 0);
      assert.equal(existsSync(marker), true, 'the probe did not see the install script run (the check above proves nothing)');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

const portOpen = (port: number) =>
  new Promise<boolean>((resolve) => {
    const c = connect(port, '127.0.0.1');
    c.once('connect', () => (c.destroy(), resolve(true)));
    c.once('error', () => resolve(false));
  });

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** The processes whose parent is `pid` (Linux /proc). */
const childrenOf = (pid: number) =>
  readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        // stat's fields after the parenthesized command name: state, ppid, ...
        return Number(readFileSync(`/proc/${d}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]) === pid;
      } catch {
        return false;
      }
    })
    .map(Number);

interface Started {
  npm: ChildProcess;
  server: number;
  port: number;
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  dir: string;
}

/** `npm start` as a user types it, on a free port and a fresh database; resolves once it is serving. */
async function npmStart(): Promise<Started> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'ttrl-start-'));
  // detached: npm leads its own process group, as a shell's foreground job does (for Ctrl-C).
  const npm = spawn('npm', ['start'], {
    cwd: ROOT,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: cleanEnv({ TTRL_PORT: String(port), TTRL_HOST: '127.0.0.1', TTRL_DB: join(dir, 'ttrl.sqlite'), TTRL_ADAPT: 'false' }),
  });
  let out = '';
  npm.stdout!.on('data', (d) => (out += d));
  npm.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => npm.once('exit', (code, signal) => r({ code, signal })));
  const deadline = Date.now() + 180_000;
  while (!/serving/.test(out)) {
    if (npm.exitCode !== null || Date.now() > deadline) {
      npm.kill('SIGKILL');
      throw new Error(`npm start did not serve:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const [server] = childrenOf(npm.pid!);
  assert.ok(server, 'npm start has a child process');
  return { npm, server, port, output: () => out, exited, dir };
}

async function stopsGracefully(s: Started, send: () => void): Promise<void> {
  try {
    send();
    const timeout = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 60_000).unref());
    const how = await Promise.race([s.exited, timeout]);
    assert.notEqual(how, 'timeout', `npm start still running 60 s after the signal:\n${s.output()}`);
    assert.deepEqual(how, { code: 0, signal: null }, s.output());
    assert.match(s.output(), /stopped/, 'the server logged its graceful stop');
    assert.equal(alive(s.server), false, 'the server process is gone');
    assert.equal(await portOpen(s.port), false, 'the port is closed');
  } finally {
    if (alive(s.server)) process.kill(s.server, 'SIGKILL');
    rmSync(s.dir, { recursive: true, force: true });
  }
}

test(
  'npm start: runs dist/cli.js in plain node (npm → node, no shell, no tsx), and SIGTERM to npm stops the server gracefully',
  { skip: !linux && 'reads /proc' },
  async () => {
    const s = await npmStart();
    const argv = readFileSync(`/proc/${s.server}/cmdline`, 'utf8').split('\0').filter(Boolean);
    assert.deepEqual(argv.slice(1), ['dist/cli.js', 'serve'], `the server runs as npm's direct child: ${argv.join(' ')}`);
    assert.doesNotMatch(argv.join(' '), /tsx/);
    // A question answered: the compiled sampler worker runs.
    const r = await fetch(`http://127.0.0.1:${s.port}/v1/ask`, { method: 'POST', body: JSON.stringify({ question: '1+2=' }) });
    assert.equal(r.status, 200, await r.text());
    await stopsGracefully(s, () => process.kill(s.npm.pid!, 'SIGTERM'));
  },
);

test(
  'npm start: Ctrl-C (SIGINT to the foreground group: npm, which forwards it, and node) stops it gracefully, not at once',
  { skip: !linux && 'reads /proc' },
  async () => {
    const s = await npmStart();
    await stopsGracefully(s, () => {
      process.kill(-s.npm.pid!, 'SIGINT');
      // npm's forwarded copy can arrive a few milliseconds after the terminal's: send one so
      // the check does not depend on the two being merged by the kernel.
      setTimeout(() => alive(s.server) && process.kill(s.server, 'SIGINT'), 10);
    });
  },
);
