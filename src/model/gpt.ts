// A GPT-style decoder (nanoGPT shape): learned position embeddings, pre-LayerNorm
// blocks, causal self-attention, GELU MLP, tied or untied head. Defined once as a
// function over graph tensors; engine/graphs.ts builds prefill, decode, generate
// and train-step graphs from it. Weight names and [in, out] layouts follow GPT-2.
import type { DType, Graph, Tensor } from '../graph/ir.ts';
import * as op from '../graph/ops.ts';
import type { Rng } from '../engine/rng.ts';

export interface GPTConfig {
  vocabSize: number;
  contextLength: number;
  dModel: number;
  nLayers: number;
  nHeads: number;
  tiedHead: boolean;
  /** A token the model never predicts (padding): its logit is masked in every graph. */
  padTokenId?: number;
}

export interface ParamSpec {
  name: string;
  shape: number[];
  /** Weight decay applies to matrices, not to biases, norms or embeddings. */
  decay: boolean;
  init: 'normal' | 'zeros' | 'ones';
  std?: number;
}

export function paramSpecs(c: GPTConfig): ParamSpec[] {
  const d = c.dModel;
  const w = (name: string, shape: number[], std = 0.02): ParamSpec => ({ name, shape, decay: true, init: 'normal', std });
  const b = (name: string, n: number): ParamSpec => ({ name, shape: [n], decay: false, init: 'zeros' });
  const ln = (name: string): ParamSpec[] => [
    { name: `${name}.weight`, shape: [d], decay: false, init: 'ones' },
    b(`${name}.bias`, d),
  ];
  const projStd = 0.02 / Math.sqrt(2 * c.nLayers); // GPT-2: residual projections scaled by depth
  const specs: ParamSpec[] = [
    { ...w('wte', [c.vocabSize, d]), decay: false },
    { ...w('wpe', [c.contextLength, d], 0.01), decay: false },
  ];
  for (let i = 0; i < c.nLayers; i++) {
    const h = `h.${i}`;
    specs.push(
      ...ln(`${h}.ln_1`),
      w(`${h}.attn.c_attn.weight`, [d, 3 * d]),
      b(`${h}.attn.c_attn.bias`, 3 * d),
      w(`${h}.attn.c_proj.weight`, [d, d], projStd),
      b(`${h}.attn.c_proj.bias`, d),
      ...ln(`${h}.ln_2`),
      w(`${h}.mlp.c_fc.weight`, [d, 4 * d]),
      b(`${h}.mlp.c_fc.bias`, 4 * d),
      w(`${h}.mlp.c_proj.weight`, [4 * d, d], projStd),
      b(`${h}.mlp.c_proj.bias`, d),
    );
  }
  specs.push(...ln('ln_f'));
  if (!c.tiedHead) specs.push(w('lm_head.weight', [d, c.vocabSize]));
  return specs;
}

export type Weights = Map<string, Float32Array>;

export function initWeights(c: GPTConfig, rng: Rng): Weights {
  const out: Weights = new Map();
  for (const s of paramSpecs(c)) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    const a = new Float32Array(n);
    if (s.init === 'ones') a.fill(1);
    else if (s.init === 'normal') for (let i = 0; i < n; i++) a[i] = rng.normal() * s.std!;
    out.set(s.name, a);
  }
  return out;
}

/** Throws unless `w` holds every weight of the config at its size (a swap must never half-apply). */
export function checkWeights(c: GPTConfig, w: Weights): void {
  for (const s of paramSpecs(c)) {
    const data = w.get(s.name);
    if (!data || data.length !== s.shape.reduce((a, b) => a * b, 1)) throw new Error(`weights: ${s.name} missing or of the wrong size`);
  }
}

export type Params = Record<string, Tensor>;

/** Declares every weight as a graph input (so a hot swap is just new input tensors). */
export function declareParams(g: Graph, c: GPTConfig, dtype: DType, prefix = ''): Params {
  return Object.fromEntries(paramSpecs(c).map((s) => [s.name, g.input(prefix + s.name, dtype, s.shape)]));
}

/** Per-layer key/value cache. Keys are kept as [B, H, T, dh], or pre-transposed [B, H, dh, T]. */
export interface KV {
  k: Tensor;
  v: Tensor;
}

export interface ForwardInput {
  /** [B, T] token ids of the new tokens. */
  ids: Tensor;
  /** [B, T] absolute positions of the new tokens. */
  positions: Tensor;
  /** Additive attention bias [B, 1, T | 1, past + T]: 0 where allowed, large negative where not. */
  bias: Tensor;
  past?: KV[];
  /** Keys stored transposed ([B, H, dh, T]) so decoding never re-transposes the growing cache. */
  keysTransposed?: boolean;
}

/** The transformer: returns hidden states [B*T, d] after the final LayerNorm, and each layer's new cache. */
export function forward(c: GPTConfig, p: Params, x: ForwardInput): { hidden: Tensor; present: KV[] } {
  const d = c.dModel;
  const H = c.nHeads;
  const dh = d / H;
  const flat = (t: Tensor) => op.reshape(t, [-1, d]);
  // [B, T, H, dh] as a runtime shape: B and T are only known at run time.
  const bthd = op.concat([op.shapeOf(x.ids), op.int64s(x.ids.graph, [H, dh])], 0);
  const heads = (t: Tensor) => op.transpose(op.reshape(t, bthd, ['B', 'T', H, dh]), [0, 2, 1, 3]); // [B, H, T, dh]
  const linear = (t: Tensor, name: string) => op.add(op.matmul(t, p[`${name}.weight`]!), p[`${name}.bias`]!);
  const norm = (t: Tensor, name: string) => op.layerNorm(t, p[`${name}.weight`]!, p[`${name}.bias`]!);

  let h = flat(op.add(op.gather(p.wte!, x.ids), op.gather(p.wpe!, x.positions)));
  const present: KV[] = [];
  for (let i = 0; i < c.nLayers; i++) {
    const L = `h.${i}`;
    // attention
    const qkv = linear(norm(h, `${L}.ln_1`), `${L}.attn.c_attn`);
    const [qs, ks, vs] = op.split(qkv, [d, d, d], 1);
    const q = heads(op.mul(qs!, 1 / Math.sqrt(dh)));
    let k = heads(ks!);
    let v = heads(vs!);
    if (x.keysTransposed) k = op.transpose(k, [0, 1, 3, 2]);
    const past = x.past?.[i];
    if (past) {
      k = op.concat([past.k, k], x.keysTransposed ? 3 : 2);
      v = op.concat([past.v, v], 2);
    }
    present.push({ k, v });
    const scores = op.add(op.matmul(q, x.keysTransposed ? k : op.transpose(k, [0, 1, 3, 2])), x.bias);
    const att = op.matmul(op.softmax(scores, -1), v); // [B, H, T, dh]
    h = op.add(h, linear(flat(op.transpose(att, [0, 2, 1, 3])), `${L}.attn.c_proj`));
    // MLP
    h = op.add(h, linear(op.gelu(linear(norm(h, `${L}.ln_2`), `${L}.mlp.c_fc`)), `${L}.mlp.c_proj`));
  }
  return { hidden: norm(h, 'ln_f'), present };
}

/** Logits [rows, V] from hidden states [rows, d]. */
export function head(c: GPTConfig, p: Params, hidden: Tensor): Tensor {
  const logits = c.tiedHead ? op.gemm(hidden, p.wte!, { transB: true }) : op.matmul(hidden, p['lm_head.weight']!);
  if (c.padTokenId === undefined) return logits;
  const mask = new Float32Array(c.vocabSize);
  mask[c.padTokenId] = MASKED;
  return op.add(logits, op.constant(hidden.graph, hidden.dtype, Array.from(mask)));
}

export const MASKED = -1e9;

/**
 * Additive attention bias for T new queries over keys with mask keyMask [B, K]
 * (1 = real token, 0 = padding); the new queries are the last T of the K keys.
 */
export function attentionBias(keyMask: Tensor, queries: Tensor, dtype: DType): Tensor {
  const g = keyMask.graph;
  const keys = op.dimOf(keyMask, 1);
  const causal = op.causalMask(g, queries, keys, 'T', 'K'); // [T, K]
  const real = op.unsqueeze(op.equal(keyMask, op.int64(g, 1)), [1, 2]); // [B, 1, 1, K]
  const allowed = op.and(op.unsqueeze(causal, [0, 1]), real);
  return op.where(allowed, op.constant(g, dtype, 0), op.constant(g, dtype, MASKED));
}

/** Positions from a left-padded mask: the first real token is position 0. */
export function positionsFromMask(mask: Tensor): Tensor {
  const pos = op.sub(op.cumsum(mask, 1), op.int64(mask.graph, 1));
  return op.max(pos, op.int64(mask.graph, 0));
}

export function paramCount(c: GPTConfig): number {
  return paramSpecs(c).reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
}
