// 16-bit floats of checkpoints (F16 in GGUF and safetensors, BF16 in safetensors) widened to
// float32 exactly: zeros, subnormals, infinities and NaN payloads included.

/** The float32 bit pattern of a float16 bit pattern. */
function f16BitsToF32Bits(half: number): number {
  const sign = (half & 0x8000) << 16;
  const exponent = (half >> 10) & 0x1f;
  let mantissa = half & 0x3ff;
  if (exponent === 0x1f) return (sign | 0x7f800000 | (mantissa << 13)) >>> 0; // inf, NaN (payload kept)
  if (exponent !== 0) return (sign | ((exponent - 15 + 127) << 23) | (mantissa << 13)) >>> 0;
  if (mantissa === 0) return sign >>> 0; // ±0
  // A subnormal half is a normal float: shift the leading 1 up to the implicit-bit position.
  let floatExponent = 127 - 14;
  while ((mantissa & 0x400) === 0) {
    mantissa <<= 1;
    floatExponent--;
  }
  return (sign | (floatExponent << 23) | ((mantissa & 0x3ff) << 13)) >>> 0;
}

let table: Uint32Array | undefined;

/** All 65536 conversions up front (256 KiB), as float32 bit patterns: then each weight is one lookup. */
export function f16Table(): Uint32Array {
  if (!table) {
    table = new Uint32Array(65536);
    for (let half = 0; half < 65536; half++) table[half] = f16BitsToF32Bits(half);
  }
  return table;
}

/** One float16 bit pattern's value. */
export function f16ToF32(half: number): number {
  return new Float32Array(Uint32Array.of(f16Table()[half & 0xffff]!).buffer)[0]!;
}

/** Widens F16 or BF16 bit patterns into float32 `out`. BF16 is the top half of a float32. */
export function widenToFloat32(bits: Uint16Array, dtype: 'F16' | 'BF16', out: Float32Array = new Float32Array(bits.length)): Float32Array {
  const u32 = new Uint32Array(out.buffer, out.byteOffset, out.length);
  if (dtype === 'BF16') for (let i = 0; i < bits.length; i++) u32[i] = bits[i]! << 16;
  else {
    const t = f16Table();
    for (let i = 0; i < bits.length; i++) u32[i] = t[bits[i]!]!;
  }
  return out;
}
