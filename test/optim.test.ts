// AdamW in the graph against a plain JavaScript AdamW (global-norm clipping, bias correction,
// decoupled weight decay on the decay slots only), over several steps; and a non-finite
// gradient leaves parameters and moments exactly as they were.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph } from '../src/graph/ir.ts';
import { adamw, ADAMW_DEFAULTS } from '../src/graph/optim.ts';
import { createSession, f64, type ort } from '../src/engine/ort.ts';
import { Rng } from '../src/util/rng.ts';

const shapes = [[3, 4], [5]];
const decays = [true, false];

function buildStep() {
  const g = new Graph('adamw');
  const slots = shapes.map((shape, i) => ({
    param: g.input(`p${i}`, 'float64', shape),
    grad: g.input(`g${i}`, 'float64', shape),
    m: g.input(`m${i}`, 'float64', shape),
    v: g.input(`v${i}`, 'float64', shape),
    decay: decays[i]!,
  }));
  const h = { lr: g.input('lr', 'float64', []), step: g.input('step', 'float64', []), maxGradNorm: g.input('max_norm', 'float64', []) };
  const { updated, gradNorm, finite } = adamw(slots, h);
  updated.forEach((u, i) => {
    g.output(`new_p${i}`, u.param);
    g.output(`new_m${i}`, u.m);
    g.output(`new_v${i}`, u.v);
  });
  g.output('norm', gradNorm);
  g.output('finite', finite);
  return g;
}

/** The textbook update, in float64 JavaScript. */
function reference(p: Float64Array[], gr: Float64Array[], m: Float64Array[], v: Float64Array[], lr: number, step: number, maxNorm: number) {
  const { beta1: b1, beta2: b2, eps, weightDecay: wd } = ADAMW_DEFAULTS;
  const norm = Math.sqrt(gr.reduce((a, g) => a + g.reduce((x, y) => x + y * y, 0), 0));
  const scale = maxNorm > 0 ? Math.min(1, maxNorm / (norm + 1e-6)) : 1;
  return p.map((pi, i) => {
    const mi = m[i]!.map((x, j) => b1 * x + (1 - b1) * gr[i]![j]! * scale);
    const vi = v[i]!.map((x, j) => b2 * x + (1 - b2) * (gr[i]![j]! * scale) ** 2);
    const np = pi.map((x, j) => {
      const mh = mi[j]! / (1 - b1 ** step);
      const vh = vi[j]! / (1 - b2 ** step);
      return (decays[i] ? x * (1 - lr * wd) : x) - (lr * mh) / (Math.sqrt(vh) + eps);
    });
    return { p: np, m: mi, v: vi };
  });
}

test('AdamW in the graph equals a textbook AdamW over several steps, clipping on and off', async () => {
  const session = await createSession(buildStep());
  const rng = new Rng(5);
  const rand = (shape: number[], s = 1) => Float64Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal() * s);
  for (const maxNorm of [0, 0.5]) {
    let p = shapes.map((sh) => rand(sh));
    let m = shapes.map((sh) => new Float64Array(rand(sh).length));
    let v = shapes.map((sh) => new Float64Array(rand(sh).length));
    for (let step = 1; step <= 4; step++) {
      const gr = shapes.map((sh) => rand(sh, 3));
      const feeds: Record<string, ort.Tensor> = { lr: f64(Float64Array.of(0.01), []), step: f64(Float64Array.of(step), []), max_norm: f64(Float64Array.of(maxNorm), []) };
      shapes.forEach((sh, i) => Object.assign(feeds, { [`p${i}`]: f64(p[i]!, sh), [`g${i}`]: f64(gr[i]!, sh), [`m${i}`]: f64(m[i]!, sh), [`v${i}`]: f64(v[i]!, sh) }));
      const out = await session.run(feeds);
      const want = reference(p, gr, m, v, 0.01, step, maxNorm);
      shapes.forEach((_, i) => {
        for (const [name, got, exp] of [['p', out[`new_p${i}`], want[i]!.p], ['m', out[`new_m${i}`], want[i]!.m], ['v', out[`new_v${i}`], want[i]!.v]] as const) {
          const g = got!.data as Float64Array;
          g.forEach((x, j) => assert.ok(Math.abs(x - exp[j]!) < 1e-12 * (1 + Math.abs(exp[j]!)), `step ${step} ${name}${i}[${j}]: ${x} vs ${exp[j]}`));
        }
      });
      p = want.map((w) => w.p);
      m = want.map((w) => w.m);
      v = want.map((w) => w.v);
    }
  }
});

test('a non-finite gradient leaves parameters and moments exactly unchanged', async () => {
  const session = await createSession(buildStep());
  const rng = new Rng(6);
  for (const bad of [NaN, Infinity]) {
    const feeds: Record<string, ort.Tensor> = { lr: f64(Float64Array.of(0.01), []), step: f64(Float64Array.of(3), []), max_norm: f64(Float64Array.of(1), []) };
    const before: Float64Array[] = [];
    shapes.forEach((sh, i) => {
      const n = sh.reduce((a, b) => a * b, 1);
      const vals = [Float64Array.from({ length: n }, () => rng.normal()), Float64Array.from({ length: n }, () => rng.normal()), Float64Array.from({ length: n }, () => rng.normal() * 0.1), Float64Array.from({ length: n }, () => rng.next())];
      vals[1]![0] = bad;
      ['p', 'g', 'm', 'v'].forEach((k, j) => (feeds[`${k}${i}`] = f64(vals[j]!, sh)));
      before.push(vals[0]!, vals[2]!, vals[3]!);
    });
    const out = await session.run(feeds);
    assert.equal((out.finite!.data as Uint8Array)[0], 0);
    const after = shapes.flatMap((_, i) => [out[`new_p${i}`], out[`new_m${i}`], out[`new_v${i}`]].map((t) => t!.data as Float64Array));
    after.forEach((a, k) => assert.deepEqual(a, before[k]));
  }
});
