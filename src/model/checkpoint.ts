// A model directory: config.json (architecture + GPTConfig), tokenizer.json and
// model.safetensors (float32 weights by GPT-2 name). Loading validates every weight.
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { paramSpecs, type GPTConfig, type Weights } from './gpt.ts';
import { loadTokenizer, saveTokenizer, type Tokenizer } from './tokenizer.ts';
import { readSafetensors, writeSafetensors, type NamedTensor } from './safetensors.ts';
import { writeFileAtomic } from '../util/atomic-write.ts';

export interface Model {
  config: GPTConfig;
  tokenizer: Tokenizer;
  weights: Weights;
  /** Free-form provenance stored in the safetensors metadata (e.g. training step). */
  metadata: Record<string, string>;
}

export const CONFIG_FILE = 'config.json';
export const WEIGHTS_FILE = 'model.safetensors';

export function validateConfig(raw: unknown): GPTConfig {
  const c = raw as Record<string, unknown>;
  if (!c || typeof c !== 'object') throw new Error('config.json: not an object');
  if (c.architecture !== undefined && c.architecture !== 'gpt') throw new Error(`config.json: unsupported architecture ${JSON.stringify(c.architecture)}`);
  const int = (k: string) => {
    const v = c[k];
    if (!Number.isInteger(v) || (v as number) <= 0) throw new Error(`config.json: ${k} must be a positive integer, got ${JSON.stringify(v)}`);
    return v as number;
  };
  const config: GPTConfig = {
    vocabSize: int('vocabSize'),
    contextLength: int('contextLength'),
    dModel: int('dModel'),
    nLayers: int('nLayers'),
    nHeads: int('nHeads'),
    tiedHead: c.tiedHead === true,
  };
  if (c.padTokenId !== undefined) {
    if (!Number.isInteger(c.padTokenId) || (c.padTokenId as number) < 0 || (c.padTokenId as number) >= config.vocabSize)
      throw new Error(`config.json: padTokenId must be a token id below vocabSize, got ${JSON.stringify(c.padTokenId)}`);
    config.padTokenId = c.padTokenId as number;
  }
  if (config.dModel % config.nHeads) throw new Error(`config.json: dModel ${config.dModel} is not divisible by nHeads ${config.nHeads}`);
  return config;
}

export async function loadModel(dir: string): Promise<Model> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(join(dir, CONFIG_FILE), 'utf8'));
  } catch (e) {
    throw new Error(`cannot read model config ${join(dir, CONFIG_FILE)}: ${(e as Error).message}`);
  }
  const config = validateConfig(raw);
  const tokenizer = await loadTokenizer(dir);
  if (tokenizer.vocabSize !== config.vocabSize)
    throw new Error(`${dir}: tokenizer has ${tokenizer.vocabSize} tokens but config.vocabSize is ${config.vocabSize}`);
  const { tensors, metadata } = await readSafetensors(join(dir, WEIGHTS_FILE));
  const weights: Weights = new Map();
  for (const s of paramSpecs(config)) {
    const t = tensors.get(s.name);
    if (!t) throw new Error(`${dir}/${WEIGHTS_FILE}: missing weight ${s.name}`);
    if (t.dtype !== 'F32') throw new Error(`${dir}/${WEIGHTS_FILE}: ${s.name} is ${t.dtype}, expected F32`);
    if (t.shape.join() !== s.shape.join()) throw new Error(`${dir}/${WEIGHTS_FILE}: ${s.name} has shape [${t.shape}], expected [${s.shape}]`);
    weights.set(s.name, t.data as Float32Array);
  }
  return { config, tokenizer, weights, metadata };
}

export async function saveModel(dir: string, m: Model): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, CONFIG_FILE), JSON.stringify({ architecture: 'gpt', ...m.config }, null, 2) + '\n');
  await saveTokenizer(dir, m.tokenizer);
  await writeSafetensors(join(dir, WEIGHTS_FILE), weightsToTensors(m.config, m.weights), m.metadata);
}

export function weightsToTensors(c: GPTConfig, w: Weights): Map<string, NamedTensor> {
  return new Map(paramSpecs(c).map((s) => [s.name, { dtype: 'F32', shape: s.shape, data: w.get(s.name)! }]));
}
