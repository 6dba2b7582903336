// A small GGUF writer, for tests only: builds tiny files with chosen metadata types and
// tensor bytes, so the reader can be checked on values a real model file does not hold
// and on files corrupted on purpose (tests patch or cut the bytes this returns).

export type ValueTypeName = 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'f32' | 'bool' | 'string' | 'array' | 'u64' | 'i64' | 'f64';

const VALUE_TYPE_IDS: Record<ValueTypeName, number> = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
};

/** A metadata value with its GGUF type; arrays name their element type. */
export type TypedValue =
  | { type: Exclude<ValueTypeName, 'array' | 'u64' | 'i64' | 'bool' | 'string'>; value: number }
  | { type: 'u64' | 'i64'; value: bigint }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'array'; elementType: ValueTypeName; values: TypedValue[] };

export const u32 = (value: number): TypedValue => ({ type: 'u32', value });
export const f32 = (value: number): TypedValue => ({ type: 'f32', value });
export const str = (value: string): TypedValue => ({ type: 'string', value });
export const bool = (value: boolean): TypedValue => ({ type: 'bool', value });
export const arrayOf = (elementType: ValueTypeName, values: TypedValue[]): TypedValue => ({ type: 'array', elementType, values });
export const strings = (values: string[]): TypedValue => arrayOf('string', values.map(str));
export const f32s = (values: number[]): TypedValue => arrayOf('f32', values.map(f32));
export const i32s = (values: number[]): TypedValue =>
  arrayOf(
    'i32',
    values.map((value) => ({ type: 'i32', value })),
  );

export interface TensorSpec {
  name: string;
  /** Innermost first, as GGUF stores them. */
  dims: number[];
  /** ggml type id. */
  type: number;
  data: Uint8Array;
  /** Defaults to the next aligned offset after the previous tensor. */
  offset?: number;
}

export interface GGUFSpec {
  version?: number;
  /** Written as general.alignment (u32) when given; 32 otherwise. */
  alignment?: number;
  metadata?: [string, TypedValue][];
  tensors?: TensorSpec[];
}

function u32Bytes(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32LE(value);
  return out;
}

function u64Bytes(value: number | bigint): Buffer {
  const out = Buffer.alloc(8);
  out.writeBigUInt64LE(BigInt(value));
  return out;
}

function stringBytes(value: string): Buffer {
  const utf8 = Buffer.from(value, 'utf8');
  return Buffer.concat([u64Bytes(utf8.length), utf8]);
}

function scalarBytes(value: TypedValue): Buffer {
  const out = Buffer.alloc(8);
  switch (value.type) {
    case 'u8':
      out.writeUInt8(value.value);
      return out.subarray(0, 1);
    case 'i8':
      out.writeInt8(value.value);
      return out.subarray(0, 1);
    case 'u16':
      out.writeUInt16LE(value.value);
      return out.subarray(0, 2);
    case 'i16':
      out.writeInt16LE(value.value);
      return out.subarray(0, 2);
    case 'u32':
      out.writeUInt32LE(value.value);
      return out.subarray(0, 4);
    case 'i32':
      out.writeInt32LE(value.value);
      return out.subarray(0, 4);
    case 'f32':
      out.writeFloatLE(value.value);
      return out.subarray(0, 4);
    case 'f64':
      out.writeDoubleLE(value.value);
      return out;
    case 'u64':
      out.writeBigUInt64LE(value.value);
      return out;
    case 'i64':
      out.writeBigInt64LE(value.value);
      return out;
    case 'bool':
      return Buffer.of(value.value ? 1 : 0);
    case 'string':
      return stringBytes(value.value);
    case 'array':
      return Buffer.concat([u32Bytes(VALUE_TYPE_IDS[value.elementType]), u64Bytes(value.values.length), ...value.values.map(scalarBytes)]);
  }
}

const align = (n: number, alignment: number) => Math.ceil(n / alignment) * alignment;

/** The bytes of a GGUF file (little-endian) holding this metadata and these tensors. */
export function encodeGGUF(spec: GGUFSpec): Buffer {
  const alignment = spec.alignment ?? 32;
  const metadata: [string, TypedValue][] = [...(spec.metadata ?? [])];
  if (spec.alignment !== undefined) metadata.push(['general.alignment', u32(spec.alignment)]);
  const tensors = spec.tensors ?? [];

  const parts: Buffer[] = [Buffer.from('GGUF', 'latin1'), u32Bytes(spec.version ?? 3), u64Bytes(tensors.length), u64Bytes(metadata.length)];
  for (const [key, value] of metadata) parts.push(stringBytes(key), u32Bytes(VALUE_TYPE_IDS[value.type]), scalarBytes(value));

  const offsets: number[] = [];
  let next = 0;
  for (const tensor of tensors) {
    const offset = tensor.offset ?? next;
    offsets.push(offset);
    next = align(offset + tensor.data.length, alignment);
    parts.push(stringBytes(tensor.name), u32Bytes(tensor.dims.length), ...tensor.dims.map(u64Bytes), u32Bytes(tensor.type), u64Bytes(offset));
  }

  const header = Buffer.concat(parts);
  const dataStart = align(header.length, alignment);
  const dataLength = Math.max(0, ...tensors.map((tensor, i) => offsets[i] + tensor.data.length));
  const file = Buffer.alloc(dataStart + dataLength);
  header.copy(file);
  tensors.forEach((tensor, i) => file.set(tensor.data, dataStart + offsets[i]));
  return file;
}

/** The raw bytes of float32 values. */
export function f32Bytes(values: ArrayLike<number>): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}
