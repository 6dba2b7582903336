// Reverse-mode autodiff: one vector-Jacobian rule per op in one table, and a
// reverse walk over the graph that accumulates gradients. Rules only emit
// standard ONNX ops, so the backward pass is part of the same ONNX graph.
import { isFloat, type Node, type Tensor } from './ir.ts';
import * as op from './ops.ts';

/**
 * Given the gradient of the node's (first) output, the node, which inputs need a gradient,
 * and the gradients of all outputs (multi-output ops), the gradient of each input (null: none).
 */
type Rule = (g: Tensor, node: Node, needs: boolean[], outGrads: (Tensor | undefined)[]) => (Tensor | null)[];

const inp = (n: Node, i: number) => n.inputs[i]!;
const out = (n: Node) => n.outputs[0]!;
const when = (need: boolean, f: () => Tensor) => (need ? f() : null);

/** Sums g over the axes that were broadcast to reach it from `to`'s shape. */
export function unbroadcast(g: Tensor, to: Tensor): Tensor {
  if (g.rank === 2 && to.rank === 1 && to.shape[0] === g.shape[1] && g.shape[0] !== 1) return sumRows(g);
  const lead = g.rank - to.rank;
  let r = lead > 0 ? op.reduceSum(g, [...Array(lead).keys()], false) : g;
  const axes = to.shape.flatMap((d, i) => (d === 1 && r.shape[i] !== 1 ? [i] : []));
  if (axes.length) r = op.reduceSum(r, axes, true);
  return r;
}

/**
 * Column sums of a 2-D g [N, C] (bias and norm-weight gradients) as ones[1, N] @ g: ORT's
 * GEMM streams the rows several times faster than its ReduceSum over axis 0.
 */
function sumRows(g: Tensor): Tensor {
  const n = op.reshape(op.slice(op.shapeOf(g), [0], [1], [0]), [1]);
  const ones = op.constantOfShape(op.concat([op.int64s(g.graph, [1]), n], 0), g.dtype, 1, [1, g.shape[0]!]);
  return op.reshape(op.gemm(ones, g), [-1]);
}

const swapLast2 = (t: Tensor) => op.transpose(t, [...[...Array(t.rank - 2).keys()], t.rank - 1, t.rank - 2]);

/** The gradient of reduce* keeps the reduced axes, then is broadcast back to x's shape. */
function expandBack(g: Tensor, n: Node): Tensor {
  const x = inp(n, 0);
  const axes = Array.from(inp(n, 1).constant!.data as BigInt64Array, Number);
  const kept = n.attrs.keepdims?.value ? g : op.unsqueeze(g, axes);
  return op.expand(kept, op.shapeOf(x), x.shape);
}

/** Number of elements reduced by a reduce node, as a scalar of x's dtype. */
function reducedCount(n: Node): Tensor | number {
  const x = inp(n, 0);
  const axes = Array.from(inp(n, 1).constant!.data as BigInt64Array, Number);
  const dims = axes.map((a) => x.shape[a]!);
  if (dims.every((d) => typeof d === 'number')) return (dims as number[]).reduce((a, b) => a * b, 1);
  return op.cast(
    axes.map((a) => op.dimOf(x, a)).reduce((a, b) => op.mul(a, b)),
    x.dtype,
  );
}

const intsOf = (t: Tensor) => Array.from(t.constant!.data as BigInt64Array, Number);
const as1d = (t: Tensor) => op.reshape(t, [1]);

export const VJP: Record<string, Rule> = {
  Identity: (g) => [g],
  Add: (g, n, k) => [when(k[0]!, () => unbroadcast(g, inp(n, 0))), when(k[1]!, () => unbroadcast(g, inp(n, 1)))],
  Sub: (g, n, k) => [when(k[0]!, () => unbroadcast(g, inp(n, 0))), when(k[1]!, () => unbroadcast(op.neg(g), inp(n, 1)))],
  Mul: (g, n, k) => [when(k[0]!, () => unbroadcast(op.mul(g, inp(n, 1)), inp(n, 0))), when(k[1]!, () => unbroadcast(op.mul(g, inp(n, 0)), inp(n, 1)))],
  Div: (g, n, k) => [
    when(k[0]!, () => unbroadcast(op.div(g, inp(n, 1)), inp(n, 0))),
    when(k[1]!, () => unbroadcast(op.neg(op.div(op.mul(g, out(n)), inp(n, 1))), inp(n, 1))),
  ],
  Pow: (g, n, k) => [
    // x^2 (RMSNorm's square, written as Pow so ORT fuses the norm in inference): 2x, without a slow Pow.
    when(k[0]!, () =>
      inp(n, 1).constant?.data[0] === 2 && inp(n, 1).rank === 0
        ? unbroadcast(op.mul(g, op.mul(inp(n, 0), 2)), inp(n, 0))
        : unbroadcast(op.mul(op.mul(g, inp(n, 1)), op.pow(inp(n, 0), op.sub(inp(n, 1), 1))), inp(n, 0)),
    ),
    when(k[1]!, () => unbroadcast(op.mul(op.mul(g, out(n)), op.log(inp(n, 0))), inp(n, 1))),
  ],
  Max: (g, n, k) => minMax(g, n, k, op.greaterOrEqual),
  Min: (g, n, k) => minMax(g, n, k, op.lessOrEqual),
  Neg: (g) => [op.neg(g)],
  Exp: (g, n) => [op.mul(g, out(n))],
  Log: (g, n) => [op.div(g, inp(n, 0))],
  Sqrt: (g, n) => [op.div(g, op.mul(out(n), 2))],
  Cos: (g, n) => [op.neg(op.mul(g, op.sin(inp(n, 0))))],
  Sin: (g, n) => [op.mul(g, op.cos(inp(n, 0)))],
  Tanh: (g, n) => [op.mul(g, op.sub(1, op.mul(out(n), out(n))))],
  Sigmoid: (g, n) => [op.mul(g, op.mul(out(n), op.sub(1, out(n))))],
  Abs: (g, n) => [op.where(op.less(inp(n, 0), 0), op.neg(g), g)],
  Relu: (g, n) => [op.where(op.greater(inp(n, 0), 0), g, 0)],
  Gelu: (g, n) => {
    // gelu(x) = x * sigmoid(2z), z = s (x + a x^3), since 0.5 (1 + tanh z) = sigmoid(2z); so
    // gelu'(x) = sig * (1 + x (1 - sig) * 2s (1 + 3a x^2)): 13 elementwise ops on the MLP's widest tensor.
    const [x, s, a] = [inp(n, 0), Math.sqrt(2 / Math.PI), 0.044715];
    const x2 = op.mul(x, x);
    const sig = op.sigmoid(op.mul(x, op.add(op.mul(x2, 2 * a * s), 2 * s)));
    const slope = op.add(op.mul(x2, 6 * a * s), 2 * s);
    const d = op.mul(sig, op.add(op.mul(op.mul(x, slope), op.sub(1, sig)), 1));
    return [op.mul(g, d)];
  },
  LayerNormalization: (g, n, k) => {
    // With xhat = (x - mean) * rstd: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * w.
    const [x, w, b] = [inp(n, 0), inp(n, 1), n.inputs[2]];
    const eps = n.attrs.epsilon!.value as number;
    const centered = op.sub(x, op.reduceMean(x, [-1], true));
    const rstd = op.div(1, op.sqrt(op.add(op.reduceMean(op.mul(centered, centered), [-1], true), eps)));
    const xhat = op.mul(centered, rstd);
    const dxhat = op.mul(g, w);
    const dx = () => op.mul(rstd, op.sub(op.sub(dxhat, op.reduceMean(dxhat, [-1], true)), op.mul(xhat, op.reduceMean(op.mul(dxhat, xhat), [-1], true))));
    return [when(k[0]!, dx), when(k[1]!, () => unbroadcast(op.mul(g, xhat), w)), b && k[2] ? unbroadcast(g, b) : null];
  },
  Cast: (g, n) => [isFloat(inp(n, 0).dtype) ? op.cast(g, inp(n, 0).dtype) : null],
  Where: (g, n, k) => [
    null,
    when(k[1]!, () => unbroadcast(op.where(inp(n, 0), g, 0), inp(n, 1))),
    when(k[2]!, () => unbroadcast(op.where(inp(n, 0), 0, g), inp(n, 2))),
  ],
  Clip: (g, n) => {
    const x = inp(n, 0);
    const inside = op.and(op.greaterOrEqual(x, inp(n, 1)), op.lessOrEqual(x, inp(n, 2)));
    return [op.where(inside, g, 0), null, null];
  },
  MatMul: (g, n, k) => {
    const [a, b] = [inp(n, 0), inp(n, 1)];
    if (a.rank === 2 && b.rank === 2) return [when(k[0]!, () => op.gemm(g, b, { transB: true })), when(k[1]!, () => op.gemm(a, g, { transA: true }))];
    if (b.rank === 2) {
      // x[..., k] @ w[k, n]: flatten the leading dims so the weight gradient is one GEMM.
      const flat = (t: Tensor) => op.reshape(t, [-1, t.shape[t.rank - 1] as number]);
      return [when(k[0]!, () => op.matmul(g, op.transpose(b, [1, 0]))), when(k[1]!, () => op.gemm(flat(a), flat(g), { transA: true }))];
    }
    return [when(k[0]!, () => unbroadcast(op.matmul(g, swapLast2(b)), a)), when(k[1]!, () => unbroadcast(op.matmul(swapLast2(a), g), b))];
  },
  Gemm: (g, n, k) => {
    const [a, b, c] = [inp(n, 0), inp(n, 1), n.inputs[2]];
    const tA = !!n.attrs.transA?.value;
    const tB = !!n.attrs.transB?.value;
    const alpha = (n.attrs.alpha?.value as number | undefined) ?? 1;
    const da = tA ? op.gemm(b, g, { transA: tB, transB: true, alpha }) : op.gemm(g, b, { transB: !tB, alpha });
    const db = tB ? op.gemm(g, a, { transA: true, transB: tA, alpha }) : op.gemm(a, g, { transA: !tA, alpha });
    return [k[0] ? da : null, k[1] ? db : null, c && k[2] ? unbroadcast(g, c) : null];
  },
  Gather: (g, n) => {
    if ((n.attrs.axis?.value ?? 0) !== 0) throw new Error('Gather gradient: only axis 0 is supported');
    const [data, idx] = [inp(n, 0), inp(n, 1)];
    return [op.scatterNDAdd(op.zerosLike(data), op.unsqueeze(idx, [-1]), g), null];
  },
  GatherElements: (g, n) => {
    const [data, idx] = [inp(n, 0), inp(n, 1)];
    return [op.scatterElementsAdd(op.zerosLike(data), idx, g, n.attrs.axis!.value as number), null];
  },
  Softmax: (g, n) => {
    const y = out(n);
    const axis = n.attrs.axis!.value as number;
    return [op.mul(y, op.sub(g, op.reduceSum(op.mul(g, y), [axis], true)))];
  },
  LogSoftmax: (g, n) => {
    const axis = n.attrs.axis!.value as number;
    return [op.sub(g, op.mul(op.exp(out(n)), op.reduceSum(g, [axis], true)))];
  },
  Reshape: (g, n) => [op.reshape(g, op.shapeOf(inp(n, 0)), inp(n, 0).shape), null],
  Transpose: (g, n) => {
    const perm = n.attrs.perm!.value as number[];
    const inv = perm.map((_, i) => perm.indexOf(i));
    return [op.transpose(g, inv)];
  },
  Unsqueeze: (g, n) => [op.squeeze(g, intsOf(inp(n, 1))), null],
  Squeeze: (g, n) => [op.unsqueeze(g, intsOf(inp(n, 1))), null],
  Expand: (g, n) => [unbroadcast(g, inp(n, 0)), null],
  ReduceSum: (g, n) => [expandBack(g, n), null],
  ReduceMean: (g, n) => [op.div(expandBack(g, n), reducedCount(n)), null],
  ReduceMax: (g, n) => {
    const x = inp(n, 0);
    const axes = intsOf(inp(n, 1));
    const yKept = n.attrs.keepdims?.value ? out(n) : op.unsqueeze(out(n), axes);
    const isMax = op.cast(op.equal(x, yKept), x.dtype); // ties share the gradient
    const gKept = n.attrs.keepdims?.value ? g : op.unsqueeze(g, axes);
    return [op.mul(isMax, op.div(gKept, op.reduceSum(isMax, axes, true))), null];
  },
  Split: (_g, n, _k, gs) => {
    const axis = n.attrs.axis!.value as number;
    return [
      op.concat(
        n.outputs.map((o, i) => gs[i] ?? op.zerosLike(o)),
        axis,
      ),
      null,
    ];
  },
  Concat: (g, n, k) => {
    const axis = n.attrs.axis!.value as number;
    const gr = g.graph;
    let start = op.int64(gr, 0);
    return n.inputs.map((x, i) => {
      const end = op.add(start, op.dimOf(x!, axis));
      const piece = k[i] ? gr.node('Slice', [g, as1d(start), as1d(end), op.int64s(gr, [axis])], {}, [{ dtype: g.dtype, shape: x!.shape }])[0]! : null;
      start = end;
      return piece;
    });
  },
  Slice: (g, n) => {
    // Pad the gradient back with zeros where the slice cut the input away.
    const x = inp(n, 0);
    const [starts, ends, axes] = [intsOf(inp(n, 1)), intsOf(inp(n, 2)), intsOf(inp(n, 3))];
    const gr = g.graph;
    const cut = (a: number, side: 'begin' | 'end'): Tensor => {
      const i = axes.indexOf(a);
      if (i < 0) return op.int64s(gr, [0]);
      const dim = () => as1d(op.dimOf(x, a));
      const [s, e] = [starts[i]!, ends[i]!];
      if (side === 'begin') return s >= 0 ? op.int64s(gr, [s]) : op.add(dim(), s);
      return e >= 2 ** 31 ? op.int64s(gr, [0]) : e < 0 ? op.int64s(gr, [-e]) : op.sub(dim(), e);
    };
    const begin = x.shape.map((_, a) => cut(a, 'begin'));
    const finish = x.shape.map((_, a) => cut(a, 'end'));
    return [op.pad(g, op.concat([...begin, ...finish], 0)), null, null, null];
  },
};

function minMax(g: Tensor, n: Node, k: boolean[], pick: (a: Tensor, b: Tensor) => Tensor): (Tensor | null)[] {
  const [a, b] = [inp(n, 0), inp(n, 1)];
  const first = pick(a, b);
  return [when(k[0]!, () => unbroadcast(op.where(first, g, 0), a)), when(k[1]!, () => unbroadcast(op.where(first, 0, g), b))];
}

/** Ops whose outputs carry no gradient (integer, boolean or index results). */
const NO_GRADIENT = new Set([
  'Shape',
  'Constant',
  'ConstantOfShape',
  'Range',
  'Equal',
  'Less',
  'LessOrEqual',
  'Greater',
  'GreaterOrEqual',
  'And',
  'Or',
  'Not',
  'IsNaN',
  'IsInf',
  'ArgMax',
  'TopK',
  'CumSum',
  'Loop',
  'If',
]);

/**
 * prev + gi. Gather's gradient is a scatter-add into zeros of the whole table: added to a
 * running sum it scatters into that sum instead (a tied embedding gets its head gradient and
 * one gather gradient per forward: no zero table and no pass over it per extra term).
 */
function accumulate(prev: Tensor, gi: Tensor): Tensor {
  const p = gi.producer;
  const intoZeros = p?.op === 'ScatterND' && p.inputs[0]?.producer?.op === 'ConstantOfShape' && p.inputs[0].shape.join() === prev.shape.join();
  return intoZeros ? op.scatterNDAdd(prev, p.inputs[1]!, p.inputs[2]!) : op.add(prev, gi);
}

/**
 * Gradients of a scalar `loss` with respect to `wrt`, appended to loss's graph.
 * Nodes are stored in creation order, which is a topological order, so one reverse pass suffices.
 */
export function grad(loss: Tensor, wrt: Tensor[]): Tensor[] {
  if (loss.rank !== 0) throw new Error(`grad: loss must be a scalar, got shape [${loss.shape}]`);
  const graph = loss.graph;
  // Forward: which values depend on a wrt tensor (only those need gradients).
  const depends = new Set(wrt.map((t) => t.id));
  for (const node of graph.nodes)
    if (!NO_GRADIENT.has(node.op) && node.inputs.some((t) => t && depends.has(t.id))) for (const o of node.outputs) if (isFloat(o.dtype)) depends.add(o.id);
  if (!depends.has(loss.id)) throw new Error('grad: loss does not depend on any of the given tensors');

  const grads = new Map<number, Tensor>([[loss.id, op.constant(graph, loss.dtype, 1)]]);
  for (let i = graph.nodes.length - 1; i >= 0; i--) {
    const node = graph.nodes[i]!;
    const outGrads = node.outputs.map((o) => grads.get(o.id));
    if (!outGrads.some(Boolean)) continue;
    const g = outGrads[0] ?? op.zerosLike(node.outputs[0]!);
    const needs = node.inputs.map((t) => !!t && depends.has(t.id));
    if (!needs.some(Boolean)) continue;
    const rule = VJP[node.op];
    if (!rule) throw new Error(`grad: no gradient rule for op ${node.op}`);
    rule(g, node, needs, outGrads).forEach((gi, j) => {
      const t = node.inputs[j];
      if (!gi || !t || !needs[j]) return;
      const prev = grads.get(t.id);
      grads.set(t.id, prev ? accumulate(prev, gi) : gi);
    });
  }
  return wrt.map((t) => grads.get(t.id) ?? op.zerosLike(t));
}
