// Model directories: round trip, and every way a directory can be wrong.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inMemory, loadModel, saveModel, validateConfig, weightsToTensors } from '../src/formats/checkpoint.ts';
import { initWeights } from '../src/model/family.ts';
import { paramSpecsOf } from '../src/model/families.ts';
import type { GPTConfig } from '../src/model/gpt.ts';
import { ARITHMETIC_CHARS, CharTokenizer } from '../src/tokenizers/tokenizer.ts';
import { writeSafetensors } from '../src/formats/safetensors.ts';
import { Rng } from '../src/util/rng.ts';

const tokenizer = new CharTokenizer(ARITHMETIC_CHARS);
const config: GPTConfig = { family: 'gpt', vocabSize: 17, contextLength: 16, dModel: 8, nLayers: 1, nHeads: 2, tiedHead: false, padTokenId: 16 };

test('a saved model loads back identically', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ttrl-ckpt-'));
  try {
    const weights = initWeights(paramSpecsOf(config), new Rng(1));
    await saveModel(dir, { config, tokenizer, weights, metadata: { step: '7' } });
    const m = await loadModel(dir);
    assert.deepEqual(m.config, config);
    assert.deepEqual(m.metadata, { step: '7' });
    assert.equal(m.tokenizer.decode(m.tokenizer.encode('12+3=')), '12+3=');
    for (const [k, v] of weights) assert.deepEqual((await inMemory(m.weights)).get(k), v);
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('bad model directories are refused with a message that says what is wrong', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ttrl-ckpt-'));
  try {
    await assert.rejects(loadModel(dir), /cannot read model config/);
    const weights = initWeights(paramSpecsOf(config), new Rng(1));
    await saveModel(dir, { config, tokenizer, weights, metadata: {} });
    const cfgPath = join(dir, 'config.json');
    const good = await readFile(cfgPath, 'utf8');
    await writeFile(cfgPath, JSON.stringify({ ...JSON.parse(good), vocabSize: 20 }));
    await assert.rejects(loadModel(dir), /tokenizer has 17 tokens but config.vocabSize is 20/);
    await writeFile(cfgPath, good);
    const broken = weightsToTensors(config, weights);
    broken.delete('wpe');
    await writeSafetensors(join(dir, 'model.safetensors'), broken);
    await assert.rejects(loadModel(dir), /missing weight wpe/);
    const reshaped = weightsToTensors(config, weights);
    reshaped.set('wte', { dtype: 'F32', shape: [8, 17], data: weights.get('wte')! });
    await writeSafetensors(join(dir, 'model.safetensors'), reshaped);
    await assert.rejects(loadModel(dir), /wte has shape \[8,17\], expected \[17,8\]/);
  } finally {
    await rm(dir, { recursive: true });
  }
  assert.throws(() => validateConfig({ ...config, nHeads: 3 }), /not divisible/);
  assert.throws(() => validateConfig({ ...config, dModel: -1 }), /dModel must be a positive integer/);
  assert.throws(() => validateConfig({ ...config, architecture: 'llama' }), /unsupported architecture/);
  assert.throws(() => validateConfig({ ...config, padTokenId: 17 }), /padTokenId/);
});
