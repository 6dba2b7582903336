// Quantized matrices in the layout of onnxruntime's MatMulNBits kernel (com.microsoft), the
// one form every quantized weight takes here, whatever file it came from:
//   a [rows, cols] matrix (rows = the kernel's N, output features; cols = K, input features),
//   each row cut into blocks of `blockSize` along cols; each block holds `blockSize` codes of
//   `bits` bits (4-bit: two per byte, the even element in the low nibble), one float32 scale,
//   and optionally one float32 offset:
//       weight = scale * (code - 2^(bits-1)) + offset
// The zero point is always the kernel's default (8 for 4 bits, 128 for 8), so no zero-point
// tensor is ever stored. The offset is what ggml's "min" formats (Q4_1, Q5_1, Q4_K, Q5_K) need
// and an integer zero point cannot express; the graph adds it as one thin GEMM over the
// input's block sums (graph/quantized.ts). Training never sees this form: it gets the float32
// values dequantize() gives, from the same bytes.

export type NBits = 4 | 8;

export interface NBitsMatrix {
  rows: number;
  cols: number;
  bits: NBits;
  blockSize: number;
  /** [rows, cols / blockSize, blockSize * bits / 8] codes. */
  data: Uint8Array;
  /** [rows * cols / blockSize] */
  scales: Float32Array;
  /** [rows * cols / blockSize], or absent: every offset 0. */
  offsets?: Float32Array;
}

/** onnxruntime's CPU kernel takes these block sizes (a power of two, at least 16). */
export const NBITS_BLOCK_SIZES = [16, 32, 64, 128, 256];

export const zeroPointOf = (bits: NBits) => 1 << (bits - 1);
export const blocksPerRow = (m: Pick<NBitsMatrix, 'cols' | 'blockSize'>) => m.cols / m.blockSize;
export const blockBytes = (m: Pick<NBitsMatrix, 'bits' | 'blockSize'>) => (m.blockSize * m.bits) / 8;

/** An all-zero matrix of this geometry, to be filled block by block. */
export function emptyNBits(rows: number, cols: number, bits: NBits, blockSize: number, withOffsets: boolean): NBitsMatrix {
  if (!NBITS_BLOCK_SIZES.includes(blockSize)) throw new Error(`nbits: block size ${blockSize} is not one of ${NBITS_BLOCK_SIZES.join(', ')}`);
  if (cols % blockSize !== 0) throw new Error(`nbits: rows of ${cols} values are not a whole number of ${blockSize}-value blocks`);
  const blocks = rows * (cols / blockSize);
  return {
    rows,
    cols,
    bits,
    blockSize,
    data: new Uint8Array(blocks * ((blockSize * bits) / 8)),
    scales: new Float32Array(blocks),
    ...(withOffsets ? { offsets: new Float32Array(blocks) } : {}),
  };
}

/** Stores `codes` (unsigned, below 2^bits) as block `block` (row-major over [rows, blocks per row]). */
export function setBlockCodes(m: NBitsMatrix, block: number, codes: ArrayLike<number>): void {
  const start = block * blockBytes(m);
  if (m.bits === 8) {
    for (let j = 0; j < m.blockSize; j++) m.data[start + j] = codes[j]!;
    return;
  }
  for (let j = 0; j < m.blockSize; j += 2) m.data[start + j / 2] = codes[j]! | (codes[j + 1]! << 4);
}

/** The codes of one block, unpacked. */
export function blockCodes(m: NBitsMatrix, block: number, out = new Uint8Array(m.blockSize)): Uint8Array {
  const start = block * blockBytes(m);
  if (m.bits === 8) {
    out.set(m.data.subarray(start, start + m.blockSize));
    return out;
  }
  for (let j = 0; j < m.blockSize; j += 2) {
    const byte = m.data[start + j / 2]!;
    out[j] = byte & 15;
    out[j + 1] = byte >> 4;
  }
  return out;
}

/** The float32 values [rows, cols]: what training, scoring and merging see of a quantized weight. */
export function dequantizeNBits(m: NBitsMatrix): Float32Array {
  const out = new Float32Array(m.rows * m.cols);
  const zero = zeroPointOf(m.bits);
  const codes = new Uint8Array(m.blockSize);
  const blocks = m.scales.length;
  for (let b = 0; b < blocks; b++) {
    blockCodes(m, b, codes);
    const scale = m.scales[b]!;
    const offset = m.offsets?.[b] ?? 0;
    const base = b * m.blockSize;
    // Math.fround at each step: the kernel's float32 arithmetic, not JavaScript's double.
    for (let j = 0; j < m.blockSize; j++) out[base + j] = Math.fround(Math.fround(scale * (codes[j]! - zero)) + offset);
  }
  return out;
}

/**
 * Symmetric 8-bit blocks of 32 (ggml's Q8_0 rule with a float32 scale): scale = max|w| / 127,
 * code = round(w / scale) + 128. What `--quantize int8` makes of any float checkpoint.
 */
export function quantizeInt8(values: Float32Array, rows: number, cols: number, blockSize = 32): NBitsMatrix {
  if (values.length !== rows * cols) throw new Error(`quantizeInt8: ${values.length} values are not [${rows}, ${cols}]`);
  const m = emptyNBits(rows, cols, 8, blockSize, false);
  const codes = new Uint8Array(blockSize);
  for (let b = 0; b < m.scales.length; b++) {
    const block = values.subarray(b * blockSize, (b + 1) * blockSize);
    let amax = 0;
    for (const v of block) amax = Math.max(amax, Math.abs(v));
    const scale = Math.fround(amax / 127);
    const inverse = scale > 0 ? 1 / scale : 0;
    for (let j = 0; j < blockSize; j++) codes[j] = Math.max(-127, Math.min(127, Math.round(block[j]! * inverse))) + 128;
    m.scales[b] = scale;
    setBlockCodes(m, b, codes);
  }
  return m;
}

/** The same matrix with its rows reordered: row i of the result is row order[i] of `m`. */
export function permuteNBitsRows(m: NBitsMatrix, order: ArrayLike<number>): NBitsMatrix {
  const blocks = blocksPerRow(m);
  const rowBytes = blocks * blockBytes(m);
  const out: NBitsMatrix = { ...m, data: new Uint8Array(m.data.length), scales: new Float32Array(m.scales.length) };
  if (m.offsets) out.offsets = new Float32Array(m.offsets.length);
  for (let i = 0; i < m.rows; i++) {
    const from = order[i]!;
    out.data.set(m.data.subarray(from * rowBytes, (from + 1) * rowBytes), i * rowBytes);
    out.scales.set(m.scales.subarray(from * blocks, (from + 1) * blocks), i * blocks);
    out.offsets?.set(m.offsets!.subarray(from * blocks, (from + 1) * blocks), i * blocks);
  }
  return out;
}
