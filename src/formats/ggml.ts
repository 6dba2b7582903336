// ggml's tensor types: the name and block layout of every type id a GGUF file can name,
// and float32 decoding of the three this project loads (F32, F16, Q8_0). Quantized types
// store weights in fixed-size blocks along each row, so a tensor's byte size follows from
// its element count and the block geometry, loadable or not.

import { endianness } from 'node:os';
import { f16Table } from './float16.ts';

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

export const GGML_TYPE = { F32: 0, F16: 1, Q8_0: 8 } as const;
const LOADABLE_TYPES = new Set<number>([GGML_TYPE.F32, GGML_TYPE.F16, GGML_TYPE.Q8_0]);

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
  return LOADABLE_TYPES.has(type);
}

// ---------------------------------------------------------------------------------------
// Decoding

// Bits are copied as integers, so NaN payloads survive bit for bit.
function decodeF16(bytes: Uint8Array, out: Uint32Array): void {
  const table = f16Table();
  const halves = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length / 2);
  for (let i = 0; i < halves.length; i++) out[i] = table[halves[i]!]!;
}

// Q8_0 block: f16 scale d, then 32 int8 weights q; each weight is d * q, rounded to float32
// exactly as ggml's float multiply does (the double product of the two is exact).
const Q8_0_BLOCK_WEIGHTS = 32;
const Q8_0_BLOCK_BYTES = 34;

function decodeQ8_0(bytes: Uint8Array, out: Float32Array): void {
  const table = f16Table();
  const scaleView = new Float32Array(1);
  const scaleBits = new Uint32Array(scaleView.buffer);
  const quants = new Int8Array(bytes.buffer, bytes.byteOffset, bytes.length);
  const blocks = bytes.length / Q8_0_BLOCK_BYTES;
  for (let block = 0; block < blocks; block++) {
    const start = block * Q8_0_BLOCK_BYTES;
    scaleBits[0] = table[bytes[start]! | (bytes[start + 1]! << 8)]!;
    const scale = scaleView[0];
    const base = block * Q8_0_BLOCK_WEIGHTS;
    for (let j = 0; j < Q8_0_BLOCK_WEIGHTS; j++) out[base + j] = scale * quants[start + 2 + j];
  }
}

/**
 * Decodes whole blocks of an F32, F16 or Q8_0 tensor into float32 values: `out` holds
 * exactly the weights of the blocks in `bytes` (bytes.byteOffset must be even).
 */
export function dequantize(type: number, bytes: Uint8Array, out: Float32Array): void {
  if (type === GGML_TYPE.F32) out.set(new Float32Array(bytes.buffer, bytes.byteOffset, out.length));
  else if (type === GGML_TYPE.F16) decodeF16(bytes, new Uint32Array(out.buffer, out.byteOffset, out.length));
  else if (type === GGML_TYPE.Q8_0) decodeQ8_0(bytes, out);
  else throw new Error(`dequantize: ggml type ${ggmlTypeName(type)} is not supported`);
}
