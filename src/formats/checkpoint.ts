// Models on disk, in three forms, one entry point:
//  - our own directory (config.json with architecture "gpt", tokenizer.json, float32
//    model.safetensors by GPT-2 name): the shipped model; read into memory, it is small;
//  - a Hugging Face directory of the Llama family (hf.ts);
//  - a GGUF file of llama architecture (gguf-llama.ts), converted once into the cache.
// Llama-family weights stay in files every worker maps (weight-file.ts).
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { checkWeights, paramCount, type Weights } from '../model/family.ts';
import { dimsOf, paramSpecsOf, type ModelConfig } from '../model/families.ts';
import type { GPTConfig } from '../model/gpt.ts';
import { llama } from '../model/llama.ts';
import { loadTokenizer, saveTokenizer, type Tokenizer } from '../tokenizers/tokenizer.ts';
import { readSafetensors, writeSafetensors, type NamedTensor } from './safetensors.ts';
import { fromHFFiles, llamaConfigFromHF, loadHFDirectory, saveHFDirectory, type HFFiles } from './hf.ts';
import { readGGUFLlama } from './gguf-llama.ts';
import { convertedQuantizedWeightFile, convertedWeightFile, isWeightFile, readWeights, type ConvertedLayout, type WeightSource } from './weight-file.ts';
import { nbitsGeometry } from './ggml.ts';
import { dequantizeNBits } from './nbits.ts';
import { int8Layout, int8Quantizable, int8Weight, quantizeWeightsInt8, type QuantizeMode } from './quantize.ts';
import { writeFileAtomic } from '../util/atomic-write.ts';

export interface Model {
  config: ModelConfig;
  tokenizer: Tokenizer;
  weights: WeightSource;
  /** Free-form provenance stored in the safetensors metadata (e.g. training step). */
  metadata: Record<string, string>;
  /** Llama family: the Hugging Face files besides the weights, written back on save. */
  hf?: HFFiles;
}

export const CONFIG_FILE = 'config.json';
export const WEIGHTS_FILE = 'model.safetensors';

/** Our own config.json (architecture "gpt"). */
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
    family: 'gpt',
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

export interface LoadOptions {
  /** How the weights are served (formats/quantize.ts): default 'file', a quantized GGUF's blocks kept as they are. */
  quantize?: QuantizeMode;
}

/** A model directory (ours or Hugging Face's) or a .gguf file. */
export async function loadModel(path: string, o: LoadOptions = {}): Promise<Model> {
  const quantize = o.quantize ?? 'file';
  let isFile: boolean;
  try {
    isFile = (await stat(path)).isFile();
  } catch (e) {
    throw new Error(`cannot read model ${path}: ${(e as Error).message}`);
  }
  if (isFile) return loadGGUF(path, quantize);
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(await readFile(join(path, CONFIG_FILE), 'utf8'));
  } catch (e) {
    throw new Error(`cannot read model config ${join(path, CONFIG_FILE)}: ${(e as Error).message}`);
  }
  // Hugging Face configs name a model_type; ours name architecture "gpt".
  const m: Model =
    raw && typeof raw === 'object' && 'model_type' in raw && !('architecture' in raw)
      ? { ...(await loadHFDirectory(path)), metadata: {} }
      : await loadGPT(path, validateConfig(raw));
  if (quantize !== 'int8') return m;
  const w = m.weights;
  const sources = isWeightFile(w) ? [...new Set(Object.values(w.tensors).map((t) => join(w.dir, t.file)))] : [join(path, WEIGHTS_FILE)];
  return { ...m, weights: await quantizeWeightsInt8(m.config, m.weights, sources) };
}

async function loadGPT(dir: string, config: GPTConfig): Promise<Model> {
  const tokenizer = await loadTokenizer(dir);
  if (tokenizer.vocabSize !== config.vocabSize)
    throw new Error(`${dir}: tokenizer has ${tokenizer.vocabSize} tokens but config.vocabSize is ${config.vocabSize}`);
  const { tensors, metadata } = await readSafetensors(join(dir, WEIGHTS_FILE));
  const weights: Weights = new Map();
  for (const s of paramSpecsOf(config)) {
    const t = tensors.get(s.name);
    if (!t) throw new Error(`${dir}/${WEIGHTS_FILE}: missing weight ${s.name}`);
    if (t.dtype !== 'F32') throw new Error(`${dir}/${WEIGHTS_FILE}: ${s.name} is ${t.dtype}, expected F32`);
    if (t.shape.join() !== s.shape.join()) throw new Error(`${dir}/${WEIGHTS_FILE}: ${s.name} has shape [${t.shape}], expected [${s.shape}]`);
    weights.set(s.name, t.data as Float32Array);
  }
  return { config, tokenizer, weights, metadata };
}

/**
 * A llama-architecture GGUF file: its tokenizer and config as Hugging Face files, its weights
 * converted once into the cache: quantized tensors as MatMulNBits blocks beside their float32
 * values (unless `quantize` is 'float32'), float tensors as float32 (int8 blocks too with 'int8').
 */
async function loadGGUF(path: string, quantize: QuantizeMode): Promise<Model> {
  const g = readGGUFLlama(path);
  try {
    const hf: HFFiles = { config: g.config, generationConfig: g.generationConfig, tokenizerJson: g.tokenizerJson, tokenizerConfig: g.tokenizerConfig };
    const m = fromHFFiles(hf, path, llamaConfigFromHF(g.config, `${path} (as config.json)`));
    const specs = llama.paramSpecs(m.config);
    const layout = new Map(specs.map((s) => [s.name, { shape: s.shape }]));
    for (const s of specs) {
      const shape = g.tensorNames.includes(s.name) ? g.tensorShape(s.name) : undefined;
      if (!shape) throw new Error(`${path}: no tensor for ${s.name}`);
      if (shape.join() !== s.shape.join()) throw new Error(`${path}: ${s.name} has shape [${shape}], the metadata implies [${s.shape}]`);
    }
    if (quantize === 'float32') {
      const weights = await convertedWeightFile([path], 'gguf-f32-1', layout, async (name) => g.readTensor(name).data);
      return { ...m, weights, metadata: {} };
    }
    const converted = new Map<string, ConvertedLayout>();
    for (const s of specs) {
      if (g.isQuantized(s.name)) {
        const { bits, blockSize, offsets } = nbitsGeometry(g.tensorType(s.name));
        converted.set(s.name, { shape: s.shape, nbits: { bits, blockSize, rows: s.shape[0]!, cols: s.shape[1]!, offsets } });
      } else if (quantize === 'int8' && int8Quantizable(s.shape, 'out-in')) converted.set(s.name, int8Layout(s.shape, 'out-in'));
      else converted.set(s.name, { shape: s.shape });
    }
    const weights = await convertedQuantizedWeightFile([path], `gguf-nbits-${quantize}-1`, converted, async (name) => {
      if (g.isQuantized(name)) {
        const nbits = g.readTensorNBits(name);
        return { nbits, values: dequantizeNBits(nbits) };
      }
      const values = g.readTensor(name).data;
      return converted.get(name)!.nbits ? int8Weight(values, converted.get(name)!.shape, 'out-in') : { values };
    });
    return { ...m, weights, metadata: {} };
  } finally {
    g.close();
  }
}

export async function saveModel(dir: string, m: Model): Promise<void> {
  if (m.config.family === 'llama') {
    if (!m.hf) throw new Error('saveModel: a Llama-family model needs its Hugging Face files (tokenizer, config)');
    return saveHFDirectory(dir, m.config, m.hf, m.weights, m.metadata);
  }
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, CONFIG_FILE), JSON.stringify({ architecture: 'gpt', ...withoutFamily(m.config) }, null, 2) + '\n');
  await saveTokenizer(dir, m.tokenizer);
  await writeSafetensors(join(dir, WEIGHTS_FILE), weightsToTensors(m.config, await inMemory(m.weights)), m.metadata);
}

const withoutFamily = ({ family: _, ...rest }: GPTConfig) => rest;

export function weightsToTensors(c: ModelConfig, w: Weights): Map<string, NamedTensor> {
  const specs = paramSpecsOf(c);
  checkWeights(specs, w);
  return new Map(specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape, data: w.get(s.name)! }]));
}

/** The weights as arrays in memory (read from their file when mapped). */
export async function inMemory(w: WeightSource): Promise<Weights> {
  return isWeightFile(w) ? readWeights(w) : w;
}

/** Parameters and the sizes the graphs see. */
export function describe(c: ModelConfig) {
  return { params: paramCount(paramSpecsOf(c)), ...dimsOf(c) };
}
