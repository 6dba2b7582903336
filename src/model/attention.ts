// Scaled dot-product attention shared by the families, with grouped-query attention: H query
// heads read kvHeads key/value heads, query head h reading kv head floor(h / (H / kvHeads)).
// The groups are folded into the query rows instead of repeating keys and values, so the
// cache keeps kvHeads heads and no copy of it is made.
import type { Tensor } from '../graph/ir.ts';
import * as op from '../graph/ops.ts';

export interface AttentionShape {
  heads: number;
  kvHeads: number;
  headDim: number;
}

/** [B*T, n*hd] -> [B, n, T, hd], with B and T read from ids [B, T] at run time. */
export function splitHeads(t: Tensor, ids: Tensor, n: number, hd: number): Tensor {
  const bthd = op.concat([op.shapeOf(ids), op.int64s(ids.graph, [n, hd])], 0);
  return op.transpose(op.reshape(t, bthd, ['B', 'T', n, hd]), [0, 2, 1, 3]);
}

/**
 * q [B, H, T, hd] (already scaled), k [B, KV, S, hd] (or [B, KV, hd, S] when keysTransposed),
 * v [B, KV, S, hd], bias [B, 1, T, S]. Returns the heads merged back: [B*T, H*hd].
 */
export function attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, s: AttentionShape, keysTransposed = false): Tensor {
  const { heads: H, kvHeads: KV, headDim: hd } = s;
  const G = H / KV;
  const kT = keysTransposed ? k : op.transpose(k, [0, 1, 3, 2]);
  // [B, H, T, hd] is [B, KV, G*T, hd] in memory: row g*T + t of kv head j is query head j*G + g.
  const rows = G === 1 ? q : op.reshape(q, [0, KV, -1, hd], ['B', KV, 'GT', hd]);
  // The bias of query t serves every row g*T + t.
  const rowBias =
    G === 1
      ? bias
      : op.concat(
          Array.from({ length: G }, () => bias),
          2,
        );
  const probs = op.softmax(op.add(op.matmul(rows, kT), rowBias), -1);
  const out = op.matmul(probs, v); // [B, KV, G*T, hd]
  const byHead = G === 1 ? out : op.reshape(out, [0, H, -1, hd], ['B', H, 'T', hd]);
  return op.reshape(op.transpose(byHead, [0, 2, 1, 3]), [-1, H * hd]);
}
