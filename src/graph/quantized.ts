// Weights kept quantized in inference graphs: a QuantizedTensor stands for a float32 matrix
// that is never materialised; its parts are MatMulNBits blocks (formats/nbits.ts) mapped from
// a file. Two things can be done with one, each a builder here: multiply by it (onnxruntime's
// com.microsoft.MatMulNBits, plus a thin GEMM over the input's block sums for the per-block
// offsets of ggml's "min" formats) and gather rows of it (an embedding lookup, dequantized
// with standard ops for just the rows asked for). Any other op given one is refused when the
// graph is serialised (onnx.ts). Training graphs never hold one: they read the float32 values.
import { attr, Tensor, type Graph, type Shape } from './ir.ts';
import { MS_DOMAIN } from './onnx.ts';
import * as op from './ops.ts';

export interface NBitsGeometry {
  bits: 4 | 8;
  blockSize: number;
  /** The stored matrix: rows = output features (MatMulNBits' N), cols = input features (K). */
  rows: number;
  cols: number;
}

export interface NBitsParts {
  /** uint8 [rows, cols / blockSize, blockSize * bits / 8] */
  data: Tensor;
  /** float32 [rows * cols / blockSize] */
  scales: Tensor;
  /** float32 [rows, cols / blockSize], added to every weight of its block */
  offsets?: Tensor;
}

/** A weight of `shape` (the family's own layout) held as MatMulNBits blocks of its [out, in] matrix. */
export class QuantizedTensor extends Tensor {
  constructor(
    graph: Graph,
    shape: Shape,
    name: string,
    readonly parts: NBitsParts,
    readonly geometry: NBitsGeometry,
  ) {
    super(graph, 'float32', shape, name);
  }
}

export const isQuantized = (t: Tensor | undefined): t is QuantizedTensor => t instanceof QuantizedTensor;

/** x [M, K] times the weight: [M, N] = x @ W^T for the stored [N, K] matrix W. */
export function matMulNBits(x: Tensor, w: QuantizedTensor): Tensor {
  const { bits, blockSize, rows, cols } = w.geometry;
  const g = x.graph;
  const y = g.node(
    'MatMulNBits',
    [x, w.parts.data, w.parts.scales],
    {
      K: attr.int(cols),
      N: attr.int(rows),
      bits: attr.int(bits),
      block_size: attr.int(blockSize),
      // int8 activations, int32 accumulation (MLAS's CompInt8): what llama.cpp does too, and
      // measured the fastest here (bench/RESULTS.md, issue 24).
      accuracy_level: attr.int(4),
    },
    [{ dtype: 'float32', shape: [x.shape[0]!, rows] }],
    MS_DOMAIN,
  )[0]!;
  if (!w.parts.offsets) return y;
  // sum_k x_k * offset_block(k) = blockSums(x) @ offsets^T: K / blockSize terms per output.
  const sums = op.reduceSum(op.reshape(x, [0, cols / blockSize, blockSize], [x.shape[0]!, cols / blockSize, blockSize]), [2]);
  return op.gemm(sums, w.parts.offsets, { transB: true, c: y });
}

/** Rows `ids` of the stored matrix, dequantized: [...ids.shape, cols]. */
export function gatherNBitsRows(w: QuantizedTensor, ids: Tensor): Tensor {
  const { bits, blockSize, rows, cols } = w.geometry;
  const g = ids.graph;
  const blocks = cols / blockSize;
  const flat = op.reshape(ids, [-1], ['R']);
  const raw = op.cast(op.gather(w.parts.data, flat), 'int32'); // [R, blocks, bytes per block]
  let codes = raw;
  if (bits === 4) {
    // Two codes per byte, the even one in the low nibble.
    const high = op.div(raw, op.constant(g, 'int32', 16));
    const low = op.sub(raw, op.mul(high, op.constant(g, 'int32', 16)));
    codes = op.reshape(op.concat([op.unsqueeze(low, [3]), op.unsqueeze(high, [3])], 3), [0, blocks, blockSize], ['R', blocks, blockSize]);
  }
  const centred = op.cast(op.sub(codes, op.constant(g, 'int32', 1 << (bits - 1))), 'float32');
  const perBlock = (t: Tensor) => op.unsqueeze(op.gather(op.reshape(t, [rows, blocks], [rows, blocks]), flat), [2]); // [R, blocks, 1]
  let values = op.mul(centred, perBlock(w.parts.scales));
  if (w.parts.offsets) values = op.add(values, perBlock(w.parts.offsets));
  const out = op.reshape(values, [-1, cols], ['R', cols]);
  return op.reshape(out, op.concat([op.shapeOf(ids), op.int64s(g, [cols])], 0), [...ids.shape, cols]);
}

/**
 * x [M, in] times a weight, whatever form it is in: a quantized one (its stored rows are the
 * outputs), or a float one stored [out, in] (`outIn`: x @ W^T) or [in, out] (x @ W).
 */
export function timesWeight(x: Tensor, w: Tensor, outIn: boolean, bias?: Tensor): Tensor {
  if (isQuantized(w)) {
    const y = matMulNBits(x, w);
    return bias ? op.add(y, bias) : y;
  }
  if (outIn) return op.gemm(x, w, { transB: true, c: bias });
  const y = op.matmul(x, w);
  return bias ? op.add(y, bias) : y;
}

/** Rows `ids` of an embedding table, quantized or not: [...ids.shape, width]. */
export function gatherWeightRows(w: Tensor, ids: Tensor): Tensor {
  return isQuantized(w) ? gatherNBitsRows(w, ids) : op.gather(w, ids);
}
