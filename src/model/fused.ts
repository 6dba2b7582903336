// onnxruntime's fused CPU kernels (the com.microsoft domain) for inference graphs, where a
// benchmark shows they pay: the rotary embedding in one op instead of six per q and k (the
// decode step is bound by per-op overhead once the matrices are done). Training graphs never
// use these: they have no gradient rules; the standard path is the reference, and the tests
// hold the two to the same logits. (RMSNorm needs no help: written with Pow, ORT fuses it into
// SimplifiedLayerNormalization itself. com.microsoft.GroupQueryAttention handles our left
// padding through its attention_bias, but measured slower than MatMul/Softmax here: see
// bench/RESULTS.md.)
import { attr, type Tensor } from '../graph/ir.ts';
import { MS_DOMAIN } from '../graph/onnx.ts';
import * as op from '../graph/ops.ts';

/**
 * The rotation angles for exactly the positions [B, T] of this forward, as RotaryEmbedding's
 * cache: row r is position r of the flattened positions, so the ids are 0..B*T-1. Computed
 * once per forward and shared by every layer; no table of the whole context is needed.
 */
export function rotaryCache(positions: Tensor, inverseFrequencies: Float32Array): { ids: Tensor; cos: Tensor; sin: Tensor } {
  const g = positions.graph;
  const angles = op.mul(op.reshape(op.cast(positions, 'float32'), [-1, 1]), op.constant(g, 'float32', Array.from(inverseFrequencies)));
  const count = op.reshape(op.mul(op.dimOf(positions, 0), op.dimOf(positions, 1)), []);
  const ids = op.reshape(op.range(op.int64(g, 0), count, op.int64(g, 1), 'BT'), op.shapeOf(positions), positions.shape);
  return { ids, cos: op.cos(angles), sin: op.sin(angles) };
}

/** rotate_half rotary embedding of heads x [B, H, T, hd] (com.microsoft.RotaryEmbedding, non-interleaved). */
export function rotaryEmbedding(x: Tensor, cache: { ids: Tensor; cos: Tensor; sin: Tensor }): Tensor {
  return x.graph.node(
    'RotaryEmbedding',
    [x, cache.ids, cache.cos, cache.sin],
    { interleaved: attr.int(0) },
    [{ dtype: x.dtype, shape: x.shape }],
    MS_DOMAIN,
  )[0]!;
}
