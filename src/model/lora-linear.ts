// The one place LoRA enters a forward pass: both families' linear() end here, so a module
// with adapters among the params computes base(x) + scale * (x A^T) B^T, and one without is
// untouched (a graph without adapters is exactly the graph of full fine-tuning).
import type { Tensor } from '../graph/ir.ts';
import * as op from '../graph/ops.ts';
import type { Params } from './family.ts';

export const loraA = (module: string) => `${module}.lora_A.weight`;
export const loraB = (module: string) => `${module}.lora_B.weight`;

/** `base` [rows, out] is the module's own output for x [rows, in]; A [r, in], B [out, r]. */
export function loraLinear(p: Params, x: Tensor, module: string, base: Tensor, scale: number | undefined): Tensor {
  const A = p[loraA(module)];
  if (!A) return base;
  const B = p[loraB(module)];
  if (!B || scale === undefined) throw new Error(`lora: ${module} has lora_A but ${B ? 'no scale' : 'no lora_B'}`);
  // The base output rides in as Gemm's C: the adapter costs two thin GEMMs and no extra Add.
  return op.gemm(op.gemm(x, A, { transB: true }), B, { transB: true, alpha: scale, c: base });
}
