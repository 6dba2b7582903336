// Reader and writer for the safetensors format:
//   [u64 little-endian header length N][N bytes of JSON header, space-padded][raw data]
// The header maps each tensor name to {dtype, shape, data_offsets: [begin, end]}, with
// offsets relative to the start of the data section, plus an optional "__metadata__"
// map of strings. We follow the reference implementation's strictness: the data section
// must be covered exactly by the tensors (no overlaps, no holes, no trailing bytes), so a
// file that decodes here means the same thing to every other reader.

import { readFile } from 'node:fs/promises';
import { endianness } from 'node:os';
import { writeFileAtomic } from '../util/atomic-write.ts';

export type TensorData = Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array;
export type DType = 'F32' | 'F64' | 'I64' | 'I32' | 'U8' | 'BOOL';

export interface NamedTensor {
  dtype: DType;
  shape: number[];
  data: TensorData;
}

export interface SafetensorsContents {
  tensors: Map<string, NamedTensor>;
  metadata: Record<string, string>;
}

const METADATA_KEY = '__metadata__';
const HEADER_ALIGNMENT = 8;
// Same cap as the reference implementation: a larger header is a corrupt or hostile file.
const MAX_HEADER_BYTES = 100_000_000;

interface DTypeSpec {
  bytesPerElement: number;
  arrayType: new (buffer: ArrayBuffer, byteOffset: number, length: number) => TensorData;
}

const DTYPE_SPECS: Record<DType, DTypeSpec> = {
  F32: { bytesPerElement: 4, arrayType: Float32Array },
  F64: { bytesPerElement: 8, arrayType: Float64Array },
  I64: { bytesPerElement: 8, arrayType: BigInt64Array },
  I32: { bytesPerElement: 4, arrayType: Int32Array },
  U8: { bytesPerElement: 1, arrayType: Uint8Array },
  BOOL: { bytesPerElement: 1, arrayType: Uint8Array },
};

// Typed arrays use host byte order; the format is little-endian. Every platform Node
// supports in practice is little-endian, so refuse loudly rather than byte-swap.
if (endianness() !== 'LE') {
  throw new Error('safetensors: big-endian hosts are not supported');
}

function isDType(value: unknown): value is DType {
  return typeof value === 'string' && Object.hasOwn(DTYPE_SPECS, value);
}

function isNonNegativeInteger(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** Number of elements in a tensor of this shape (1 for a 0-d scalar). */
function elementCount(shape: number[], what: string): number {
  if (!Array.isArray(shape) || !shape.every(isNonNegativeInteger)) {
    throw new Error(`${what}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  const count = shape.reduce((product, dim) => product * dim, 1);
  if (!Number.isSafeInteger(count)) throw new Error(`${what}: shape ${JSON.stringify(shape)} is too large`);
  return count;
}

function bytesOf(data: TensorData): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function validateMetadata(metadata: unknown, what: string): Record<string, string> {
  if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) {
    throw new Error(`${what}: ${METADATA_KEY} must be an object of strings`);
  }
  for (const [key, value] of Object.entries(metadata)) {
    if (typeof value !== 'string') {
      throw new Error(`${what}: ${METADATA_KEY} value for "${key}" must be a string, got ${typeof value}`);
    }
  }
  return { ...(metadata as Record<string, string>) };
}

// ---------------------------------------------------------------------------------------
// Encoding

function validateTensorForEncoding(name: string, tensor: NamedTensor): void {
  const what = `safetensors: tensor "${name}"`;
  if (name === METADATA_KEY) throw new Error(`safetensors: "${METADATA_KEY}" is reserved and cannot name a tensor`);
  if (!isDType(tensor.dtype)) throw new Error(`${what}: unknown dtype ${JSON.stringify(tensor.dtype)}`);
  const spec = DTYPE_SPECS[tensor.dtype];
  if (!(tensor.data instanceof spec.arrayType)) {
    throw new Error(`${what}: dtype ${tensor.dtype} needs a ${spec.arrayType.name}, got ${tensor.data?.constructor?.name}`);
  }
  const expected = elementCount(tensor.shape, what);
  if (tensor.data.length !== expected) {
    throw new Error(`${what}: shape ${JSON.stringify(tensor.shape)} holds ${expected} elements but data has ${tensor.data.length}`);
  }
}

/** Serialise tensors (in sorted name order, so equal inputs give identical bytes). */
export function encodeSafetensors(tensors: Map<string, NamedTensor>, metadata: Record<string, string> = {}): Buffer {
  const names = [...tensors.keys()].sort();
  // Null prototype so a tensor named "__proto__" is stored as an ordinary key.
  const header: Record<string, unknown> = Object.create(null);
  if (Object.keys(metadata).length > 0) header[METADATA_KEY] = validateMetadata(metadata, 'safetensors');

  let dataLength = 0;
  for (const name of names) {
    const tensor = tensors.get(name)!;
    validateTensorForEncoding(name, tensor);
    const begin = dataLength;
    dataLength += tensor.data.byteLength;
    header[name] = { dtype: tensor.dtype, shape: [...tensor.shape], data_offsets: [begin, dataLength] };
  }

  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const paddedLength = Math.ceil(json.length / HEADER_ALIGNMENT) * HEADER_ALIGNMENT;
  const out = Buffer.alloc(8 + paddedLength + dataLength, 0x20); // spaces pad the header
  out.writeBigUInt64LE(BigInt(paddedLength), 0);
  json.copy(out, 8);

  let position = 8 + paddedLength;
  for (const name of names) {
    const bytes = bytesOf(tensors.get(name)!.data);
    out.set(bytes, position);
    position += bytes.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Decoding

interface HeaderEntry {
  name: string;
  dtype: DType;
  shape: number[];
  begin: number;
  end: number;
}

function parseHeaderEntry(name: string, raw: unknown): HeaderEntry {
  const what = `safetensors: tensor "${name}"`;
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new Error(`${what}: header entry must be an object`);
  }
  const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
  if (!isDType(dtype)) throw new Error(`${what}: unknown dtype ${JSON.stringify(dtype)}`);
  const count = elementCount(shape as number[], what);
  const [begin, end] = Array.isArray(offsets) && offsets.length === 2 ? offsets : [];
  if (!isNonNegativeInteger(begin) || !isNonNegativeInteger(end) || begin > end) {
    throw new Error(`${what}: data_offsets must be [begin, end] with 0 <= begin <= end, got ${JSON.stringify(offsets)}`);
  }
  const expectedBytes = count * DTYPE_SPECS[dtype].bytesPerElement;
  if (end - begin !== expectedBytes) {
    throw new Error(`${what}: ${dtype} shape ${JSON.stringify(shape)} needs ${expectedBytes} bytes but data_offsets span ${end - begin}`);
  }
  return { name, dtype, shape: shape as number[], begin, end };
}

function readHeader(buf: Uint8Array): { entries: HeaderEntry[]; metadata: Record<string, string>; dataStart: number } {
  if (buf.length < 8) throw new Error(`safetensors: file is ${buf.length} bytes, too short for the 8-byte header length`);
  const headerLength = new DataView(buf.buffer, buf.byteOffset, 8).getBigUint64(0, true);
  if (headerLength > BigInt(buf.length - 8)) {
    throw new Error(`safetensors: header length ${headerLength} goes beyond the end of the file (${buf.length} bytes)`);
  }
  if (headerLength > BigInt(MAX_HEADER_BYTES)) {
    throw new Error(`safetensors: header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  }
  const dataStart = 8 + Number(headerLength);

  let header: unknown;
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, dataStart));
    header = JSON.parse(text);
  } catch (err) {
    throw new Error(`safetensors: header is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new Error('safetensors: header must be a JSON object');
  }

  let metadata: Record<string, string> = {};
  const entries: HeaderEntry[] = [];
  for (const [name, raw] of Object.entries(header)) {
    if (name === METADATA_KEY) metadata = validateMetadata(raw, 'safetensors');
    else entries.push(parseHeaderEntry(name, raw));
  }
  return { entries, metadata, dataStart };
}

/** Check that the tensors tile the data section exactly: in range, no overlap, no holes. */
function checkDataLayout(entries: HeaderEntry[], dataLength: number): void {
  const byOffset = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let covered = 0;
  for (const entry of byOffset) {
    if (entry.end > dataLength) {
      throw new Error(`safetensors: tensor "${entry.name}" data_offsets [${entry.begin}, ${entry.end}] are out of range (data section is ${dataLength} bytes)`);
    }
    if (entry.begin < covered) {
      throw new Error(`safetensors: tensor "${entry.name}" data_offsets [${entry.begin}, ${entry.end}] overlap another tensor`);
    }
    if (entry.begin > covered) {
      throw new Error(`safetensors: bytes [${covered}, ${entry.begin}) of the data section belong to no tensor`);
    }
    covered = entry.end;
  }
  if (covered !== dataLength) {
    throw new Error(`safetensors: bytes [${covered}, ${dataLength}) of the data section belong to no tensor`);
  }
}

/** Copy a tensor's bytes into a fresh, aligned buffer and view it with the right array type. */
function copyTensorData(entry: HeaderEntry, data: Uint8Array): TensorData {
  const spec = DTYPE_SPECS[entry.dtype];
  const copy = new ArrayBuffer(entry.end - entry.begin);
  new Uint8Array(copy).set(data.subarray(entry.begin, entry.end));
  return new spec.arrayType(copy, 0, copy.byteLength / spec.bytesPerElement);
}

export function decodeSafetensors(buf: Uint8Array): SafetensorsContents {
  const { entries, metadata, dataStart } = readHeader(buf);
  const data = buf.subarray(dataStart);
  checkDataLayout(entries, data.length);

  const tensors = new Map<string, NamedTensor>();
  for (const entry of [...entries].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    tensors.set(entry.name, { dtype: entry.dtype, shape: entry.shape, data: copyTensorData(entry, data) });
  }
  return { tensors, metadata };
}

// ---------------------------------------------------------------------------------------
// Files

/** Writes atomically (temp file, fsync, rename), so a crash never leaves a torn checkpoint. */
export async function writeSafetensors(
  path: string,
  tensors: Map<string, NamedTensor>,
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFileAtomic(path, encodeSafetensors(tensors, metadata));
}

export async function readSafetensors(path: string): Promise<SafetensorsContents> {
  return decodeSafetensors(await readFile(path));
}
