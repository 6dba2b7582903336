// Turning a loaded model's weights into the quantized form inference graphs read: int8
// blocks (nbits.ts's quantizeInt8) of every weight the family multiplies or gathers
// (ModelFamily.quantizable), written once into the cache beside their float32 dequantization,
// which is what the trainer and the scorer then read: sampler and trainer are one function
// of the same bytes, up to the kernels' rounding.
import { familyOf, paramSpecsOf, type ModelConfig } from '../model/families.ts';
import type { Weights } from '../model/family.ts';
import { dequantizeNBits, quantizeInt8, type NBitsMatrix } from './nbits.ts';
import {
  convertedQuantizedWeightFile,
  isWeightFile,
  readWeights,
  type ConvertedLayout,
  type ConvertedWeight,
  type WeightSource,
  type WeightFile,
} from './weight-file.ts';

/**
 * How a checkpoint's weights are served: 'file' as the file has them (a quantized GGUF's
 * blocks kept; float checkpoints in float32), 'int8' with every float matrix quantized to
 * 8-bit blocks as well, 'float32' everything dequantized (the behaviour before quantized
 * serving; to compare against).
 */
export type QuantizeMode = 'file' | 'int8' | 'float32';

export const INT8_BLOCK = 32;

/** [rows, cols] -> [cols, rows]. */
export function transposed(values: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = values[r * cols + c]!;
  return out;
}

/** Whether `--quantize int8` quantizes a weight of this shape: a matrix whose input features fill whole blocks. */
export function int8Quantizable(shape: number[], layout: 'out-in' | 'in-out'): boolean {
  if (shape.length !== 2) return false;
  const inputs = layout === 'out-in' ? shape[1]! : shape[0]!;
  return inputs % INT8_BLOCK === 0;
}

/** The weight `values` (in the family's `layout`) as int8 blocks, and the float32 values those blocks stand for, in the same layout. */
export function int8Weight(values: Float32Array, shape: number[], layout: 'out-in' | 'in-out'): ConvertedWeight {
  const [a, b] = shape as [number, number];
  const outIn = layout === 'out-in';
  const nbits = outIn ? quantizeInt8(values, a, b, INT8_BLOCK) : quantizeInt8(transposed(values, a, b), b, a, INT8_BLOCK);
  return { nbits, values: floatOf(nbits, layout) };
}

/** The float32 values of blocks, in the family's layout. */
export function floatOf(nbits: NBitsMatrix, layout: 'out-in' | 'in-out'): Float32Array {
  const values = dequantizeNBits(nbits);
  return layout === 'out-in' ? values : transposed(values, nbits.rows, nbits.cols);
}

export function int8Layout(shape: number[], layout: 'out-in' | 'in-out'): ConvertedLayout {
  const [rows, cols] = layout === 'out-in' ? shape : [shape[1]!, shape[0]!];
  return { shape, nbits: { bits: 8, blockSize: INT8_BLOCK, rows: rows!, cols: cols!, offsets: false } };
}

/**
 * A float model's weights with every quantizable matrix in int8 blocks, converted once into
 * the cache (keyed by `sources`, the files the weights come from).
 */
export async function quantizeWeightsInt8(config: ModelConfig, weights: WeightSource, sources: string[]): Promise<WeightFile> {
  const specs = paramSpecsOf(config);
  const quantizable = familyOf(config).quantizable(config);
  const layout = new Map<string, ConvertedLayout>();
  for (const s of specs) {
    const l = quantizable.get(s.name);
    layout.set(s.name, l && int8Quantizable(s.shape, l) ? int8Layout(s.shape, l) : { shape: s.shape });
  }
  const read = async (name: string): Promise<Float32Array> =>
    isWeightFile(weights) ? (await readWeights(weights, [name])).get(name)! : (weights as Weights).get(name)!;
  return convertedQuantizedWeightFile(sources, `int8-${INT8_BLOCK}-1`, layout, async (name) => {
    const values = await read(name);
    const l = layout.get(name)!;
    return l.nbits ? int8Weight(values, l.shape, quantizable.get(name)!) : { values };
  });
}
