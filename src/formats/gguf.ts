// Reader for GGUF, llama.cpp's model file format (versions 2 and 3, little-endian):
//   "GGUF" magic, u32 version, u64 tensor count, u64 metadata count,
//   metadata key/values, tensor infos (name, dims, ggml type, offset),
//   padding up to `general.alignment` (default 32), then the tensor data section.
// Model files run to many gigabytes, so nothing here reads the whole file: the header is
// read through a small window of positional reads, and each tensor reads only its bytes.
// Every count and offset is checked against the file size before it is used, so a
// corrupt or hostile file fails with a message naming it instead of allocating or looping.

import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { basename } from 'node:path';
import { dequantize, ggmlTypeLayout, ggmlTypeName, isKnownType, isLoadableType, isQuantizedType, nbitsGeometry, readNBitsRows, GGML_TYPE } from './ggml.ts';
import { emptyNBits, type NBitsMatrix } from './nbits.ts';

// ---------------------------------------------------------------------------------------
// Values

/** u64/i64 values are bigints so nothing is rounded; every other number is a number. */
export type GGUFValue = number | bigint | boolean | string | GGUFValue[];

const VALUE_TYPE = {
  U8: 0,
  I8: 1,
  U16: 2,
  I16: 3,
  U32: 4,
  I32: 5,
  F32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  U64: 10,
  I64: 11,
  F64: 12,
} as const;

// The fewest bytes one value of each type takes, to reject an array count the rest of the
// file cannot hold before allocating for it. A string is at least its u64 length; an array
// at least its u32 element type and u64 count.
const MIN_VALUE_BYTES: Record<number, number> = {
  0: 1,
  1: 1,
  2: 2,
  3: 2,
  4: 4,
  5: 4,
  6: 4,
  7: 1,
  8: 8,
  9: 12,
  10: 8,
  11: 8,
  12: 8,
};

const MAGIC = 'GGUF';
const SUPPORTED_VERSIONS = [2, 3];
const DEFAULT_ALIGNMENT = 32;
const MAX_DIMS = 4; // GGML_MAX_DIMS
// Arrays of arrays are allowed by the format but nothing real nests deeply; the cap keeps a
// crafted file from overflowing the stack.
const MAX_ARRAY_NESTING = 8;
// No real key, tensor name or chat template comes near this; a larger length is corruption.
const MAX_STRING_BYTES = 64 * 1024 * 1024;
const HEADER_WINDOW_BYTES = 1 << 20;
const DATA_CHUNK_BYTES = 16 << 20;

/**
 * The shortest decimal that rounds to the same float32, e.g. 1e-5 rather than
 * 9.999999747378752e-06: what the writer of an f32 metadata value meant, and still exact,
 * because Math.fround gives back the stored bits.
 */
export function shortestFloat32(value: number): number {
  if (!Number.isFinite(value) || value === 0) return value;
  for (let digits = 1; digits < 9; digits++) {
    const candidate = Number(value.toPrecision(digits));
    if (Math.fround(candidate) === value) return candidate;
  }
  return value; // 9 significant digits always round-trip a float32
}

// ---------------------------------------------------------------------------------------
// Positional reads

/** Fills `target` from the file starting at `position`, or throws if the file ends first. */
function readExactly(fd: number, target: Uint8Array, position: number, what: () => string): void {
  let done = 0;
  while (done < target.length) {
    const n = readSync(fd, target, done, Math.min(target.length - done, 1 << 30), position + done);
    if (n === 0) throw new Error(`${what()}: the file ended after ${position + done} bytes`);
    done += n;
  }
}

/** A forward-only reader over the header, refilling a small window with positional reads. */
class HeaderCursor {
  position = 0;
  private window = Buffer.alloc(0);
  private windowStart = 0;

  constructor(
    private readonly fd: number,
    readonly fileSize: number,
    private readonly label: string,
  ) {}

  get remaining(): number {
    return this.fileSize - this.position;
  }

  /** Makes bytes [position, position + n) available and returns their offset in the window. */
  private take(n: number, what: string): number {
    if (n > this.remaining) {
      throw new Error(`${this.label}: truncated: ${what} needs ${n} bytes at offset ${this.position} but the file is ${this.fileSize} bytes`);
    }
    const end = this.position + n;
    if (this.position < this.windowStart || end > this.windowStart + this.window.length) {
      const length = Math.min(Math.max(n, HEADER_WINDOW_BYTES), this.remaining);
      this.window = Buffer.allocUnsafe(length);
      this.windowStart = this.position;
      readExactly(this.fd, this.window, this.position, () => `${this.label}: reading ${what}`);
    }
    const offset = this.position - this.windowStart;
    this.position = end;
    return offset;
  }

  bytes(n: number, what: string): Buffer {
    const offset = this.take(n, what);
    return this.window.subarray(offset, offset + n);
  }

  u32(what: string): number {
    return this.window.readUInt32LE(this.take(4, what));
  }

  /** A u64 count or offset; anything past 2^53 is corruption, not a real size. */
  u64(what: string): number {
    const value = this.window.readBigUInt64LE(this.take(8, what));
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${this.label}: ${what} is ${value}, far beyond any file size`);
    return Number(value);
  }

  string(what: string): string {
    const length = this.u64(`the length of ${what}`);
    if (length > Math.min(MAX_STRING_BYTES, this.remaining)) {
      throw new Error(`${this.label}: ${what} claims ${length} bytes but only ${this.remaining} remain in the file`);
    }
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(this.bytes(length, what));
    } catch (err) {
      if (err instanceof TypeError) throw new Error(`${this.label}: ${what} is not valid UTF-8`);
      throw err;
    }
  }

  value(type: number, what: string, depth = 0): GGUFValue {
    switch (type) {
      case VALUE_TYPE.U8:
        return this.window.readUInt8(this.take(1, what));
      case VALUE_TYPE.I8:
        return this.window.readInt8(this.take(1, what));
      case VALUE_TYPE.U16:
        return this.window.readUInt16LE(this.take(2, what));
      case VALUE_TYPE.I16:
        return this.window.readInt16LE(this.take(2, what));
      case VALUE_TYPE.U32:
        return this.window.readUInt32LE(this.take(4, what));
      case VALUE_TYPE.I32:
        return this.window.readInt32LE(this.take(4, what));
      case VALUE_TYPE.F32:
        return shortestFloat32(this.window.readFloatLE(this.take(4, what)));
      case VALUE_TYPE.F64:
        return this.window.readDoubleLE(this.take(8, what));
      case VALUE_TYPE.U64:
        return this.window.readBigUInt64LE(this.take(8, what));
      case VALUE_TYPE.I64:
        return this.window.readBigInt64LE(this.take(8, what));
      case VALUE_TYPE.BOOL:
        return this.bool(what);
      case VALUE_TYPE.STRING:
        return this.string(what);
      case VALUE_TYPE.ARRAY:
        return this.array(what, depth);
      default:
        throw new Error(`${this.label}: ${what} has unknown value type ${type}`);
    }
  }

  private bool(what: string): boolean {
    const byte = this.window.readUInt8(this.take(1, what));
    if (byte > 1) throw new Error(`${this.label}: ${what} is a bool stored as ${byte}, not 0 or 1`);
    return byte === 1;
  }

  private array(what: string, depth: number): GGUFValue[] {
    if (depth >= MAX_ARRAY_NESTING) throw new Error(`${this.label}: ${what} nests arrays more than ${MAX_ARRAY_NESTING} deep`);
    const elementType = this.u32(`the element type of ${what}`);
    if (!Object.hasOwn(MIN_VALUE_BYTES, elementType)) {
      throw new Error(`${this.label}: ${what} is an array of unknown value type ${elementType}`);
    }
    const count = this.u64(`the length of ${what}`);
    if (count * MIN_VALUE_BYTES[elementType] > this.remaining) {
      throw new Error(`${this.label}: ${what} claims ${count} elements, more than the ${this.remaining} bytes left in the file can hold`);
    }
    const values: GGUFValue[] = new Array(count);
    for (let i = 0; i < count; i++) values[i] = this.value(elementType, what, depth + 1);
    return values;
  }
}

// ---------------------------------------------------------------------------------------
// The file

export interface GGUFTensorInfo {
  name: string;
  /** As stored: innermost first, so dims[0] is the row length. */
  dims: number[];
  /** PyTorch / Hugging Face order, outermost first: dims reversed. */
  shape: number[];
  /** ggml type id, and its name. */
  type: number;
  typeName: string;
  /** Byte offset of the data, relative to the start of the data section. */
  offset: number;
  byteLength: number;
  elementCount: number;
}

export class GGUFFile {
  /** The file's base name, which starts every error message. */
  readonly label: string;
  readonly version: number;
  readonly metadata: Map<string, GGUFValue>;
  readonly tensors: GGUFTensorInfo[];
  readonly alignment: number;
  /** Absolute file offset of the data section. */
  readonly dataStart: number;
  /** Where the metadata key/values lie in the file, [start, end): a tool that rewrites the tensors copies them as they are. */
  readonly metadataBytes: [number, number];
  readonly fileSize: number;
  private fd: number | undefined;
  private readonly byName = new Map<string, GGUFTensorInfo>();

  /** Opens the file and parses its header; the fd stays open for readTensor until close(). */
  constructor(readonly path: string) {
    this.label = basename(path);
    const fd = openSync(path, 'r');
    try {
      const cursor = new HeaderCursor(fd, fstatSync(fd).size, this.label);
      this.fileSize = cursor.fileSize;
      this.version = this.readPreamble(cursor);
      const tensorCount = this.readCount(cursor, 'tensor count', 24); // name length, n_dims, type, offset
      const metadataCount = this.readCount(cursor, 'metadata count', 13); // key length, type, 1-byte value
      const metadataStart = cursor.position;
      this.metadata = this.readMetadata(cursor, metadataCount);
      this.metadataBytes = [metadataStart, cursor.position];
      this.alignment = this.readAlignment();
      const infos: GGUFTensorInfo[] = [];
      for (let i = 0; i < tensorCount; i++) infos.push(this.readTensorInfo(cursor));
      this.dataStart = Math.ceil(cursor.position / this.alignment) * this.alignment;
      this.tensors = infos;
      this.checkDataLayout();
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    this.fd = fd;
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  /** The named tensor's info; throws naming the tensor if the file has none. */
  tensor(name: string): GGUFTensorInfo {
    const info = this.byName.get(name);
    if (!info) throw new Error(`${this.label}: no tensor named ${name}`);
    return info;
  }

  hasTensor(name: string): boolean {
    return this.byName.has(name);
  }

  /** The tensor's values as float32 (F32, F16 and the quantized types of ggml.ts; other types are refused by name). */
  readTensor(tensor: GGUFTensorInfo | string): Float32Array {
    const info = typeof tensor === 'string' ? this.tensor(tensor) : tensor;
    if (!isLoadableType(info.type)) {
      throw new Error(`${this.label}: tensor ${info.name} has type ${info.typeName}; only F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K load`);
    }
    const out = new Float32Array(info.elementCount);
    if (info.type === GGML_TYPE.F32) {
      this.readData(info, 0, new Uint8Array(out.buffer));
      return out;
    }
    // Dequantize in chunks of whole blocks so the raw bytes never need a second full copy.
    const { blockSize, blockBytes } = ggmlTypeLayout(info.type)!;
    const blocksPerChunk = Math.max(1, Math.floor(DATA_CHUNK_BYTES / blockBytes));
    const totalBlocks = info.byteLength / blockBytes;
    for (let block = 0; block < totalBlocks; block += blocksPerChunk) {
      const blocks = Math.min(blocksPerChunk, totalBlocks - block);
      const raw = new Uint8Array(blocks * blockBytes);
      this.readData(info, block * blockBytes, raw);
      dequantize(info.type, raw, out.subarray(block * blockSize, (block + blocks) * blockSize));
    }
    return out;
  }

  /**
   * A quantized 2-D tensor as MatMulNBits blocks [rows = dims[1], cols = dims[0]], read a
   * chunk of whole rows at a time (see ggml.ts's rules).
   */
  readTensorNBits(tensor: GGUFTensorInfo | string): NBitsMatrix {
    const info = typeof tensor === 'string' ? this.tensor(tensor) : tensor;
    if (!isQuantizedType(info.type) || info.dims.length !== 2) {
      throw new Error(`${this.label}: tensor ${info.name} (${info.typeName}, dims [${info.dims}]) is not a quantized matrix`);
    }
    const [cols, rows] = info.dims as [number, number];
    const { bits, blockSize, offsets } = nbitsGeometry(info.type);
    const m = emptyNBits(rows, cols, bits, blockSize, offsets);
    const rowBytes = info.byteLength / rows;
    const rowsPerChunk = Math.max(1, Math.floor(DATA_CHUNK_BYTES / rowBytes));
    for (let row = 0; row < rows; row += rowsPerChunk) {
      const n = Math.min(rowsPerChunk, rows - row);
      const raw = new Uint8Array(n * rowBytes);
      this.readData(info, row * rowBytes, raw);
      readNBitsRows(info.type, raw, m, row);
    }
    return m;
  }

  /** Whether two tensors hold the same type, dims and bytes (compared a chunk at a time). */
  sameData(a: GGUFTensorInfo, b: GGUFTensorInfo): boolean {
    if (a.type !== b.type || a.dims.join() !== b.dims.join()) return false;
    for (let start = 0; start < a.byteLength; start += DATA_CHUNK_BYTES) {
      const length = Math.min(DATA_CHUNK_BYTES, a.byteLength - start);
      const left = new Uint8Array(length);
      const right = new Uint8Array(length);
      this.readData(a, start, left);
      this.readData(b, start, right);
      if (Buffer.compare(left, right) !== 0) return false;
    }
    return true;
  }

  /** The tensor's bytes as stored. */
  readRaw(tensor: GGUFTensorInfo | string): Uint8Array {
    const info = typeof tensor === 'string' ? this.tensor(tensor) : tensor;
    const out = new Uint8Array(info.byteLength);
    this.readData(info, 0, out);
    return out;
  }

  /** Bytes [start, end) of the file. */
  readBytes(start: number, end: number): Uint8Array {
    if (this.fd === undefined) throw new Error(`${this.label}: the file is closed`);
    const out = new Uint8Array(end - start);
    readExactly(this.fd, out, start, () => `${this.label}: reading bytes ${start}-${end}`);
    return out;
  }

  /** Fills `target` with the tensor's raw bytes starting `start` bytes into its data. */
  private readData(info: GGUFTensorInfo, start: number, target: Uint8Array): void {
    if (this.fd === undefined) throw new Error(`${this.label}: the file is closed`);
    readExactly(this.fd, target, this.dataStart + info.offset + start, () => `${this.label}: reading tensor ${info.name}`);
  }

  // --- header parsing -------------------------------------------------------------------

  private readPreamble(cursor: HeaderCursor): number {
    if (cursor.fileSize < 4 || cursor.bytes(4, 'the magic').toString('latin1') !== MAGIC) {
      throw new Error(`${this.label}: not a GGUF file (it does not start with "GGUF")`);
    }
    const version = cursor.u32('the version');
    if (SUPPORTED_VERSIONS.includes(version)) return version;
    // v3 allows big-endian files; they read as a byte-swapped version number here.
    const swapped = Buffer.alloc(4);
    swapped.writeUInt32BE(version);
    if (SUPPORTED_VERSIONS.includes(swapped.readUInt32LE())) {
      throw new Error(`${this.label}: big-endian GGUF files are not supported`);
    }
    throw new Error(`${this.label}: GGUF version ${version} is not supported (only versions 2 and 3 are)`);
  }

  /** A u64 count, refused if the rest of the file could not hold that many entries. */
  private readCount(cursor: HeaderCursor, what: string, minEntryBytes: number): number {
    const count = cursor.u64(`the ${what}`);
    if (count * minEntryBytes > cursor.remaining) {
      throw new Error(`${this.label}: ${what} ${count} cannot fit in the ${cursor.remaining} bytes left in the file`);
    }
    return count;
  }

  private readMetadata(cursor: HeaderCursor, count: number): Map<string, GGUFValue> {
    const metadata = new Map<string, GGUFValue>();
    for (let i = 0; i < count; i++) {
      const key = cursor.string(`metadata key #${i}`);
      if (metadata.has(key)) throw new Error(`${this.label}: metadata key ${key} appears twice`);
      const type = cursor.u32(`the value type of metadata key ${key}`);
      metadata.set(key, cursor.value(type, `metadata key ${key}`));
    }
    return metadata;
  }

  private readAlignment(): number {
    const value = this.metadata.get('general.alignment');
    if (value === undefined) return DEFAULT_ALIGNMENT;
    if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0 || (value & (value - 1)) !== 0) {
      throw new Error(`${this.label}: general.alignment must be a power of two, got ${String(value)}`);
    }
    return value;
  }

  private readTensorInfo(cursor: HeaderCursor): GGUFTensorInfo {
    const name = cursor.string(`tensor name #${this.byName.size}`);
    if (this.byName.has(name)) throw new Error(`${this.label}: tensor ${name} appears twice`);
    const dimCount = cursor.u32(`the dimension count of tensor ${name}`);
    if (dimCount > MAX_DIMS) throw new Error(`${this.label}: tensor ${name} has ${dimCount} dimensions; ggml allows at most ${MAX_DIMS}`);
    const dims: number[] = [];
    for (let d = 0; d < dimCount; d++) dims.push(cursor.u64(`dimension ${d} of tensor ${name}`));
    const type = cursor.u32(`the type of tensor ${name}`);
    const offset = cursor.u64(`the data offset of tensor ${name}`);
    const info = this.describeTensor(name, dims, type, offset);
    this.byName.set(name, info);
    return info;
  }

  private describeTensor(name: string, dims: number[], type: number, offset: number): GGUFTensorInfo {
    const layout = ggmlTypeLayout(type);
    const typeName = ggmlTypeName(type);
    if (!layout) {
      const what = isKnownType(type) ? `retired ggml type ${typeName} (${type})` : `unknown ggml type ${type}`;
      throw new Error(`${this.label}: tensor ${name} has ${what}`);
    }
    const elementCount = dims.reduce((product, dim) => product * dim, 1);
    if (!Number.isSafeInteger(elementCount)) throw new Error(`${this.label}: tensor ${name} dims [${dims}] are too large`);
    if ((dims[0] ?? 1) % layout.blockSize !== 0) {
      throw new Error(`${this.label}: tensor ${name} has rows of ${dims[0]} weights, not a multiple of the ${typeName} block size ${layout.blockSize}`);
    }
    if (offset % this.alignment !== 0) {
      throw new Error(`${this.label}: tensor ${name} data offset ${offset} is not a multiple of the alignment ${this.alignment}`);
    }
    const byteLength = (elementCount / layout.blockSize) * layout.blockBytes;
    return { name, dims, shape: [...dims].reverse(), type, typeName, offset, byteLength, elementCount };
  }

  /** Every tensor's bytes must lie inside the data section and no two may overlap. */
  private checkDataLayout(): void {
    const dataLength = this.fileSize - this.dataStart;
    const byOffset = [...this.tensors].sort((a, b) => a.offset - b.offset);
    let previous: GGUFTensorInfo | undefined;
    for (const info of byOffset) {
      const end = info.offset + info.byteLength;
      if (end > dataLength) {
        throw new Error(
          `${this.label}: tensor ${info.name} data [${info.offset}, ${end}) runs past the end of the file (the data section holds ${Math.max(0, dataLength)} bytes)`,
        );
      }
      if (previous && info.offset < previous.offset + previous.byteLength) {
        throw new Error(`${this.label}: tensors ${previous.name} and ${info.name} overlap in the data section`);
      }
      if (info.byteLength > 0) previous = info;
    }
  }

  // --- typed metadata access --------------------------------------------------------------

  private wrongType(key: string, expected: string, value: GGUFValue): Error {
    const shown = Array.isArray(value) ? `an array` : JSON.stringify(typeof value === 'bigint' ? value.toString() : value);
    return new Error(`${this.label}: metadata key ${key} should be ${expected}, got ${shown}`);
  }

  private missing(key: string): Error {
    return new Error(`${this.label}: metadata key ${key} is missing`);
  }

  string(key: string): string | undefined {
    const value = this.metadata.get(key);
    if (value !== undefined && typeof value !== 'string') throw this.wrongType(key, 'a string', value);
    return value;
  }

  /** Any integer value type; a u64/i64 beyond 2^53 is refused rather than rounded. */
  integer(key: string): number | undefined {
    const value = this.metadata.get(key);
    if (value === undefined) return undefined;
    if (typeof value === 'bigint' && value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER)) {
      return Number(value);
    }
    if (typeof value !== 'number' || !Number.isInteger(value)) throw this.wrongType(key, 'an integer', value);
    return value;
  }

  /** Any numeric value type. */
  number(key: string): number | undefined {
    const value = this.metadata.get(key);
    if (typeof value === 'bigint') return this.integer(key);
    if (value !== undefined && typeof value !== 'number') throw this.wrongType(key, 'a number', value);
    return value;
  }

  boolean(key: string): boolean | undefined {
    const value = this.metadata.get(key);
    if (value !== undefined && typeof value !== 'boolean') throw this.wrongType(key, 'a bool', value);
    return value;
  }

  /** An array whose elements all pass `isElement` (described by `expected` in errors). */
  array<T extends GGUFValue>(key: string, isElement: (v: GGUFValue) => v is T, expected: string): T[] | undefined {
    const value = this.metadata.get(key);
    if (value === undefined) return undefined;
    if (!Array.isArray(value) || !value.every(isElement)) throw this.wrongType(key, `an array of ${expected}`, value);
    return value;
  }

  requireString(key: string): string {
    return this.string(key) ?? failWith(this.missing(key));
  }

  requireInteger(key: string): number {
    return this.integer(key) ?? failWith(this.missing(key));
  }

  requireNumber(key: string): number {
    return this.number(key) ?? failWith(this.missing(key));
  }
}

function failWith(error: Error): never {
  throw error;
}

/** Opens a GGUF file and parses its header (see GGUFFile). */
export function openGGUF(path: string): GGUFFile {
  return new GGUFFile(path);
}
