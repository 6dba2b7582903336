// What the engine benchmarks time with: the median wall time of a call after a warm-up, and
// the rate at which ORT streams memory on this machine (what a decode step that reads every
// weight once can at best reach).
import { createSession, f32 } from '../src/engine/ort.ts';
import { Graph } from '../src/graph/ir.ts';
import * as op from '../src/graph/ops.ts';

/** Seconds: the median of `reps` timed calls, after one untimed warm-up. */
export async function median(fn: () => Promise<unknown>, reps: number): Promise<number> {
  await fn();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    await fn();
    ts.push((performance.now() - t) / 1000);
  }
  ts.sort((a, b) => a - b);
  return ts[Math.floor(ts.length / 2)]!;
}

/** GB/s at which ORT streams 1 GiB of float32 through a ReduceSum on `threads` threads (best of 6). */
export async function memoryBandwidth(threads: number): Promise<number> {
  const n = 256 * 1024 * 1024;
  const g = new Graph('bandwidth');
  g.output('s', op.reduceSum(g.input('x', 'float32', [n / 1024, 1024]), [1]));
  const session = await createSession(g, { threads });
  const feeds = { x: f32(new Float32Array(n).fill(1), [n / 1024, 1024]) };
  let best = Infinity;
  for (let i = 0; i < 6; i++) {
    const t = performance.now();
    await session.run(feeds);
    best = Math.min(best, (performance.now() - t) / 1000);
  }
  await session.release();
  return (n * 4) / best / 1e9;
}
