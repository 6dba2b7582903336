import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { f16ToF32 } from '../src/formats/float16.ts';
import { openGGUF, type GGUFValue } from '../src/formats/gguf.ts';
import { readGGUFLlama } from '../src/formats/gguf-llama.ts';
import { readSafetensors } from '../src/formats/safetensors.ts';
import {
  arrayOf,
  bool,
  encodeGGUF,
  f32,
  f32Bytes,
  f32s,
  i32s,
  str,
  strings,
  u32,
  type GGUFSpec,
  type TensorSpec,
  type TypedValue,
} from './helpers/gguf-writer.ts';

const FIXTURE = join(import.meta.dirname, 'fixtures', 'stories260K');
const STORIES_GGUF = join(FIXTURE, 'stories260K.gguf');
const readJson = (name: string) => JSON.parse(readFileSync(join(FIXTURE, 'hf', name), 'utf8'));

const GGML = { F32: 0, F16: 1, Q8_0: 8, Q3_K: 11, BF16: 30 };

const scratch = mkdtempSync(join(tmpdir(), 'gguf-test-'));
process.on('exit', () => rmSync(scratch, { recursive: true, force: true }));

function writeFile(name: string, bytes: Uint8Array): string {
  const path = join(scratch, name);
  writeFileSync(path, bytes);
  return path;
}

const writeGGUF = (name: string, spec: GGUFSpec) => writeFile(name, encodeGGUF(spec));

/** The raw bytes of a float array, for bitwise comparison (NaN payloads and -0 included). */
const bitsOf = (data: Float32Array) => Buffer.from(data.buffer, data.byteOffset, data.byteLength);

// ---------------------------------------------------------------------------------------
// The real file: stories260K as GGUF against the same model as a Hugging Face directory

test('stories260K: every tensor, mapped and un-permuted, equals the Hugging Face weights bit for bit', async () => {
  const hf = await readSafetensors(join(FIXTURE, 'hf', 'model.safetensors'));
  const model = readGGUFLlama(STORIES_GGUF);
  try {
    // output.weight is a byte copy of token_embd.weight, so it is tied and has no lm_head.
    assert.deepEqual([...model.tensorNames].sort(), [...hf.tensors.keys()].sort());
    for (const [name, expected] of hf.tensors) {
      const got = model.readTensor(name);
      assert.deepEqual(got.shape, expected.shape, name);
      assert.deepEqual(model.tensorShape(name), expected.shape, name);
      assert.ok(bitsOf(got.data).equals(bitsOf(expected.data as Float32Array)), `${name} differs`);
    }
  } finally {
    model.close();
  }
});

test('stories260K: config.json and generation_config.json match the Hugging Face ones', () => {
  const expected = readJson('config.json');
  const model = readGGUFLlama(STORIES_GGUF);
  model.close();
  const fields = [
    'architectures',
    'model_type',
    'hidden_size',
    'intermediate_size',
    'num_hidden_layers',
    'num_attention_heads',
    'num_key_value_heads',
    'vocab_size',
    'rms_norm_eps',
    'rope_theta',
    'hidden_act',
    'tie_word_embeddings',
    'bos_token_id',
    'eos_token_id',
    'torch_dtype',
    'attention_bias',
    'mlp_bias',
  ];
  for (const field of fields) assert.deepEqual(model.config[field], expected[field], field);
  // The GGUF says 2048; the HF export used llama2.c's training length, 512.
  assert.equal(model.config.max_position_embeddings, 2048);
  assert.equal('head_dim' in model.config, false);
  const generation = readJson('generation_config.json');
  assert.equal(model.generationConfig.bos_token_id, generation.bos_token_id);
  assert.equal(model.generationConfig.eos_token_id, generation.eos_token_id);
});

test('stories260K: the header parses without reading the data, f32 metadata reads as written', () => {
  const file = openGGUF(STORIES_GGUF);
  try {
    assert.equal(file.version, 3);
    assert.equal(file.alignment, 32);
    assert.equal(file.dataStart % 32, 0);
    assert.equal(file.tensors.length, 48);
    assert.equal(file.metadata.get('general.architecture'), 'llama');
    // Stored as the float32 nearest 1e-5; shown as the shortest decimal with those bits.
    assert.equal(file.metadata.get('llama.attention.layer_norm_rms_epsilon'), 1e-5);
    const q = file.tensor('blk.0.attn_k.weight');
    assert.deepEqual(q.dims, [64, 32]);
    assert.deepEqual(q.shape, [32, 64]);
    assert.equal(q.typeName, 'F32');
    assert.equal(q.byteLength, 64 * 32 * 4);
  } finally {
    file.close();
  }
});

const SAMPLE_TEXTS = [
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the park.',
  'Tim and his mom went to the store. "Can I have a toy?" he asked.',
  '   three leading spaces',
  'trailing spaces   ',
  'many    spaces   between   words',
  'line one\nline two\n\nafter a blank line\n',
  '\ttabs\tand\r\ncarriage returns',
  'Punctuation!? (parens) [brackets] {braces}; colon: dash - em — quote “hi” ’s…',
  'digits 0123456789, 3.14 and 1,000,000 $5 100%',
  'héllo ✓ 日本',
  'emoji 🙂🚀 and a lone zwj \u200d',
  'ñandú Zürich café naïve',
  '',
  ' ',
  'a',
  '<s> a literal special token </s> in text',
];

test('stories260K: the converted tokenizer.json is the Hugging Face one, and tokenizes identically', () => {
  const referenceJson = readJson('tokenizer.json');
  const referenceConfig = readJson('tokenizer_config.json');
  const model = readGGUFLlama(STORIES_GGUF);
  model.close();
  // Same merges in the same order, same normalizer, decoder, template and added tokens.
  assert.deepEqual(JSON.parse(JSON.stringify(model.tokenizerJson)), referenceJson);
  for (const field of ['add_bos_token', 'add_eos_token', 'bos_token', 'eos_token', 'unk_token', 'pad_token', 'tokenizer_class']) {
    assert.deepEqual(model.tokenizerConfig[field], referenceConfig[field], field);
  }

  const ours = new Tokenizer(model.tokenizerJson, model.tokenizerConfig);
  const reference = new Tokenizer(referenceJson, referenceConfig);
  for (const text of SAMPLE_TEXTS) {
    const ids = ours.encode(text).ids;
    assert.deepEqual(ids, reference.encode(text).ids, JSON.stringify(text));
    for (const skip_special_tokens of [true, false]) {
      assert.equal(ours.decode(ids, { skip_special_tokens }), reference.decode(ids, { skip_special_tokens }), JSON.stringify(text));
    }
  }
  // Checked by hand against the vocabulary: <s> ▁Once ▁upon ▁a ▁time.
  assert.deepEqual(ours.encode('Once upon a time').ids, [1, 403, 407, 261, 378]);
  // Text outside the vocabulary falls back to UTF-8 bytes (<0xE2> is id 3 + 0xE2) and decodes back.
  assert.deepEqual(ours.encode('✓').ids, [1, 410, 3 + 0xe2, 3 + 0x9c, 3 + 0x93]);
  for (const text of SAMPLE_TEXTS.slice(0, -1)) {
    assert.equal(ours.decode(ours.encode(text).ids, { skip_special_tokens: true }), text);
  }
});

// ---------------------------------------------------------------------------------------
// Container format, with files from the test writer

test('reads every metadata value type, nested arrays and a custom alignment (versions 2 and 3)', () => {
  const metadata: [string, TypedValue][] = [
    ['u8', { type: 'u8', value: 255 }],
    ['i8', { type: 'i8', value: -128 }],
    ['u16', { type: 'u16', value: 65535 }],
    ['i16', { type: 'i16', value: -32768 }],
    ['u32', u32(4294967295)],
    ['i32', { type: 'i32', value: -2147483648 }],
    ['f32', f32(0.1)],
    ['bool', bool(true)],
    ['string', str('héllo ✓')],
    ['u64', { type: 'u64', value: 2n ** 64n - 1n }],
    ['i64', { type: 'i64', value: -(2n ** 63n) }],
    ['f64', { type: 'f64', value: Math.PI }],
    ['nested', arrayOf('array', [strings(['a', 'b']), arrayOf('bool', [bool(false)]), arrayOf('u8', [])])],
  ];
  const expected: Record<string, GGUFValue> = {
    u8: 255,
    i8: -128,
    u16: 65535,
    i16: -32768,
    u32: 4294967295,
    i32: -2147483648,
    f32: 0.1,
    bool: true,
    string: 'héllo ✓',
    u64: 2n ** 64n - 1n,
    i64: -(2n ** 63n),
    f64: Math.PI,
    nested: [['a', 'b'], [false], []],
    'general.alignment': 64,
  };
  const tensors = [
    { name: 'a', dims: [3], type: GGML.F32, data: f32Bytes([1, 2, 3]) },
    { name: 'b', dims: [2, 2], type: GGML.F32, data: f32Bytes([4, 5, 6, 7]) },
  ];
  for (const version of [2, 3]) {
    const file = openGGUF(writeGGUF(`v${version}.gguf`, { version, alignment: 64, metadata, tensors }));
    try {
      assert.equal(file.version, version);
      assert.deepEqual(Object.fromEntries(file.metadata), expected);
      assert.equal(file.alignment, 64);
      assert.equal(file.dataStart % 64, 0);
      assert.deepEqual(
        file.tensors.map((t) => [t.name, t.offset, t.shape]),
        [
          ['a', 0, [3]],
          ['b', 64, [2, 2]],
        ],
      );
      assert.deepEqual([...file.readTensor('b')], [4, 5, 6, 7]);
      assert.equal(file.integer('u32'), 4294967295);
      // Beyond 2^53 an integer is refused rather than rounded.
      assert.throws(() => file.integer('u64'), /v\d\.gguf: metadata key u64 should be an integer, got "18446744073709551615"/);
    } finally {
      file.close();
    }
  }
});

/** The value of IEEE half-precision bits by the textbook formula, independent of the reader. */
function halfValue(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24; // zero and subnormals
  if (exponent === 31) return fraction === 0 ? sign * Infinity : NaN;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

test('F16 converts exactly: all 65536 bit patterns, and an F16 tensor read from a file', () => {
  for (let bits = 0; bits < 65536; bits++) {
    const expected = halfValue(bits);
    const got = f16ToF32(bits);
    assert.ok(Number.isNaN(expected) ? Number.isNaN(got) : Object.is(got, expected), `0x${bits.toString(16)}: ${got} != ${expected}`);
  }
  const halves = [0x3c00, 0xc000, 0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x7d01, 0x3555, 0xfbff, 0x2e66];
  const path = writeGGUF('f16.gguf', {
    tensors: [{ name: 'half', dims: [halves.length], type: GGML.F16, data: new Uint8Array(Uint16Array.from(halves).buffer) }],
  });
  const file = openGGUF(path);
  const data = file.readTensor('half');
  file.close();
  halves.forEach((bits, i) => {
    const expected = halfValue(bits);
    assert.ok(Number.isNaN(expected) ? Number.isNaN(data[i]) : Object.is(data[i], expected), `0x${bits.toString(16)}`);
  });
  // NaNs keep their payload: quiet NaN 0x7e00 -> 0x7fc00000, signalling 0x7d01 -> 0x7fa02000.
  const words = new Uint32Array(data.buffer);
  assert.equal(words[halves.indexOf(0x7e00)], 0x7fc00000);
  assert.equal(words[halves.indexOf(0x7d01)], 0x7fa02000);
});

test('Q8_0 dequantizes each block as scale * int8', () => {
  // Two rows of 64 weights = four 34-byte blocks: an f16 scale, then 32 int8 values.
  const scales = [0x3c00, 0x2e66, 0xb800, 0x0001]; // 1, ~0.1, -0.5, the smallest subnormal
  const quants = scales.map((_, block) => Int8Array.from({ length: 32 }, (_, j) => ((block * 37 + j * 11) % 256) - 128));
  const bytes = new Uint8Array(scales.length * 34);
  const view = new DataView(bytes.buffer);
  scales.forEach((scale, block) => {
    view.setUint16(block * 34, scale, true);
    bytes.set(new Uint8Array(quants[block].buffer), block * 34 + 2);
  });
  const file = openGGUF(writeGGUF('q8.gguf', { tensors: [{ name: 'w', dims: [64, 2], type: GGML.Q8_0, data: bytes }] }));
  const info = file.tensor('w');
  assert.deepEqual([info.typeName, info.byteLength, info.elementCount], ['Q8_0', 136, 128]);
  const data = file.readTensor(info);
  file.close();
  const expected = Float32Array.from(scales.flatMap((scale, block) => [...quants[block]].map((q) => Math.fround(halfValue(scale) * q))));
  assert.ok(bitsOf(data).equals(bitsOf(expected)));
  assert.equal(data[32], Math.fround(halfValue(0x2e66) * quants[1][0]));
});

test('tensor types without a rule are refused by name', () => {
  const path = writeGGUF('stories.gguf', {
    tensors: [
      { name: 'blk.0.attn_q.weight', dims: [256, 1], type: GGML.Q3_K, data: new Uint8Array(110) },
      { name: 'norm', dims: [4], type: GGML.BF16, data: new Uint8Array(8) },
      { name: 'fine', dims: [1], type: GGML.F32, data: f32Bytes([1]) },
    ],
  });
  const file = openGGUF(path);
  assert.equal(file.tensor('blk.0.attn_q.weight').byteLength, 110); // sized, though not loadable
  assert.throws(() => file.readTensor('blk.0.attn_q.weight'), {
    message: 'stories.gguf: tensor blk.0.attn_q.weight has type Q3_K; only F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K load',
  });
  assert.throws(() => file.readTensor('norm'), /stories\.gguf: tensor norm has type BF16/);
  assert.throws(() => file.readTensor('missing'), /stories\.gguf: no tensor named missing/);
  assert.deepEqual([...file.readTensor('fine')], [1]);
  file.close();
  assert.throws(() => file.readTensor('fine'), /stories\.gguf: the file is closed/);
});

// ---------------------------------------------------------------------------------------
// Corrupt and hostile files: each fails fast with a message naming the file

function patched(spec: GGUFSpec, patch: (bytes: Buffer) => Buffer | void): Buffer {
  const bytes = encodeGGUF(spec);
  return patch(bytes) ?? bytes;
}

const ONE_TENSOR: GGUFSpec = {
  metadata: [['k', arrayOf('u8', [{ type: 'u8', value: 1 }])]],
  tensors: [{ name: 't', dims: [8], type: GGML.F32, data: f32Bytes([1, 2, 3, 4, 5, 6, 7, 8]) }],
};
// Byte offsets in ONE_TENSOR: counts at 8 and 16, key length at 24, the key "k" at 32,
// its value type at 33, the array's element type at 37 and its length at 41.

const CORRUPTIONS: [string, Buffer, RegExp][] = [
  ['empty file', Buffer.alloc(0), /not a GGUF file/],
  ['bad magic', patched(ONE_TENSOR, (b) => void b.write('GGML', 0, 'latin1')), /not a GGUF file/],
  ['version 1', patched(ONE_TENSOR, (b) => void b.writeUInt32LE(1, 4)), /GGUF version 1 is not supported/],
  ['big-endian', patched(ONE_TENSOR, (b) => void b.writeUInt32BE(3, 4)), /big-endian GGUF files are not supported/],
  ['huge tensor count', patched(ONE_TENSOR, (b) => void b.writeBigUInt64LE(2n ** 40n, 8)), /tensor count 1099511627776 cannot fit/],
  ['absurd tensor count', patched(ONE_TENSOR, (b) => void b.writeBigUInt64LE(2n ** 63n, 8)), /tensor count is 9223372036854775808, far beyond/],
  ['huge metadata count', patched(ONE_TENSOR, (b) => void b.writeBigUInt64LE(10n ** 12n, 16)), /metadata count 1000000000000 cannot fit/],
  ['huge key length', patched(ONE_TENSOR, (b) => void b.writeBigUInt64LE(2n ** 32n, 24)), /metadata key #0 claims 4294967296 bytes/],
  ['unknown value type', patched(ONE_TENSOR, (b) => void b.writeUInt32LE(13, 33)), /metadata key k has unknown value type 13/],
  ['unknown element type', patched(ONE_TENSOR, (b) => void b.writeUInt32LE(99, 37)), /metadata key k is an array of unknown value type 99/],
  ['huge array length', patched(ONE_TENSOR, (b) => void b.writeBigUInt64LE(10n ** 12n, 41)), /metadata key k claims 1000000000000 elements/],
  ['truncated header', encodeGGUF(ONE_TENSOR).subarray(0, 60), /truncated: .*tensor t/],
  ['tensor data past the end', encodeGGUF(ONE_TENSOR).subarray(0, -4), /tensor t data \[0, 32\) runs past the end of the file/],
  // A u8 value 2 whose type (at byte 36, after the 4-byte key) is rewritten to bool.
  [
    'bool neither 0 nor 1',
    patched({ metadata: [['flag', { type: 'u8', value: 2 }]] }, (b) => void b.writeUInt32LE(7, 36)),
    /metadata key flag is a bool stored as 2/,
  ],
  [
    'duplicate key',
    encodeGGUF({
      metadata: [
        ['k', u32(1)],
        ['k', u32(2)],
      ],
    }),
    /metadata key k appears twice/,
  ],
  ['invalid UTF-8 key', patched({ metadata: [['ab', u32(1)]] }, (b) => void b.writeUInt8(0xff, 33)), /metadata key #0 is not valid UTF-8/],
  ['alignment not a power of two', encodeGGUF({ alignment: 48 }), /general\.alignment must be a power of two, got 48/],
  [
    'arrays nested too deep',
    encodeGGUF({ metadata: [['deep', Array.from({ length: 9 }).reduce<TypedValue>((inner) => arrayOf('array', [inner]), arrayOf('u8', []))]] }),
    /deep nests arrays more than 8 deep/,
  ],
  ['duplicate tensor', encodeGGUF({ tensors: [ONE_TENSOR.tensors![0], ONE_TENSOR.tensors![0]] }), /tensor t appears twice/],
  ['five dimensions', encodeGGUF({ tensors: [{ name: 't', dims: [1, 1, 1, 1, 1], type: GGML.F32, data: f32Bytes([1]) }] }), /tensor t has 5 dimensions/],
  ['unknown ggml type', encodeGGUF({ tensors: [{ name: 't', dims: [1], type: 99, data: f32Bytes([1]) }] }), /tensor t has unknown ggml type 99/],
  [
    'retired ggml type',
    encodeGGUF({ tensors: [{ name: 't', dims: [32], type: 31, data: new Uint8Array(18) }] }),
    /tensor t has retired ggml type Q4_0_4_4 \(31\)/,
  ],
  [
    'partial Q8_0 block',
    encodeGGUF({ tensors: [{ name: 't', dims: [16], type: GGML.Q8_0, data: new Uint8Array(34) }] }),
    /rows of 16 weights, not a multiple of the Q8_0 block size 32/,
  ],
  [
    'misaligned offset',
    encodeGGUF({ tensors: [{ name: 't', dims: [1], type: GGML.F32, data: f32Bytes([1]), offset: 4 }] }),
    /tensor t data offset 4 is not a multiple of the alignment 32/,
  ],
  [
    'overlapping tensors',
    encodeGGUF({
      tensors: [
        { name: 'a', dims: [16], type: GGML.F32, data: new Uint8Array(64) },
        { name: 'b', dims: [8], type: GGML.F32, data: new Uint8Array(32), offset: 32 },
      ],
    }),
    /tensors a and b overlap/,
  ],
  [
    'huge dims',
    encodeGGUF({ tensors: [{ name: 't', dims: [2 ** 40, 2 ** 20], type: GGML.F32, data: new Uint8Array(4) }] }),
    /tensor t dims \[1099511627776,1048576\] are too large/,
  ],
  [
    'dims past the file',
    encodeGGUF({ tensors: [{ name: 't', dims: [2 ** 30, 4], type: GGML.F32, data: new Uint8Array(4) }] }),
    /tensor t data \[0, 17179869184\) runs past the end/,
  ],
];

for (const [what, bytes, message] of CORRUPTIONS) {
  test(`refuses a corrupt file: ${what}`, () => {
    const path = writeFile('broken.gguf', bytes);
    assert.throws(
      () => openGGUF(path),
      (err: Error) => {
        assert.match(err.message, /^broken\.gguf: /);
        assert.match(err.message, message);
        return true;
      },
    );
  });
}

// ---------------------------------------------------------------------------------------
// A tiny synthetic Llama: architecture checks, q/k layout, tied or untied output, F16/Q8_0

// Heads of 8: with heads of 4 llama.cpp's permutation only swaps two rows and is its own
// inverse, so a loader applying it the wrong way round would go unnoticed.
const TINY = { hidden: 16, heads: 2, kvHeads: 1, headDim: 8, ff: 32, layers: 2, vocab: ['<unk>', '<s>', '</s>', '▁', 'a', 'b', '▁a', 'ab', '▁ab'] };

/** Deterministic, distinct float32 weights for an HF [rows, columns] matrix. */
function weights(seed: number, count: number): Float32Array {
  return Float32Array.from({ length: count }, (_, i) => Math.fround(Math.sin(seed * 1000 + i) * 0.5));
}

/**
 * llama.cpp's converter permutation, written as the reshape it is: view [rows, cols] as
 * [heads, 2, rows / heads / 2, cols] and swap the two middle axes.
 */
function permuteLikeLlamaCpp(data: Float32Array, rows: number, heads: number): Float32Array {
  const columns = data.length / rows;
  const half = rows / heads / 2;
  const nested = Array.from({ length: heads }, (_, h) =>
    Array.from({ length: 2 }, (_, j) =>
      Array.from({ length: half }, (_, i) => data.subarray((h * 2 * half + j * half + i) * columns, (h * 2 * half + j * half + i + 1) * columns)),
    ),
  );
  const swapped = nested.map((head) => Array.from({ length: half }, (_, i) => [head[0][i], head[1][i]]));
  return Float32Array.from(swapped.flat(2).flatMap((row) => [...row]));
}

interface TinyLlama {
  spec: GGUFSpec;
  /** The HF-layout weights each tensor should read back as. */
  expected: Map<string, { shape: number[]; data: Float32Array }>;
}

function tinyLlama(): TinyLlama {
  const { hidden, heads, kvHeads, headDim, ff, layers, vocab } = TINY;
  const expected = new Map<string, { shape: number[]; data: Float32Array }>();
  const tensors: TensorSpec[] = [];
  let seed = 1;
  const add = (ggufName: string, hfName: string, shape: number[], rotaryHeads?: number) => {
    const data = weights(
      seed++,
      shape.reduce((a, b) => a * b, 1),
    );
    expected.set(hfName, { shape, data });
    const stored = rotaryHeads ? permuteLikeLlamaCpp(data, shape[0], rotaryHeads) : data;
    tensors.push({ name: ggufName, dims: [...shape].reverse(), type: GGML.F32, data: f32Bytes(stored) });
  };
  add('token_embd.weight', 'model.embed_tokens.weight', [vocab.length, hidden]);
  for (let l = 0; l < layers; l++) {
    const hf = `model.layers.${l}`;
    add(`blk.${l}.attn_norm.weight`, `${hf}.input_layernorm.weight`, [hidden]);
    add(`blk.${l}.attn_q.weight`, `${hf}.self_attn.q_proj.weight`, [heads * headDim, hidden], heads);
    add(`blk.${l}.attn_k.weight`, `${hf}.self_attn.k_proj.weight`, [kvHeads * headDim, hidden], kvHeads);
    add(`blk.${l}.attn_v.weight`, `${hf}.self_attn.v_proj.weight`, [kvHeads * headDim, hidden]);
    add(`blk.${l}.attn_output.weight`, `${hf}.self_attn.o_proj.weight`, [hidden, heads * headDim]);
    add(`blk.${l}.ffn_norm.weight`, `${hf}.post_attention_layernorm.weight`, [hidden]);
    add(`blk.${l}.ffn_gate.weight`, `${hf}.mlp.gate_proj.weight`, [ff, hidden]);
    add(`blk.${l}.ffn_up.weight`, `${hf}.mlp.up_proj.weight`, [ff, hidden]);
    add(`blk.${l}.ffn_down.weight`, `${hf}.mlp.down_proj.weight`, [hidden, ff]);
  }
  add('output_norm.weight', 'model.norm.weight', [hidden]);
  add('output.weight', 'lm_head.weight', [vocab.length, hidden]);
  const metadata: [string, TypedValue][] = [
    ['general.architecture', str('llama')],
    ['llama.context_length', u32(128)],
    ['llama.embedding_length', u32(hidden)],
    ['llama.feed_forward_length', u32(ff)],
    ['llama.block_count', u32(layers)],
    ['llama.attention.head_count', u32(heads)],
    ['llama.attention.head_count_kv', u32(kvHeads)],
    ['llama.attention.layer_norm_rms_epsilon', f32(1e-6)],
    ['llama.rope.freq_base', f32(500000)],
    ['tokenizer.ggml.model', str('llama')],
    ['tokenizer.ggml.tokens', strings(vocab)],
    ['tokenizer.ggml.scores', f32s(vocab.map((_, id) => -id))],
    ['tokenizer.ggml.token_type', i32s([2, 3, 3, 1, 1, 1, 1, 1, 1])],
    ['tokenizer.ggml.bos_token_id', u32(1)],
    ['tokenizer.ggml.eos_token_id', u32(2)],
    ['tokenizer.ggml.padding_token_id', u32(0)],
    ['tokenizer.ggml.add_eos_token', bool(true)],
  ];
  return { spec: { metadata, tensors }, expected };
}

function setMetadata(spec: GGUFSpec, key: string, value: TypedValue | undefined): GGUFSpec {
  const metadata = (spec.metadata ?? []).filter(([k]) => k !== key);
  return { ...spec, metadata: value ? [...metadata, [key, value]] : metadata };
}

test('tiny Llama: q/k rows are un-permuted, an untied lm_head is kept, config comes from the metadata', () => {
  const { spec, expected } = tinyLlama();
  const model = readGGUFLlama(writeGGUF('tiny.gguf', spec));
  try {
    assert.deepEqual([...model.tensorNames].sort(), [...expected.keys()].sort());
    for (const [name, want] of expected) {
      const got = model.readTensor(name);
      assert.deepEqual(got.shape, want.shape, name);
      assert.ok(bitsOf(got.data).equals(bitsOf(want.data)), `${name} differs`);
    }
    assert.deepEqual(model.config, {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      hidden_size: 16,
      intermediate_size: 32,
      num_hidden_layers: 2,
      num_attention_heads: 2,
      num_key_value_heads: 1,
      vocab_size: 9,
      max_position_embeddings: 128,
      rms_norm_eps: 1e-6,
      rope_theta: 500000,
      hidden_act: 'silu',
      tie_word_embeddings: false,
      bos_token_id: 1,
      eos_token_id: 2,
      pad_token_id: 0,
      torch_dtype: 'float32',
      attention_bias: false,
      mlp_bias: false,
    });
    assert.deepEqual(model.generationConfig, { bos_token_id: 1, eos_token_id: 2, pad_token_id: 0 });
    assert.equal(model.tokenizerConfig.pad_token, '<unk>');
    assert.throws(() => model.readTensor('model.layers.9.mlp.up_proj.weight'), /tiny\.gguf: no tensor maps to model\.layers\.9/);
  } finally {
    model.close();
  }
});

test('tiny Llama: the tokenizer adds bos and eos as the flags say, and merges by score', () => {
  const model = readGGUFLlama(writeGGUF('tiny.gguf', tinyLlama().spec));
  model.close();
  const model_ = model.tokenizerJson.model as { merges: string[][]; byte_fallback: boolean };
  // "▁a" (id 6) outranks "ab" (7), which outranks "▁ab" (8); "▁ab" splits two ways, left id order.
  assert.deepEqual(model_.merges, [
    ['▁', 'a'],
    ['a', 'b'],
    ['▁', 'ab'],
    ['▁a', 'b'],
  ]);
  assert.equal(model_.byte_fallback, false);
  const tokenizer = new Tokenizer(model.tokenizerJson, model.tokenizerConfig);
  assert.deepEqual(tokenizer.encode('ab a').ids, [1, 8, 6, 2]);
  assert.equal(tokenizer.decode([1, 8, 6, 2], { skip_special_tokens: true }), 'ab a');

  // Without llama.cpp's space prefix the first word has no "▁", and decoding strips nothing.
  const unprefixed = readGGUFLlama(writeGGUF('tiny.gguf', setMetadata(tinyLlama().spec, 'tokenizer.ggml.add_space_prefix', bool(false))));
  unprefixed.close();
  const plain = new Tokenizer(unprefixed.tokenizerJson, unprefixed.tokenizerConfig);
  assert.deepEqual(plain.encode('ab a').ids, [1, 7, 6, 2]);
  assert.equal(plain.decode([1, 6, 7], { skip_special_tokens: true }), ' aab');
});

test('tiny Llama: F16 and Q8_0 tensors load through the mapping', () => {
  const { spec, expected } = tinyLlama();
  const toHalf = (x: number) => (x === 0.5 ? 0x3800 : x === -0.25 ? 0xb400 : 0x3c00);
  const normValues = Array.from({ length: TINY.hidden }, (_, i) => [0.5, -0.25, 1][i % 3]);
  const downQuants = Int8Array.from({ length: TINY.hidden * TINY.ff }, (_, i) => ((i * 7) % 255) - 127);
  const downBlocks = new Uint8Array((downQuants.length / 32) * 34);
  for (let block = 0; block < downQuants.length / 32; block++) {
    new DataView(downBlocks.buffer).setUint16(block * 34, 0x2c00, true); // scale 1/16
    downBlocks.set(new Uint8Array(downQuants.buffer, block * 32, 32), block * 34 + 2);
  }
  const tensors = spec.tensors!.map((t) => {
    if (t.name === 'blk.0.attn_norm.weight') return { ...t, type: GGML.F16, data: new Uint8Array(Uint16Array.from(normValues, toHalf).buffer) };
    if (t.name === 'blk.1.ffn_down.weight') return { ...t, type: GGML.Q8_0, data: downBlocks };
    return t;
  });
  const model = readGGUFLlama(writeGGUF('mixed.gguf', { ...spec, tensors }));
  try {
    assert.deepEqual([...model.readTensor('model.layers.0.input_layernorm.weight').data], normValues);
    const down = model.readTensor('model.layers.1.mlp.down_proj.weight');
    assert.deepEqual(down.shape, expected.get('model.layers.1.mlp.down_proj.weight')!.shape);
    assert.deepEqual(
      [...down.data],
      [...downQuants].map((q) => q / 16),
    );
  } finally {
    model.close();
  }
});

test('tiny Llama: head_dim, linear rope scaling and attention biases are carried over', () => {
  const { spec } = tinyLlama();
  // Heads of 12 (not hidden / heads = 8): q is [24, 16], k and v [12, 16], o [16, 24].
  const rowsOf: Record<string, number> = { attn_q: 24, attn_k: 12, attn_v: 12, attn_output: 16 };
  const resized = spec.tensors!.map((t) => {
    const [, , part, kind] = t.name.split('.');
    if (kind !== 'weight' || !(part in rowsOf)) return t;
    const dims = part === 'attn_output' ? [24, 16] : [16, rowsOf[part]];
    return { ...t, dims, data: f32Bytes(weights(rowsOf[part], dims[0] * dims[1])) };
  });
  const biases = [0, 1].flatMap((l) =>
    Object.entries(rowsOf).map(([part, rows]) => ({
      name: `blk.${l}.${part}.bias`,
      dims: [rows],
      type: GGML.F32,
      data: f32Bytes(Array.from({ length: rows }, (_, i) => i)),
    })),
  );
  let changed = setMetadata({ ...spec, tensors: [...resized, ...biases] }, 'llama.attention.key_length', u32(12));
  changed = setMetadata(changed, 'llama.rope.scaling.type', str('linear'));
  changed = setMetadata(changed, 'llama.rope.scaling.factor', f32(4));
  const model = readGGUFLlama(writeGGUF('biased.gguf', changed));
  try {
    assert.equal(model.config.head_dim, 12);
    assert.deepEqual(model.config.rope_scaling, { rope_type: 'linear', factor: 4 });
    assert.equal(model.config.attention_bias, true);
    // A bias is permuted like a one-column weight: k has one 12-wide head whose interleaved
    // pairs (0,1) (2,3) ... become halves (0,2,...,10) (1,3,...,11). v is not permuted.
    assert.deepEqual([...model.readTensor('model.layers.0.self_attn.k_proj.bias').data], [0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11]);
    assert.deepEqual([...model.readTensor('model.layers.1.self_attn.v_proj.bias').data], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    assert.deepEqual(model.readTensor('model.layers.1.self_attn.o_proj.weight').shape, [16, 24]);
  } finally {
    model.close();
  }
});

test('tiny Llama: what transformers Llama cannot represent is refused by name', () => {
  const { spec } = tinyLlama();
  const refusals: [string, GGUFSpec, RegExp][] = [
    ['architecture', setMetadata(spec, 'general.architecture', str('qwen2')), /general\.architecture is "qwen2"; only "llama" is supported/],
    ['no architecture', setMetadata(spec, 'general.architecture', undefined), /metadata key general\.architecture is missing/],
    ['tokenizer model', setMetadata(spec, 'tokenizer.ggml.model', str('gpt2')), /tokenizer\.ggml\.model is "gpt2"; only "llama"/],
    ['whitespace collapsing', setMetadata(spec, 'tokenizer.ggml.remove_extra_whitespaces', bool(true)), /tokenizer\.ggml\.remove_extra_whitespaces is set/],
    ['rope scaling', setMetadata(spec, 'llama.rope.scaling.type', str('yarn')), /llama\.rope\.scaling\.type "yarn" is not supported/],
    ['partial rotary', setMetadata(spec, 'llama.rope.dimension_count', u32(2)), /llama\.rope\.dimension_count 2 rotates only part/],
    ['experts', setMetadata(spec, 'llama.expert_count', u32(8)), /llama\.expert_count is 8/],
    ['wrong type', setMetadata(spec, 'llama.block_count', str('two')), /metadata key llama\.block_count should be an integer, got "two"/],
    [
      'unknown tensor',
      { ...spec, tensors: [...spec.tensors!, { name: 'blk.0.attn_sinks.weight', dims: [2], type: GGML.F32, data: f32Bytes([0, 0]) }] },
      /tensor blk\.0\.attn_sinks\.weight has no Hugging Face Llama equivalent/,
    ],
    [
      'layer past block_count',
      { ...spec, tensors: [...spec.tensors!, { name: 'blk.2.attn_norm.weight', dims: [16], type: GGML.F32, data: f32Bytes(new Array(16).fill(1)) }] },
      /tensor blk\.2\.attn_norm\.weight has no Hugging Face Llama equivalent/,
    ],
    [
      'rope_freqs',
      { ...spec, tensors: [...spec.tensors!, { name: 'rope_freqs.weight', dims: [2], type: GGML.F32, data: f32Bytes([1, 1]) }] },
      /rope_freqs\.weight has no Hugging Face Llama equivalent \(Llama 3\.1-style/,
    ],
    ['missing tensor', { ...spec, tensors: spec.tensors!.filter((t) => t.name !== 'blk.1.ffn_up.weight') }, /tensor blk\.1\.ffn_up\.weight is missing/],
    [
      'wrong shape',
      setMetadata(spec, 'llama.attention.head_count_kv', u32(2)),
      /tensor blk\.0\.attn_k\.weight has shape \[8,16\] but the llama\.\* metadata implies \[16,16\]/,
    ],
    [
      'token count',
      setMetadata(spec, 'tokenizer.ggml.tokens', strings([...TINY.vocab, 'extra'])),
      /tokenizer\.ggml\.scores has 9 entries but tokenizer\.ggml\.tokens has 10/,
    ],
    [
      'duplicate token',
      setMetadata(spec, 'tokenizer.ggml.tokens', strings([...TINY.vocab.slice(0, 8), 'ab'])),
      /token "ab" appears twice in tokenizer\.ggml\.tokens \(ids 7 and 8\)/,
    ],
  ];
  for (const [what, changed, message] of refusals) {
    assert.throws(
      () => readGGUFLlama(writeGGUF('refused.gguf', changed)).close(),
      (err: Error) => {
        assert.match(err.message, /^refused\.gguf: /, what);
        assert.match(err.message, message, what);
        return true;
      },
    );
  }
});
