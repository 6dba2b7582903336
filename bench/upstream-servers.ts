// ttrl-server processes as upstream inference servers for the benchmarks (as vLLM would be
// on a GPU machine): each `ttrl serve --port 0 --no-adapt` on its own throwaway SQLite file,
// LoRA-capable when asked, resolved once it prints where it serves.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../bin/ttrl.js', import.meta.url));
const SERVING = /serving .* at (http:\/\/\S+)/;

export interface UpstreamServer {
  /** Its OpenAI base URL (…/v1), as --upstream takes it. */
  base: string;
  stop(): Promise<void>;
}

/** Every upstream still running: killed when the bench exits, however it exits (a failed run throws past its own stop). */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of running) c.kill('SIGKILL');
});

export async function startUpstream(args: string[]): Promise<UpstreamServer> {
  const dir = await mkdtemp(join(tmpdir(), 'ttrl-bench-upstream-'));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TTRL_')));
  const child: ChildProcess = spawn(process.execPath, [bin, 'serve', '--port', '0', '--no-adapt', '--db', join(dir, 'u.sqlite'), ...args], {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  running.add(child);
  child.once('exit', () => running.delete(child));
  let log = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (c: string) => {
      log += c;
      const m = SERVING.exec(log);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`the upstream exited (${code}) before serving:\n${log}`)));
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return {
    base: `${url}/v1`,
    stop: () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}
