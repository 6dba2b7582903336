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
import { readSafetensorsIndex, writeSafetensorsStreaming } from './safetensors.ts';

export interface TensorRef {
  /** A file name in the weight file's folder. */
  file: string;
  /** Byte offset of the float32 data (little-endian) in that file. */
  offset: number;
  shape: number[];
}

export interface WeightFile {
  /** The folder holding every file the tensors name (ORT resolves external data against one folder). */
  dir: string;
  tensors: Record<string, TensorRef>;
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
  const h = createHash('sha256').update(version);
  for (const src of sources) {
    const st = await stat(src);
    h.update(`\0${resolve(src)}\0${st.size}\0${st.mtimeMs}`);
  }
  const dir = cacheDir();
  const path = join(dir, `${h.digest('hex').slice(0, 32)}.safetensors`);
  if (!existsSync(path)) {
    await mkdir(dir, { recursive: true });
    const f32 = new Map([...layout].map(([name, t]) => [name, { dtype: 'F32' as const, shape: t.shape }]));
    await writeSafetensorsStreaming(path, f32, produce, { converted_from: sources.map((s) => resolve(s)).join(',') });
  }
  return weightFileOf([path]);
}
