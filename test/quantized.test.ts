// Quantized weights kept quantized (issue 24): every ggml block format we load, decoded from
// hand-made blocks against values computed here by formula; the MatMulNBits graphs against
// the float32 graphs on the same values; stories260K re-quantized (Q8_0, Q4_0, Q5_0) served
// quantized: close to its float32 original, greedy-equal to its own dequantization, and to
// llama.cpp on the same file when node-llama-cpp is installed (it is no dependency of ours:
// NODE_LLAMA_CPP names its package folder).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { openGGUF } from '../src/formats/gguf.ts';
import { GGML_TYPE, ggmlTypeLayout } from '../src/formats/ggml.ts';
import { dequantizeNBits, quantizeInt8 } from '../src/formats/nbits.ts';
import { loadModel } from '../src/formats/checkpoint.ts';
import { convertedQuantizedWeightFile } from '../src/formats/weight-file.ts';
import { Graph } from '../src/graph/ir.ts';
import { gatherWeightRows, timesWeight } from '../src/graph/quantized.ts';
import { declareParams } from '../src/model/family.ts';
import { createSession, f32, i64 } from '../src/engine/ort.ts';
import { Sampler } from '../src/engine/sampler.ts';
import { requantizeGGUF } from '../bench/ggml-quantize.ts';
import { encodeGGUF } from './helpers/gguf-writer.ts';
import { scratch } from './helpers/scratch.ts';

const STORIES = join(import.meta.dirname, 'fixtures', 'stories260K', 'stories260K.gguf');

// Scales chosen so every value is a short binary fraction: the formulas below are exact in
// float32, so decoded values must match them bit for bit.
const D = 0.5; // f16 0x3800
const DMIN = 0.25; // f16 0x3400
const half = (v: number) => ({ 0.5: [0x00, 0x38], 0.25: [0x00, 0x34], 2: [0x00, 0x40] })[v]!;

interface HandBlock {
  type: number;
  bytes: number[];
  /** The block's values, by the format's formula. */
  values: number[];
}

/** q(i): a code pattern of `bits` bits that differs between neighbours and sub-blocks. */
const pattern = (bits: number) => (i: number) => (i * 7 + (i >> 4) * 3) % (1 << bits);

function q4_0(): HandBlock {
  const q = pattern(4);
  const bytes = [...half(D), ...Array.from({ length: 16 }, (_, j) => q(j) | (q(j + 16) << 4))];
  return { type: GGML_TYPE.Q4_0, bytes, values: Array.from({ length: 32 }, (_, i) => D * (q(i) - 8)) };
}

function q4_1(): HandBlock {
  const q = pattern(4);
  const m = -1.5;
  const bytes = [...half(D), 0x00, 0xbe /* -1.5 */, ...Array.from({ length: 16 }, (_, j) => q(j) | (q(j + 16) << 4))];
  return { type: GGML_TYPE.Q4_1, bytes, values: Array.from({ length: 32 }, (_, i) => D * q(i) + m) };
}

function fiveBitBytes(q: (i: number) => number): number[] {
  let high = 0;
  for (let j = 0; j < 32; j++) high |= (q(j) >> 4) << j;
  const h = [high & 0xff, (high >>> 8) & 0xff, (high >>> 16) & 0xff, (high >>> 24) & 0xff];
  return [...h, ...Array.from({ length: 16 }, (_, j) => (q(j) & 15) | ((q(j + 16) & 15) << 4))];
}

function q5_0(): HandBlock {
  const q = pattern(5);
  return { type: GGML_TYPE.Q5_0, bytes: [...half(D), ...fiveBitBytes(q)], values: Array.from({ length: 32 }, (_, i) => D * (q(i) - 16)) };
}

function q5_1(): HandBlock {
  const q = pattern(5);
  return { type: GGML_TYPE.Q5_1, bytes: [...half(D), ...half(DMIN), ...fiveBitBytes(q)], values: Array.from({ length: 32 }, (_, i) => D * q(i) + DMIN) };
}

function q8_0(): HandBlock {
  const q = (i: number) => ((i * 37) % 255) - 127;
  return {
    type: GGML_TYPE.Q8_0,
    bytes: [...half(2), ...Array.from({ length: 32 }, (_, j) => q(j) & 0xff)],
    values: Array.from({ length: 32 }, (_, i) => 2 * q(i)),
  };
}

/** The 12 bytes of eight 6-bit scales and mins, packed as K-quants pack them. */
function kScales(sc: number[], m: number[]): number[] {
  const out = new Array<number>(12).fill(0);
  for (let j = 0; j < 4; j++) {
    out[j] = sc[j]! | ((sc[j + 4]! >> 4) << 6);
    out[j + 4] = m[j]! | ((m[j + 4]! >> 4) << 6);
    out[j + 8] = (sc[j + 4]! & 15) | ((m[j + 4]! & 15) << 4);
  }
  return out;
}

const SC = [1, 5, 17, 33, 63, 48, 20, 2];
const MIN = [0, 3, 16, 40, 7, 63, 31, 1];

function q4_K(): HandBlock {
  const q = pattern(4);
  // Value i sits in sub-block s = i / 32; chunk c = s / 2 stores it in byte 32c + i % 32, low nibble for even s.
  const nibbles = Array.from({ length: 128 }, (_, b) => {
    const c = b >> 5;
    const l = b & 31;
    return q(64 * c + l) | (q(64 * c + 32 + l) << 4);
  });
  const bytes = [...half(D), ...half(DMIN), ...kScales(SC, MIN), ...nibbles];
  return { type: GGML_TYPE.Q4_K, bytes, values: Array.from({ length: 256 }, (_, i) => D * SC[i >> 5]! * q(i) - DMIN * MIN[i >> 5]!) };
}

function q5_K(): HandBlock {
  const q = pattern(5);
  const high = Array.from({ length: 32 }, (_, l) => {
    let byte = 0;
    for (let s = 0; s < 8; s++) byte |= (q(32 * s + l) >> 4) << s;
    return byte;
  });
  const nibbles = Array.from({ length: 128 }, (_, b) => {
    const c = b >> 5;
    const l = b & 31;
    return (q(64 * c + l) & 15) | ((q(64 * c + 32 + l) & 15) << 4);
  });
  const bytes = [...half(D), ...half(DMIN), ...kScales(SC, MIN), ...high, ...nibbles];
  return { type: GGML_TYPE.Q5_K, bytes, values: Array.from({ length: 256 }, (_, i) => D * SC[i >> 5]! * q(i) - DMIN * MIN[i >> 5]!) };
}

function q6_K(): HandBlock {
  const q = pattern(6);
  const scales = Array.from({ length: 16 }, (_, s) => (s % 2 ? -1 : 1) * (s * 8 + 1));
  const ql = new Array<number>(128).fill(0);
  const qh = new Array<number>(64).fill(0);
  // Value i: half n = i / 128, r = i % 128, quarter k = r / 32, l = r % 32. Its low nibble is in
  // ql[64n + l + 32 (k odd)], high nibble when k >= 2; its top two bits in qh[32n + l] at bit 2k.
  for (let i = 0; i < 256; i++) {
    const n = i >> 7;
    const k = (i & 127) >> 5;
    const l = i & 31;
    const lowAt = 64 * n + l + (k & 1 ? 32 : 0);
    ql[lowAt] |= (q(i) & 15) << (k >= 2 ? 4 : 0);
    qh[32 * n + l] |= (q(i) >> 4) << (2 * k);
  }
  const bytes = [...ql, ...qh, ...scales.map((s) => s & 0xff), ...half(D)];
  return { type: GGML_TYPE.Q6_K, bytes, values: Array.from({ length: 256 }, (_, i) => D * scales[i >> 4]! * (q(i) - 32)) };
}

const HAND_BLOCKS = { Q4_0: q4_0, Q4_1: q4_1, Q5_0: q5_0, Q5_1: q5_1, Q8_0: q8_0, Q4_K: q4_K, Q5_K: q5_K, Q6_K: q6_K };

for (const [name, make] of Object.entries(HAND_BLOCKS)) {
  test(`${name}: a hand-made block decodes to the format's formula, as float32 and as MatMulNBits blocks`, async () => {
    const block = make();
    const { blockSize, blockBytes } = ggmlTypeLayout(block.type)!;
    assert.equal(block.bytes.length, blockBytes);
    // Two rows, the second the block again: rows must not bleed into each other.
    const data = Uint8Array.from([...block.bytes, ...block.bytes]);
    const path = join(await scratch(), 'block.gguf');
    await import('node:fs/promises').then((fs) => fs.writeFile(path, encodeGGUF({ tensors: [{ name: 'w', dims: [blockSize, 2], type: block.type, data }] })));
    const file = openGGUF(path);
    const values = file.readTensor('w');
    const nbits = file.readTensorNBits('w');
    file.close();
    // + 0: a zero may come out as -0 in ggml's order of operations and +0 in ours.
    const plain = (a: ArrayLike<number>) => Array.from(a, (v) => v + 0);
    const expected = plain([...block.values, ...block.values].map(Math.fround));
    assert.deepEqual(plain(values), expected);
    assert.deepEqual(plain(dequantizeNBits(nbits)), expected);
    assert.deepEqual([nbits.rows, nbits.cols], [2, blockSize]);
  });
}

test('int8 blocks: within half a step of the values, and exact on a value that is a multiple of its step', () => {
  const values = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i) * (i < 32 ? 1 : 0.01));
  const m = quantizeInt8(values, 2, 32);
  const back = dequantizeNBits(m);
  for (let i = 0; i < 64; i++) assert.ok(Math.abs(back[i]! - values[i]!) <= m.scales[i >> 5]! / 2 + 1e-9, `value ${i}`);
  const exact = Float32Array.from({ length: 32 }, (_, i) => (i - 16) / 127);
  exact[0] = -1;
  assert.deepEqual(
    [...dequantizeNBits(quantizeInt8(exact, 1, 32))].slice(1, 4),
    [...exact].slice(1, 4).map((v) => Math.fround(Math.fround(1 / 127) * Math.round(v * 127))),
  );
});

test('MatMulNBits and the quantized row gather equal float32 Gemm and Gather on the dequantized values (4-bit with offsets, 8-bit blocks of 16)', async () => {
  const dir = await scratch();
  const source = join(dir, 'source');
  await import('node:fs/promises').then((fs) => fs.writeFile(source, 'x'));
  const q4k = q4_K();
  const q6k = q6_K();
  const rows = 3;
  const raw = (b: HandBlock) => Uint8Array.from(Array.from({ length: rows }, () => b.bytes).flat());
  const { toNBits } = await import('../src/formats/ggml.ts');
  const matrices = { a: toNBits(q4k.type, raw(q4k), rows, 256), b: toNBits(q6k.type, raw(q6k), rows, 256) };
  const layout = new Map(
    Object.entries(matrices).map(([n, m]) => [
      n,
      { shape: [rows, 256], nbits: { bits: m.bits, blockSize: m.blockSize, rows, cols: 256, offsets: m.offsets !== undefined } },
    ]),
  );
  process.env.TTRL_CACHE_DIR = dir;
  const file = await convertedQuantizedWeightFile([source], 'test', layout, async (n) => {
    const m = matrices[n as 'a' | 'b'];
    return { nbits: m, values: dequantizeNBits(m) };
  });
  const specs = ['a', 'b'].map((name) => ({ name, shape: [rows, 256], decay: true, init: 'zeros' as const }));
  const run = async (quantized: boolean) => {
    const g = new Graph('t');
    const p = declareParams(g, specs, 'float32', '', file, quantized);
    const x = g.input('x', 'float32', [2, 256]);
    const ids = g.input('ids', 'int64', [2]);
    g.output('ya', timesWeight(x, p.a!, true));
    g.output('yb', timesWeight(x, p.b!, true));
    g.output('rows', gatherWeightRows(p.a!, ids));
    const s = await createSession(g, { externalDir: file.dir });
    const xs = Float32Array.from({ length: 512 }, (_, i) => Math.cos(i) * 0.1);
    const out = await s.run({ x: f32(xs, [2, 256]), ids: i64([2, 0], [2]) });
    return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.data as Float32Array]));
  };
  const [q, f] = [await run(true), await run(false)];
  assert.deepEqual([...q.rows!], [...f.rows!]); // dequantized rows are exact
  for (const y of ['ya', 'yb']) {
    const scale = Math.max(...f[y]!.map(Math.abs));
    // int8 activations (accuracy level 4) cost a relative error of about 1/127 of the largest input.
    for (let i = 0; i < f[y]!.length; i++) assert.ok(Math.abs(q[y]![i]! - f[y]![i]!) <= 0.02 * scale, `${y}[${i}]: ${q[y]![i]} vs ${f[y]![i]}`);
  }
  delete process.env.TTRL_CACHE_DIR;
});

// ---------------------------------------------------------------------------------------
// stories260K re-quantized

const FORMATS = { Q8_0: GGML_TYPE.Q8_0, Q4_0: GGML_TYPE.Q4_0, Q5_0: GGML_TYPE.Q5_0 };

/** stories260K with every matrix whose rows fill 32-value blocks in `type` (ffn_down's rows of 172 stay F32, as llama.cpp leaves them). */
async function requantizedStories(type: number, dir: string): Promise<string> {
  const out = join(dir, `stories-${type}.gguf`);
  if (!existsSync(out)) requantizeGGUF(STORIES, out, (_name, dims) => (dims.length === 2 && dims[0]! % 32 === 0 ? type : GGML_TYPE.F32));
  return out;
}

const PROMPT = 'Once upon a time';
const greedy = { samplesPerPrompt: 1, maxNewTokens: 24, seed: 1, temperature: 0, stopTokens: [] as number[], padToken: 0 };

test('stories260K re-quantized: served in its blocks, greedy-equal to its float32 dequantization and close to the F32 original', async () => {
  const dir = await scratch();
  process.env.TTRL_CACHE_DIR = dir;
  try {
    const original = openGGUF(STORIES);
    const reference = await loadModel(STORIES);
    const prompt = reference.tokenizer.encode(PROMPT);
    for (const [name, type] of Object.entries(FORMATS)) {
      const path = await requantizedStories(type, dir);
      // Every re-quantized value within a step of the F32 original (the step: 1/127, 1/8, 1/16 of
      // the block's largest value; half a step but where Q4_0/Q5_0's one-sided range clips).
      const f = openGGUF(path);
      const q = f.readTensor('blk.0.attn_q.weight');
      const x = original.readTensor('blk.0.attn_q.weight');
      const levels = { Q8_0: 127, Q4_0: 8, Q5_0: 16 }[name]!;
      for (let b = 0; b < x.length / 32; b++) {
        const block = x.subarray(32 * b, 32 * b + 32);
        const step = Math.max(...block.map(Math.abs)) / levels;
        for (let j = 0; j < 32; j++) assert.ok(Math.abs(q[32 * b + j]! - block[j]!) <= step * 1.001, `${name} value ${32 * b + j}`);
      }
      f.close();
      const quantized = await loadModel(path);
      const float = await loadModel(path, { quantize: 'float32' });
      assert.ok(quantized.weights instanceof Map === false && Object.keys((quantized.weights as { quantized?: object }).quantized ?? {}).length === 31);
      const outs: number[][] = [];
      const lps: number[][] = [];
      for (const m of [quantized, float]) {
        const s = await Sampler.create({ config: m.config, weights: m.weights });
        const c = (await s.generate([prompt], greedy)).completions[0]![0]!;
        outs.push(c.tokens);
        lps.push(c.logprobs);
        await s.close();
      }
      assert.deepEqual(outs[0], outs[1], `${name}: quantized and float32 greedy outputs differ`);
      // The log-prob gap of the sampler's kernels (int8 activations) against float32 on the same values.
      const gap = Math.max(...lps[0]!.map((v, i) => Math.abs(v - lps[1]![i]!)));
      assert.ok(gap < 0.05, `${name}: greedy log-probs differ by ${gap}`);
    }
    original.close();
  } finally {
    delete process.env.TTRL_CACHE_DIR;
  }
});

test('--quantize int8 of a float checkpoint: stories260K (HF directory) served in int8 blocks, the trainer reading their dequantization', async () => {
  const dir = await scratch();
  process.env.TTRL_CACHE_DIR = dir;
  try {
    const hf = join(import.meta.dirname, 'fixtures', 'stories260K', 'hf');
    const float = await loadModel(hf);
    const int8 = await loadModel(hf, { quantize: 'int8' });
    const file = int8.weights as { quantized?: Record<string, unknown>; tensors: Record<string, unknown> };
    assert.ok(file.quantized?.['model.layers.0.self_attn.q_proj.weight'] && file.quantized['model.embed_tokens.weight']);
    assert.equal(file.quantized['model.layers.0.mlp.down_proj.weight'], undefined); // rows of 172 fill no 32-value blocks
    const prompt = float.tokenizer.encode(PROMPT);
    const outs: number[][] = [];
    for (const m of [float, int8]) {
      const s = await Sampler.create({ config: m.config, weights: m.weights });
      outs.push((await s.generate([prompt], greedy)).completions[0]![0]!.tokens);
      await s.close();
    }
    assert.deepEqual(outs[1], outs[0]);
  } finally {
    delete process.env.TTRL_CACHE_DIR;
  }
});

/** node-llama-cpp's package folder (NODE_LLAMA_CPP), or undefined when it is not installed. */
function nodeLlamaCpp(): string | undefined {
  const dir = process.env.NODE_LLAMA_CPP;
  return dir && existsSync(join(dir, 'dist/index.js')) ? dir : undefined;
}

test('greedy output equals llama.cpp on the same quantized file (node-llama-cpp as the reference)', async (t) => {
  const pkg = nodeLlamaCpp();
  if (!pkg) {
    t.skip('node-llama-cpp is not installed (it is no dependency of this project): set NODE_LLAMA_CPP to its package folder to run this check');
    return;
  }
  const { getLlama, LlamaLogLevel } = await import(pathToFileURL(join(pkg, 'dist/index.js')).href);
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  const dir = await scratch();
  process.env.TTRL_CACHE_DIR = dir;
  try {
    for (const [name, type] of Object.entries(FORMATS)) {
      const path = await requantizedStories(type, dir);
      const ours = await loadModel(path);
      const prompt = ours.tokenizer.encode(PROMPT);
      const s = await Sampler.create({ config: ours.config, weights: ours.weights });
      const mine = (await s.generate([prompt], { ...greedy, maxNewTokens: 16 })).completions[0]![0]!.tokens;
      await s.close();
      const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
      // One thread: with several, ggml's spinning threads slow to seconds per token on a busy machine.
      const context = await model.createContext({ contextSize: 128, threads: { ideal: 1, min: 1 } });
      const sequence = context.getSequence();
      const theirs: number[] = [];
      for await (const token of sequence.evaluate(prompt, { temperature: 0 })) {
        theirs.push(token);
        if (theirs.length === 16) break;
      }
      await context.dispose();
      await model.dispose();
      assert.deepEqual(
        mine,
        theirs,
        `${name}: ours ${JSON.stringify(ours.tokenizer.decode(mine))}, llama.cpp's ${JSON.stringify(ours.tokenizer.decode(theirs))}`,
      );
    }
  } finally {
    delete process.env.TTRL_CACHE_DIR;
  }
});
