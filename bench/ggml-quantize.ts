// Writers of ggml's quantized blocks (Q8_0, Q4_0, Q5_0, Q4_K, Q6_K), for the benchmark's
// GGUF files and the tests' re-quantized stories260K: plain round-to-nearest quantizers
// written from the block layouts (ggml-common.h's structs, described in src/formats/ggml.ts),
// not llama.cpp's search for the best scales, so their files are valid and of the same
// formats but not bit-identical to llama-quantize's. Also requantizeGGUF: a GGUF file with
// chosen tensors rewritten in chosen types, its metadata copied byte for byte, and
// q4KMType, the type llama.cpp's Q4_K_M mix gives each tensor of a Llama.
import { writeFileSync } from 'node:fs';
import { openGGUF } from '../src/formats/gguf.ts';
import { GGML_TYPE, ggmlTypeLayout } from '../src/formats/ggml.ts';

/** The float16 bit pattern nearest to `x` (round half to even), as ggml's fp32->fp16 gives. */
export function toHalf(x: number): number {
  const f = new Float32Array([x]);
  const bits = new Uint32Array(f.buffer)[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  let mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  let e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    let half = mantissa >>> shift;
    const rest = mantissa & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rest > halfway || (rest === halfway && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && half & 1)) half++;
  e = half >> 10;
  return sign | half;
}

const halfValue = (h: number) => {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
};

const writeHalf = (out: Uint8Array, at: number, x: number) => {
  const h = toHalf(x);
  out[at] = h & 0xff;
  out[at + 1] = h >> 8;
  return halfValue(h);
};

/** The value of largest magnitude, with its sign (ggml's "max" of Q4_0/Q5_0/Q6_K). */
function signedMax(x: Float32Array): number {
  let best = 0;
  for (const v of x) if (Math.abs(v) > Math.abs(best)) best = v;
  return best;
}

type BlockWriter = (x: Float32Array, out: Uint8Array, at: number) => void;

const WRITERS: Record<number, BlockWriter> = {
  [GGML_TYPE.Q8_0](x, out, at) {
    let amax = 0;
    for (const v of x) amax = Math.max(amax, Math.abs(v));
    const d = writeHalf(out, at, amax / 127);
    for (let j = 0; j < 32; j++) out[at + 2 + j] = (d ? Math.max(-127, Math.min(127, Math.round(x[j]! / d))) : 0) & 0xff;
  },
  [GGML_TYPE.Q4_0](x, out, at) {
    const d = writeHalf(out, at, signedMax(x) / -8);
    const q = (v: number) => (d ? Math.max(0, Math.min(15, Math.round(v / d) + 8)) : 8);
    for (let j = 0; j < 16; j++) out[at + 2 + j] = q(x[j]!) | (q(x[j + 16]!) << 4);
  },
  [GGML_TYPE.Q5_0](x, out, at) {
    const d = writeHalf(out, at, signedMax(x) / -16);
    const q = (v: number) => (d ? Math.max(0, Math.min(31, Math.round(v / d) + 16)) : 16);
    let high = 0;
    for (let j = 0; j < 16; j++) {
      const a = q(x[j]!);
      const b = q(x[j + 16]!);
      out[at + 6 + j] = (a & 15) | ((b & 15) << 4);
      high |= ((a >> 4) << j) | ((b >> 4) << (j + 16));
    }
    new DataView(out.buffer, out.byteOffset).setUint32(at + 2, high >>> 0, true);
  },
  [GGML_TYPE.Q4_K](x, out, at) {
    // Per sub-block of 32: value = scale * q - min over [min(x, 0), max(x)], q in 0..15; the
    // 8 scales and mins in 6 bits each against the super-block's d and dmin.
    const scales = new Float64Array(8);
    const mins = new Float64Array(8);
    for (let s = 0; s < 8; s++) {
      const sub = x.subarray(32 * s, 32 * s + 32);
      const lo = Math.min(0, ...sub);
      const hi = Math.max(...sub);
      scales[s] = (hi - lo) / 15;
      mins[s] = -lo;
    }
    const d = writeHalf(out, at, Math.max(...scales) / 63);
    const dmin = writeHalf(out, at + 2, Math.max(...mins) / 63);
    const sc = Array.from(scales, (v) => (d ? Math.min(63, Math.round(v / d)) : 0));
    const m = Array.from(mins, (v) => (dmin ? Math.min(63, Math.round(v / dmin)) : 0));
    for (let j = 0; j < 4; j++) {
      out[at + 4 + j] = sc[j]! | ((sc[j + 4]! >> 4) << 6);
      out[at + 8 + j] = m[j]! | ((m[j + 4]! >> 4) << 6);
      out[at + 12 + j] = (sc[j + 4]! & 15) | ((m[j + 4]! & 15) << 4);
    }
    const q = new Uint8Array(256);
    for (let s = 0; s < 8; s++) {
      const step = d * sc[s]!;
      const offset = dmin * m[s]!;
      for (let l = 0; l < 32; l++) q[32 * s + l] = step ? Math.max(0, Math.min(15, Math.round((x[32 * s + l]! + offset) / step))) : 0;
    }
    for (let c = 0; c < 4; c++) for (let l = 0; l < 32; l++) out[at + 16 + 32 * c + l] = q[64 * c + l]! | (q[64 * c + 32 + l]! << 4);
  },
  [GGML_TYPE.Q6_K](x, out, at) {
    const scales = new Float64Array(16);
    for (let s = 0; s < 16; s++) scales[s] = signedMax(x.subarray(16 * s, 16 * s + 16)) / -32;
    const d = writeHalf(out, at + 208, signedMax(Float32Array.from(scales)) / -128);
    const L = new Uint8Array(256);
    for (let s = 0; s < 16; s++) {
      const sc = d ? Math.max(-128, Math.min(127, Math.round(scales[s]! / d))) : 0;
      out[at + 192 + s] = sc & 0xff;
      const step = d * sc;
      for (let i = 0; i < 16; i++) L[16 * s + i] = step ? Math.max(0, Math.min(63, Math.round(x[16 * s + i]! / step) + 32)) : 32;
    }
    for (let n = 0; n < 2; n++)
      for (let l = 0; l < 32; l++) {
        const v = (k: number) => L[128 * n + l + k]!;
        out[at + 64 * n + l] = (v(0) & 15) | ((v(64) & 15) << 4);
        out[at + 64 * n + l + 32] = (v(32) & 15) | ((v(96) & 15) << 4);
        out[at + 128 + 32 * n + l] = (v(0) >> 4) | ((v(32) >> 4) << 2) | ((v(64) >> 4) << 4) | ((v(96) >> 4) << 6);
      }
  },
};

export const WRITABLE_TYPES = Object.keys(WRITERS).map(Number);

/** float32 values (whole blocks) as blocks of a ggml type. */
export function quantizeBlocks(type: number, values: Float32Array): Uint8Array {
  const layout = ggmlTypeLayout(type);
  const write = WRITERS[type];
  if (!layout || !write) throw new Error(`no block writer for ggml type ${type}`);
  if (values.length % layout.blockSize) throw new Error(`${values.length} values are not whole blocks of ${layout.blockSize}`);
  const blocks = values.length / layout.blockSize;
  const out = new Uint8Array(blocks * layout.blockBytes);
  for (let b = 0; b < blocks; b++) write(values.subarray(b * layout.blockSize, (b + 1) * layout.blockSize), out, b * layout.blockBytes);
  return out;
}

/**
 * The type llama.cpp's Q4_K_M mix gives a Llama tensor (llama_tensor_get_type, as of 2025):
 * the output (or the tied embedding) Q6_K; attn_v and ffn_down Q6_K in the first and last
 * eighth of the layers and every third layer between, Q4_K elsewhere; a row length that is
 * not a multiple of 256 falls back to Q5_0 (Q4_K) or Q8_0 (Q6_K), as llama.cpp does. Norms stay F32.
 */
export function q4KMType(name: string, dims: number[], layers: number, tied: boolean): number {
  if (dims.length < 2) return GGML_TYPE.F32;
  const layer = Number(/^blk\.(\d+)\./.exec(name)?.[1] ?? -1);
  const moreBits = (i: number) => i < layers / 8 || i >= (7 * layers) / 8 || (i - Math.floor(layers / 8)) % 3 === 2;
  let type: number = GGML_TYPE.Q4_K;
  if (name === 'output.weight' || (tied && name === 'token_embd.weight')) type = GGML_TYPE.Q6_K;
  else if ((name.endsWith('attn_v.weight') || name.endsWith('ffn_down.weight')) && moreBits(layer)) type = GGML_TYPE.Q6_K;
  if (dims[0]! % 256 !== 0) type = type === GGML_TYPE.Q6_K ? GGML_TYPE.Q8_0 : GGML_TYPE.Q5_0;
  return type;
}

const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
};
const u64 = (v: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
};

/**
 * Writes `out`: the GGUF file `from` with each tensor in the type `typeOf` gives it (F32
 * values re-quantized; a tensor whose type is unchanged is copied as it is). `from`'s
 * tensors must be F32 where they change type.
 */
export function requantizeGGUF(from: string, out: string, typeOf: (name: string, dims: number[]) => number): void {
  const f = openGGUF(from);
  try {
    const tensors = f.tensors.map((t) => {
      const type = typeOf(t.name, t.dims);
      if (type === t.type) return { t, type, data: f.readRaw(t) };
      if (t.type !== GGML_TYPE.F32) throw new Error(`${t.name}: only F32 tensors are re-quantized, this one is ${t.typeName}`);
      return { t, type, data: type === GGML_TYPE.F32 ? f.readRaw(t) : quantizeBlocks(type, f.readTensor(t)) };
    });
    const parts: Buffer[] = [Buffer.from('GGUF'), u32(3), u64(tensors.length), u64(f.metadata.size), Buffer.from(f.readBytes(...f.metadataBytes))];
    let offset = 0;
    const align = (n: number) => Math.ceil(n / f.alignment) * f.alignment;
    const offsets: number[] = [];
    for (const { t, type, data } of tensors) {
      const name = Buffer.from(t.name);
      parts.push(u64(name.length), name, u32(t.dims.length), ...t.dims.map(u64), u32(type), u64(offset));
      offsets.push(offset);
      offset = align(offset + data.length);
    }
    const header = Buffer.concat(parts);
    const dataStart = align(header.length);
    const file = Buffer.alloc(dataStart + offset);
    header.copy(file);
    tensors.forEach(({ data }, i) => file.set(data, dataStart + offsets[i]!));
    writeFileSync(out, file);
  } finally {
    f.close();
  }
}
