// The seam between the engine and model families. A family (gpt.ts, llama.ts) says which
// weights it has and how its forward pass turns new tokens (and an optional past cache) into
// hidden states; engine/graphs.ts builds every graph (prefill/decode, generate, score, train
// step) from that alone. Configs are plain data, so they cross worker boundaries; each names
// its family, and families.ts maps the name to the functions.
import type { DType, Graph, Tensor } from '../graph/ir.ts';
import type { Rng } from '../util/rng.ts';
import type { WeightFile } from '../formats/weight-file.ts';
import { QuantizedTensor } from '../graph/quantized.ts';

export interface ParamSpec {
  name: string;
  shape: number[];
  /** Weight decay applies to matrices, not to biases, norms or embeddings. */
  decay: boolean;
  init: 'normal' | 'zeros' | 'ones' | 'uniform';
  std?: number;
  /** 'uniform' draws from [-bound, bound] (LoRA's A, as PEFT's kaiming-uniform init). */
  bound?: number;
}

/** What the graphs need to know of any model: sizes, and the cache it keeps per layer. */
export interface ModelDims {
  vocabSize: number;
  contextLength: number;
  hiddenSize: number;
  layers: number;
  /** Key/value heads of the cache (fewer than query heads under grouped-query attention). */
  kvHeads: number;
  headDim: number;
  /** A token the model must never predict (our own models' padding token): its logit is masked in every graph. */
  neverPredict?: number;
}

export type Weights = Map<string, Float32Array>;
export type Params = Record<string, Tensor>;

/** One layer's key/value cache: [B, kvHeads, T, headDim], keys optionally pre-transposed to [B, kvHeads, headDim, T]. */
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
  /** Keys stored transposed so decoding never re-transposes the growing cache. */
  keysTransposed?: boolean;
  /** Use onnxruntime's fused kernels where the family has them (fused.ts; inference graphs only). */
  fused?: boolean;
  /** alpha / rank of the LoRA adapters among the params (model/lora.ts); without adapters, unused. */
  loraScale?: number;
}

export interface ModelFamily<C> {
  dims(c: C): ModelDims;
  paramSpecs(c: C): ParamSpec[];
  /** Hidden states [B*T, hiddenSize] after the final norm, and each layer's cache including the new tokens. */
  forward(c: C, p: Params, x: ForwardInput): { hidden: Tensor; present: KV[] };
  /** Logits [rows, vocabSize] from hidden states [rows, hiddenSize]. */
  head(c: C, p: Params, hidden: Tensor): Tensor;
  /** Whether forward honours ForwardInput.fused. */
  fusable: boolean;
  /** How linear weights are stored: [in, out] (GPT-2's Conv1D: PEFT's fan_in_fan_out) or [out, in] (nn.Linear). */
  weightLayout: 'in-out' | 'out-in';
  /** Module-name suffixes whose forward goes through model/lora.ts's loraLinear: what LoRA can adapt. */
  linearModules: string[];
  /** The LoRA targets when none are given: attention and MLP projections. */
  loraTargets: string[];
  /**
   * The weights forward and head read through graph/quantized.ts (multiplied or gathered), so
   * they may be served as quantized blocks, with their layout: 'out-in' is stored as it is,
   * 'in-out' transposed first (the blocks always run along the input features).
   */
  quantizable(c: C): Map<string, 'out-in' | 'in-out'>;
}

const elements = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

export function paramCount(specs: ParamSpec[]): number {
  return specs.reduce((n, s) => n + elements(s.shape), 0);
}

/**
 * Declares every weight: read from `file` when given (float32 only; the session maps the
 * file, shared by every worker), else a graph input (a hot swap is just new input tensors).
 * `quantized`: weights the file also holds as MatMulNBits blocks are read in that form
 * (inference graphs; graph/quantized.ts), the others as float32.
 */
export function declareParams(g: Graph, specs: ParamSpec[], dtype: DType, prefix = '', file?: WeightFile, quantized = false): Params {
  if (file && dtype !== 'float32') throw new Error('declareParams: weight files hold float32');
  const declare = (s: ParamSpec): Tensor => {
    const q = quantized ? file?.quantized?.[s.name] : undefined;
    if (q) {
      const blocks = q.cols / q.blockSize;
      const part = (suffix: string, dt: DType, shape: number[], offset: number, bytes: number) =>
        g.external(`${prefix}${s.name}${suffix}`, dt, shape, { location: q.file, offset, length: bytes });
      const blockBytes = (q.blockSize * q.bits) / 8;
      const parts = {
        data: part('#nbits.data', 'uint8', [q.rows, blocks, blockBytes], q.data, q.rows * blocks * blockBytes),
        scales: part('#nbits.scales', 'float32', [q.rows * blocks], q.scales, q.rows * blocks * 4),
        ...(q.offsets === undefined ? {} : { offsets: part('#nbits.offsets', 'float32', [q.rows, blocks], q.offsets, q.rows * blocks * 4) }),
      };
      return new QuantizedTensor(g, s.shape, prefix + s.name, parts, { bits: q.bits, blockSize: q.blockSize, rows: q.rows, cols: q.cols });
    }
    const t = file?.tensors[s.name];
    if (!t) return g.input(prefix + s.name, dtype, s.shape);
    return g.external(prefix + s.name, dtype, s.shape, { location: t.file, offset: t.offset, length: elements(s.shape) * 4 });
  };
  return Object.fromEntries(specs.map((s) => [s.name, declare(s)]));
}

export function initWeights(specs: ParamSpec[], rng: Rng): Weights {
  const out: Weights = new Map();
  for (const s of specs) {
    const a = new Float32Array(elements(s.shape));
    if (s.init === 'ones') a.fill(1);
    else if (s.init === 'normal') for (let i = 0; i < a.length; i++) a[i] = rng.normal() * s.std!;
    else if (s.init === 'uniform') for (let i = 0; i < a.length; i++) a[i] = (2 * rng.next() - 1) * s.bound!;
    out.set(s.name, a);
  }
  return out;
}

/** Throws unless `w` holds every weight at its size (a swap must never half-apply). */
export function checkWeights(specs: ParamSpec[], w: Weights): void {
  for (const s of specs) {
    const data = w.get(s.name);
    if (!data || data.length !== elements(s.shape)) throw new Error(`weights: ${s.name} missing or of the wrong size`);
  }
}
