// Every VJP rule, and the composites built from them, against central finite differences in float64.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gradError, type InputSpec } from './helpers/gradcheck.ts';
import { VJP } from '../src/graph/autodiff.ts';
import * as op from '../src/graph/ops.ts';
import type { Tensor } from '../src/graph/ir.ts';

const TOL = 1e-6;
const s = (...shape: number[]): InputSpec => ({ shape });
const pos = (...shape: number[]): InputSpec => ({ shape, positive: true });
const sym = (...shape: number[]): InputSpec => ({ shape, symbolic: true });

const castSame = (x: Tensor) => x.graph.node('Cast', [x], { to: { type: 'int', value: 11 } }, [{ dtype: 'float64', shape: x.shape }])[0]!;

// Each case exercises one rule (named first); some rules get several cases for their shape paths.
const cases: [string, InputSpec[], (...xs: Tensor[]) => Tensor][] = [
  ['Identity', [s(3)], (x) => op.identity(x)],
  ['Add', [s(2, 3), s(3)], (a, b) => op.add(a, b)],
  ['Add', [s(2, 1, 3), s(4, 1)], (a, b) => op.add(a, b)],
  ['Sub', [s(2, 3), s(2, 1)], (a, b) => op.sub(a, b)],
  ['Mul', [s(2, 3), s(1, 3)], (a, b) => op.mul(a, b)],
  ['Div', [s(2, 3), pos(3)], (a, b) => op.div(a, b)],
  ['Pow', [pos(2, 3), s(3)], (a, b) => op.pow(a, b)],
  ['Pow', [pos(4)], (a) => op.pow(a, 3)],
  ['Pow', [s(5)], (a) => op.pow(a, 2)], // the square's own shortcut, on negatives too
  ['Max', [s(2, 3), s(3)], (a, b) => op.max(a, b)],
  ['Min', [s(2, 3), s(2, 3)], (a, b) => op.min(a, b)],
  ['Neg', [s(4)], (x) => op.neg(x)],
  ['Exp', [s(4)], (x) => op.exp(x)],
  ['Log', [pos(4)], (x) => op.log(x)],
  ['Sqrt', [pos(4)], (x) => op.sqrt(x)],
  ['Tanh', [s(4)], (x) => op.tanh(x)],
  ['Cos', [s(5)], (x) => op.cos(x)],
  ['Sin', [s(5)], (x) => op.sin(x)],
  ['Sigmoid', [s(4)], (x) => op.sigmoid(x)],
  ['Abs', [s(5)], (x) => op.abs(x)],
  ['Relu', [s(5)], (x) => op.relu(x)],
  ['Gelu', [s(8)], (x) => op.gelu(x)],
  ['LayerNormalization', [s(3, 5), s(5), s(5)], (x, w, b) => op.layerNorm(x, w, b)],
  ['LayerNormalization', [s(2, 3, 4), s(4)], (x, w) => op.layerNorm(x, w, null)],
  ['Cast', [s(4)], (x) => castSame(x)],
  ['Where', [s(2, 3), s(3)], (a, b) => op.where(op.greater(a, 0), a, b)],
  ['Clip', [s(6)], (x) => op.clip(x, -0.5, 0.5)],
  ['MatMul', [s(3, 4), s(4, 2)], (a, b) => op.matmul(a, b)],
  ['MatMul', [s(2, 3, 4), s(4, 2)], (a, b) => op.matmul(a, b)],
  ['MatMul', [s(2, 2, 3, 4), s(2, 1, 4, 3)], (a, b) => op.matmul(a, b)],
  ['Gemm', [s(3, 4), s(4, 2), s(2)], (a, b, c) => op.gemm(a, b, { c, alpha: 0.7 })],
  ['Gemm', [s(4, 3), s(2, 4), s(3, 2)], (a, b, c) => op.gemm(a, b, { transA: true, transB: true, c })],
  ['Gemm', [s(4, 3), s(4, 2)], (a, b) => op.gemm(a, b, { transA: true })],
  ['Gemm', [s(3, 4), s(2, 4)], (a, b) => op.gemm(a, b, { transB: true })],
  ['Gather', [s(5, 3)], (w) => op.gather(w, op.constant(w.graph, 'int64', [0, 2, 2, 4, 0, 1], [2, 3]))],
  ['GatherElements', [s(3, 4)], (x) => op.gatherElements(x, op.constant(x.graph, 'int64', [0, 3, 3, 1, 2, 0], [3, 2]), 1)],
  ['Softmax', [s(2, 5)], (x) => op.softmax(x, -1)],
  ['Softmax', [s(3, 2)], (x) => op.softmax(x, 0)],
  ['LogSoftmax', [s(2, 5)], (x) => op.logSoftmax(x, -1)],
  ['Reshape', [s(2, 6)], (x) => op.reshape(x, [3, -1])],
  ['Reshape', [sym(2, 6)], (x) => op.reshape(x, [0, 2, 3])],
  ['Transpose', [s(2, 3, 4)], (x) => op.transpose(x, [2, 0, 1])],
  ['Unsqueeze', [s(2, 3)], (x) => op.unsqueeze(x, [0, 2])],
  ['Squeeze', [s(2, 1, 3)], (x) => op.squeeze(x, [1])],
  ['Expand', [s(3, 1)], (x) => op.expand(x, op.int64s(x.graph, [2, 3, 4]), [2, 3, 4])],
  ['ReduceSum', [s(2, 3, 4)], (x) => op.reduceSum(x, [1])],
  ['ReduceSum', [s(2, 3, 4)], (x) => op.reduceSum(x, [0, 2], true)],
  ['ReduceMean', [s(2, 3, 4)], (x) => op.reduceMean(x, [-1])],
  ['ReduceMean', [sym(2, 3, 4)], (x) => op.reduceMean(x, [0, 1], true)],
  ['ReduceMax', [s(3, 4)], (x) => op.reduceMax(x, [1])],
  ['Concat', [s(2, 3), s(2, 1), sym(2, 2)], (a, b, c) => op.concat([a, b, c], 1)],
  ['Split', [s(3, 6)], (x) => op.concat(op.split(x, [1, 3, 2], 1).reverse(), 1)],
  ['Split', [s(4, 2)], (x) => op.split(x, [1, 3], 0)[1]!],
  ['Slice', [s(4, 5)], (x) => op.slice(x, [1, 0], [3, -1], [0, 1])],
  ['Slice', [sym(4, 5)], (x) => op.slice(x, [-2, 2], [2 ** 62, 4], [0, 1])],
];

for (const [rule, specs, f] of cases) {
  test(`VJP ${rule} [${specs.map((x) => x.shape.join('x')).join(', ')}] matches finite differences`, async () => {
    const err = await gradError(specs, f);
    assert.ok(err < TOL, `relative error ${err}`);
  });
}

test('every VJP rule in the table has a finite-difference case', () => {
  const covered = new Set(cases.map((c) => c[0]));
  assert.deepEqual(
    Object.keys(VJP).filter((k) => !covered.has(k)),
    [],
  );
});

test('composites: rmsNorm, silu', async () => {
  const composites: [string, InputSpec[], (...xs: Tensor[]) => Tensor][] = [
    ['rmsNorm', [s(3, 5), s(5)], (x, w) => op.rmsNorm(x, w)],
    ['silu', [s(6)], (x) => op.silu(x)],
  ];
  for (const [name, specs, f] of composites) {
    const err = await gradError(specs, f);
    assert.ok(err < TOL, `${name}: relative error ${err}`);
  }
});

test('grad refuses a loss that does not depend on its inputs, and ops without a rule', async () => {
  const { Graph } = await import('../src/graph/ir.ts');
  const { grad } = await import('../src/graph/autodiff.ts');
  const g = new Graph();
  const x = g.input('x', 'float64', [3]);
  const y = g.input('y', 'float64', [3]);
  assert.throws(() => grad(op.sumAll(y), [x]), /does not depend/);
  const c = op.cumsum(x, 0);
  // CumSum is marked non-differentiable: the loss then does not depend on x at all.
  assert.throws(() => grad(op.sumAll(c), [x]), /does not depend/);
  const t = g.node('Erf', [x], {}, [{ dtype: 'float64', shape: [3] }])[0]!;
  assert.throws(() => grad(op.sumAll(t), [x]), /no gradient rule for op Erf/);
  assert.throws(() => grad(x, [x]), /must be a scalar/);
});
