// Thin helpers around onnxruntime-node: sessions from our graphs, tensors from typed arrays.
import * as ort from 'onnxruntime-node';
import type { Graph } from '../graph/ir.ts';
import { toOnnx } from '../graph/onnx.ts';

export { ort };

export interface SessionOptions {
  /** Threads for one op (intra-op). Default: 1. */
  threads?: number;
  /**
   * Whether idle compute threads spin (ORT's default) or sleep. Spinning is faster for a
   * session that has the cores to itself; with the sampler and the trainer sharing them, a
   * spinning thread burns the cycles the other could use.
   */
  spin?: boolean;
  /** The folder of the graph's external-data weight files (see Graph.external). */
  externalDir?: string;
  /**
   * Let ORT repack constant weights for its GEMM kernels (ORT's default). Faster, but each
   * session then keeps its own packed copy instead of reading the shared file mapping.
   */
  prepack?: boolean;
  /**
   * ORT's memory pattern: a plan of every allocation, made on the second run of each input shape
   * (default on). Training batches change shape at every update, so each would pay a slow
   * planning run and the plan's extra memory (measured: a 17 s step instead of 7-9 s, 10.3
   * instead of 6.8 GB peak for a 135M-parameter train step); the trainer turns it off.
   */
  memPattern?: boolean;
}

export async function createSession(graph: Graph, o: SessionOptions = {}): Promise<ort.InferenceSession> {
  const session: Record<string, unknown> = { intra_op: { allow_spinning: o.spin === false ? '0' : '1' } };
  if (o.externalDir) session.model_external_initializers_file_folder_path = o.externalDir;
  if (o.prepack === false) session.disable_prepacking = '1';
  return ort.InferenceSession.create(toOnnx(graph), {
    intraOpNumThreads: o.threads ?? 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    enableMemPattern: o.memPattern ?? true,
    // ORT's fused kernels (e.g. QuickGelu for x * sigmoid(x)) exist for float32 only; float64
    // graphs are our gradient checks, which want exact primitives anyway.
    graphOptimizationLevel: graph.inputs.some((t) => t.dtype === 'float64') ? 'basic' : 'all',
    logSeverityLevel: 3, // ORT warns about constants our gradient rules leave unused; it removes them itself
    extra: { session },
  });
}

export const f32 = (data: Float32Array, dims: readonly number[]) => new ort.Tensor('float32', data, dims);
export const f64 = (data: Float64Array, dims: readonly number[]) => new ort.Tensor('float64', data, dims);
export const i64 = (data: BigInt64Array | number[], dims: readonly number[]) =>
  new ort.Tensor('int64', data instanceof BigInt64Array ? data : BigInt64Array.from(data, (v) => BigInt(v)), dims);
