// The Llama family: Llama 2/3.x, Qwen2/2.5 (q/k/v biases), Qwen3 (q/k RMSNorm per head,
// explicit head_dim), SmolLM2, Mistral without sliding window. RMSNorm, rotary embeddings
// in Hugging Face's rotate_half layout (rope_theta, Llama 3's rope_scaling), grouped-query
// attention, SwiGLU MLP, tied or untied head. Weights keep Hugging Face's names and
// [out, in] layout (x @ W^T as one Gemm), so checkpoints load and save without reshuffling.
import type { DType, Tensor } from '../graph/ir.ts';
import * as op from '../graph/ops.ts';
import { attend, splitHeads } from './attention.ts';
import { rotaryCache, rotaryEmbedding } from './fused.ts';
import { loraLinear } from './lora-linear.ts';
import { gatherWeightRows, timesWeight } from '../graph/quantized.ts';
import type { ForwardInput, KV, ModelFamily, ParamSpec, Params } from './family.ts';

export type RopeScaling =
  { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalContext: number } | { type: 'linear'; factor: number };

export interface LlamaConfig {
  family: 'llama';
  vocabSize: number;
  contextLength: number;
  hiddenSize: number;
  intermediateSize: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling?: RopeScaling;
  tiedEmbeddings: boolean;
  /** Biases on q, k and v (Qwen2), and on o (Llama's attention_bias sets all four). */
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  /** RMSNorm of each query and key head before the rotation (Qwen3). */
  qkNorm: boolean;
}

const layer = (i: number) => `model.layers.${i}`;
const PROJECTIONS = ['q_proj', 'k_proj', 'v_proj', 'o_proj'];
const MLP = ['gate_proj', 'up_proj', 'down_proj'];

function paramSpecs(c: LlamaConfig): ParamSpec[] {
  const [d, hd] = [c.hiddenSize, c.headDim];
  const w = (name: string, shape: number[]): ParamSpec => ({ name, shape, decay: true, init: 'normal', std: 0.02 });
  const vec = (name: string, n: number, init: 'zeros' | 'ones'): ParamSpec => ({ name, shape: [n], decay: false, init });
  const linear = (name: string, out: number, inp: number, bias: boolean) => [
    w(`${name}.weight`, [out, inp]),
    ...(bias ? [vec(`${name}.bias`, out, 'zeros')] : []),
  ];
  const specs: ParamSpec[] = [{ ...w('model.embed_tokens.weight', [c.vocabSize, d]), decay: false }];
  for (let i = 0; i < c.layers; i++) {
    const L = layer(i);
    specs.push(
      vec(`${L}.input_layernorm.weight`, d, 'ones'),
      ...linear(`${L}.self_attn.q_proj`, c.heads * hd, d, c.qkvBias),
      ...linear(`${L}.self_attn.k_proj`, c.kvHeads * hd, d, c.qkvBias),
      ...linear(`${L}.self_attn.v_proj`, c.kvHeads * hd, d, c.qkvBias),
      ...linear(`${L}.self_attn.o_proj`, d, c.heads * hd, c.oBias),
      ...(c.qkNorm ? [vec(`${L}.self_attn.q_norm.weight`, hd, 'ones'), vec(`${L}.self_attn.k_norm.weight`, hd, 'ones')] : []),
      vec(`${L}.post_attention_layernorm.weight`, d, 'ones'),
      ...linear(`${L}.mlp.gate_proj`, c.intermediateSize, d, c.mlpBias),
      ...linear(`${L}.mlp.up_proj`, c.intermediateSize, d, c.mlpBias),
      ...linear(`${L}.mlp.down_proj`, d, c.intermediateSize, c.mlpBias),
    );
  }
  specs.push(vec('model.norm.weight', d, 'ones'));
  if (!c.tiedEmbeddings) specs.push(w('lm_head.weight', [c.vocabSize, d]));
  return specs;
}

/** Rotation frequency of each pair of dimensions, as Hugging Face computes them (scaling included). */
export function inverseFrequencies(c: LlamaConfig): Float32Array {
  const half = c.headDim / 2;
  const base = Float32Array.from({ length: half }, (_, i) => 1 / c.ropeTheta ** ((2 * i) / c.headDim));
  const s = c.ropeScaling;
  if (!s) return base;
  if (s.type === 'linear') return base.map((f) => f / s.factor);
  // Llama 3: long wavelengths slowed by `factor`, short ones kept, a smooth blend between.
  const lowWavelen = s.originalContext / s.lowFreqFactor;
  const highWavelen = s.originalContext / s.highFreqFactor;
  return base.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highWavelen) return f;
    if (wavelen > lowWavelen) return f / s.factor;
    const smooth = (s.originalContext / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
    return (1 - smooth) * (f / s.factor) + smooth * f;
  });
}

/** cos and sin [B, 1, T, headDim] of the rotation angles at `positions` [B, T] (the halves repeat, as rotate_half expects). */
function rotaryAngles(c: LlamaConfig, positions: Tensor, dtype: DType): { cos: Tensor; sin: Tensor } {
  const g = positions.graph;
  const freqs = op.constant(g, dtype, Array.from(inverseFrequencies(c)));
  const angles = op.mul(op.unsqueeze(op.cast(positions, dtype), [2]), freqs); // [B, T, hd/2]
  const full = op.unsqueeze(op.concat([angles, angles], 2), [1]);
  return { cos: op.cos(full), sin: op.sin(full) };
}

/** x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1] for x = [x1, x2] split in halves. */
function rotateHalf(x: Tensor, r: { cos: Tensor; sin: Tensor }, hd: number): Tensor {
  const [x1, x2] = op.split(x, [hd / 2, hd / 2], -1);
  return op.add(op.mul(x, r.cos), op.mul(op.concat([op.neg(x2!), x1!], -1), r.sin));
}

/**
 * The rotation of heads [B, n, T, hd] at x.positions, its angles computed once for all layers:
 * fused, onnxruntime's RotaryEmbedding kernel (one op instead of six); else from primitives.
 */
function rotation(c: LlamaConfig, x: ForwardInput, dtype: DType): (t: Tensor) => Tensor {
  if (x.fused) {
    const cache = rotaryCache(x.positions, inverseFrequencies(c));
    return (t) => rotaryEmbedding(t, cache);
  }
  const angles = rotaryAngles(c, x.positions, dtype);
  return (t) => rotateHalf(t, angles, c.headDim);
}

function forward(c: LlamaConfig, p: Params, x: ForwardInput): { hidden: Tensor; present: KV[] } {
  const [d, hd] = [c.hiddenSize, c.headDim];
  const linear = (t: Tensor, name: string) => loraLinear(p, t, name, timesWeight(t, p[`${name}.weight`]!, true, p[`${name}.bias`]), x.loraScale);
  const norm = (t: Tensor, name: string) => op.rmsNorm(t, p[`${name}.weight`]!, c.rmsNormEps);
  let h = op.reshape(gatherWeightRows(p['model.embed_tokens.weight']!, x.ids), [-1, d]);
  const rotate = rotation(c, x, h.dtype);
  const present: KV[] = [];
  for (let i = 0; i < c.layers; i++) {
    const L = layer(i);
    const a = norm(h, `${L}.input_layernorm`);
    let q = splitHeads(linear(a, `${L}.self_attn.q_proj`), x.ids, c.heads, hd);
    let k = splitHeads(linear(a, `${L}.self_attn.k_proj`), x.ids, c.kvHeads, hd);
    let v = splitHeads(linear(a, `${L}.self_attn.v_proj`), x.ids, c.kvHeads, hd);
    if (c.qkNorm) {
      q = norm(q, `${L}.self_attn.q_norm`);
      k = norm(k, `${L}.self_attn.k_norm`);
    }
    q = op.mul(rotate(q), 1 / Math.sqrt(hd));
    k = rotate(k);
    if (x.keysTransposed) k = op.transpose(k, [0, 1, 3, 2]);
    const past = x.past?.[i];
    if (past) {
      k = op.concat([past.k, k], x.keysTransposed ? 3 : 2);
      v = op.concat([past.v, v], 2);
    }
    present.push({ k, v });
    const att = attend(q, k, v, x.bias, { heads: c.heads, kvHeads: c.kvHeads, headDim: hd }, x.keysTransposed);
    h = op.add(h, linear(att, `${L}.self_attn.o_proj`));
    const m = norm(h, `${L}.post_attention_layernorm`);
    const gate = linear(m, `${L}.mlp.gate_proj`);
    h = op.add(h, linear(op.mul(op.silu(gate), linear(m, `${L}.mlp.up_proj`)), `${L}.mlp.down_proj`));
  }
  return { hidden: norm(h, 'model.norm'), present };
}

function head(c: LlamaConfig, p: Params, hidden: Tensor): Tensor {
  return timesWeight(hidden, p[c.tiedEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight']!, true);
}

export const llama: ModelFamily<LlamaConfig> = {
  dims: (c) => ({
    vocabSize: c.vocabSize,
    contextLength: c.contextLength,
    hiddenSize: c.hiddenSize,
    layers: c.layers,
    kvHeads: c.kvHeads,
    headDim: c.headDim,
  }),
  paramSpecs,
  forward,
  head,
  fusable: true,
  weightLayout: 'out-in',
  linearModules: [...PROJECTIONS.map((m) => `self_attn.${m}`), ...MLP.map((m) => `mlp.${m}`)],
  loraTargets: [...PROJECTIONS, ...MLP],
  // Every matrix: the projections, the embedding (gathered, and the tied head) and lm_head.
  quantizable: (c) => new Map(paramSpecs(c).flatMap((s) => (s.shape.length === 2 ? [[s.name, 'out-in' as const]] : []))),
};
