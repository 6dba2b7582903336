import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  decodeSafetensors,
  encodeSafetensors,
  readSafetensors,
  readSafetensorsIndex,
  writeSafetensors,
  writeSafetensorsStreaming,
  type NamedTensor,
} from '../src/formats/safetensors.ts';
import { f16ToF32, widenToFloat32 } from '../src/formats/float16.ts';

/** Builds a file by hand so malformed headers can be tested. */
function rawFile(header: unknown, data: Uint8Array = new Uint8Array(0)): Buffer {
  const json = header instanceof Uint8Array ? Buffer.from(header) : Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([length, json, data]);
}

function everyDtype(): Map<string, NamedTensor> {
  return new Map<string, NamedTensor>([
    ['f32', { dtype: 'F32', shape: [2, 3], data: new Float32Array([1.5, -2, 3, 0, Infinity, -0.25]) }],
    ['f64', { dtype: 'F64', shape: [3], data: new Float64Array([Math.PI, -1e300, Number.MIN_VALUE]) }],
    ['i64', { dtype: 'I64', shape: [2], data: new BigInt64Array([-(2n ** 63n), 2n ** 62n + 7n]) }],
    ['i32', { dtype: 'I32', shape: [1, 2, 2], data: new Int32Array([-1, 2 ** 31 - 1, -(2 ** 31), 42]) }],
    ['u8', { dtype: 'U8', shape: [5], data: new Uint8Array([0, 1, 127, 128, 255]) }],
    ['bool', { dtype: 'BOOL', shape: [3], data: new Uint8Array([1, 0, 1]) }],
    ['f16', { dtype: 'F16', shape: [2], data: new Uint16Array([0x3c00, 0xfc00]) }],
    ['bf16', { dtype: 'BF16', shape: [2], data: new Uint16Array([0x3f80, 0x4049]) }],
  ]);
}

test('round trips every dtype with metadata', () => {
  const tensors = everyDtype();
  const metadata = { format: 'pt', step: '12' };
  const decoded = decodeSafetensors(encodeSafetensors(tensors, metadata));
  assert.deepEqual(decoded.metadata, metadata);
  assert.deepEqual([...decoded.tensors.keys()], [...tensors.keys()].sort());
  for (const [name, tensor] of tensors) {
    const got = decoded.tensors.get(name)!;
    assert.equal(got.dtype, tensor.dtype, name);
    assert.deepEqual(got.shape, tensor.shape, name);
    assert.equal(got.data.constructor, tensor.data.constructor, name);
    assert.deepEqual(Array.from(got.data as ArrayLike<unknown>), Array.from(tensor.data as ArrayLike<unknown>), name);
  }
});

test('round trips without metadata, with 0-d scalars and empty tensors', () => {
  const tensors = new Map<string, NamedTensor>([
    ['scalar', { dtype: 'F64', shape: [], data: new Float64Array([2.5]) }],
    ['empty', { dtype: 'F32', shape: [0], data: new Float32Array(0) }],
    ['empty2d', { dtype: 'I64', shape: [3, 0], data: new BigInt64Array(0) }],
  ]);
  const bytes = encodeSafetensors(tensors);
  assert.ok(!bytes.toString('latin1').includes('__metadata__'));
  const decoded = decodeSafetensors(bytes);
  assert.deepEqual(decoded.metadata, {});
  assert.deepEqual(decoded.tensors.get('scalar'), tensors.get('scalar'));
  assert.deepEqual(decoded.tensors.get('empty')!.shape, [0]);
  assert.equal(decoded.tensors.get('empty')!.data.length, 0);
  assert.deepEqual(decoded.tensors.get('empty2d')!.shape, [3, 0]);
  assert.ok(decoded.tensors.get('empty2d')!.data instanceof BigInt64Array);
});

test('round trips a file with no tensors', () => {
  const decoded = decodeSafetensors(encodeSafetensors(new Map(), { note: 'nothing' }));
  assert.equal(decoded.tensors.size, 0);
  assert.deepEqual(decoded.metadata, { note: 'nothing' });
});

test('writes the exact byte layout of a small file', () => {
  const bytes = encodeSafetensors(new Map([['a', { dtype: 'F32', shape: [2], data: new Float32Array([1, 2]) }]]));
  const json = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'; // 54 bytes
  assert.equal(bytes.length, 8 + 56 + 8);
  assert.equal(bytes.readBigUInt64LE(0), 56n); // padded up to a multiple of 8
  assert.equal(bytes.toString('utf8', 8, 8 + 54), json);
  assert.equal(bytes.toString('utf8', 8 + 54, 8 + 56), '  ');
  assert.deepEqual([...bytes.subarray(64)], [0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40]);
});

test('output is deterministic: tensors are sorted by name', () => {
  const a: NamedTensor = { dtype: 'U8', shape: [1], data: new Uint8Array([1]) };
  const b: NamedTensor = { dtype: 'U8', shape: [1], data: new Uint8Array([2]) };
  const forward = encodeSafetensors(
    new Map<string, NamedTensor>([
      ['x', a],
      ['y', b],
    ]),
  );
  const backward = encodeSafetensors(
    new Map<string, NamedTensor>([
      ['y', b],
      ['x', a],
    ]),
  );
  assert.deepEqual(forward, backward);
  assert.deepEqual([...forward.subarray(-2)], [1, 2]);
});

test('encodes only the viewed part of a typed array', () => {
  const backing = new Float32Array([9, 1, 2, 9]);
  const view = backing.subarray(1, 3);
  const decoded = decodeSafetensors(encodeSafetensors(new Map([['v', { dtype: 'F32', shape: [2], data: view }]])));
  assert.deepEqual(Array.from(decoded.tensors.get('v')!.data as Float32Array), [1, 2]);
});

test('decoded arrays are aligned copies, even from an unaligned buffer', () => {
  const bytes = encodeSafetensors(
    new Map<string, NamedTensor>([
      ['a', { dtype: 'U8', shape: [3], data: new Uint8Array([1, 2, 3]) }],
      ['b', { dtype: 'F64', shape: [2], data: new Float64Array([0.5, -4]) }],
    ]),
  );
  // Put the file at an odd offset: tensor "b" then starts at an address no Float64Array can view.
  const shifted = new Uint8Array(bytes.length + 1);
  shifted.set(bytes, 1);
  const source = shifted.subarray(1);
  const b = decodeSafetensors(source).tensors.get('b')!;
  assert.ok(b.data instanceof Float64Array);
  assert.deepEqual(Array.from(b.data), [0.5, -4]);
  assert.equal(b.data.byteOffset, 0);
  assert.notEqual(b.data.buffer, shifted.buffer);
  source.fill(0);
  assert.deepEqual(Array.from(b.data), [0.5, -4]);
});

test('accepts files written by other tools: header order, unpadded header', () => {
  const data = new Uint8Array([7, 0, 0, 0, 5]);
  const file = rawFile({ z: { dtype: 'I32', shape: [1], data_offsets: [0, 4] }, a: { dtype: 'U8', shape: [], data_offsets: [4, 5] } }, data);
  const { tensors } = decodeSafetensors(file);
  assert.deepEqual([...tensors.keys()], ['a', 'z']);
  assert.deepEqual(Array.from(tensors.get('z')!.data as Int32Array), [7]);
  assert.deepEqual(Array.from(tensors.get('a')!.data as Uint8Array), [5]);
});

test('writeSafetensors and readSafetensors round trip through a file atomically', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'safetensors-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'model.safetensors');
  await writeFile(path, 'old contents');
  await writeSafetensors(path, everyDtype(), { kind: 'test' });
  assert.deepEqual(await readdir(dir), ['model.safetensors']); // no temp file left behind
  assert.deepEqual(await readFile(path), encodeSafetensors(everyDtype(), { kind: 'test' }));
  const { tensors, metadata } = await readSafetensors(path);
  assert.deepEqual(metadata, { kind: 'test' });
  assert.deepEqual(tensors, decodeSafetensors(encodeSafetensors(everyDtype())).tensors);
});

test('writeSafetensors leaves no file behind when encoding fails', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'safetensors-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const bad = new Map([['x', { dtype: 'F32', shape: [2], data: new Float32Array(1) } as NamedTensor]]);
  await assert.rejects(writeSafetensors(join(dir, 'x.safetensors'), bad), /holds 2 elements but data has 1/);
  assert.deepEqual(await readdir(dir), []);
});

// ---------------------------------------------------------------------------------------
// Malformed input on decode

test('rejects a file too short for the length field', () => {
  assert.throws(() => decodeSafetensors(new Uint8Array(5)), /too short/);
});

test('rejects a header length beyond the file', () => {
  const file = rawFile({});
  file.writeBigUInt64LE(1000n);
  assert.throws(() => decodeSafetensors(file), /header length 1000 goes beyond the end of the file/);
  file.writeBigUInt64LE(2n ** 64n - 1n);
  assert.throws(() => decodeSafetensors(file), /goes beyond the end of the file/);
});

test('rejects a header that is not JSON or not an object', () => {
  assert.throws(() => decodeSafetensors(rawFile('{"a": ')), /header is not valid JSON/);
  assert.throws(() => decodeSafetensors(rawFile(new Uint8Array([0x7b, 0xff, 0x7d]))), /not valid JSON/);
  assert.throws(() => decodeSafetensors(rawFile('[1, 2]')), /header must be a JSON object/);
  assert.throws(() => decodeSafetensors(rawFile({ a: 3 })), /tensor "a": header entry must be an object/);
});

test('rejects an unknown dtype', () => {
  const file = rawFile({ a: { dtype: 'F8_E4M3', shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1));
  assert.throws(() => decodeSafetensors(file), /tensor "a": unknown dtype "F8_E4M3"/);
});

test('rejects a bad shape or bad data_offsets', () => {
  const bad = (entry: object) => decodeSafetensors(rawFile({ a: entry }, new Uint8Array(4)));
  assert.throws(() => bad({ dtype: 'U8', shape: [-1], data_offsets: [0, 4] }), /shape must be an array of non-negative integers/);
  assert.throws(() => bad({ dtype: 'U8', shape: [1.5], data_offsets: [0, 4] }), /shape must be/);
  assert.throws(() => bad({ dtype: 'U8', shape: 4, data_offsets: [0, 4] }), /shape must be/);
  assert.throws(() => bad({ dtype: 'U8', shape: [4], data_offsets: [4, 0] }), /data_offsets must be \[begin, end\]/);
  assert.throws(() => bad({ dtype: 'U8', shape: [4], data_offsets: [0] }), /data_offsets must be/);
  assert.throws(() => bad({ dtype: 'U8', shape: [4] }), /data_offsets must be/);
});

test('rejects a shape that does not match the offsets', () => {
  const file = rawFile({ a: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 12] } }, new Uint8Array(12));
  assert.throws(() => decodeSafetensors(file), /tensor "a": F32 shape \[2,2\] needs 16 bytes but data_offsets span 12/);
});

test('rejects out-of-range offsets', () => {
  const file = rawFile({ a: { dtype: 'I32', shape: [2], data_offsets: [0, 8] } }, new Uint8Array(4));
  assert.throws(() => decodeSafetensors(file), /tensor "a" data_offsets \[0, 8\] are out of range \(data section is 4 bytes\)/);
});

test('rejects overlapping offsets', () => {
  const file = rawFile({ a: { dtype: 'I32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'I32', shape: [1], data_offsets: [4, 8] } }, new Uint8Array(8));
  assert.throws(() => decodeSafetensors(file), /tensor "b" data_offsets \[4, 8\] overlap another tensor/);
});

test('rejects holes and trailing bytes in the data section', () => {
  const hole = rawFile({ a: { dtype: 'U8', shape: [1], data_offsets: [0, 1] }, b: { dtype: 'U8', shape: [1], data_offsets: [2, 3] } }, new Uint8Array(3));
  assert.throws(() => decodeSafetensors(hole), /bytes \[1, 2\) of the data section belong to no tensor/);
  const trailing = rawFile({ a: { dtype: 'U8', shape: [1], data_offsets: [0, 1] } }, new Uint8Array(3));
  assert.throws(() => decodeSafetensors(trailing), /bytes \[1, 3\) of the data section belong to no tensor/);
});

test('rejects non-string metadata', () => {
  assert.throws(() => decodeSafetensors(rawFile({ __metadata__: { step: 3 } })), /__metadata__ value for "step" must be a string, got number/);
  assert.throws(() => decodeSafetensors(rawFile({ __metadata__: ['x'] })), /__metadata__ must be an object of strings/);
});

// ---------------------------------------------------------------------------------------
// Invalid input on encode

test('encode rejects data whose length does not match the shape', () => {
  const tensors = new Map([['w', { dtype: 'F32', shape: [2, 3], data: new Float32Array(5) } as NamedTensor]]);
  assert.throws(() => encodeSafetensors(tensors), /tensor "w": shape \[2,3\] holds 6 elements but data has 5/);
});

test('encode rejects data of the wrong array type, unknown dtypes and bad shapes', () => {
  const one = (tensor: unknown) => encodeSafetensors(new Map([['t', tensor as NamedTensor]]));
  assert.throws(() => one({ dtype: 'F32', shape: [1], data: new Float64Array(1) }), /dtype F32 needs a Float32Array, got Float64Array/);
  assert.throws(() => one({ dtype: 'I64', shape: [1], data: new Int32Array(2) }), /dtype I64 needs a BigInt64Array/);
  assert.throws(() => one({ dtype: 'F8_E4M3', shape: [1], data: new Uint8Array(1) }), /unknown dtype "F8_E4M3"/);
  assert.throws(() => one({ dtype: 'BF16', shape: [1], data: new Uint8Array(2) }), /dtype BF16 needs a Uint16Array, got Uint8Array/);
  assert.throws(() => one({ dtype: 'U8', shape: [-1], data: new Uint8Array(0) }), /shape must be an array of non-negative integers/);
});

test('encode rejects non-string metadata and the reserved name', () => {
  const tensors = new Map<string, NamedTensor>();
  assert.throws(() => encodeSafetensors(tensors, { step: 3 } as unknown as Record<string, string>), /__metadata__ value for "step" must be a string/);
  const reserved = new Map([['__metadata__', { dtype: 'U8', shape: [0], data: new Uint8Array(0) } as NamedTensor]]);
  assert.throws(() => encodeSafetensors(reserved), /"__metadata__" is reserved/);
});

// ---------------------------------------------------------------------------------------
// 16-bit floats, the index of a file, streaming writes

test('F16 and BF16 bit patterns widen to the float32 values they stand for', () => {
  // Hand-decoded: 1, -2, the largest half, the smallest subnormal, the smallest normal, -0, +-inf, NaN.
  const half = [0x3c00, 0xc000, 0x7bff, 0x0001, 0x0400, 0x8000, 0x7c00, 0xfc00, 0x7e00];
  const expected = [1, -2, 65504, 2 ** -24, 2 ** -14, -0, Infinity, -Infinity, NaN];
  assert.deepEqual(half.map(f16ToF32), expected);
  assert.deepEqual(Array.from(widenToFloat32(Uint16Array.from(half), 'F16')), expected);
  // bfloat16 is the top half of a float32: 1, pi truncated to 8 bits of mantissa, -inf, the smallest subnormal.
  const bf = Uint16Array.of(0x3f80, 0x4049, 0xff80, 0x0001);
  assert.deepEqual(Array.from(widenToFloat32(bf, 'BF16')), [1, 3.140625, -Infinity, 2 ** -133]);
});

test("the index of a file gives each tensor's absolute byte range without reading the data", async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ttrl-st-index-'));
  try {
    const path = join(dir, 'm.safetensors');
    const tensors = everyDtype();
    await writeSafetensors(path, tensors, { format: 'pt' });
    const bytes = await readFile(path);
    const index = await readSafetensorsIndex(path);
    assert.deepEqual(index.metadata, { format: 'pt' });
    for (const [name, t] of tensors) {
      const at = index.tensors.get(name)!;
      assert.equal(at.dtype, t.dtype);
      assert.deepEqual(at.shape, t.shape);
      assert.deepEqual(
        new Uint8Array(bytes.subarray(at.offset, at.offset + at.length)),
        new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
        name,
      );
    }
    await writeFile(path, bytes.subarray(0, bytes.length - 3));
    await assert.rejects(readSafetensorsIndex(path), (e: Error) => e.message.startsWith(`${path}: safetensors: tensor`) && /out of range/.test(e.message));
    await writeFile(path, bytes.subarray(0, 5));
    await assert.rejects(readSafetensorsIndex(path), /too short for the 8-byte header length/);
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('a streamed write produces the same bytes as encoding everything at once', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ttrl-st-stream-'));
  try {
    const tensors = everyDtype();
    const path = join(dir, 's.safetensors');
    const produced: string[] = [];
    const locations = await writeSafetensorsStreaming(path, tensors, (name) => (produced.push(name), tensors.get(name)!.data), { step: '3' });
    assert.deepEqual(await readFile(path), encodeSafetensors(tensors, { step: '3' }));
    assert.deepEqual(produced, [...tensors.keys()].sort(), 'one tensor at a time, in file order');
    assert.deepEqual(locations, (await readSafetensorsIndex(path)).tensors);
    // a producer that returns the wrong size fails the write and leaves no file behind
    await assert.rejects(
      writeSafetensorsStreaming(join(dir, 'bad.safetensors'), tensors, () => new Float32Array(1)),
      /needs a|holds/,
    );
    assert.deepEqual((await readdir(dir)).sort(), ['s.safetensors']);
  } finally {
    await rm(dir, { recursive: true });
  }
});
