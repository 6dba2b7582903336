// Version weight files on disk, and their verification. A promoted version is full weights
// (vN.safetensors), or with LoRA its adapters alone (vN.adapter.safetensors, which names the
// base model's fingerprint and is refused on any other base). Version 0 is the base model as
// loaded and has no file of ours.
//
// Every version file is verified on every load: the sha256 of the bytes written is stored
// with its row (by the caller: rows are loop/versions.ts's), and the file carries the
// database's id in its metadata (two databases never serve each other's files). A file that
// is unreadable, damaged or another database's throws CorruptWeights. Rows written before
// verification have no sha256: their first load checks what it can (the file parses, fits
// the model, and names no other database) and hands back the hash to record.
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync, unlinkSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { inMemory, loadModel, saveModel, weightsToTensors } from '../formats/checkpoint.ts';
import { checkWeights, type Weights } from '../model/family.ts';
import { paramSpecsOf, type ModelConfig } from '../model/families.ts';
import { decodeSafetensors, encodeSafetensors, readSafetensors, type NamedTensor } from '../formats/safetensors.ts';
import { writeFileAtomic } from '../util/atomic-write.ts';
import type { WeightSource } from '../formats/weight-file.ts';
import { ADAPTER_FORMAT, adapterFileOf, encodeAdapterFile, initAdapters, mergeAdapters, writePeftAdapter, type LoraConfig } from '../model/lora.ts';
import { Rng } from '../util/rng.ts';
import type { Store, VersionRow } from '../store/store.ts';
import { contentFingerprint, FINGERPRINT_KEY, weightFilesOf } from './base-model.ts';
import type { ServingVersion } from './serving-sampler.ts';

/** The metadata key of a version file that names the database it was written for. */
export const DATABASE_META = 'ttrl_database';

/** A version's weight file failed verification: unreadable, damaged, or another database's. */
export class CorruptWeights extends Error {}

export interface VersionFilesOptions {
  /** Where promoted versions' weights are written. */
  dir: string;
  config: ModelConfig;
  /** Version 0's weights; with LoRA, the frozen base of every version. */
  base: WeightSource;
  /** Versions are LoRA adapters of this shape on the frozen base (unset: full weights). */
  lora?: LoraConfig;
  /** The base model's fingerprint: adapter files name it. */
  fingerprint: string;
  /** This database's id: written into every version file, checked on load. */
  databaseId: string;
  log: (line: string) => void;
}

/** The one place that writes, reads, verifies and deletes this database's version files. */
export class VersionFiles {
  private constructor(private o: VersionFilesOptions) {}

  /** Makes the folder, and clears the unfinished writes a killed process left in it. */
  static open(o: VersionFilesOptions): VersionFiles {
    mkdirSync(o.dir, { recursive: true });
    removeUnfinishedWrites(o.dir, o.log);
    return new VersionFiles(o);
  }

  get base(): WeightSource {
    return this.o.base;
  }

  get lora(): LoraConfig | undefined {
    return this.o.lora;
  }

  get fingerprint(): string {
    return this.o.fingerprint;
  }

  /** Where version `version`'s file goes. */
  pathOf(version: number): string {
    return join(this.o.dir, this.o.lora ? `v${version}.adapter.safetensors` : `v${version}.safetensors`);
  }

  /**
   * Writes a version's file (atomically): full weights, or with LoRA an adapter file, each
   * with this database's id. Returns the sha256 of the very bytes handed to the write, not of
   * a re-read.
   */
  async write(path: string, v: { version: number; parent: number; weights: Weights }): Promise<string> {
    const bytes = this.bytesOf(v);
    await writeFileAtomic(path, bytes);
    return sha256Of(bytes);
  }

  private bytesOf(v: { version: number; parent: number; weights: Weights }): Buffer {
    const { config, lora, fingerprint, databaseId } = this.o;
    const owner = { [DATABASE_META]: databaseId, version: String(v.version), parent: String(v.parent) };
    if (!lora) return encodeSafetensors(weightsToTensors(config, v.weights), owner);
    return encodeAdapterFile(config, { lora, baseModel: fingerprint, adapters: v.weights }, owner);
  }

  /**
   * What serving a version takes: the base model's own weights for version 0 (with LoRA, fresh
   * adapters, which change nothing), else its file, verified and checked against the model,
   * with the file's sha256. A file of the other kind (adapters for a full fine-tuning server,
   * full weights or another rank for a LoRA one) or adapters of another base model are
   * refused, naming the file.
   */
  async read(row: VersionRow): Promise<{ serving: ServingVersion; sha256?: string }> {
    const { config, base, lora, fingerprint, databaseId } = this.o;
    const { version } = row;
    if (version === 0) return { serving: lora ? { version, weights: base, adapters: initAdapters(config, lora, new Rng(0)) } : { version, weights: base } };
    const path = row.weights_path;
    try {
      if (!path) throw new CorruptWeights('its weights were not kept');
      const file = await readVerified(row, databaseId);
      const isAdapter = file.metadata.format === ADAPTER_FORMAT;
      if (!lora) {
        if (isAdapter) throw new Error('it holds LoRA adapters: serve it with the --lora-rank, --lora-alpha and --lora-targets it was trained with');
        return { serving: { version, weights: weightsOf(file.tensors, config) }, sha256: file.sha256 };
      }
      if (!isAdapter) throw new Error('it holds full weights: serve it with --lora-rank 0');
      const f = adapterFileOf(path, file, config, lora);
      if (f.baseModel !== fingerprint) throw new Error(`its adapters were trained on base model ${f.baseModel}, not on this one (${fingerprint})`);
      return { serving: { version, weights: base, adapters: f.adapters }, sha256: file.sha256 };
    } catch (e) {
      const message = `model version ${version}: cannot load its weights from ${path}: ${(e as Error).message}`;
      throw e instanceof CorruptWeights ? new CorruptWeights(message) : new Error(message);
    }
  }

  /** Deletes a pruned version's file; a failure is logged, not thrown (its row already says it is gone). */
  remove(row: VersionRow): void {
    try {
      rmSync(row.weights_path!, { force: true });
    } catch (e) {
      this.o.log(`could not delete ${row.weights_path} of retired version ${row.version}: ${(e as Error).message}`);
    }
  }
}

const sha256Of = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

/**
 * A version file's bytes, read once and verified against its row: the recorded sha256 (when
 * there is one), a readable safetensors layout, and no other database's id.
 */
async function readVerified(
  row: VersionRow,
  databaseId: string,
): Promise<{ bytes: Buffer; sha256: string; metadata: Record<string, string>; tensors: Map<string, NamedTensor> }> {
  const path = row.weights_path!;
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new CorruptWeights(`${path} cannot be read: ${(e as Error).message}`);
  }
  const sha256 = sha256Of(bytes);
  if (row.weights_sha256 && row.weights_sha256 !== sha256)
    throw new CorruptWeights(
      `${path} (${bytes.length} bytes) has sha256 ${sha256}, not the ${row.weights_sha256} recorded when it was written: it was damaged, truncated or replaced`,
    );
  let contents: { metadata: Record<string, string>; tensors: Map<string, NamedTensor> };
  try {
    contents = decodeSafetensors(bytes);
  } catch (e) {
    throw new CorruptWeights(`${path} is not a readable safetensors file: ${(e as Error).message}`);
  }
  const owner = contents.metadata[DATABASE_META];
  if (owner !== undefined && owner !== databaseId)
    throw new CorruptWeights(`${path} was written for another database (id ${owner}), not this one (${databaseId})`);
  return { bytes, sha256, ...contents };
}

// atomic-write.ts names its temp files `.<name>.<pid>.<ms>.<random>.tmp` beside the target.
const UNFINISHED_WRITE = /^\.v\d+(?:\.adapter)?\.safetensors\.(\d+)\.\d+\.[a-z0-9]*\.tmp$/;

/**
 * Removes the temp files of version writes that a killed process never finished (they would
 * stay for ever). One whose writer is still alive (another server sharing an old-style
 * folder) is left to it.
 */
export function removeUnfinishedWrites(dir: string, log: (line: string) => void): void {
  for (const name of readdirSync(dir)) {
    const m = UNFINISHED_WRITE.exec(name);
    if (!m || processAlive(Number(m[1]))) continue;
    unlinkSync(join(dir, name));
    log(`removed ${join(dir, name)}: the unfinished write of a version file (process ${m[1]} stopped before finishing it)`);
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it exists, under another user.
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Tensors read from a version file, checked against the model's parameters. */
function weightsOf(tensors: Map<string, NamedTensor>, config: ModelConfig): Weights {
  const w: Weights = new Map();
  for (const [k, t] of tensors) w.set(k, t.data as Float32Array);
  checkWeights(paramSpecsOf(config), w);
  return w;
}

/** A stored version's weights, read into memory and checked against the model's parameters. */
export async function loadVersionWeights(path: string, config: ModelConfig): Promise<Weights> {
  return weightsOf((await readSafetensors(path)).tensors, config);
}

/**
 * Writes a stored version for other tools: merged, as a model directory of the base's kind (a
 * Hugging Face directory for the Llama family: transformers and vLLM load it), or with
 * `adapter` its LoRA adapters in PEFT's layout. The base must be the store's own (checked by
 * fingerprint); its path defaults to the one version 0 was created from.
 */
export async function exportVersion(
  store: Store,
  version: number,
  o: { out: string; adapter?: boolean; model?: string },
): Promise<{ model: string; kind: 'full' | 'lora' }> {
  const row = await store.version(version);
  if (!row) throw new Error(`${store.location}: no model version ${version}`);
  if (!row.weights_path) throw new Error(`${store.location}: version ${version} was ${row.status} and its weights were not kept`);
  const modelPath = o.model ?? ((await store.version(0))?.stats as { base?: string } | null)?.base;
  if (!modelPath) throw new Error(`${store.location}: version 0 does not say which base model it is; give --model`);
  const expected = await store.getMeta(FINGERPRINT_KEY);
  const actual = await contentFingerprint(await weightFilesOf(modelPath));
  if (expected && expected !== actual) throw new Error(`${modelPath} is not the base model of ${store.location} (weights ${actual}, the store's ${expected})`);
  const model = await loadModel(modelPath);
  // The version's bytes, verified as a load verifies them (sha256, this database's file):
  // a damaged file is refused, naming it, rather than exported.
  const file =
    version > 0
      ? await readVerified(row, await store.databaseId()).catch((e) => {
          throw new Error(`version ${version}: ${(e as Error).message}; not exported`);
        })
      : null;
  const isAdapter = file?.metadata.format === ADAPTER_FORMAT;
  const metadata = { ...model.metadata, ttrl_version: String(version), ttrl_parent: String(row.parent ?? ''), ttrl_base: actual };
  if (o.adapter) {
    if (!isAdapter)
      throw new Error(
        `version ${version} ${version === 0 ? 'is the base model' : `holds full weights (${row.weights_path})`}: it has no LoRA adapters to export; leave out --adapter`,
      );
    const f = adapterFileOf(row.weights_path, file!, model.config);
    await writePeftAdapter(o.out, model.config, { ...f, baseModel: resolve(modelPath) });
    return { model: modelPath, kind: 'lora' };
  }
  let weights: Weights;
  if (!file) weights = await inMemory(model.weights);
  else if (isAdapter) {
    const f = adapterFileOf(row.weights_path, file, model.config);
    weights = mergeAdapters(model.config, f.lora, await inMemory(model.weights), f.adapters);
  } else weights = weightsOf(file.tensors, model.config);
  await saveModel(o.out, { ...model, weights, metadata });
  return { model: modelPath, kind: isAdapter ? 'lora' : 'full' };
}
