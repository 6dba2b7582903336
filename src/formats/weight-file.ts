// Weights on disk that every worker shares: float32 tensors in safetensors files of one
// folder, which ORT maps into each session as external-data initializers. The page cache
// then holds one copy, however many workers (sampler, scorers, trainers of adapters) run
// the model, and nothing is read into JavaScript. Checkpoints that are already float32 in
// Hugging Face layout are used as they are; others (BF16, F16, GGUF) are converted once
// into a cache folder, one tensor at a time.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, stat } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import type { ParamSpec, Weights } from '../model/family.ts';
import { readSafetensorsIndex, writeSafetensorsStreaming, type DType as FileDType, type TensorData } from './safetensors.ts';
import { blockBytes, blocksPerRow, type NBits, type NBitsMatrix } from './nbits.ts';

export interface TensorRef {
  /** A file name in the weight file's folder. */
  file: string;
  /** Byte offset of the float32 data (little-endian) in that file. */
  offset: number;
  shape: number[];
}

/** A weight also stored as MatMulNBits blocks (formats/nbits.ts): where each part's bytes start. */
export interface QuantizedRef {
  file: string;
  bits: NBits;
  blockSize: number;
  /** The stored matrix: rows are output features, whatever the family's own layout. */
  rows: number;
  cols: number;
  data: number;
  scales: number;
  offsets?: number;
}

export interface WeightFile {
  /** The folder holding every file the tensors name (ORT resolves external data against one folder). */
  dir: string;
  /** Every weight as float32: what training, scoring and merging read. */
  tensors: Record<string, TensorRef>;
  /**
   * Weights inference graphs read as quantized blocks instead (generate, prefill/decode):
   * the same values as `tensors` holds for them, which are their dequantization.
   */
  quantized?: Record<string, QuantizedRef>;
}

/** Weights a worker can be given: tensors in memory (trained, swapped), or a shared file. */
export type WeightSource = Weights | WeightFile;

export const isWeightFile = (w: WeightSource): w is WeightFile => !(w instanceof Map);

const elements = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** Throws unless the file holds every spec's tensor at its shape. */
export function checkWeightFile(specs: ParamSpec[], f: WeightFile): void {
  for (const s of specs) {
    const t = f.tensors[s.name];
    if (!t) throw new Error(`weights in ${f.dir}: missing ${s.name}`);
    if (t.shape.join() !== s.shape.join()) throw new Error(`weights in ${f.dir}/${t.file}: ${s.name} has shape [${t.shape}], expected [${s.shape}]`);
  }
}

/** Reads tensors into memory with positional reads (a trainer needs its own copy to change). */
export async function readWeights(f: WeightFile, names: string[] = Object.keys(f.tensors)): Promise<Weights> {
  const out: Weights = new Map();
  for (const name of names) {
    const t = f.tensors[name];
    if (!t) throw new Error(`weights in ${f.dir}: missing ${name}`);
    const data = new Float32Array(elements(t.shape));
    const fh = await open(join(f.dir, t.file), 'r');
    try {
      const { bytesRead } = await fh.read(new Uint8Array(data.buffer), 0, data.byteLength, t.offset);
      if (bytesRead !== data.byteLength) throw new Error(`weights: ${join(f.dir, t.file)} ends inside tensor ${name}`);
    } finally {
      await fh.close();
    }
    out.set(name, data);
  }
  return out;
}

/** The float32 tensors of safetensors files in one folder, as a weight file (nothing is read but headers). */
export async function weightFileOf(paths: string[]): Promise<WeightFile> {
  const dir = dirname(resolve(paths[0]!));
  const tensors: Record<string, TensorRef> = {};
  for (const path of paths) {
    if (dirname(resolve(path)) !== dir) throw new Error(`weights: ${path} is not in ${dir} with the other files`);
    for (const [name, t] of (await readSafetensorsIndex(path)).tensors) {
      if (t.dtype !== 'F32') throw new Error(`${path}: tensor ${name} is ${t.dtype}, not F32`);
      tensors[name] = { file: basename(path), offset: t.offset, shape: t.shape };
    }
  }
  return { dir, tensors };
}

// A quantized weight's parts sit beside its float32 values in one safetensors file, under the
// weight's name and these suffixes; the metadata key NBITS_KEY says each one's geometry.
const PART = { data: '#nbits.data', scales: '#nbits.scales', offsets: '#nbits.offsets' } as const;
const NBITS_KEY = 'nbits';

/** What a converted weight is: float32 values (in the family's layout), and its quantized form when it has one. */
export interface ConvertedWeight {
  values: Float32Array;
  nbits?: NBitsMatrix;
}

/** How a weight of a converted file will be stored, known before it is produced. */
export interface ConvertedLayout {
  shape: number[];
  nbits?: { bits: NBits; blockSize: number; rows: number; cols: number; offsets: boolean };
}

/**
 * The float32 weights of safetensors files in one folder, and the quantized parts
 * (MatMulNBits blocks) of those a converted file holds them for.
 */
export async function quantizedWeightFileOf(path: string): Promise<WeightFile> {
  const { tensors: index, metadata } = await readSafetensorsIndex(path);
  const geometry = JSON.parse(metadata[NBITS_KEY] ?? '{}') as Record<string, Omit<QuantizedRef, 'file' | 'data' | 'scales' | 'offsets'>>;
  const float = [...index].filter(([name]) => !name.includes('#'));
  const dir = dirname(resolve(path));
  const file = basename(path);
  const tensors: Record<string, TensorRef> = {};
  for (const [name, t] of float) {
    if (t.dtype !== 'F32') throw new Error(`${path}: tensor ${name} is ${t.dtype}, not F32`);
    tensors[name] = { file, offset: t.offset, shape: t.shape };
  }
  const quantized: Record<string, QuantizedRef> = {};
  for (const [name, g] of Object.entries(geometry)) {
    const part = (suffix: string) => index.get(name + suffix)?.offset;
    const data = part(PART.data);
    const scales = part(PART.scales);
    if (data === undefined || scales === undefined) throw new Error(`${path}: the quantized parts of ${name} are missing`);
    const offsets = part(PART.offsets);
    quantized[name] = { file, ...g, data, scales, ...(offsets === undefined ? {} : { offsets }) };
  }
  return { dir, tensors, ...(Object.keys(quantized).length ? { quantized } : {}) };
}

/**
 * Like convertedWeightFile, for weights some of which are quantized: each weight's float32
 * values and, when it has them, its MatMulNBits parts, in one cached file.
 */
export async function convertedQuantizedWeightFile(
  sources: string[],
  version: string,
  layout: Map<string, ConvertedLayout>,
  produce: (name: string) => Promise<ConvertedWeight>,
): Promise<WeightFile> {
  const path = await cachePath(sources, version);
  if (!existsSync(path)) {
    await mkdir(dirname(path), { recursive: true });
    const fileLayout = new Map<string, { dtype: FileDType; shape: number[] }>();
    const geometry: Record<string, Omit<QuantizedRef, 'file' | 'data' | 'scales' | 'offsets'>> = {};
    for (const [name, l] of layout) {
      fileLayout.set(name, { dtype: 'F32', shape: l.shape });
      const q = l.nbits;
      if (!q) continue;
      const blocks = q.rows * blocksPerRow(q);
      geometry[name] = { bits: q.bits, blockSize: q.blockSize, rows: q.rows, cols: q.cols };
      fileLayout.set(name + PART.data, { dtype: 'U8', shape: [q.rows, blocksPerRow(q), blockBytes(q)] });
      fileLayout.set(name + PART.scales, { dtype: 'F32', shape: [blocks] });
      if (q.offsets) fileLayout.set(name + PART.offsets, { dtype: 'F32', shape: [q.rows, blocksPerRow(q)] });
    }
    // The file asks for a weight's parts one after another; each weight is produced once.
    let current: { name: string; weight: ConvertedWeight } | undefined;
    const weightOf = async (name: string) => {
      if (current?.name !== name) current = { name, weight: await produce(name) };
      return current.weight;
    };
    const partOf = async (entry: string): Promise<TensorData> => {
      const [name, suffix] = entry.split('#') as [string, string | undefined];
      const w = await weightOf(name);
      if (suffix === undefined) return w.values;
      if (!w.nbits) throw new Error(`weights: ${name} was to be quantized but came without its blocks`);
      if (`#${suffix}` === PART.data) return w.nbits.data;
      if (`#${suffix}` === PART.scales) return w.nbits.scales;
      return w.nbits.offsets!;
    };
    const metadata = { converted_from: sources.map((s) => resolve(s)).join(','), [NBITS_KEY]: JSON.stringify(geometry) };
    await writeSafetensorsStreaming(path, fileLayout, partOf, metadata);
  }
  return quantizedWeightFileOf(path);
}

/** Where converted weights are kept: $TTRL_CACHE_DIR, else ~/.cache/ttrl-server (or the temp folder without a home). */
export function cacheDir(): string {
  if (process.env.TTRL_CACHE_DIR) return resolve(process.env.TTRL_CACHE_DIR);
  const home = homedir();
  return home && existsSync(home) ? join(home, '.cache', 'ttrl-server') : join(tmpdir(), 'ttrl-server-cache');
}

/**
 * Converts a model's weights once into a float32 file in the cache, named by a digest of the
 * sources (path, size and modification time of each, plus `version`, which names the
 * conversion), and returns it. A later load of unchanged sources reuses the file.
 */
export async function convertedWeightFile(
  sources: string[],
  version: string,
  layout: Map<string, { shape: number[] }>,
  produce: (name: string) => Promise<Float32Array>,
): Promise<WeightFile> {
  const path = await cachePath(sources, version);
  if (!existsSync(path)) {
    await mkdir(dirname(path), { recursive: true });
    const f32 = new Map([...layout].map(([name, t]) => [name, { dtype: 'F32' as const, shape: t.shape }]));
    await writeSafetensorsStreaming(path, f32, produce, { converted_from: sources.map((s) => resolve(s)).join(',') });
  }
  return weightFileOf([path]);
}

/** The cache file of a conversion: named by a digest of the sources (path, size, modification time) and `version`. */
async function cachePath(sources: string[], version: string): Promise<string> {
  const h = createHash('sha256').update(version);
  for (const src of sources) {
    const st = await stat(src);
    h.update(`\0${resolve(src)}\0${st.size}\0${st.mtimeMs}`);
  }
  return join(cacheDir(), `${h.digest('hex').slice(0, 32)}.safetensors`);
}
