// AdamW (engine/adamw.ts) against a plain textbook AdamW in float64 (global-norm clipping,
// bias correction, decoupled weight decay on the decay slots only), over several steps.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ADAMW_DEFAULTS, adamwUpdate } from '../src/engine/adamw.ts';
import { Rng } from '../src/util/rng.ts';

const sizes = [12, 5];
const decays = [true, false];

/** The textbook update. */
function reference(p: number[][], gr: number[][], m: number[][], v: number[][], lr: number, step: number, maxNorm: number) {
  const { beta1: b1, beta2: b2, eps, weightDecay: wd } = ADAMW_DEFAULTS;
  const norm = Math.sqrt(gr.flat().reduce((a, g) => a + g * g, 0));
  const scale = maxNorm > 0 ? Math.min(1, maxNorm / (norm + 1e-6)) : 1;
  return p.map((pi, i) => {
    const mi = m[i]!.map((x, j) => b1 * x + (1 - b1) * gr[i]![j]! * scale);
    const vi = v[i]!.map((x, j) => b2 * x + (1 - b2) * (gr[i]![j]! * scale) ** 2);
    const np = pi.map((x, j) => (decays[i] ? x * (1 - lr * wd) : x) - (lr * (mi[j]! / (1 - b1 ** step))) / (Math.sqrt(vi[j]! / (1 - b2 ** step)) + eps));
    return { p: np, m: mi, v: vi };
  });
}

test('AdamW equals a textbook AdamW over several steps, clipping on and off', () => {
  const rng = new Rng(5);
  for (const maxNorm of [0, 0.5]) {
    const slots = sizes.map((n, i) => ({
      param: Float32Array.from({ length: n }, () => rng.normal()),
      grad: new Float32Array(n),
      m: new Float32Array(n),
      v: new Float32Array(n),
      decay: decays[i]!,
    }));
    let ref = slots.map((s) => ({ p: Array.from(s.param), m: Array.from(s.m), v: Array.from(s.v) }));
    for (let step = 1; step <= 4; step++) {
      for (const s of slots) s.grad = Float32Array.from(s.grad, () => rng.normal() * 3);
      const gradNorm = Math.sqrt(slots.reduce((a, s) => a + s.grad.reduce((x, g) => x + g * g, 0), 0));
      ref = reference(
        ref.map((r) => r.p),
        slots.map((s) => Array.from(s.grad)),
        ref.map((r) => r.m),
        ref.map((r) => r.v),
        0.01,
        step,
        maxNorm,
      );
      adamwUpdate(slots, { lr: 0.01, step, gradNorm, maxGradNorm: maxNorm });
      slots.forEach((s, i) => {
        for (const [name, got, want] of [
          ['p', s.param, ref[i]!.p],
          ['m', s.m, ref[i]!.m],
          ['v', s.v, ref[i]!.v],
        ] as const)
          got.forEach((x, j) => assert.ok(Math.abs(x - want[j]!) < 1e-6 * (1 + Math.abs(want[j]!)), `step ${step} ${name}${i}[${j}]: ${x} vs ${want[j]}`));
        // float32 storage: keep the reference on the same values from here on
        ref[i] = { p: Array.from(s.param), m: Array.from(s.m), v: Array.from(s.v) };
      });
    }
  }
});

test('AdamW refuses a non-finite gradient norm (the trainer skips such a step and keeps everything)', () => {
  const slot = { param: Float32Array.of(1, 2), grad: Float32Array.of(NaN, 1), m: new Float32Array(2), v: new Float32Array(2), decay: true };
  for (const gradNorm of [NaN, Infinity])
    assert.throws(() => adamwUpdate([slot], { lr: 0.1, step: 1, gradNorm, maxGradNorm: 1 }), /non-finite gradient must skip the step/);
  assert.deepEqual(Array.from(slot.param), [1, 2]);
});
