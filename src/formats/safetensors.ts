// Reader and writer for the safetensors format:
//   [u64 little-endian header length N][N bytes of JSON header, space-padded][raw data]
// The header maps each tensor name to {dtype, shape, data_offsets: [begin, end]}, with
// offsets relative to the start of the data section, plus an optional "__metadata__"
// map of strings. We follow the reference implementation's strictness: the data section
// must be covered exactly by the tensors (no overlaps, no holes, no trailing bytes), so a
// file that decodes here means the same thing to every other reader.

import { open, readFile } from 'node:fs/promises';
import { endianness } from 'node:os';
import { writeFileAtomic } from '../util/atomic-write.ts';

export type TensorData = Float32Array | Float64Array | BigInt64Array | Int32Array | Uint16Array | Uint8Array;
/** F16 and BF16 are held as their raw 16-bit patterns (Uint16Array); float16.ts widens them. */
export type DType = 'F32' | 'F64' | 'F16' | 'BF16' | 'I64' | 'I32' | 'U8' | 'BOOL';

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
  F16: { bytesPerElement: 2, arrayType: Uint16Array },
  BF16: { bytesPerElement: 2, arrayType: Uint16Array },
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

type TensorLayout = Pick<NamedTensor, 'dtype' | 'shape'>;

/**
 * The header bytes (length prefix, JSON, padding) for tensors stored in sorted name order,
 * so equal inputs give identical bytes, and where each tensor's data starts in the file.
 */
function encodeHeader(layout: Map<string, TensorLayout>, metadata: Record<string, string>) {
  const names = [...layout.keys()].sort();
  // Null prototype so a tensor named "__proto__" is stored as an ordinary key.
  const header: Record<string, unknown> = Object.create(null);
  if (Object.keys(metadata).length > 0) header[METADATA_KEY] = validateMetadata(metadata, 'safetensors');
  let dataLength = 0;
  const begins: number[] = [];
  for (const name of names) {
    const { dtype, shape } = layout.get(name)!;
    if (name === METADATA_KEY) throw new Error(`safetensors: "${METADATA_KEY}" is reserved and cannot name a tensor`);
    if (!isDType(dtype)) throw new Error(`safetensors: tensor "${name}": unknown dtype ${JSON.stringify(dtype)}`);
    begins.push(dataLength);
    dataLength += elementCount(shape, `safetensors: tensor "${name}"`) * DTYPE_SPECS[dtype].bytesPerElement;
    header[name] = { dtype, shape: [...shape], data_offsets: [begins.at(-1)!, dataLength] };
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const paddedLength = Math.ceil(json.length / HEADER_ALIGNMENT) * HEADER_ALIGNMENT;
  const bytes = Buffer.alloc(8 + paddedLength, 0x20); // spaces pad the header
  bytes.writeBigUInt64LE(BigInt(paddedLength), 0);
  json.copy(bytes, 8);
  return { bytes, names, starts: begins.map((b) => 8 + paddedLength + b), dataLength };
}

/** Serialise tensors (in sorted name order, so equal inputs give identical bytes). */
export function encodeSafetensors(tensors: Map<string, NamedTensor>, metadata: Record<string, string> = {}): Buffer {
  for (const [name, tensor] of tensors) validateTensorForEncoding(name, tensor);
  const { bytes, names, starts, dataLength } = encodeHeader(tensors, metadata);
  const out = Buffer.alloc(bytes.length + dataLength);
  out.set(bytes, 0);
  names.forEach((name, i) => out.set(bytesOf(tensors.get(name)!.data), starts[i]!));
  return out;
}

/**
 * Writes a safetensors file (atomically) whose tensors are produced one at a time, so a
 * model far larger than memory can be converted: only one tensor is held at once.
 */
export async function writeSafetensorsStreaming(
  path: string,
  layout: Map<string, TensorLayout>,
  produce: (name: string) => Promise<TensorData> | TensorData,
  metadata: Record<string, string> = {},
): Promise<Map<string, TensorLocation>> {
  const { bytes, names, starts } = encodeHeader(layout, metadata);
  await writeFileAtomic(path, async (handle) => {
    await handle.write(bytes, 0, bytes.length, 0);
    for (const [i, name] of names.entries()) {
      const data = await produce(name);
      validateTensorForEncoding(name, { ...layout.get(name)!, data });
      const b = bytesOf(data);
      await handle.write(b, 0, b.length, starts[i]!);
    }
  });
  return new Map(
    names.map((name, i) => {
      const { dtype, shape } = layout.get(name)!;
      return [name, { dtype, shape, offset: starts[i]!, length: elementCount(shape, name) * DTYPE_SPECS[dtype].bytesPerElement }];
    }),
  );
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

/** `buf` holds at least the header; `fileSize` is the whole file's (when only the header was read). */
function readHeader(buf: Uint8Array, fileSize = buf.length): { entries: HeaderEntry[]; metadata: Record<string, string>; dataStart: number } {
  if (fileSize < 8) throw new Error(`safetensors: file is ${fileSize} bytes, too short for the 8-byte header length`);
  const headerLength = new DataView(buf.buffer, buf.byteOffset, 8).getBigUint64(0, true);
  if (headerLength > BigInt(fileSize - 8)) {
    throw new Error(`safetensors: header length ${headerLength} goes beyond the end of the file (${fileSize} bytes)`);
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
export async function writeSafetensors(path: string, tensors: Map<string, NamedTensor>, metadata?: Record<string, string>): Promise<void> {
  await writeFileAtomic(path, encodeSafetensors(tensors, metadata));
}

export async function readSafetensors(path: string): Promise<SafetensorsContents> {
  return decodeSafetensors(await readFile(path));
}

/** A tensor's place in its file: what a reader needs to fetch (or map) just its bytes. */
export interface TensorLocation {
  dtype: DType;
  shape: number[];
  /** Byte offset of the tensor's data from the start of the file. */
  offset: number;
  length: number;
}

/**
 * The header of a safetensors file, read without reading its data: every tensor's dtype,
 * shape and absolute byte range, checked as strictly as decodeSafetensors checks them.
 * Errors name the file.
 */
export async function readSafetensorsIndex(path: string): Promise<{ tensors: Map<string, TensorLocation>; metadata: Record<string, string> }> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const lengthBytes = Buffer.alloc(8);
    await fh.read(lengthBytes, 0, 8, 0);
    const headerLength = size < 8 ? 0 : Number(lengthBytes.readBigUInt64LE(0));
    // Read just the header (the length is validated by readHeader against the real file size).
    const headerBytes = Buffer.alloc(8 + Math.min(Math.max(0, size - 8), headerLength, MAX_HEADER_BYTES + 1));
    await fh.read(headerBytes, 0, headerBytes.length, 0);
    const { entries, metadata, dataStart } = readHeader(headerBytes, size);
    checkDataLayout(entries, size - dataStart);
    const tensors = new Map(entries.map((e) => [e.name, { dtype: e.dtype, shape: e.shape, offset: dataStart + e.begin, length: e.end - e.begin }]));
    return { tensors, metadata };
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  } finally {
    await fh.close();
  }
}
