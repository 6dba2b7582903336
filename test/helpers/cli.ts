// Runs the `ttrl` CLI as a user would (bin/ttrl.js in a child process).
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../../bin/ttrl.js', import.meta.url));

export function ttrl(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) =>
    execFile(process.execPath, [bin, ...args], (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr })),
  );
}

/** The JSON object a --json command prints as its last stdout line. */
export const lastJson = (out: string) => JSON.parse(out.trim().split('\n').at(-1)!);
