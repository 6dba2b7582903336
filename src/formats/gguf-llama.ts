// A Llama-architecture GGUF file seen as a Hugging Face model directory: config.json,
// generation_config.json, tokenizer.json and tokenizer_config.json as objects, and the
// weights under their transformers names in transformers' layout, one tensor at a time
// (so a multi-gigabyte file converts without being held in memory).
//
// Two layout differences are undone here:
//  - GGUF lists dims innermost first; the HF shape is the reverse.
//  - llama.cpp's converter reorders the rows of q_proj and k_proj (see unpermuteRows) so
//    that rotary embedding pairs are adjacent; transformers' rotate_half wants them split
//    into halves.

import { openGGUF, type GGUFFile, type GGUFTensorInfo } from './gguf.ts';
import { isQuantizedType } from './ggml.ts';
import { permuteNBitsRows, type NBitsMatrix } from './nbits.ts';
import { tokenizerFromGGUF } from '../tokenizers/gguf-tokenizer.ts';

export interface HFTensor {
  /** Outermost first, as in PyTorch. */
  shape: number[];
  data: Float32Array;
}

export interface GGUFLlamaModel {
  /** config.json */
  config: Record<string, unknown>;
  /** generation_config.json */
  generationConfig: Record<string, unknown>;
  /** tokenizer.json */
  tokenizerJson: Record<string, unknown>;
  /** tokenizer_config.json */
  tokenizerConfig: Record<string, unknown>;
  /** Hugging Face tensor names, in file order. */
  tensorNames: string[];
  /** The HF shape of a tensor, without reading it. */
  tensorShape(hfName: string): number[];
  /** Reads one tensor (F32, F16 or a quantized type of ggml.ts) as float32 in HF layout. */
  readTensor(hfName: string): HFTensor;
  /** The ggml type id the file stores this tensor in. */
  tensorType(hfName: string): number;
  /** Whether the file holds this tensor in a quantized type that can be served as it is (ggml.ts's rules). */
  isQuantized(hfName: string): boolean;
  /** A quantized tensor as MatMulNBits blocks in HF layout (rows = HF rows, q/k un-permuted): its values are readTensor's. */
  readTensorNBits(hfName: string): NBitsMatrix;
  /** The underlying file, for metadata this mapping does not carry over. */
  file: GGUFFile;
  close(): void;
}

const GLOBAL_TENSORS: Record<string, string> = {
  'token_embd.weight': 'model.embed_tokens.weight',
  'output_norm.weight': 'model.norm.weight',
  'output.weight': 'lm_head.weight',
};

const LAYER_TENSORS: Record<string, string> = {
  'attn_norm.weight': 'input_layernorm.weight',
  'attn_q.weight': 'self_attn.q_proj.weight',
  'attn_k.weight': 'self_attn.k_proj.weight',
  'attn_v.weight': 'self_attn.v_proj.weight',
  'attn_output.weight': 'self_attn.o_proj.weight',
  'attn_q.bias': 'self_attn.q_proj.bias',
  'attn_k.bias': 'self_attn.k_proj.bias',
  'attn_v.bias': 'self_attn.v_proj.bias',
  'attn_output.bias': 'self_attn.o_proj.bias',
  'ffn_norm.weight': 'post_attention_layernorm.weight',
  'ffn_gate.weight': 'mlp.gate_proj.weight',
  'ffn_up.weight': 'mlp.up_proj.weight',
  'ffn_down.weight': 'mlp.down_proj.weight',
};

const REQUIRED_LAYER_TENSORS = Object.keys(LAYER_TENSORS).filter((name) => name.endsWith('.weight'));
// transformers' attention_bias switches on all four attention biases at once.
const ATTENTION_BIASES = ['attn_q.bias', 'attn_k.bias', 'attn_v.bias', 'attn_output.bias'];

interface LlamaHyperparameters {
  hiddenSize: number;
  intermediateSize: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocabSize: number;
  attentionBias: boolean;
}

/** Where each HF tensor lives in the file, and how many heads to un-permute it by. */
interface TensorSource {
  info: GGUFTensorInfo;
  rotaryHeads?: number;
}

function readHyperparameters(file: GGUFFile): LlamaHyperparameters {
  const hiddenSize = file.requireInteger('llama.embedding_length');
  const heads = file.requireInteger('llama.attention.head_count');
  const kvHeads = file.integer('llama.attention.head_count_kv') ?? heads;
  if (heads <= 0 || kvHeads <= 0 || heads % kvHeads !== 0) {
    throw new Error(`${file.label}: llama.attention.head_count ${heads} is not a multiple of llama.attention.head_count_kv ${kvHeads}`);
  }
  const headDim = file.integer('llama.attention.key_length') ?? hiddenSize / heads;
  const valueDim = file.integer('llama.attention.value_length') ?? headDim;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) throw new Error(`${file.label}: the attention head size ${headDim} is not an even integer`);
  if (valueDim !== headDim)
    throw new Error(
      `${file.label}: llama.attention.value_length ${valueDim} differs from the key length ${headDim}, which transformers' Llama cannot represent`,
    );
  const rotaryDim = file.integer('llama.rope.dimension_count') ?? headDim;
  if (rotaryDim !== headDim)
    throw new Error(
      `${file.label}: llama.rope.dimension_count ${rotaryDim} rotates only part of each ${headDim}-wide head, which transformers' Llama cannot represent`,
    );
  const experts = file.integer('llama.expert_count') ?? 0;
  if (experts > 0) throw new Error(`${file.label}: llama.expert_count is ${experts}; mixture-of-experts Llama files are not supported`);
  return {
    hiddenSize,
    intermediateSize: file.requireInteger('llama.feed_forward_length'),
    layers: file.requireInteger('llama.block_count'),
    heads,
    kvHeads,
    headDim,
    vocabSize: file.tensor('token_embd.weight').shape[0],
    attentionBias: file.tensors.some((info) => /^blk\.\d+\.attn_(q|k|v|output)\.bias$/.test(info.name)),
  };
}

/** rope_scaling for config.json; only what transformers' Llama can express is accepted. */
function ropeScaling(file: GGUFFile): Record<string, unknown> | undefined {
  const type = file.string('llama.rope.scaling.type') ?? (file.metadata.has('llama.rope.scale_linear') ? 'linear' : 'none');
  if (type === 'none') return undefined;
  if (type !== 'linear') throw new Error(`${file.label}: llama.rope.scaling.type ${JSON.stringify(type)} is not supported (only "none" and "linear")`);
  const factor = file.number('llama.rope.scaling.factor') ?? file.requireNumber('llama.rope.scale_linear');
  return factor === 1 ? undefined : { rope_type: 'linear', factor };
}

/** HF name and GGUF source of every tensor, checking names, layer indices and shapes. */
function mapTensors(file: GGUFFile, hp: LlamaHyperparameters, tied: boolean): Map<string, TensorSource> {
  const sources = new Map<string, TensorSource>();
  for (const info of file.tensors) {
    if (tied && info.name === 'output.weight') continue; // the same bytes as token_embd.weight
    const { hfName, rotaryHeads } = mapTensor(file, info, hp);
    const clash = sources.get(hfName);
    if (clash) throw new Error(`${file.label}: tensors ${clash.info.name} and ${info.name} both map to ${hfName}`);
    sources.set(hfName, { info, rotaryHeads });
  }
  for (let layer = 0; layer < hp.layers; layer++) {
    for (const name of [...REQUIRED_LAYER_TENSORS, ...(hp.attentionBias ? ATTENTION_BIASES : [])]) {
      if (!file.hasTensor(`blk.${layer}.${name}`)) throw new Error(`${file.label}: tensor blk.${layer}.${name} is missing`);
    }
  }
  file.tensor('output_norm.weight'); // throws naming it when missing
  return sources;
}

function mapTensor(file: GGUFFile, info: GGUFTensorInfo, hp: LlamaHyperparameters): { hfName: string; rotaryHeads?: number } {
  if (Object.hasOwn(GLOBAL_TENSORS, info.name)) {
    const embedding = [hp.vocabSize, hp.hiddenSize];
    checkShape(file, info, info.name === 'output_norm.weight' ? [hp.hiddenSize] : embedding);
    return { hfName: GLOBAL_TENSORS[info.name] };
  }
  const match = /^blk\.(0|[1-9]\d*)\.(.+)$/.exec(info.name);
  const layer = match ? Number(match[1]) : -1;
  const part = match?.[2] ?? '';
  if (!match || !Object.hasOwn(LAYER_TENSORS, part) || layer >= hp.layers) {
    const why = info.name === 'rope_freqs.weight' ? ' (Llama 3.1-style rope frequency factors, which config.json cannot carry)' : '';
    throw new Error(`${file.label}: tensor ${info.name} has no Hugging Face Llama equivalent${why}`);
  }
  checkShape(file, info, layerTensorShape(part, hp));
  const rotaryHeads = part.startsWith('attn_q.') ? hp.heads : part.startsWith('attn_k.') ? hp.kvHeads : undefined;
  return { hfName: `model.layers.${layer}.${LAYER_TENSORS[part]}`, rotaryHeads };
}

/** The HF shape a layer tensor must have, given the hyperparameters. */
function layerTensorShape(part: string, hp: LlamaHyperparameters): number[] {
  const qWidth = hp.heads * hp.headDim;
  const kvWidth = hp.kvHeads * hp.headDim;
  const [tensor, kind] = part.split('.');
  const rows: Record<string, number[]> = {
    attn_norm: [hp.hiddenSize],
    ffn_norm: [hp.hiddenSize],
    attn_q: [qWidth, hp.hiddenSize],
    attn_k: [kvWidth, hp.hiddenSize],
    attn_v: [kvWidth, hp.hiddenSize],
    attn_output: [hp.hiddenSize, qWidth],
    ffn_gate: [hp.intermediateSize, hp.hiddenSize],
    ffn_up: [hp.intermediateSize, hp.hiddenSize],
    ffn_down: [hp.hiddenSize, hp.intermediateSize],
  };
  return kind === 'bias' ? rows[tensor].slice(0, 1) : rows[tensor];
}

function checkShape(file: GGUFFile, info: GGUFTensorInfo, expected: number[]): void {
  if (info.shape.join() !== expected.join()) {
    throw new Error(`${file.label}: tensor ${info.name} has shape [${info.shape}] but the llama.* metadata implies [${expected}]`);
  }
}

/**
 * Undoes llama.cpp's q/k row order. Its converter views the [heads * headDim, columns]
 * weight as [heads, 2, headDim / 2, columns] and swaps the middle axes, so the two halves
 * of each head are interleaved: GGUF row 2i + j of a head is HF row j * headDim / 2 + i.
 * A bias is the same with one column.
 */
export function unpermuteRows(data: Float32Array, rows: number, heads: number): Float32Array {
  const columns = data.length / rows;
  const headDim = rows / heads;
  const half = headDim / 2;
  const out = new Float32Array(data.length);
  for (let head = 0; head < heads; head++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const from = (head * headDim + 2 * i + j) * columns;
        const to = (head * headDim + j * half + i) * columns;
        out.set(data.subarray(from, from + columns), to);
      }
    }
  }
  return out;
}

/** The GGUF row each HF row of a q/k weight comes from (unpermuteRows as an order). */
function unpermutedOrder(rows: number, heads: number): Int32Array {
  const headDim = rows / heads;
  const half = headDim / 2;
  const order = new Int32Array(rows);
  for (let head = 0; head < heads; head++)
    for (let i = 0; i < half; i++) for (let j = 0; j < 2; j++) order[head * headDim + j * half + i] = head * headDim + 2 * i + j;
  return order;
}

/**
 * Embeddings are tied when there is no output.weight, or when it is a byte-for-byte copy
 * of token_embd.weight (llama2.c exports write both); then lm_head is left out, as a
 * transformers checkpoint with tie_word_embeddings has none.
 */
function embeddingsAreTied(file: GGUFFile): boolean {
  if (!file.hasTensor('output.weight')) return true;
  return file.sameData(file.tensor('output.weight'), file.tensor('token_embd.weight'));
}

function buildConfig(
  file: GGUFFile,
  hp: LlamaHyperparameters,
  tied: boolean,
  tokenIds: Record<string, number>,
  contextLength: number,
): Record<string, unknown> {
  const scaling = ropeScaling(file);
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: hp.hiddenSize,
    intermediate_size: hp.intermediateSize,
    num_hidden_layers: hp.layers,
    num_attention_heads: hp.heads,
    num_key_value_heads: hp.kvHeads,
    ...(hp.headDim === hp.hiddenSize / hp.heads ? {} : { head_dim: hp.headDim }),
    vocab_size: hp.vocabSize,
    max_position_embeddings: contextLength,
    rms_norm_eps: file.requireNumber('llama.attention.layer_norm_rms_epsilon'),
    rope_theta: file.number('llama.rope.freq_base') ?? 10000,
    ...(scaling ? { rope_scaling: scaling } : {}),
    hidden_act: 'silu',
    tie_word_embeddings: tied,
    ...tokenIds,
    torch_dtype: 'float32', // every tensor is read as float32
    attention_bias: hp.attentionBias,
    mlp_bias: false,
  };
}

function llamaFromFile(file: GGUFFile): GGUFLlamaModel {
  const architecture = file.requireString('general.architecture');
  if (architecture !== 'llama') {
    throw new Error(`${file.label}: general.architecture is ${JSON.stringify(architecture)}; only "llama" is supported`);
  }
  const hp = readHyperparameters(file);
  const tied = embeddingsAreTied(file);
  const sources = mapTensors(file, hp, tied);
  const contextLength = file.requireInteger('llama.context_length');
  const { tokenizerJson, tokenizerConfig, specialTokenIds, tokenCount } = tokenizerFromGGUF(file, contextLength);
  if (tokenCount > hp.vocabSize) {
    throw new Error(`${file.label}: the tokenizer has ${tokenCount} tokens but token_embd.weight only ${hp.vocabSize} rows`);
  }
  const config = buildConfig(file, hp, tied, specialTokenIds, contextLength);
  const source = (hfName: string): TensorSource => {
    const found = sources.get(hfName);
    if (!found) throw new Error(`${file.label}: no tensor maps to ${hfName}`);
    return found;
  };
  return {
    config,
    generationConfig: { ...specialTokenIds },
    tokenizerJson,
    tokenizerConfig,
    tensorNames: [...sources.keys()],
    tensorShape: (hfName) => [...source(hfName).info.shape],
    readTensor(hfName) {
      const { info, rotaryHeads } = source(hfName);
      const data = file.readTensor(info);
      return { shape: [...info.shape], data: rotaryHeads ? unpermuteRows(data, info.shape[0], rotaryHeads) : data };
    },
    tensorType: (hfName) => source(hfName).info.type,
    isQuantized: (hfName) => isQuantizedType(source(hfName).info.type),
    readTensorNBits(hfName) {
      const { info, rotaryHeads } = source(hfName);
      const m = file.readTensorNBits(info);
      return rotaryHeads ? permuteNBitsRows(m, unpermutedOrder(m.rows, rotaryHeads)) : m;
    },
    file,
    close: () => file.close(),
  };
}

/** Opens a Llama GGUF file as a Hugging Face model (see GGUFLlamaModel); close() when done. */
export function readGGUFLlama(path: string): GGUFLlamaModel {
  const file = openGGUF(path);
  try {
    return llamaFromFile(file);
  } catch (err) {
    file.close();
    throw err;
  }
}
