// Hugging Face model directories of the Llama family: config.json picks the family and its
// options, the weights come from model.safetensors or from shards listed in
// model.safetensors.index.json (F32, F16 or BF16), the tokenizer from tokenizer.json and
// tokenizer_config.json, stop tokens from generation_config.json. Weights are never read
// whole: float32 checkpoints are mapped as they are, others converted tensor by tensor into
// the cache (weight-file.ts). A model adapted here is written back as such a directory.
import { existsSync } from 'node:fs';
import { mkdir, open, readFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import type { LlamaConfig, RopeScaling } from '../model/llama.ts';
import { llama } from '../model/llama.ts';
import { HFTokenizer } from '../tokenizers/hf-tokenizer.ts';
import { readSafetensorsIndex, writeSafetensorsStreaming, type TensorLocation } from './safetensors.ts';
import { widenToFloat32 } from './float16.ts';
import { convertedWeightFile, isWeightFile, readWeights, type TensorRef, type WeightFile, type WeightSource } from './weight-file.ts';
import { writeFileAtomic } from '../util/atomic-write.ts';

type Json = Record<string, unknown>;

/** The Hugging Face files of a model besides its weights, kept as read so a save writes them back. */
export interface HFFiles {
  config: Json;
  generationConfig: Json;
  tokenizerJson: Json;
  tokenizerConfig: Json;
}

/** model_type -> the architecture class transformers uses for it. */
const SUPPORTED: Record<string, string> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
  qwen3: 'Qwen3ForCausalLM',
};

/** Tensors a checkpoint may hold that the model does not use. */
const IGNORED = /(^|\.)rotary_emb\.inv_freq$/;

/** The family config of a config.json; anything it cannot honour is refused naming the field. */
export function llamaConfigFromHF(raw: unknown, file: string): LlamaConfig {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${file}: not a JSON object`);
  const c = raw as Json;
  const fail = (field: string, why: string): never => {
    throw new Error(`${file}: ${field} ${why}`);
  };
  const type = c.model_type;
  if (typeof type !== 'string' || !SUPPORTED[type])
    fail('model_type', `${JSON.stringify(type)} is not supported; supported: ${Object.keys(SUPPORTED).join(', ')} (the Llama family)`);
  const arch = Array.isArray(c.architectures) ? c.architectures[0] : undefined;
  if (arch !== undefined && arch !== SUPPORTED[type as string])
    fail('architectures', `${JSON.stringify(c.architectures)} is not supported for model_type ${type}; expected ${SUPPORTED[type as string]}`);
  const int = (k: string, dflt?: number): number => {
    const v = c[k] ?? dflt;
    if (!Number.isInteger(v) || (v as number) <= 0) fail(k, `must be a positive integer, got ${JSON.stringify(c[k])}`);
    return v as number;
  };
  const num = (k: string, dflt: number): number => {
    const v = c[k] ?? dflt;
    if (typeof v !== 'number' || !(v > 0)) fail(k, `must be a positive number, got ${JSON.stringify(c[k])}`);
    return v as number;
  };
  const flag = (k: string, dflt: boolean): boolean => {
    const v = c[k] ?? dflt;
    if (typeof v !== 'boolean') fail(k, `must be true or false, got ${JSON.stringify(c[k])}`);
    return v as boolean;
  };
  if ((c.hidden_act ?? 'silu') !== 'silu') fail('hidden_act', `${JSON.stringify(c.hidden_act)} is not supported; only silu (SwiGLU)`);
  const hiddenSize = int('hidden_size');
  const heads = int('num_attention_heads');
  const kvHeads = int('num_key_value_heads', heads);
  if (heads % kvHeads) fail('num_key_value_heads', `${kvHeads} does not divide num_attention_heads ${heads}`);
  if (c.head_dim == null && hiddenSize % heads)
    fail('hidden_size', `${hiddenSize} is not divisible by num_attention_heads ${heads} (and there is no head_dim)`);
  const headDim = c.head_dim == null ? hiddenSize / heads : int('head_dim');
  if (headDim % 2) fail('head_dim', `${headDim} must be even for rotary embeddings`);
  let contextLength = int('max_position_embeddings');
  // A sliding window at least as long as the context changes nothing; a shorter one we can
  // honour exactly by never letting the context outgrow it.
  const window = c.sliding_window;
  const windowOn = window != null && (type === 'mistral' || c.use_sliding_window === true);
  if (windowOn) {
    if (!Number.isInteger(window) || (window as number) <= 0) fail('sliding_window', `must be a positive integer or null, got ${JSON.stringify(window)}`);
    contextLength = Math.min(contextLength, window as number);
  }
  // Which projections carry biases, as each architecture's transformers code builds them.
  const attentionBias = type === 'llama' || type === 'qwen3' ? flag('attention_bias', false) : false;
  const scaling = ropeScaling(c.rope_scaling, fail);
  return {
    family: 'llama',
    vocabSize: int('vocab_size'),
    contextLength,
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    layers: int('num_hidden_layers'),
    heads,
    kvHeads,
    headDim,
    rmsNormEps: num('rms_norm_eps', 1e-6),
    ropeTheta: num('rope_theta', 10000),
    tiedEmbeddings: flag('tie_word_embeddings', false),
    // Qwen2 always has q/k/v biases and no o bias; Llama-style attention_bias covers all four.
    qkvBias: type === 'qwen2' || attentionBias,
    oBias: type !== 'qwen2' && attentionBias,
    mlpBias: type === 'llama' ? flag('mlp_bias', false) : false,
    qkNorm: type === 'qwen3',
    ...(scaling ? { ropeScaling: scaling } : {}),
  };
}

function ropeScaling(raw: unknown, fail: (field: string, why: string) => never): RopeScaling | undefined {
  if (raw == null) return undefined;
  if (typeof raw !== 'object') return fail('rope_scaling', `must be an object or null, got ${JSON.stringify(raw)}`);
  const r = raw as Json;
  const type = r.rope_type ?? r.type;
  const num = (k: string, dflt?: number) => {
    const v = r[k] ?? dflt;
    if (typeof v !== 'number' || !(v > 0)) fail(`rope_scaling.${k}`, `must be a positive number, got ${JSON.stringify(r[k])}`);
    return v as number;
  };
  switch (type) {
    case 'default':
      return undefined;
    case 'linear':
      return { type: 'linear', factor: num('factor') };
    case 'llama3':
      return {
        type: 'llama3',
        factor: num('factor'),
        lowFreqFactor: num('low_freq_factor', 1),
        highFreqFactor: num('high_freq_factor', 4),
        originalContext: num('original_max_position_embeddings', 8192),
      };
    default:
      return fail('rope_scaling.rope_type', `${JSON.stringify(type)} is not supported; supported: default, linear, llama3`);
  }
}

/** eos_token_id of generation_config.json: a number or a list of numbers. */
export function stopIdsOf(generationConfig: Json, file: string): number[] {
  const eos = generationConfig.eos_token_id;
  if (eos == null) return [];
  const ids = Array.isArray(eos) ? eos : [eos];
  if (!ids.every((t) => Number.isInteger(t) && t >= 0))
    throw new Error(`${file}: eos_token_id must be a token id or a list of them, got ${JSON.stringify(eos)}`);
  return ids as number[];
}

async function readJson(path: string, required: boolean): Promise<Json> {
  if (!required && !existsSync(path)) return {};
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  try {
    const v = JSON.parse(text);
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Json;
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
}

export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';

/** Every tensor of the checkpoint with the file it lives in: the single file, or the shards the index names. */
async function checkpointTensors(dir: string): Promise<Map<string, TensorLocation & { path: string }>> {
  const out = new Map<string, TensorLocation & { path: string }>();
  const add = async (path: string) => {
    for (const [name, t] of (await readSafetensorsIndex(path)).tensors) {
      if (out.has(name)) throw new Error(`${path}: tensor ${name} is also in ${out.get(name)!.path}`);
      out.set(name, { ...t, path });
    }
  };
  const indexPath = join(dir, INDEX_FILE);
  if (existsSync(indexPath)) {
    const map = (await readJson(indexPath, true)).weight_map;
    if (!map || typeof map !== 'object') throw new Error(`${indexPath}: no weight_map object`);
    const shards = [...new Set(Object.values(map as Json))];
    if (!shards.every((f) => typeof f === 'string' && /^[^/\\]+$/.test(f))) throw new Error(`${indexPath}: weight_map must name files in the same folder`);
    for (const f of shards as string[])
      if (!existsSync(join(dir, f))) throw new Error(`${indexPath}: weight_map names ${f}, which is not in ${dir}`);
      else await add(join(dir, f));
    for (const [name, f] of Object.entries(map as Json))
      if (out.get(name)?.path !== join(dir, f as string)) throw new Error(`${indexPath}: weight_map puts ${name} in ${f}, which does not hold it`);
  } else if (existsSync(join(dir, SINGLE_FILE))) await add(join(dir, SINGLE_FILE));
  else throw new Error(`${dir}: no ${SINGLE_FILE} or ${INDEX_FILE} (only safetensors checkpoints load)`);
  return out;
}

/** The weights the config needs, checked by name, shape and dtype; mapped as they are when float32, else converted once. */
async function weightsOf(dir: string, config: LlamaConfig): Promise<WeightFile> {
  const all = await checkpointTensors(dir);
  const specs = llama.paramSpecs(config);
  const needed = new Set(specs.map((s) => s.name));
  for (const [name, t] of all)
    if (!needed.has(name) && !IGNORED.test(name) && !(name === 'lm_head.weight' && config.tiedEmbeddings))
      throw new Error(`${t.path}: tensor ${name} is not part of this model (config.json may name the wrong model_type or options)`);
  for (const s of specs) {
    const t = all.get(s.name);
    if (!t) throw new Error(`${dir}: no tensor ${s.name} in the checkpoint`);
    if (!['F32', 'F16', 'BF16'].includes(t.dtype)) throw new Error(`${t.path}: tensor ${s.name} is ${t.dtype}; only F32, F16 and BF16 load`);
    if (t.shape.join() !== s.shape.join()) throw new Error(`${t.path}: tensor ${s.name} has shape [${t.shape}], config.json implies [${s.shape}]`);
  }
  const located = specs.map((s) => all.get(s.name)!);
  if (located.every((t) => t.dtype === 'F32')) {
    const tensors: Record<string, TensorRef> = {};
    specs.forEach((s, i) => (tensors[s.name] = { file: basename(located[i]!.path), offset: located[i]!.offset, shape: s.shape }));
    return { dir: resolve(dir), tensors };
  }
  const sources = [...new Set(located.map((t) => t.path))];
  const layout = new Map(specs.map((s) => [s.name, { shape: s.shape }]));
  return convertedWeightFile(sources, 'hf-f32-1', layout, async (name) => {
    const t = all.get(name)!;
    const raw = await readBytes(t.path, t.offset, t.length, name);
    return t.dtype === 'F32'
      ? new Float32Array(raw.buffer, raw.byteOffset, raw.length / 4)
      : widenToFloat32(new Uint16Array(raw.buffer, raw.byteOffset, raw.length / 2), t.dtype as 'F16' | 'BF16');
  });
}

async function readBytes(path: string, offset: number, length: number, name: string): Promise<Uint8Array> {
  const fh = await open(path, 'r');
  try {
    const buf = new Uint8Array(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    if (bytesRead !== length) throw new Error(`${path}: ends inside tensor ${name}`);
    return buf;
  } finally {
    await fh.close();
  }
}

export interface LoadedHF {
  config: LlamaConfig;
  tokenizer: HFTokenizer;
  weights: WeightFile;
  hf: HFFiles;
}

export async function loadHFDirectory(dir: string): Promise<LoadedHF> {
  const configPath = join(dir, 'config.json');
  const rawConfig = await readJson(configPath, true);
  const config = llamaConfigFromHF(rawConfig, configPath);
  const generationConfig = await readJson(join(dir, 'generation_config.json'), false);
  const tokenizerJson = await readJson(join(dir, 'tokenizer.json'), true);
  const tokenizerConfig = await readJson(join(dir, 'tokenizer_config.json'), false);
  const hf = { config: rawConfig, generationConfig, tokenizerJson, tokenizerConfig };
  return { ...fromHFFiles(hf, dir, config), weights: await weightsOf(dir, config) };
}

/** The tokenizer of HF files, its stop tokens from generation_config (or config.json) and checked against the vocabulary. */
export function fromHFFiles(hf: HFFiles, source: string, config: LlamaConfig): { config: LlamaConfig; tokenizer: HFTokenizer; hf: HFFiles } {
  const stopIds = [...stopIdsOf(hf.generationConfig, `${source}/generation_config.json`), ...stopIdsOf(hf.config, `${source}/config.json`)];
  const tokenizer = new HFTokenizer(hf.tokenizerJson, hf.tokenizerConfig, { stopIds, source });
  if (tokenizer.vocabSize > config.vocabSize)
    throw new Error(`${source}: the tokenizer has ${tokenizer.vocabSize} tokens but config.json's vocab_size is ${config.vocabSize}`);
  return { config, tokenizer, hf };
}

/**
 * Writes a Llama-family model as a Hugging Face directory that transformers and vLLM load:
 * config.json (torch_dtype float32), generation_config.json, tokenizer files, and the
 * weights in model.safetensors under their transformers names.
 */
export async function saveHFDirectory(dir: string, config: LlamaConfig, hf: HFFiles, weights: WeightSource, metadata: Record<string, string>): Promise<void> {
  await mkdir(dir, { recursive: true });
  const json = (name: string, v: Json) => writeFileAtomic(join(dir, name), JSON.stringify(v, null, 2) + '\n');
  await json('config.json', { ...hf.config, torch_dtype: 'float32' });
  if (Object.keys(hf.generationConfig).length) await json('generation_config.json', hf.generationConfig);
  await json('tokenizer.json', hf.tokenizerJson);
  await json('tokenizer_config.json', hf.tokenizerConfig);
  const specs = llama.paramSpecs(config);
  const layout = new Map(specs.map((s) => [s.name, { dtype: 'F32' as const, shape: s.shape }]));
  // transformers reads "format": "pt" to know the tensors are PyTorch's.
  await writeSafetensorsStreaming(
    join(dir, SINGLE_FILE),
    layout,
    async (name) => (isWeightFile(weights) ? (await readWeights(weights, [name])).get(name)! : weights.get(name)!),
    { format: 'pt', ...metadata },
  );
}
