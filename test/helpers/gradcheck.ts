// Checks autodiff against central finite differences, in float64, on real ORT sessions.
import { Graph, type Tensor } from '../../src/graph/ir.ts';
import * as op from '../../src/graph/ops.ts';
import { grad } from '../../src/graph/autodiff.ts';
import { createSession, f64, type ort } from '../../src/engine/ort.ts';
import { Rng } from '../../src/util/rng.ts';

export interface InputSpec {
  shape: number[];
  /** Keep values in (0.5, 1.5), for ops defined on positives only. */
  positive?: boolean;
  /** Declare the graph input with symbolic dims, to exercise the dynamic-shape paths. */
  symbolic?: boolean;
}

const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/**
 * Relative error ||analytic - numeric|| / (||analytic|| + ||numeric||) of d(loss)/d(inputs),
 * where loss = sum(f(inputs) * R) with a fixed random R (so every output element matters).
 */
export async function gradError(specs: InputSpec[], f: (...xs: Tensor[]) => Tensor, seed = 1): Promise<number> {
  const rng = new Rng(seed);
  const values = specs.map((s) => Float64Array.from({ length: size(s.shape) }, () => (s.positive ? 0.5 + rng.next() : rng.normal())));

  const g = new Graph('gradcheck');
  const xs = specs.map((s, i) => g.input(`x${i}`, 'float64', s.symbolic ? s.shape.map((_, j) => `d${i}_${j}`) : s.shape));
  const y = f(...xs);
  // y*y*r keeps the check nonlinear in y; r varies per element through a sine pattern of y's flat index.
  const weight = op.add(op.mul(op.cast(op.cumsum(op.constantOfShape(op.shapeOf(y), 'float64', 1, y.shape), Math.max(y.rank - 1, 0)), 'float64'), 0.37), 0.5);
  const loss = y.rank === 0 ? op.add(op.mul(y, y), y) : op.sumAll(op.add(op.mul(y, weight), op.mul(op.mul(y, y), 0.5)));
  const grads = grad(loss, xs);
  g.output('loss', loss);
  grads.forEach((gr, i) => g.output(`grad${i}`, gr));
  const session = await createSession(g);

  const feeds = (vals: Float64Array[]) => Object.fromEntries(vals.map((v, i) => [`x${i}`, f64(v, specs[i]!.shape)]));
  const run = async (vals: Float64Array[]) => session.run(feeds(vals));
  const base = await run(values);
  const analytic = specs.map((_, i) => (base[`grad${i}`] as ort.Tensor).data as Float64Array);

  let diff = 0;
  let norm = 0;
  const h = 1e-6;
  for (let i = 0; i < specs.length; i++) {
    for (let j = 0; j < values[i]!.length; j++) {
      const orig = values[i]![j]!;
      values[i]![j] = orig + h;
      const plus = ((await run(values)).loss!.data as Float64Array)[0]!;
      values[i]![j] = orig - h;
      const minus = ((await run(values)).loss!.data as Float64Array)[0]!;
      values[i]![j] = orig;
      const numeric = (plus - minus) / (2 * h);
      const a = analytic[i]![j]!;
      diff += (a - numeric) ** 2;
      norm += a * a + numeric * numeric;
    }
  }
  await session.release();
  return Math.sqrt(diff) / Math.max(Math.sqrt(norm), 1e-12);
}
