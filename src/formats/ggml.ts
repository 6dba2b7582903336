// ggml's tensor types: the name and block layout of every type id a GGUF file can name, and
// the rule of each quantized type this project loads (QUANT_RULES: Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0, Q4_K, Q5_K, Q6_K). Quantized types store weights in fixed-size blocks along each row,
// so a tensor's byte size follows from its element count and the block geometry, loadable or
// not. A rule reads one ggml block as MatMulNBits blocks (formats/nbits.ts): codes, a scale
// and an offset per sub-block; float32 values come from that same reading, so what a sampler
// multiplies and what a trainer dequantizes are one function of the file's bytes.

import { endianness } from 'node:os';
import { f16Table, f16ToF32 } from './float16.ts';
import { emptyNBits, setBlockCodes, zeroPointOf, type NBits, type NBitsMatrix } from './nbits.ts';

// Decoding views file bytes as typed arrays, which use host byte order; GGUF is little-endian.
if (endianness() !== 'LE') throw new Error('ggml: big-endian hosts are not supported');

export interface GGMLTypeLayout {
  /** Weights per block, and the bytes one block takes. */
  blockSize: number;
  blockBytes: number;
}

interface GGMLTypeSpec extends Partial<GGMLTypeLayout> {
  name: string;
}

// ggml's enum ggml_type. Every id is named, loadable or not, so a refusal can say what the
// file holds. The retired ids (4, 5, 31-33, 36-38) no longer have a layout anyone can read.
const GGML_TYPES: Record<number, GGMLTypeSpec> = {
  0: { name: 'F32', blockSize: 1, blockBytes: 4 },
  1: { name: 'F16', blockSize: 1, blockBytes: 2 },
  2: { name: 'Q4_0', blockSize: 32, blockBytes: 18 },
  3: { name: 'Q4_1', blockSize: 32, blockBytes: 20 },
  4: { name: 'Q4_2' },
  5: { name: 'Q4_3' },
  6: { name: 'Q5_0', blockSize: 32, blockBytes: 22 },
  7: { name: 'Q5_1', blockSize: 32, blockBytes: 24 },
  8: { name: 'Q8_0', blockSize: 32, blockBytes: 34 },
  9: { name: 'Q8_1', blockSize: 32, blockBytes: 36 },
  10: { name: 'Q2_K', blockSize: 256, blockBytes: 84 },
  11: { name: 'Q3_K', blockSize: 256, blockBytes: 110 },
  12: { name: 'Q4_K', blockSize: 256, blockBytes: 144 },
  13: { name: 'Q5_K', blockSize: 256, blockBytes: 176 },
  14: { name: 'Q6_K', blockSize: 256, blockBytes: 210 },
  15: { name: 'Q8_K', blockSize: 256, blockBytes: 292 },
  16: { name: 'IQ2_XXS', blockSize: 256, blockBytes: 66 },
  17: { name: 'IQ2_XS', blockSize: 256, blockBytes: 74 },
  18: { name: 'IQ3_XXS', blockSize: 256, blockBytes: 98 },
  19: { name: 'IQ1_S', blockSize: 256, blockBytes: 50 },
  20: { name: 'IQ4_NL', blockSize: 32, blockBytes: 18 },
  21: { name: 'IQ3_S', blockSize: 256, blockBytes: 110 },
  22: { name: 'IQ2_S', blockSize: 256, blockBytes: 82 },
  23: { name: 'IQ4_XS', blockSize: 256, blockBytes: 136 },
  24: { name: 'I8', blockSize: 1, blockBytes: 1 },
  25: { name: 'I16', blockSize: 1, blockBytes: 2 },
  26: { name: 'I32', blockSize: 1, blockBytes: 4 },
  27: { name: 'I64', blockSize: 1, blockBytes: 8 },
  28: { name: 'F64', blockSize: 1, blockBytes: 8 },
  29: { name: 'IQ1_M', blockSize: 256, blockBytes: 56 },
  30: { name: 'BF16', blockSize: 1, blockBytes: 2 },
  31: { name: 'Q4_0_4_4' },
  32: { name: 'Q4_0_4_8' },
  33: { name: 'Q4_0_8_8' },
  34: { name: 'TQ1_0', blockSize: 256, blockBytes: 54 },
  35: { name: 'TQ2_0', blockSize: 256, blockBytes: 66 },
  36: { name: 'IQ4_NL_4_4' },
  37: { name: 'IQ4_NL_4_8' },
  38: { name: 'IQ4_NL_8_8' },
  39: { name: 'MXFP4', blockSize: 32, blockBytes: 17 },
  40: { name: 'NVFP4', blockSize: 64, blockBytes: 36 },
  41: { name: 'Q1_0', blockSize: 128, blockBytes: 18 },
  42: { name: 'Q2_0', blockSize: 64, blockBytes: 18 },
};

export const GGML_TYPE = { F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q5_0: 6, Q5_1: 7, Q8_0: 8, Q4_K: 12, Q5_K: 13, Q6_K: 14 } as const;

/** Whether ggml has ever named this type id (retired ids included). */
export function isKnownType(type: number): boolean {
  return Object.hasOwn(GGML_TYPES, type);
}

/** The ggml name of a tensor type id ("Q4_K"), or "unknown type N". */
export function ggmlTypeName(type: number): string {
  return isKnownType(type) ? GGML_TYPES[type].name : `unknown type ${type}`;
}

/** Block geometry of a type id; undefined for unknown and retired ids, whose size no one can know. */
export function ggmlTypeLayout(type: number): GGMLTypeLayout | undefined {
  const spec = isKnownType(type) ? GGML_TYPES[type] : undefined;
  return spec?.blockSize === undefined || spec.blockBytes === undefined ? undefined : { blockSize: spec.blockSize, blockBytes: spec.blockBytes };
}

/** Whether dequantize() handles this type. */
export function isLoadableType(type: number): boolean {
  return type === GGML_TYPE.F32 || type === GGML_TYPE.F16 || isQuantizedType(type);
}

/** Whether this type has a rule (QUANT_RULES): it can be served in MatMulNBits blocks. */
export function isQuantizedType(type: number): boolean {
  return Object.hasOwn(QUANT_RULES, type);
}

// ---------------------------------------------------------------------------------------
// Decoding

// Bits are copied as integers, so NaN payloads survive bit for bit.
function decodeF16(bytes: Uint8Array, out: Uint32Array): void {
  const table = f16Table();
  const halves = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length / 2);
  for (let i = 0; i < halves.length; i++) out[i] = table[halves[i]!]!;
}

// ---------------------------------------------------------------------------------------
// Quantized types: one rule each

/**
 * How one ggml block reads as MatMulNBits blocks: the block's values are runs of `subBlock`
 * values, run s being scales[s] * (codes[i] - 2^(bits-1)) + offsets[s]. `bits` and
 * `subBlock` are the MatMulNBits geometry the type is served in; `offsets` whether it needs
 * offsets (ggml's "min" types) or leaves them 0.
 */
interface QuantRule {
  bits: NBits;
  subBlock: number;
  offsets: boolean;
  read(src: Uint8Array, at: number, codes: Uint8Array, scales: Float32Array, offsets: Float32Array): void;
}

const half = (src: Uint8Array, at: number) => f16ToF32(src[at]! | (src[at + 1]! << 8));
const f32 = Math.fround;

/** The 6-bit scale and min of sub-block j of a K-quant super-block (Q4_K, Q5_K), from its 12 packed bytes at `at`. */
function kScaleMin(src: Uint8Array, at: number, j: number): [number, number] {
  const q = (i: number) => src[at + i]!;
  if (j < 4) return [q(j) & 63, q(j + 4) & 63];
  return [(q(j + 4) & 0xf) | ((q(j - 4) >> 6) << 4), (q(j + 4) >> 4) | ((q(j) >> 6) << 4)];
}

/** Q5_0/Q5_1's 32 values from 4 bytes of fifth bits at `at` (bit j for value j) and the 16 nibble bytes after them, plus `bias`. */
function readFiveBits(src: Uint8Array, at: number, codes: Uint8Array, bias: number): void {
  const high = src[at]! | (src[at + 1]! << 8) | (src[at + 2]! << 16) | (src[at + 3]! << 24);
  for (let j = 0; j < 16; j++) {
    const byte = src[at + 4 + j]!;
    codes[j] = bias + ((byte & 15) | (((high >>> j) & 1) << 4));
    codes[j + 16] = bias + ((byte >> 4) | (((high >>> (j + 16)) & 1) << 4));
  }
}

/** 16 bytes of nibbles at `at`: value j in the low nibble of byte j, value j + 16 in its high nibble. */
function readNibbles(src: Uint8Array, at: number, codes: Uint8Array): void {
  for (let j = 0; j < 16; j++) {
    const byte = src[at + j]!;
    codes[j] = byte & 15;
    codes[j + 16] = byte >> 4;
  }
}

// The 4-bit types keep 4-bit codes, so their offsets absorb the fixed zero point 8:
// d*q + m = d*(q - 8) + (m + 8d). The 5- and 6-bit types go to 8-bit codes, where their own
// zero fits: code = q + 128 (q - 16 + 128, q - 32 + 128 for the centred ones) and the offset
// is ggml's min as it is, so their values are ggml's bit for bit.
const QUANT_RULES: Record<number, QuantRule> = {
  // d (f16), 16 nibble bytes; d * (q - 8).
  [GGML_TYPE.Q4_0]: {
    bits: 4,
    subBlock: 32,
    offsets: false,
    read(src, at, codes, scales) {
      scales[0] = half(src, at);
      readNibbles(src, at + 2, codes);
    },
  },
  // d, m (f16), 16 nibble bytes; d * q + m.
  [GGML_TYPE.Q4_1]: {
    bits: 4,
    subBlock: 32,
    offsets: true,
    read(src, at, codes, scales, offsets) {
      const d = half(src, at);
      scales[0] = d;
      offsets[0] = f32(half(src, at + 2) + 8 * d);
      readNibbles(src, at + 4, codes);
    },
  },
  // d (f16), 4 bytes of fifth bits, 16 nibble bytes; d * (q - 16).
  [GGML_TYPE.Q5_0]: {
    bits: 8,
    subBlock: 32,
    offsets: false,
    read(src, at, codes, scales) {
      scales[0] = half(src, at);
      readFiveBits(src, at + 2, codes, 128 - 16);
    },
  },
  // d, m (f16), fifth bits, nibbles; d * q + m.
  [GGML_TYPE.Q5_1]: {
    bits: 8,
    subBlock: 32,
    offsets: true,
    read(src, at, codes, scales, offsets) {
      scales[0] = half(src, at);
      offsets[0] = half(src, at + 2);
      readFiveBits(src, at + 4, codes, 128);
    },
  },
  // d (f16), 32 int8; d * q.
  [GGML_TYPE.Q8_0]: {
    bits: 8,
    subBlock: 32,
    offsets: false,
    read(src, at, codes, scales) {
      scales[0] = half(src, at);
      for (let j = 0; j < 32; j++) codes[j] = src[at + 2 + j]! ^ 0x80; // int8 + 128
    },
  },
  // 256 values: d, dmin (f16), 12 bytes of 6-bit scales and mins, 128 bytes of nibbles (each
  // 32 bytes hold sub-block 2c in their low nibbles, 2c + 1 in their high ones); d*sc*q - dmin*m.
  [GGML_TYPE.Q4_K]: {
    bits: 4,
    subBlock: 32,
    offsets: true,
    read(src, at, codes, scales, offsets) {
      const d = half(src, at);
      const dmin = half(src, at + 2);
      for (let s = 0; s < 8; s++) {
        const [sc, m] = kScaleMin(src, at + 4, s);
        scales[s] = f32(d * sc);
        offsets[s] = f32(8 * scales[s]! - f32(dmin * m));
      }
      for (let c = 0; c < 4; c++)
        for (let l = 0; l < 32; l++) {
          const byte = src[at + 16 + 32 * c + l]!;
          codes[64 * c + l] = byte & 15;
          codes[64 * c + 32 + l] = byte >> 4;
        }
    },
  },
  // 256 values: d, dmin, the 12 scale bytes, 32 bytes of fifth bits (bit 2c of byte l for
  // value l of sub-block 2c, bit 2c + 1 for sub-block 2c + 1), Q4_K's nibbles; d*sc*q - dmin*m.
  [GGML_TYPE.Q5_K]: {
    bits: 8,
    subBlock: 32,
    offsets: true,
    read(src, at, codes, scales, offsets) {
      const d = half(src, at);
      const dmin = half(src, at + 2);
      for (let s = 0; s < 8; s++) {
        const [sc, m] = kScaleMin(src, at + 4, s);
        scales[s] = f32(d * sc);
        offsets[s] = -f32(dmin * m);
      }
      for (let c = 0; c < 4; c++)
        for (let l = 0; l < 32; l++) {
          const byte = src[at + 48 + 32 * c + l]!;
          const high = src[at + 16 + l]!;
          codes[64 * c + l] = 128 + (byte & 15) + (((high >> (2 * c)) & 1) << 4);
          codes[64 * c + 32 + l] = 128 + (byte >> 4) + (((high >> (2 * c + 1)) & 1) << 4);
        }
    },
  },
  // 256 values in 16 sub-blocks of 16: 128 bytes of low nibbles, 64 of 2-bit high pairs, 16
  // int8 scales, d (f16) last; d * sc * (q - 32). In each half of 128 values, low byte l (of
  // the half's 64) and high byte l (of its 32) give values l, l + 32, l + 64, l + 96: the low
  // nibble of byte l, of byte l + 32, the high nibble of l, of l + 32; high bits 0-1, 2-3, 4-5, 6-7.
  [GGML_TYPE.Q6_K]: {
    bits: 8,
    subBlock: 16,
    offsets: false,
    read(src, at, codes, scales) {
      const d = half(src, at + 208);
      for (let s = 0; s < 16; s++) scales[s] = f32(d * ((src[at + 192 + s]! << 24) >> 24));
      for (let n = 0; n < 2; n++) {
        const ql = at + 64 * n;
        const qh = at + 128 + 32 * n;
        for (let l = 0; l < 32; l++) {
          const high = src[qh + l]!;
          const out = 128 * n + l;
          codes[out] = 96 + ((src[ql + l]! & 15) | ((high & 3) << 4));
          codes[out + 32] = 96 + ((src[ql + l + 32]! & 15) | (((high >> 2) & 3) << 4));
          codes[out + 64] = 96 + ((src[ql + l]! >> 4) | (((high >> 4) & 3) << 4));
          codes[out + 96] = 96 + ((src[ql + l + 32]! >> 4) | (((high >> 6) & 3) << 4));
        }
      }
    },
  },
};

/** The MatMulNBits geometry a quantized type is served in. */
export function nbitsGeometry(type: number): { bits: NBits; blockSize: number; offsets: boolean } {
  const rule = QUANT_RULES[type];
  if (!rule) throw new Error(`ggml type ${ggmlTypeName(type)} has no quantized rule`);
  return { bits: rule.bits, blockSize: rule.subBlock, offsets: rule.offsets };
}

/** Reads a rule's blocks one at a time: `each(block, codes, scales, offsets)` for every ggml block in `bytes`. */
function readBlocks(type: number, bytes: Uint8Array, each: (block: number, codes: Uint8Array, scales: Float32Array, offsets: Float32Array) => void): void {
  const rule = QUANT_RULES[type];
  const layout = ggmlTypeLayout(type);
  if (!rule || !layout) throw new Error(`ggml type ${ggmlTypeName(type)} has no quantized rule`);
  const subBlocks = layout.blockSize / rule.subBlock;
  const codes = new Uint8Array(layout.blockSize);
  const scales = new Float32Array(subBlocks);
  const offsets = new Float32Array(subBlocks);
  for (let b = 0; b < bytes.length / layout.blockBytes; b++) {
    rule.read(bytes, b * layout.blockBytes, codes, scales, offsets);
    each(b, codes, scales, offsets);
  }
}

/**
 * Copies whole rows of a quantized tensor (`bytes`: rows of `into.cols` values) into `into`
 * from its row `firstRow` on: the file's bytes as MatMulNBits blocks.
 */
export function readNBitsRows(type: number, bytes: Uint8Array, into: NBitsMatrix, firstRow: number): void {
  const { blockSize, blockBytes } = ggmlTypeLayout(type)!;
  const sub = into.blockSize;
  const subBlocks = blockSize / sub;
  if (bytes.length % blockBytes !== 0 || ((bytes.length / blockBytes) * blockSize) % into.cols !== 0)
    throw new Error(`readNBitsRows: ${bytes.length} bytes are not whole rows of ${into.cols} ${ggmlTypeName(type)} values`);
  const first = (firstRow * into.cols) / sub;
  readBlocks(type, bytes, (b, codes, scales, offsets) => {
    for (let s = 0; s < subBlocks; s++) {
      const at = first + b * subBlocks + s;
      into.scales[at] = scales[s]!;
      if (into.offsets) into.offsets[at] = offsets[s]!;
      setBlockCodes(into, at, codes.subarray(s * sub, (s + 1) * sub));
    }
  });
}

/** A quantized tensor [rows, cols] (all its bytes) as MatMulNBits blocks. */
export function toNBits(type: number, bytes: Uint8Array, rows: number, cols: number): NBitsMatrix {
  const { bits, blockSize, offsets } = nbitsGeometry(type);
  const m = emptyNBits(rows, cols, bits, blockSize, offsets);
  readNBitsRows(type, bytes, m, 0);
  return m;
}

function decodeQuantized(type: number, bytes: Uint8Array, out: Float32Array): void {
  const { bits, blockSize: sub } = nbitsGeometry(type);
  const { blockSize } = ggmlTypeLayout(type)!;
  const zero = zeroPointOf(bits);
  readBlocks(type, bytes, (b, codes, scales, offsets) => {
    // float32 at each step, as the kernel and dequantizeNBits compute it.
    for (let i = 0; i < blockSize; i++) out[b * blockSize + i] = f32(f32(scales[(i / sub) | 0]! * (codes[i]! - zero)) + offsets[(i / sub) | 0]!);
  });
}

/**
 * Decodes whole blocks of an F32, F16 or quantized tensor into float32 values: `out` holds
 * exactly the weights of the blocks in `bytes` (bytes.byteOffset must be even).
 */
export function dequantize(type: number, bytes: Uint8Array, out: Float32Array): void {
  if (type === GGML_TYPE.F32) out.set(new Float32Array(bytes.buffer, bytes.byteOffset, out.length));
  else if (type === GGML_TYPE.F16) decodeF16(bytes, new Uint32Array(out.buffer, out.byteOffset, out.length));
  else if (isQuantizedType(type)) decodeQuantized(type, bytes, out);
  else throw new Error(`dequantize: ggml type ${ggmlTypeName(type)} is not supported`);
}
