// The real server as a child process (`ttrl serve`, through bin/ttrl.js), for tests that kill
// it as an operator or the kernel would. The port is the one it reports: `--port 0` and the
// "serving ... at http://HOST:PORT" line on stderr. Children a test leaves behind are killed
// when the file's tests end.
import { after } from 'node:test';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../../bin/ttrl.js', import.meta.url));
const root = fileURLToPath(new URL('../../', import.meta.url));
const SERVING = /serving .* at (http:\/\/\S+)\s+websocket (ws:\/\/\S+)/;

export interface ChildServer {
  pid: number;
  url: string;
  wsUrl: string;
  /** Everything written to stderr so far (the server's log). */
  log(): string;
  /** Resolves when the process has exited, with its code or the signal that ended it. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Sends `signal` and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const running = new Set<ChildProcess>();
after(() => {
  for (const c of running) c.kill('SIGKILL');
});

/** Starts `ttrl serve --port 0 ...args` and resolves once it serves. */
export async function startChildServer(args: string[], o: { startTimeoutMs?: number } = {}): Promise<ChildServer> {
  // The child's settings are the test's flags alone, not whatever TTRL_* the shell has.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TTRL_')));
  const child = spawn(process.execPath, [bin, 'serve', '--port', '0', ...args], { cwd: root, env, stdio: ['ignore', 'ignore', 'pipe'] });
  running.add(child);
  let stderr = '';
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    }),
  );
  const urls = await new Promise<RegExpExecArray>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`the server did not start within ${o.startTimeoutMs ?? 60_000} ms:\n${stderr}`)),
      o.startTimeoutMs ?? 60_000,
    );
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      stderr += chunk;
      const m = SERVING.exec(stderr);
      if (m) (clearTimeout(timer), resolve(m));
    });
    void exited.then(({ code, signal }) => (clearTimeout(timer), reject(new Error(`the server exited (${code ?? signal}) before serving:\n${stderr}`))));
  }).catch((e) => {
    child.kill('SIGKILL');
    throw e;
  });
  return {
    pid: child.pid!,
    url: urls[1]!,
    wsUrl: urls[2]!,
    log: () => stderr,
    exited,
    stop: (signal = 'SIGTERM') => {
      child.kill(signal);
      return exited;
    },
  };
}
