// The graphs the engine runs, all built from a model family (model/family.ts):
//  - prefill / decode: transformers.js-style names, for export and step-by-step use
//  - generate: prefill + the whole sampling loop inside one ONNX Loop (the fast path)
//  - score: per-token log-probs and entropies of given sequences
//  - loss and gradients: an objective's loss (objective.ts: supervised here, GRPO in ttrl/)
//    and its backward in one run(); the trainer applies AdamW to its own arrays (adamw.ts)
// Every graph takes optional LoRA adapters (model/lora.ts) beside the base weights.
import { Graph, type DType, type Tensor } from '../graph/ir.ts';
import * as op from '../graph/ops.ts';
import { grad } from '../graph/autodiff.ts';
import { declareParams, type ForwardInput, type KV, type ModelDims, type Params } from '../model/family.ts';
import { familyOf, type ModelConfig } from '../model/families.ts';
import { loraScale, loraSpecs, type LoraConfig } from '../model/lora.ts';
import type { WeightFile } from '../formats/weight-file.ts';
import type { LossTerms, Objective, SequenceInput, TokenInput } from './objective.ts';

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

/** A model's family functions and sizes, looked up once per graph. */
function model(c: ModelConfig) {
  const family = familyOf(c);
  const dims = family.dims(c);
  return { family, dims, specs: family.paramSpecs(c) };
}

/** Where a graph's weights come from: the base (inputs, or mapped from a file) and optional LoRA adapters (always inputs: a swap hands only them). */
export interface WeightOptions {
  weights?: WeightFile;
  lora?: LoraConfig;
}

/**
 * The model's values in graph `g`, and its forward with the adapters' scale bound in.
 * `quantized`: read the base's quantized weights as blocks (inference graphs only: nothing
 * differentiates through them).
 */
function declareModel(g: Graph, c: ModelConfig, dtype: DType, o: WeightOptions, quantized = false) {
  const { family, specs } = model(c);
  const adapterSpecs = o.lora ? loraSpecs(c, o.lora) : [];
  const p: Params = { ...declareParams(g, specs, dtype, '', o.weights, quantized), ...declareParams(g, adapterSpecs, dtype) };
  const scale = o.lora ? loraScale(o.lora) : undefined;
  const forward = (x: ForwardInput) => family.forward(c, p, { ...x, loraScale: scale });
  return { p, forward, specs, adapterSpecs };
}
type Forward = ReturnType<typeof declareModel>['forward'];

/** Logits [rows, V] from hidden states [rows, d]; a token the model must never predict gets MASKED. */
function logitsOf(c: ModelConfig, p: Params, hidden: Tensor): Tensor {
  const { family, dims } = model(c);
  const logits = family.head(c, p, hidden);
  if (dims.neverPredict === undefined) return logits;
  const mask = new Float32Array(dims.vocabSize);
  mask[dims.neverPredict] = MASKED;
  return op.add(logits, op.constant(hidden.graph, hidden.dtype, Array.from(mask)));
}

const cacheShape = (d: ModelDims, batch: string, seq: string, keysTransposed = false) =>
  keysTransposed ? [batch, d.kvHeads, d.headDim, seq] : [batch, d.kvHeads, seq, d.headDim];

/** Options of the inference graphs. weights: read the base from this file (mapped, shared by every worker) instead of taking it as inputs. */
export interface InferenceOptions extends WeightOptions {
  /** Use onnxruntime's fused kernels where the family has them (model/fused.ts). Default: on. */
  fused?: boolean;
  /** Multiply by the weights the file holds quantized in that form (MatMulNBits) rather than by their float32 values. Default: on. */
  quantized?: boolean;
}

// ---------- prefill / decode ----------

/** One forward step over new tokens, with (decode) or without (prefill) a past KV cache. */
export function buildDecoder(c: ModelConfig, withPast: boolean, dtype: DType = 'float32', o: InferenceOptions = {}): Graph {
  const { family, dims } = model(c);
  const fused = dtype === 'float32' && (o.fused ?? true) && family.fusable;
  const g = new Graph(withPast ? 'decode' : 'prefill');
  const { p, forward } = declareModel(g, c, dtype, o, o.quantized ?? true);
  const ids = g.input('input_ids', 'int64', ['batch', 'sequence']);
  const mask = g.input('attention_mask', 'int64', ['batch', 'total_sequence']);
  const positions = g.input('position_ids', 'int64', ['batch', 'sequence']);
  const past: KV[] | undefined = withPast
    ? Array.from({ length: dims.layers }, (_, i) => ({
        k: g.input(`past_key_values.${i}.key`, dtype, cacheShape(dims, 'batch', 'past_sequence')),
        v: g.input(`past_key_values.${i}.value`, dtype, cacheShape(dims, 'batch', 'past_sequence')),
      }))
    : undefined;
  const bias = attentionBias(mask, op.dimOf(ids, 1), dtype);
  const { hidden, present } = forward({ ids, positions, bias, past, fused });
  const shape = op.concat([op.shapeOf(ids), op.int64s(g, [dims.vocabSize])], 0);
  g.output('logits', op.reshape(logitsOf(c, p, hidden), shape, ['batch', 'sequence', dims.vocabSize]));
  present.forEach((kv, i) => {
    g.output(`present.${i}.key`, kv.k);
    g.output(`present.${i}.value`, kv.v);
  });
  return g;
}

// ---------- generate: the sampling loop in one graph ----------

/**
 * Inputs: weights; input_ids/attention_mask [P, L] (left-padded prompts); num_samples (G);
 * max_new_tokens; uniforms [max_new_tokens, P*G] (from a seeded JS RNG, so runs are
 * reproducible); temperature (0: greedy); top_k (0: no limit); top_p; stop_tokens [S];
 * pad_token. Outputs: tokens and logprobs [steps, P*G] (row i*G+j is sample j of prompt i;
 * steps <= max_new_tokens: the loop ends early once every sequence has stopped). Log-probs
 * are under the temperature-scaled distribution (unscaled when greedy), before top-k/top-p
 * truncation; 0 after the stop.
 */
export function buildGenerate(c: ModelConfig, o: InferenceOptions = {}): Graph {
  const { family, dims } = model(c);
  const dtype: DType = 'float32';
  const fused = (o.fused ?? true) && family.fusable;
  const keysTransposed = true; // so decoding never re-transposes the growing cache
  const g = new Graph('generate');
  const { p, forward } = declareModel(g, c, dtype, o, o.quantized ?? true);
  const ids = g.input('input_ids', 'int64', ['prompts', 'prompt_len']);
  const mask = g.input('attention_mask', 'int64', ['prompts', 'prompt_len']);
  const numSamples = g.input('num_samples', 'int64', []);
  const maxNew = g.input('max_new_tokens', 'int64', []);
  const uniforms = g.input('uniforms', dtype, ['max_new_tokens', 'B']);
  const sampling: Sampling = {
    temperature: g.input('temperature', dtype, []),
    topK: g.input('top_k', 'int64', []),
    topP: g.input('top_p', dtype, []),
  };
  const stops = g.input('stop_tokens', 'int64', ['stops']);
  const padTok = g.input('pad_token', 'int64', []);

  // Prefill each distinct prompt once, then repeat its cache for the G samples.
  const bias = attentionBias(mask, op.dimOf(ids, 1), dtype);
  const pre = forward({ ids, positions: positionsFromMask(mask), bias, keysTransposed, fused });
  const P = op.reshape(op.dimOf(ids, 0), [1]);
  const G = op.reshape(numSamples, [1]);
  const repeat = (t: Tensor, name: string) => repeatRows(t, P, G, name);
  const d = dims.hiddenSize;
  const byPrompt = op.reshape(pre.hidden, op.concat([op.shapeOf(ids), op.int64s(g, [d])], 0), ['P', 'L', d]);
  const lastHidden = op.squeeze(op.slice(byPrompt, [-1], [2 ** 62], [1]), [1]); // left padding: every prompt ends here
  const firstLogits = repeat(logitsOf(c, p, lastHidden), 'B');
  const caches = pre.present.flatMap((kv) => [repeat(kv.k, 'B'), repeat(kv.v, 'B')]);
  const keyMask = repeat(mask, 'B');
  const nextPos = op.reduceSum(keyMask, [1]); // real prompt length = next position
  // The first token comes from the prefill's logits; each loop step then runs the model on
  // the last token and samples the next, so N new tokens cost exactly N - 1 model steps.
  const first = pickToken(firstLogits, op.gather(uniforms, op.int64(g, 0)), sampling, stops, null, padTok, 'first');

  const body = new Graph('sample_step', g);
  const iter = body.input('iter', 'int64', []);
  body.input('cond_in', 'bool', []);
  const prev = body.input('token_in', 'int64', ['B']);
  const pos = body.input('pos_in', 'int64', ['B']);
  const kmask = body.input('mask_in', 'int64', ['B', 'K']);
  const finished = body.input('finished_in', 'bool', ['B']);
  const past: KV[] = Array.from({ length: dims.layers }, (_, i) => ({
    k: body.input(`k_in${i}`, dtype, cacheShape(dims, 'B', 'K', keysTransposed)),
    v: body.input(`v_in${i}`, dtype, cacheShape(dims, 'B', 'K')),
  }));
  const ones = op.constantOfShape(op.concat([op.reshape(op.dimOf(kmask, 0), [1]), op.int64s(body, [1])], 0), 'int64', 1, ['B', 1]);
  const newMask = op.concat([kmask, ones], 1);
  const step = forward({
    ids: op.unsqueeze(prev, [1]),
    positions: op.unsqueeze(pos, [1]),
    bias: attentionBias(newMask, op.int64(body, 1), dtype),
    past,
    keysTransposed,
    fused,
  });
  const next = pickToken(logitsOf(c, p, step.hidden), op.gather(uniforms, op.add(iter, op.int64(body, 1))), sampling, stops, finished, padTok, 'step');
  body.output('cond_out', anyUnfinished(next.finished));
  body.output('token_out', next.token);
  body.output('pos_out', op.add(pos, op.int64(body, 1)));
  body.output('mask_out', newMask);
  body.output('finished_out', next.finished);
  step.present.forEach((kv, i) => {
    body.output(`k_out${i}`, kv.k);
    body.output(`v_out${i}`, kv.v);
  });
  body.output('token_scan', next.token);
  body.output('logprob_scan', next.logprob);

  const steps = op.sub(maxNew, op.int64(g, 1));
  const outs = op.loop(g, steps, anyUnfinished(first.finished), [first.token, nextPos, keyMask, first.finished, ...caches], body);
  const nCarried = 4 + caches.length;
  g.output('tokens', op.concat([op.unsqueeze(first.token, [0]), outs[nCarried]!], 0));
  g.output('logprobs', op.concat([op.unsqueeze(first.logprob, [0]), outs[nCarried + 1]!], 0));
  return g;
}

/**
 * Samples a token per row, then: rows already finished get the pad token (log-prob 0), and a
 * row finishes when its token is one of `stops` [S].
 */
function pickToken(logits: Tensor, u: Tensor, s: Sampling, stops: Tensor, finished: Tensor | null, padTok: Tensor, tag: string) {
  const g = logits.graph;
  const sampled = sampleToken(logits, u, s, tag);
  const token = finished ? op.where(finished, padTok, sampled.token) : sampled.token;
  const logprob = finished ? op.where(finished, op.constant(g, 'float32', 0), sampled.logprob) : sampled.logprob;
  const isStop = op.greater(op.reduceMax(op.cast(op.equal(op.unsqueeze(token, [1]), op.unsqueeze(stops, [0])), 'int64'), [1]), op.int64(g, 0));
  return { token, logprob, finished: finished ? op.or(finished, isStop) : isStop };
}

const anyUnfinished = (finished: Tensor) => op.greater(op.reduceSum(op.cast(op.not(finished), 'int64'), [0]), op.int64(finished.graph, 0));

/** [P, ...rest] -> [P*G, ...rest]: row i repeated G times (P, G: int64 [1] tensors). */
function repeatRows(t: Tensor, P: Tensor, G: Tensor, name = 'B'): Tensor {
  const g = t.graph;
  const rest = op.slice(op.shapeOf(t), [1], [2 ** 62], [0]);
  const expanded = op.expand(op.unsqueeze(t, [1]), op.concat([P, G, rest], 0), ['P', 'G', ...t.shape.slice(1)]);
  return op.reshape(expanded, op.concat([op.int64s(g, [-1]), rest], 0), [name, ...t.shape.slice(1)]);
}

/** Scalar sampling settings, as graph values: temperature (0: greedy), top_k (0: all tokens), top_p. */
export interface Sampling {
  temperature: Tensor;
  topK: Tensor;
  topP: Tensor;
}

/**
 * One token per row from logits [B, V], and its log-prob. Greedy (argmax) when the temperature
 * is 0; otherwise inverse-CDF sampling with u in [0, 1) per row. Without truncation the CDF
 * runs over the vocabulary in id order (no sort: vocabularies reach 150K); with top_k or
 * top_p < 1 over the k most likely (all when top_k is 0), cut to the nucleus top_p.
 */
export function sampleToken(logits: Tensor, u: Tensor, s: Sampling, tag = 'sample'): { token: Tensor; logprob: Tensor } {
  const outer = logits.graph;
  const V = logits.shape[1] as number;
  const pick = (lp: Tensor, token: Tensor) => op.squeeze(op.gatherElements(lp, op.unsqueeze(token, [1]), 1), [1]);

  const greedy = new Graph(`${tag}_greedy`, outer);
  const gLogits = op.capture(greedy, logits);
  const gToken = op.argmax(gLogits, 1);
  greedy.output(`${tag}_greedy_token`, gToken);
  greedy.output(`${tag}_greedy_logprob`, pick(op.logSoftmax(gLogits, -1), gToken));

  const sample = new Graph(`${tag}_sample`, outer);
  const lp = op.logSoftmax(op.div(op.capture(sample, logits), s.temperature), -1);
  const truncate = op.or(op.greater(s.topK, op.int64(sample, 0)), op.less(s.topP, op.constant(sample, 'float32', 1)));

  const nucleus = new Graph(`${tag}_nucleus`, sample);
  const nLp = op.capture(nucleus, lp);
  const k = op.where(op.greater(s.topK, op.int64(nucleus, 0)), op.min(s.topK, op.int64(nucleus, V)), op.int64(nucleus, V));
  const [sortedLp, order] = op.topk(nLp, op.reshape(k, [1]));
  const sortedP = op.exp(sortedLp);
  const keep = op.less(op.cumsum(sortedP, 1, { exclusive: true }), s.topP); // the most likely token is always kept
  const kept = op.where(keep, sortedP, 0);
  // On a rounding miss the sorted fallback, index 0, is the most likely token.
  const rank = firstAbove(op.cumsum(kept, 1), op.mul(op.unsqueeze(u, [1]), op.reduceSum(kept, [1], true)), op.int64(nucleus, 0));
  nucleus.output(`${tag}_nucleus_token`, op.squeeze(op.gatherElements(order, op.unsqueeze(rank, [1]), 1), [1]));

  const full = new Graph(`${tag}_full`, sample);
  const fLp = op.capture(full, lp);
  const cdf = op.cumsum(op.exp(fLp), 1);
  full.output(`${tag}_full_token`, firstAbove(cdf, op.mul(op.unsqueeze(u, [1]), op.slice(cdf, [-1], [2 ** 62], [1])), op.argmax(fLp, 1)));

  const [sToken] = op.ifElse(sample, truncate, nucleus, full);
  sample.output(`${tag}_sample_token`, sToken!);
  sample.output(`${tag}_sample_logprob`, pick(lp, sToken!));

  const [token, logprob] = op.ifElse(outer, op.lessOrEqual(s.temperature, op.constant(outer, 'float32', 0)), greedy, sample);
  return { token: token!, logprob: logprob! };
}

/** Per row of cdf [B, N], the first index whose value exceeds threshold [B, 1]; `fallback` [B] where none does (rounding). */
function firstAbove(cdf: Tensor, threshold: Tensor, fallback: Tensor): Tensor {
  const above = op.cast(op.greater(cdf, threshold), 'float32');
  return op.where(op.greater(op.reduceMax(above, [1]), op.constant(cdf.graph, 'float32', 0)), op.argmax(above, 1), fallback);
}

// ---------- losses ----------

/** Log-probs of `targets` and entropies from logits [B, T, V]. */
function tokenStats(logits: Tensor, targets: Tensor) {
  const lp = op.logSoftmax(logits, -1);
  const tokenLp = op.squeeze(op.gatherElements(lp, op.unsqueeze(targets, [-1]), -1), [-1]);
  const entropy = op.neg(op.reduceSum(op.mul(op.exp(lp), lp), [-1]));
  return { tokenLp, entropy };
}

/** Logits [B, T, V] from hidden states [B*T, d], with B and T taken from `like` [B, T]. */
function logitsLike(c: ModelConfig, p: Params, hidden: Tensor, like: Tensor): Tensor {
  const V = model(c).dims.vocabSize;
  const shape = op.concat([op.shapeOf(like), op.int64s(like.graph, [V])], 0);
  return op.reshape(logitsOf(c, p, hidden), shape, ['B', 'T', V]);
}

/** Token log-probs and entropies of sequences [B, T]: result column t scores token t+1. */
function scoreTokens(c: ModelConfig, p: Params, forward: Forward, ids: Tensor, mask: Tensor, dtype: DType) {
  const inputs = op.slice(ids, [0], [-1], [1]);
  const inMask = op.slice(mask, [0], [-1], [1]);
  const bias = attentionBias(inMask, op.dimOf(inputs, 1), dtype);
  const { hidden } = forward({ ids: inputs, positions: positionsFromMask(inMask), bias });
  return tokenStats(logitsLike(c, p, hidden, inputs), op.slice(ids, [1], [2 ** 62], [1]));
}

/**
 * The grouped layout of GRPO batches: G completions per prompt. Each prompt [P, Lp]
 * (left-padded) runs once; its KV cache is repeated for its G completions [P*G, Lc]
 * (right-padded, rows i*G.. of prompt i), which attend to it. Column t scores completion
 * token t. Saves the prompt's share of the work G-1 times over.
 */
function scoreGrouped(c: ModelConfig, p: Params, forward: Forward, promptIds: Tensor, promptMask: Tensor, ids: Tensor, mask: Tensor, dtype: DType) {
  const g = ids.graph;
  const P = op.reshape(op.dimOf(promptIds, 0), [1]);
  const G = op.div(op.reshape(op.dimOf(ids, 0), [1]), P);
  const repeat = (t: Tensor) => repeatRows(t, P, G);
  const { dims } = model(c);
  const pre = forward({
    ids: promptIds,
    positions: positionsFromMask(promptMask),
    bias: attentionBias(promptMask, op.dimOf(promptIds, 1), dtype),
  });
  const past = pre.present.map((kv) => ({ k: repeat(kv.k), v: repeat(kv.v) }));
  const promptLen = op.unsqueeze(repeat(op.reduceSum(promptMask, [1])), [1]);
  const positions = op.add(promptLen, op.max(op.sub(op.cumsum(mask, 1), op.int64(g, 1)), op.int64(g, 0)));
  const bias = attentionBias(op.concat([repeat(promptMask), mask], 1), op.dimOf(ids, 1), dtype);
  const { hidden } = forward({ ids, positions, bias, past });
  // Completion token t is predicted by the prompt's last position (t = 0) or completion position t-1.
  const d = dims.hiddenSize;
  const byRow = (h: Tensor, like: Tensor) => op.reshape(h, op.concat([op.shapeOf(like), op.int64s(g, [d])], 0), ['B', 'T', d]);
  const lastPrompt = repeat(op.slice(byRow(pre.hidden, promptIds), [-1], [2 ** 62], [1]));
  const predictors = op.concat([lastPrompt, op.slice(byRow(hidden, ids), [0], [-1], [1])], 1);
  return tokenStats(logitsLike(c, p, op.reshape(predictors, [-1, d]), ids), ids);
}

export type BatchLayout = 'flat' | 'grouped';

/**
 * Declares the batch inputs, scores the trained tokens and hands them to the objective.
 * flat: input_ids, attention_mask, loss_mask (and per-token inputs) [B, T], position t for token t.
 * grouped: prompt_ids, prompt_mask [P, Lp]; input_ids, attention_mask, loss_mask (...) [P*G, Lc] of the completions.
 */
function buildLoss(g: Graph, c: ModelConfig, p: Params, forward: Forward, objective: Objective, dtype: DType, layout: BatchLayout) {
  const ids = g.input('input_ids', 'int64', ['B', 'T']);
  const mask = g.input('attention_mask', 'int64', ['B', 'T']);
  const lossMask = g.input('loss_mask', dtype, ['B', 'T']);
  // Per-token inputs aligned with the scored tokens: flat scores tokens 1.., grouped every completion token.
  const aligned = (t: Tensor) => (layout === 'flat' ? op.slice(t, [1], [2 ** 62], [1]) : t);
  const { tokenLp, entropy } =
    layout === 'flat'
      ? scoreTokens(c, p, forward, ids, mask, dtype)
      : scoreGrouped(c, p, forward, g.input('prompt_ids', 'int64', ['P', 'Lp']), g.input('prompt_mask', 'int64', ['P', 'Lp']), ids, mask, dtype);
  const terms: LossTerms = {
    graph: g,
    dtype,
    tokenLogprobs: tokenLp,
    entropy,
    weights: aligned(lossMask),
    token: (name: TokenInput) => aligned(g.input(name, dtype, ['B', 'T'])),
    sequence: (name: SequenceInput) => g.input(name, dtype, ['B']),
    scalar: (name: string) => g.input(name, dtype, []),
  };
  return objective.build(terms);
}

/** Options of the train-step graph: with lora, the base is frozen (inputs, or mapped from `weights`) and only the adapters get gradients. */
export type TrainGraphOptions = WeightOptions;

/**
 * params and a batch -> the loss, its statistics and the gradient of every trained tensor
 * (grad.<name>: every weight, or with LoRA the adapters only), with their global L2 norm
 * (grad_norm): what a train step runs; the update itself is engine/adamw.ts. float64 for the
 * gradient checks.
 */
export function buildLossAndGrad(
  c: ModelConfig,
  objective: Objective,
  dtype: DType = 'float64',
  layout: BatchLayout = 'flat',
  o: TrainGraphOptions = {},
): Graph {
  if (o.weights && !o.lora) throw new Error('buildLossAndGrad: a mapped base is frozen, so it needs LoRA adapters to train');
  const g = new Graph('loss');
  const { p, forward, specs, adapterSpecs } = declareModel(g, c, dtype, o);
  const { loss, stats } = buildLoss(g, c, p, forward, objective, dtype, layout);
  g.output('loss', loss);
  for (const [name, t] of Object.entries(stats)) g.output(name, t);
  const trained = o.lora ? adapterSpecs : specs;
  const grads = grad(
    loss,
    trained.map((s) => p[s.name]!),
  );
  g.output('grad_norm', op.sqrt(grads.map((gr) => op.reduceSumSquare(gr)).reduce((a, b) => op.add(a, b))));
  grads.forEach((gr, i) => g.output(`grad.${trained[i]!.name}`, gr));
  return g;
}

/** Token log-probs and entropies [B, T-1] of given sequences (e.g. reference log-probs for KL). */
export function buildScore(c: ModelConfig, dtype: DType = 'float32', o: WeightOptions = {}): Graph {
  const g = new Graph('score');
  const { p, forward } = declareModel(g, c, dtype, o);
  const ids = g.input('input_ids', 'int64', ['B', 'T']);
  const mask = g.input('attention_mask', 'int64', ['B', 'T']);
  const { tokenLp, entropy } = scoreTokens(c, p, forward, ids, mask, dtype);
  g.output('token_logprobs', tokenLp);
  g.output('entropy', entropy);
  return g;
}
