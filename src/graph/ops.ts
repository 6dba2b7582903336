// Op builders: each adds one standard ONNX node (opset 20) and infers its output
// dtype and shape. Composite ops (rmsNorm, silu, causalMask) are built from these, so
// autodiff needs rules for the primitives only.
import { attr, broadcastShapes, graphOf, makeArray, Tensor, type Attr, type DType, type Dim, type Graph, type Shape } from './ir.ts';

type Operand = Tensor | number;

// ---------- constants ----------

export function constant(g: Graph, dtype: DType, values: number[] | number, shape?: number[]): Tensor {
  const arr = typeof values === 'number' ? [values] : values;
  return g.constant({ dtype, shape: shape ?? (typeof values === 'number' ? [] : [arr.length]), data: makeArray(dtype, arr) });
}
export const int64s = (g: Graph, values: number[]) => constant(g, 'int64', values);
export const int64 = (g: Graph, v: number) => constant(g, 'int64', v);

/** Turns a JS number into a scalar constant of `like`'s dtype, next to it. */
function lift(x: Operand, like: Tensor): Tensor {
  return x instanceof Tensor ? x : constant(like.graph, like.dtype, x);
}
function pair(a: Operand, b: Operand): [Tensor, Tensor] {
  const like = a instanceof Tensor ? a : (b as Tensor);
  return [lift(a, like), lift(b, like)];
}
function one(g: Graph, op: string, inputs: (Tensor | null)[], dtype: DType, shape: Shape, attrs: Record<string, Attr> = {}): Tensor {
  return g.node(op, inputs, attrs, [{ dtype, shape }])[0]!;
}

// ---------- elementwise ----------

function binary(op: string, a: Operand, b: Operand, outDtype?: DType): Tensor {
  const [x, y] = pair(a, b);
  if (x.dtype !== y.dtype) throw new Error(`${op}: dtype mismatch ${x.dtype} vs ${y.dtype}`);
  return one(graphOf(x, y), op, [x, y], outDtype ?? x.dtype, broadcastShapes(x.shape, y.shape));
}
export const add = (a: Operand, b: Operand) => binary('Add', a, b);
export const sub = (a: Operand, b: Operand) => binary('Sub', a, b);
export const mul = (a: Operand, b: Operand) => binary('Mul', a, b);
export const div = (a: Operand, b: Operand) => binary('Div', a, b);
export const pow = (a: Operand, b: Operand) => binary('Pow', a, b);
export const max = (a: Operand, b: Operand) => binary('Max', a, b);
export const min = (a: Operand, b: Operand) => binary('Min', a, b);
export const equal = (a: Operand, b: Operand) => binary('Equal', a, b, 'bool');
export const less = (a: Operand, b: Operand) => binary('Less', a, b, 'bool');
export const lessOrEqual = (a: Operand, b: Operand) => binary('LessOrEqual', a, b, 'bool');
export const greater = (a: Operand, b: Operand) => binary('Greater', a, b, 'bool');
export const greaterOrEqual = (a: Operand, b: Operand) => binary('GreaterOrEqual', a, b, 'bool');
export const and = (a: Tensor, b: Tensor) => binary('And', a, b);
export const or = (a: Tensor, b: Tensor) => binary('Or', a, b);

function unary(op: string, x: Tensor, dtype: DType = x.dtype, attrs: Record<string, Attr> = {}): Tensor {
  return one(x.graph, op, [x], dtype, x.shape, attrs);
}
export const neg = (x: Tensor) => unary('Neg', x);
export const exp = (x: Tensor) => unary('Exp', x);
export const log = (x: Tensor) => unary('Log', x);
export const sqrt = (x: Tensor) => unary('Sqrt', x);
export const tanh = (x: Tensor) => unary('Tanh', x);
export const cos = (x: Tensor) => unary('Cos', x);
export const sin = (x: Tensor) => unary('Sin', x);
export const sigmoid = (x: Tensor) => unary('Sigmoid', x);
export const abs = (x: Tensor) => unary('Abs', x);
export const relu = (x: Tensor) => unary('Relu', x);
export const not = (x: Tensor) => unary('Not', x);
export const isNaN = (x: Tensor) => unary('IsNaN', x, 'bool');
export const isInf = (x: Tensor) => unary('IsInf', x, 'bool');
export const identity = (x: Tensor) => unary('Identity', x);
export const cast = (x: Tensor, to: DType) => (x.dtype === to ? x : unary('Cast', x, to, { to: attr.int(ONNX_DTYPE[to]) }));

export function where(cond: Tensor, a: Operand, b: Operand): Tensor {
  const [x, y] = pair(a, b);
  const shape = broadcastShapes(cond.shape, broadcastShapes(x.shape, y.shape));
  return one(graphOf(cond, x, y), 'Where', [cond, x, y], x.dtype, shape);
}

export function clip(x: Tensor, lo: number, hi: number): Tensor {
  return one(graphOf(x), 'Clip', [x, lift(lo, x), lift(hi, x)], x.dtype, x.shape);
}

// ---------- linear algebra ----------

export function matmul(a: Tensor, b: Tensor): Tensor {
  if (a.rank < 2 || b.rank < 2) throw new Error('matmul: both operands need rank >= 2');
  const batch = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2));
  return one(graphOf(a, b), 'MatMul', [a, b], a.dtype, [...batch, a.shape[a.rank - 2]!, b.shape[b.rank - 1]!]);
}

/** 2-D GEMM: alpha * op(a) @ op(b) (+ c), op = transpose when the flag is set. */
export function gemm(a: Tensor, b: Tensor, o: { transA?: boolean; transB?: boolean; c?: Tensor; alpha?: number } = {}): Tensor {
  const rows = o.transA ? a.shape[1]! : a.shape[0]!;
  const cols = o.transB ? b.shape[0]! : b.shape[1]!;
  const attrs: Record<string, Attr> = { transA: attr.int(o.transA ? 1 : 0), transB: attr.int(o.transB ? 1 : 0) };
  if (o.alpha !== undefined) attrs.alpha = attr.float(o.alpha);
  const inputs = o.c ? [a, b, o.c] : [a, b];
  return one(graphOf(a, b, o.c), 'Gemm', inputs, a.dtype, [rows, cols], attrs);
}

// ---------- indexing ----------

export function gather(data: Tensor, indices: Tensor, axis = 0): Tensor {
  const ax = normAxis(axis, data.rank);
  const shape = [...data.shape.slice(0, ax), ...indices.shape, ...data.shape.slice(ax + 1)];
  return one(graphOf(data, indices), 'Gather', [data, indices], data.dtype, shape, { axis: attr.int(ax) });
}

export function gatherElements(data: Tensor, indices: Tensor, axis: number): Tensor {
  return one(graphOf(data, indices), 'GatherElements', [data, indices], data.dtype, indices.shape, {
    axis: attr.int(normAxis(axis, data.rank)),
  });
}

/** data with `updates` added at `indices` (reduction add): the gradient of gather. */
export function scatterNDAdd(data: Tensor, indices: Tensor, updates: Tensor): Tensor {
  return one(graphOf(data, indices, updates), 'ScatterND', [data, indices, updates], data.dtype, data.shape, {
    reduction: attr.string('add'),
  });
}

export function scatterElementsAdd(data: Tensor, indices: Tensor, updates: Tensor, axis: number): Tensor {
  return one(graphOf(data, indices, updates), 'ScatterElements', [data, indices, updates], data.dtype, data.shape, {
    axis: attr.int(normAxis(axis, data.rank)),
    reduction: attr.string('add'),
  });
}

// ---------- shape ops ----------

/** Splits x along `axis` into pieces of the given static sizes. */
export function split(x: Tensor, sizes: number[], axis: number): Tensor[] {
  const ax = normAxis(axis, x.rank);
  const outs = sizes.map((n) => ({ dtype: x.dtype, shape: x.shape.map((d, i) => (i === ax ? n : d)) }));
  return x.graph.node('Split', [x, int64s(x.graph, sizes)], { axis: attr.int(ax) }, outs);
}

export function shapeOf(x: Tensor): Tensor {
  return one(x.graph, 'Shape', [x], 'int64', [x.rank]);
}

/** Size of one dimension, as an int64 scalar tensor. */
export function dimOf(x: Tensor, axis: number): Tensor {
  return gather(shapeOf(x), int64(x.graph, normAxis(axis, x.rank)));
}

/**
 * Reshape with a static spec (0 copies the input dim, -1 is inferred) or a runtime shape tensor
 * (then `outShape` names the result's dims).
 */
export function reshape(x: Tensor, spec: number[] | Tensor, outShape?: Shape): Tensor {
  if (spec instanceof Tensor) {
    if (!outShape) throw new Error('reshape by a shape tensor needs outShape');
    return one(graphOf(x, spec), 'Reshape', [x, spec], x.dtype, outShape);
  }
  const shape = outShape ?? inferReshape(x.shape, spec);
  return one(x.graph, 'Reshape', [x, int64s(x.graph, spec)], x.dtype, shape);
}

export function transpose(x: Tensor, perm: number[]): Tensor {
  return one(
    x.graph,
    'Transpose',
    [x],
    x.dtype,
    perm.map((p) => x.shape[p]!),
    { perm: attr.ints(perm) },
  );
}

export function concat(xs: Tensor[], axis: number): Tensor {
  const ax = normAxis(axis, xs[0]!.rank);
  const shape = [...xs[0]!.shape];
  shape[ax] = sumDims(xs.map((x) => x.shape[ax]!));
  return one(graphOf(...xs), 'Concat', xs, xs[0]!.dtype, shape, { axis: attr.int(ax) });
}

/** Slice with static bounds (steps of 1). Negative bounds count from the end, as in ONNX. */
export function slice(x: Tensor, starts: number[], ends: number[], axes: number[]): Tensor {
  const g = x.graph;
  const shape = [...x.shape];
  axes.forEach((a, i) => {
    const d = x.shape[normAxis(a, x.rank)]!;
    shape[normAxis(a, x.rank)] = sliceLength(d, starts[i]!, ends[i]!);
  });
  const nodeAxes = axes.map((a) => normAxis(a, x.rank));
  return one(g, 'Slice', [x, int64s(g, starts), int64s(g, ends), int64s(g, nodeAxes)], x.dtype, shape);
}

export function unsqueeze(x: Tensor, axes: number[]): Tensor {
  const rank = x.rank + axes.length;
  const norm = axes.map((a) => normAxis(a, rank)).sort((a, b) => a - b);
  const shape: Dim[] = [...x.shape];
  for (const a of norm) shape.splice(a, 0, 1);
  return one(x.graph, 'Unsqueeze', [x, int64s(x.graph, norm)], x.dtype, shape);
}

export function squeeze(x: Tensor, axes: number[]): Tensor {
  const norm = axes.map((a) => normAxis(a, x.rank));
  return one(
    x.graph,
    'Squeeze',
    [x, int64s(x.graph, norm)],
    x.dtype,
    x.shape.filter((_, i) => !norm.includes(i)),
  );
}

/** Broadcasts x to a runtime shape; `outShape` names the result's dims. */
export function expand(x: Tensor, shape: Tensor, outShape: Shape): Tensor {
  return one(graphOf(x, shape), 'Expand', [x, shape], x.dtype, outShape);
}

export function pad(x: Tensor, pads: Tensor): Tensor {
  return one(
    graphOf(x, pads),
    'Pad',
    [x, pads],
    x.dtype,
    x.shape.map((d, i) => `pad${i}(${d})`),
  );
}

export function constantOfShape(shape: Tensor, dtype: DType, value: number, outShape: Shape): Tensor {
  return one(shape.graph, 'ConstantOfShape', [shape], dtype, outShape, {
    value: attr.tensor({ dtype, shape: [1], data: makeArray(dtype, [value]) }),
  });
}

export const zerosLike = (x: Tensor) => constantOfShape(shapeOf(x), x.dtype, 0, x.shape);

export function range(start: Tensor, limit: Tensor, delta: Tensor, dim: Dim = 'range'): Tensor {
  return one(graphOf(start, limit, delta), 'Range', [start, limit, delta], start.dtype, [dim]);
}

export function cumsum(x: Tensor, axis: number, o: { exclusive?: boolean } = {}): Tensor {
  return one(graphOf(x), 'CumSum', [x, int64(x.graph, normAxis(axis, x.rank))], x.dtype, x.shape, {
    exclusive: attr.int(o.exclusive ? 1 : 0),
  });
}

/** Largest k values along the last axis, sorted descending: [values, indices]. k: a number or an int64 [1] tensor. */
export function topk(x: Tensor, k: number | Tensor): [Tensor, Tensor] {
  const shape = [...x.shape.slice(0, -1), typeof k === 'number' ? k : 'k'];
  const kT = typeof k === 'number' ? int64s(x.graph, [k]) : k;
  const [v, i] = graphOf(x, kT).node('TopK', [x, kT], { axis: attr.int(-1), largest: attr.int(1), sorted: attr.int(1) }, [
    { dtype: x.dtype, shape },
    { dtype: 'int64', shape },
  ]);
  return [v!, i!];
}

/** Index of the largest value along `axis` (the first one on ties), as int64. */
export function argmax(x: Tensor, axis = -1, keepdims = false): Tensor {
  const ax = normAxis(axis, x.rank);
  const shape = keepdims ? x.shape.map((d, i) => (i === ax ? 1 : d)) : x.shape.filter((_, i) => i !== ax);
  return one(x.graph, 'ArgMax', [x], 'int64', shape, { axis: attr.int(ax), keepdims: attr.int(keepdims ? 1 : 0) });
}

// ---------- reductions and normalisers ----------

function reduce(op: string, x: Tensor, axes: number[], keepdims: boolean): Tensor {
  const norm = axes.map((a) => normAxis(a, x.rank));
  const shape = keepdims ? x.shape.map((d, i) => (norm.includes(i) ? 1 : d)) : x.shape.filter((_, i) => !norm.includes(i));
  return one(x.graph, op, [x, int64s(x.graph, norm)], x.dtype, shape, { keepdims: attr.int(keepdims ? 1 : 0) });
}
export const reduceSum = (x: Tensor, axes: number[], keepdims = false) => reduce('ReduceSum', x, axes, keepdims);
export const reduceMean = (x: Tensor, axes: number[], keepdims = false) => reduce('ReduceMean', x, axes, keepdims);
export const reduceMax = (x: Tensor, axes: number[], keepdims = false) => reduce('ReduceMax', x, axes, keepdims);
/** Sum of squares of every element, to a scalar (one pass; no gradient rule: optimizer-side only). */
export const reduceSumSquare = (x: Tensor) =>
  reduce(
    'ReduceSumSquare',
    x,
    x.shape.map((_, i) => i),
    false,
  );
/** Sum over every element, to a scalar. */
export const sumAll = (x: Tensor) =>
  reduceSum(
    x,
    x.shape.map((_, i) => i),
  );

export function softmax(x: Tensor, axis = -1): Tensor {
  return unary('Softmax', x, x.dtype, { axis: attr.int(normAxis(axis, x.rank)) });
}
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  return unary('LogSoftmax', x, x.dtype, { axis: attr.int(normAxis(axis, x.rank)) });
}

// ---------- normalisers and composites (composites need no gradient rules of their own) ----------

/** LayerNorm over the last axis: one fused ONNX op; its gradient rule recomputes the statistics. */
export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor | null, eps = 1e-5): Tensor {
  return one(graphOf(x, weight, bias), 'LayerNormalization', [x, weight, bias], x.dtype, x.shape, {
    axis: attr.int(-1),
    epsilon: attr.float(eps),
  });
}

export function rmsNorm(x: Tensor, weight: Tensor, eps = 1e-6): Tensor {
  const ms = reduceMean(pow(x, 2), [-1], true);
  return mul(div(x, sqrt(add(ms, eps))), weight);
}

/** GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). One fused ONNX op (opset 20). */
export function gelu(x: Tensor): Tensor {
  return unary('Gelu', x, x.dtype, { approximate: attr.string('tanh') });
}

export const silu = (x: Tensor) => mul(x, sigmoid(x));

/**
 * Boolean [q, k] mask, true where query i (at absolute position offset+i) may attend key j:
 * j <= offset + i. `offset` is the number of cached keys before the queries.
 */
export function causalMask(g: Graph, queries: Tensor, keys: Tensor, qDim: Dim, kDim: Dim): Tensor {
  const zero = int64(g, 0);
  const oneT = int64(g, 1);
  const q = range(zero, queries, oneT, qDim);
  const k = range(zero, keys, oneT, kDim);
  const offset = sub(keys, queries);
  return lessOrEqual(unsqueeze(k, [0]), unsqueeze(add(q, offset), [1]));
}

// ---------- helpers ----------

export const ONNX_DTYPE: Record<DType, number> = { float32: 1, uint8: 2, bool: 9, int32: 6, int64: 7, float64: 11 };

export function normAxis(axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) throw new Error(`axis ${axis} out of range for rank ${rank}`);
  return a;
}

function sumDims(ds: Dim[]): Dim {
  if (ds.every((d) => typeof d === 'number')) return (ds as number[]).reduce((a, b) => a + b, 0);
  return ds.join('+');
}

function sliceLength(d: Dim, start: number, end: number): Dim {
  if (typeof d === 'number') {
    const s = clampIndex(start, d);
    const e = clampIndex(end, d);
    return Math.max(0, e - s);
  }
  if (start >= 0 && end >= 0 && end < 2 ** 31) return end - start; // assumed to fit
  if (start >= 0 && end >= 2 ** 31) return start === 0 ? d : `${d}-${start}`;
  if (start >= 0 && end < 0) return `${d}-${start - end}`;
  return `${d}[${start}:${end}]`;
}
function clampIndex(i: number, d: number): number {
  return Math.min(Math.max(i < 0 ? i + d : i, 0), d);
}

/** Resolves a static reshape spec; dims that can't be known become fresh symbols. */
function inferReshape(inShape: Shape, spec: number[]): Shape {
  const out: Dim[] = spec.map((s, i) => (s === 0 ? inShape[i]! : s));
  const inferAt = spec.indexOf(-1);
  if (inferAt < 0) return out;
  const total = factor(inShape);
  const rest = factor(out.filter((_, i) => i !== inferAt));
  let dim: Dim;
  const syms = [...total.syms];
  const removable = rest.syms.every((s) => {
    const j = syms.indexOf(s);
    if (j < 0) return false;
    syms.splice(j, 1);
    return true;
  });
  if (removable && total.num % rest.num === 0) {
    const num = total.num / rest.num;
    dim = syms.length === 0 ? num : num === 1 ? syms.join('*') : `${num}*${syms.join('*')}`;
  } else dim = `reshape${inferAt}`;
  out[inferAt] = dim;
  return out;
}
function factor(shape: Shape): { num: number; syms: string[] } {
  let num = 1;
  const syms: string[] = [];
  for (const d of shape) {
    if (typeof d === 'number') num *= d;
    else syms.push(...d.split('*').filter((s) => (/^\d+$/.test(s) ? ((num *= Number(s)), false) : true)));
  }
  return { num, syms };
}

// ---------- control flow ----------

/**
 * ONNX Loop. `body` is a Graph whose parent is the caller's graph, with inputs
 * (iteration, cond, ...carried) and outputs (cond, ...carried, ...scans); it may read
 * outer values directly. Returns the final carried values, then each scan output
 * stacked along a new leading 'iterations' axis.
 */
export function loop(g: Graph, maxTrips: Tensor | null, cond: Tensor | null, carried: Tensor[], body: Graph): Tensor[] {
  if (body.parent !== g) throw new Error("loop: the body must be a subgraph of the loop's graph");
  if (body.outputs.length < 1 + carried.length) throw new Error('loop: body has fewer outputs than carried values');
  const scans = body.outputs.slice(1 + carried.length);
  const outs = [
    ...carried.map((t, i) => ({ dtype: t.dtype, shape: t.shape.map((d, j) => (typeof d === 'number' ? d : `loop_out${i}_${j}`)) })),
    ...scans.map((t) => ({ dtype: t.dtype, shape: ['iterations', ...t.shape] as Shape })),
  ];
  return g.node('Loop', [maxTrips, cond, ...carried], { body: attr.graph(body) }, outs);
}

/**
 * ONNX If. Each branch is a Graph whose parent is the caller's graph, with no inputs and the
 * same number and dtypes of outputs; branches read outer values through capture(). Returns
 * the chosen branch's outputs (their shapes may differ between branches, so dims are named).
 */
export function ifElse(g: Graph, cond: Tensor, then: Graph, otherwise: Graph): Tensor[] {
  if (then.parent !== g || otherwise.parent !== g) throw new Error("ifElse: both branches must be subgraphs of the If's graph");
  if (then.outputs.length !== otherwise.outputs.length || then.outputs.some((t, i) => t.dtype !== otherwise.outputs[i]!.dtype))
    throw new Error('ifElse: the branches must have outputs of the same number and dtypes');
  const outs = then.outputs.map((t, i) => ({ dtype: t.dtype, shape: t.shape.map((_, j) => `if_out${i}_${j}`) as Shape }));
  return g.node('If', [cond], { then_branch: attr.graph(then), else_branch: attr.graph(otherwise) }, outs);
}

/** An outer value as a value of `branch` (an If branch has no inputs, so its first ops need one). */
export function capture(branch: Graph, t: Tensor): Tensor {
  return one(branch, 'Identity', [t], t.dtype, t.shape);
}
