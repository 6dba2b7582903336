// Model versions: the one owner of the version rows in the store, the version weight files
// on disk, the serving sampler's weights, and which version serves (versions$). Version 0 is
// the base model as loaded (its own weight source: arrays, or a mapped file); every later
// version is a promoted candidate of live adaptation: full weights (vN.safetensors), or with
// LoRA its adapters alone (vN.adapter.safetensors, which names the base model's fingerprint
// and is refused on any other base). Start-up serves the database's active version, after
// marking candidates a crash left unjudged.
//
// Every version file is verified on every load: the sha256 of the bytes written is stored
// with its row, and the file carries the database's id in its metadata (two databases never
// serve each other's files). A file that is unreadable, damaged or another database's marks
// its row `corrupt`; at start-up the newest good ancestor serves instead (version 0, the base
// model, at worst), and an admin activation of it is refused. Rows written before
// verification have no sha256: their first load checks what it can (the file parses, fits the
// model, and names no other database) and records the hash, from then on checked.
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync, unlinkSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { BehaviorSubject } from 'rxjs';
import { Sampler, type SamplerInit } from '../engine/sampler.ts';
import { inMemory, loadModel, saveModel, weightsToTensors, type Model } from '../formats/checkpoint.ts';
import { checkWeights, type Weights } from '../model/family.ts';
import { paramSpecsOf, type ModelConfig } from '../model/families.ts';
import { decodeSafetensors, encodeSafetensors, readSafetensors, type NamedTensor } from '../formats/safetensors.ts';
import { writeFileAtomic } from '../util/atomic-write.ts';
import type { WeightSource } from '../formats/weight-file.ts';
import { ADAPTER_FORMAT, adapterFileOf, encodeAdapterFile, initAdapters, mergeAdapters, writePeftAdapter, type LoraConfig } from '../model/lora.ts';
import { Rng } from '../util/rng.ts';
import type { Store, VersionRow } from '../store/store.ts';
import { claimBaseModel, contentFingerprint, FINGERPRINT_KEY, weightFilesOf } from './base-model.ts';
import { ProtocolError } from './errors.ts';
import type { Metrics } from './metrics.ts';

export interface ServingVersion {
  version: number;
  /** Full weights; with LoRA, the frozen base (every version's). */
  weights: WeightSource;
  /** LoRA: this version's adapters on the base. */
  adapters?: Weights;
}

export interface VersionsOptions {
  store: Store;
  /** The base model (version 0) and where it was loaded from (a directory or a GGUF file). */
  model: Pick<Model, 'config' | 'weights'>;
  modelPath: string;
  /** Where promoted versions' weights are written. */
  versionsDir: string;
  metrics: Metrics;
  /** The serving sampler's compute threads, and whether idle ones spin (not when a trainer shares the cores). */
  sampler: { threads: number; spin: boolean };
  /** Versions are LoRA adapters of this shape on the frozen base (unset: full weights). */
  lora?: LoraConfig;
  /** Retired versions whose weight files are kept, the newest (0 or unset: all). */
  keepVersions?: number;
  log?: (line: string) => void;
}

/** A candidate that passed the guard. */
export interface Promotion {
  parent: number;
  /** Full weights, or with LoRA the candidate's adapters. */
  weights: Weights;
  stats: Record<string, unknown>;
}

/** A candidate that failed it: recorded, its weights not kept. */
export interface Rejection {
  parent: number;
  stats: Record<string, unknown>;
  reason: string;
}

/** Least time between two attempts to restart a dead sampler. */
const RESTART_BACKOFF_MS = 1000;

export class Versions {
  /** The serving version, as it changes. */
  readonly versions$: BehaviorSubject<number>;
  private restarting: Promise<Sampler> | null = null;
  private lastRestartAt = 0;
  private closed = false;

  private constructor(
    private store: Store,
    private config: ModelConfig,
    /** Version 0's weights. */
    readonly base: WeightSource,
    private versionsDir: string,
    private metrics: Metrics,
    /** Samples for the answerer; only Versions changes its weights, and replaces it when its worker dies. */
    private current: Sampler,
    private samplerInit: Omit<SamplerInit, 'weights' | 'adapters' | 'version'>,
    private serving: ServingVersion,
    /** The base model's fingerprint: adapter files name it. */
    readonly fingerprint: string,
    /** This database's id: written into every version file, checked on load. */
    private databaseId: string,
    private log: (line: string) => void,
    private keepVersions: number,
    readonly lora?: LoraConfig,
  ) {
    this.versions$ = new BehaviorSubject(serving.version);
    metrics.modelVersion.set(serving.version);
  }

  /**
   * Claims the store for this base model (refusing a store that logs another), adds version 0
   * to a new store, marks unjudged candidates interrupted, and starts the sampler on the
   * active version.
   */
  static async open(o: VersionsOptions): Promise<Versions> {
    const { store } = o;
    const { files, fingerprint } = await claimBaseModel(store, o.modelPath);
    if (!store.versions().length) {
      const weightsPath = files.length === 1 ? files[0]! : o.modelPath;
      // One transaction: a crash here must not leave version 0 an unjudged candidate.
      store.db.transaction(() => store.activate(store.addVersion({ parent: null, status: 'candidate', weightsPath, stats: { base: o.modelPath } })))();
    }
    const stale = store.rejectStaleCandidates();
    if (stale) o.log?.(`marked ${stale} unfinished candidate version(s) as interrupted`);
    const row = store.activeVersion();
    if (!row) throw new Error(`${store.file}: no active model version (every version is retired, rejected or corrupt); activate one in model_versions`);
    const log = o.log ?? (() => {});
    mkdirSync(o.versionsDir, { recursive: true });
    removeUnfinishedWrites(o.versionsDir, log);
    const ctx: Serving = { base: o.model.weights, config: o.model.config, lora: o.lora, fingerprint, databaseId: store.databaseId() };
    const serving = await servingAtStart(store, row, ctx, log);
    const init = { config: o.model.config, lora: o.lora, threads: o.sampler.threads, spin: o.sampler.spin };
    const sampler = await Sampler.create({ ...init, weights: serving.weights, adapters: serving.adapters, version: serving.version });
    return new Versions(store, o.model.config, o.model.weights, o.versionsDir, o.metrics, sampler, init, serving, fingerprint, ctx.databaseId, log, o.keepVersions ?? 0, o.lora);
  }

  get active(): ServingVersion {
    return this.serving;
  }

  /** The sampler as it is now (it may be down: live() replaces a dead one). */
  get sampler(): Sampler {
    return this.current;
  }

  /** Why sampling is down (its worker died and no replacement started yet), or null. */
  get samplerDown(): string | null {
    const e = this.current.down;
    return e && !this.closed ? e.message : null;
  }

  /**
   * The sampler to run a batch on. A sampler whose worker died (out of memory, a crash in
   * native code) is replaced by a fresh one on the serving version; attempts are at least
   * RESTART_BACKOFF_MS apart, and until one succeeds batches fail (and /readyz says why).
   */
  async live(): Promise<Sampler> {
    if (!this.current.down) return this.current;
    if (this.closed) throw this.current.down;
    return (this.restarting ??= this.restart().finally(() => (this.restarting = null)));
  }

  private async restart(): Promise<Sampler> {
    const reason = this.current.down!.message;
    const wait = this.lastRestartAt + RESTART_BACKOFF_MS - Date.now();
    if (wait > 0) throw new Error(`the sampler is down (${reason}); the next restart is in ${Math.ceil(wait)} ms`);
    this.lastRestartAt = Date.now();
    const v = this.serving;
    try {
      const fresh = await Sampler.create({ ...this.samplerInit, weights: v.weights, adapters: v.adapters, version: v.version });
      if (this.closed) {
        await fresh.close();
        throw new Error('shutting down');
      }
      this.current = fresh;
    } catch (e) {
      this.log(`the sampler is down (${reason}) and did not restart: ${(e as Error).message}`);
      throw new Error(`the sampler is down (${reason}) and did not restart: ${(e as Error).message}`);
    }
    this.store.event('sampler_restarted', { reason, version: v.version });
    this.log(`the sampler was down (${reason}); restarted on version ${v.version}`);
    return this.current;
  }

  /** Every version, with the one serving marked. */
  list(): (VersionRow & { serving: boolean })[] {
    return this.store.versions().map((v) => ({ ...v, serving: v.version === this.serving.version }));
  }

  /**
   * Reserves the number, writes the weights (atomically), then serves them: a crash in
   * between leaves a candidate row that the next start marks interrupted, and the old version
   * serving. Weights that cannot be written leave the row rejected with the reason, and throw.
   */
  async promote(c: Promotion): Promise<number> {
    const lora = this.lora;
    const file = (v: number) => join(this.versionsDir, lora ? `v${v}.adapter.safetensors` : `v${v}.safetensors`);
    const version = this.store.addVersion({ parent: c.parent, status: 'candidate', stats: c.stats, weightsPath: file });
    const path = this.store.version(version)!.weights_path!;
    try {
      // The hash is of the very bytes handed to the write, not of a re-read.
      const bytes = this.fileBytes(version, c);
      await writeFileAtomic(path, bytes);
      this.store.setWeightsSha256(version, sha256Of(bytes));
    } catch (e) {
      const reason = `the weights could not be written to ${path}: ${(e as Error).message}`;
      this.store.reject(version, reason);
      this.store.event('version_rejected', { version, parent: c.parent, reason });
      throw new Error(reason);
    }
    this.store.activate(version);
    this.store.event('version_promoted', { version, parent: c.parent });
    await this.serve(lora ? { version, weights: this.base, adapters: c.weights } : { version, weights: c.weights });
    this.prune();
    return version;
  }

  /**
   * Bounds the disk: of the retired versions, the newest `keepVersions` keep their weight
   * files; older ones lose theirs (the row, its stats and its place in the lineage stay, and
   * say so). A live server promotes often (every few seconds under load), and each full
   * version is the model's size. Version 0 is the model itself and is never touched.
   */
  private prune(): void {
    if (!this.keepVersions) return;
    const retired = this.store.versions().filter((v) => v.status === 'retired' && v.version > 0 && v.weights_path).sort((a, b) => b.version - a.version);
    const pruned: number[] = [];
    for (const row of retired.slice(this.keepVersions)) {
      // The row first: a crash between the two leaves a stray file, never a row naming a
      // file that is gone (which a fallback would take for corruption).
      this.store.pruneWeights(row.version, `retired; its weights were deleted to keep the newest ${this.keepVersions} retired versions' files (--keep-versions)`);
      pruned.push(row.version);
      try {
        rmSync(row.weights_path!, { force: true });
      } catch (e) {
        this.log(`could not delete ${row.weights_path} of retired version ${row.version}: ${(e as Error).message}`);
      }
    }
    if (pruned.length) this.store.event('versions_pruned', { versions: pruned, keep: this.keepVersions });
  }

  /**
   * A version file's bytes: full weights, or with LoRA an adapter file, each with this
   * database's id.
   */
  private fileBytes(version: number, c: Promotion): Buffer {
    const owner = { [DATABASE_META]: this.databaseId, version: String(version), parent: String(c.parent) };
    const lora = this.lora;
    if (!lora) return encodeSafetensors(weightsToTensors(this.config, c.weights), owner);
    return encodeAdapterFile(this.config, { lora, baseModel: this.fingerprint, adapters: c.weights }, owner);
  }

  /** Records a rejected candidate (weights not kept); the serving version stays. */
  reject(c: Rejection): number {
    const version = this.store.addVersion({ parent: c.parent, status: 'rejected', stats: c.stats, reason: c.reason, weightsPath: null });
    this.store.event('version_rejected', { version, parent: c.parent, reason: c.reason });
    return version;
  }

  /** Serves a stored version (admin rollback or roll forward). */
  async activate(version: number, by: string): Promise<void> {
    const row = this.store.version(version);
    if (!row) throw new ProtocolError('not_found', `no model version ${version}`);
    if (!row.weights_path) throw new ProtocolError('invalid_message', `version ${version} was ${row.status} and its weights were not kept`);
    const ctx: Serving = { base: this.base, config: this.config, lora: this.lora, fingerprint: this.fingerprint, databaseId: this.databaseId };
    let serving: ServingVersion;
    try {
      serving = await loadVerified(this.store, row, ctx, this.log);
    } catch (e) {
      // Marked corrupt by loadVerified; the serving version stays.
      if (e instanceof CorruptWeights) throw new ProtocolError('invalid_message', `${e.message}; version ${version} is marked corrupt and was not activated`);
      throw e;
    }
    this.store.activate(version);
    this.store.event('version_activated', { version, by });
    await this.serve(serving);
  }

  /** The sampler takes the weights between batches (a batch never mixes versions); then everyone hears of it. */
  private async serve(v: ServingVersion): Promise<void> {
    // A sampler that is down gets the serving version when it restarts.
    if (!this.current.down) {
      if (v.adapters) await this.current.setAdapters(v.adapters, v.version);
      else await this.current.setWeights(v.weights, v.version);
    }
    this.serving = v;
    this.metrics.modelVersion.set(v.version);
    this.versions$.next(v.version);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.restarting?.catch(() => {});
    await this.current.close();
    this.versions$.complete();
  }
}

interface Serving {
  base: WeightSource;
  config: ModelConfig;
  lora?: LoraConfig;
  fingerprint: string;
  databaseId: string;
}

/** The metadata key of a version file that names the database it was written for. */
export const DATABASE_META = 'ttrl_database';

/** A version's weight file failed verification: unreadable, damaged, or another database's. */
export class CorruptWeights extends Error {}

const sha256Of = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

/**
 * The active version's weights, verified; if its file is corrupt, its newest good ancestor
 * (walking the parent chain; version 0, the base model, always loads), which becomes the
 * active version, said in the log and in a `version_fallback` event. Errors that are not
 * corruption (a LoRA file on a full fine-tuning server, say) still stop the start.
 */
async function servingAtStart(store: Store, active: VersionRow, ctx: Serving, log: (line: string) => void): Promise<ServingVersion> {
  const corrupt: number[] = [];
  for (let row: VersionRow | undefined = active; row; row = row.parent === null ? undefined : store.version(row.parent)) {
    // A retired ancestor whose file was pruned (--keep-versions) is passed over, not corrupt.
    if (row !== active && row.version > 0 && !row.weights_path && row.status === 'retired') continue;
    try {
      const serving = await loadVerified(store, row, ctx, log);
      if (corrupt.length) {
        store.activate(row.version);
        store.event('version_fallback', { from: active.version, to: row.version, corrupt });
        log(`serving model version ${row.version}, the newest good ancestor of corrupt version ${active.version} (corrupt: ${corrupt.join(', ')})`);
      }
      return serving;
    } catch (e) {
      if (!(e instanceof CorruptWeights)) throw e;
      corrupt.push(row.version);
    }
  }
  throw new Error(`${store.file}: model version ${active.version} and every ancestor are corrupt (${corrupt.join(', ')}); nothing verified to serve`);
}

/**
 * Loads a version verified. A corrupt file marks the row corrupt (reason naming the file),
 * logged and recorded as a `version_corrupt` event, and throws CorruptWeights; a legacy row's
 * first good load records its hash.
 */
async function loadVerified(store: Store, row: VersionRow, ctx: Serving, log: (line: string) => void): Promise<ServingVersion> {
  try {
    const { serving, sha256 } = await servingOfRow(row, ctx);
    if (sha256 && !row.weights_sha256) {
      store.setWeightsSha256(row.version, sha256);
      log(`model version ${row.version}: ${row.weights_path} had no recorded sha256 (written before verification); recorded ${sha256} on this first load`);
    }
    return serving;
  } catch (e) {
    if (e instanceof CorruptWeights) {
      store.markCorrupt(row.version, e.message);
      store.event('version_corrupt', { version: row.version, path: row.weights_path, reason: e.message });
      log(`model version ${row.version} is corrupt: ${e.message}`);
    }
    throw e;
  }
}

/**
 * A version file's bytes, read once and verified against its row: the recorded sha256 (when
 * there is one), a readable safetensors layout, and no other database's id.
 */
async function readVerified(row: VersionRow, databaseId: string): Promise<{ bytes: Buffer; sha256: string; metadata: Record<string, string>; tensors: Map<string, NamedTensor> }> {
  const path = row.weights_path!;
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new CorruptWeights(`${path} cannot be read: ${(e as Error).message}`);
  }
  const sha256 = sha256Of(bytes);
  if (row.weights_sha256 && row.weights_sha256 !== sha256)
    throw new CorruptWeights(`${path} (${bytes.length} bytes) has sha256 ${sha256}, not the ${row.weights_sha256} recorded when it was written: it was damaged, truncated or replaced`);
  let contents: { metadata: Record<string, string>; tensors: Map<string, NamedTensor> };
  try {
    contents = decodeSafetensors(bytes);
  } catch (e) {
    throw new CorruptWeights(`${path} is not a readable safetensors file: ${(e as Error).message}`);
  }
  const owner = contents.metadata[DATABASE_META];
  if (owner !== undefined && owner !== databaseId) throw new CorruptWeights(`${path} was written for another database (id ${owner}), not this one (${databaseId})`);
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

/**
 * What serving a version takes: the base model's own weights for version 0 (with LoRA, fresh
 * adapters, which change nothing), else its file, checked against the model. A file of the
 * other kind (adapters for a full fine-tuning server, full weights or another rank for a LoRA
 * one) or adapters of another base model are refused, naming the file.
 */
async function servingOfRow(row: VersionRow, o: Serving): Promise<{ serving: ServingVersion; sha256?: string }> {
  const { version } = row;
  if (version === 0) return { serving: o.lora ? { version, weights: o.base, adapters: initAdapters(o.config, o.lora, new Rng(0)) } : { version, weights: o.base } };
  const path = row.weights_path;
  try {
    if (!path) throw new CorruptWeights('its weights were not kept');
    const file = await readVerified(row, o.databaseId);
    const isAdapter = file.metadata.format === ADAPTER_FORMAT;
    if (!o.lora) {
      if (isAdapter) throw new Error('it holds LoRA adapters: serve it with the --lora-rank, --lora-alpha and --lora-targets it was trained with');
      return { serving: { version, weights: weightsOf(file.tensors, o.config) }, sha256: file.sha256 };
    }
    if (!isAdapter) throw new Error('it holds full weights: serve it with --lora-rank 0');
    const f = adapterFileOf(path, file, o.config, o.lora);
    if (f.baseModel !== o.fingerprint) throw new Error(`its adapters were trained on base model ${f.baseModel}, not on this one (${o.fingerprint})`);
    return { serving: { version, weights: o.base, adapters: f.adapters }, sha256: file.sha256 };
  } catch (e) {
    const message = `model version ${version}: cannot load its weights from ${path}: ${(e as Error).message}`;
    throw e instanceof CorruptWeights ? new CorruptWeights(message) : new Error(message);
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
export async function exportVersion(store: Store, version: number, o: { out: string; adapter?: boolean; model?: string }): Promise<{ model: string; kind: 'full' | 'lora' }> {
  const row = store.version(version);
  if (!row) throw new Error(`${store.file}: no model version ${version}`);
  if (!row.weights_path) throw new Error(`${store.file}: version ${version} was ${row.status} and its weights were not kept`);
  const modelPath = o.model ?? (store.version(0)?.stats as { base?: string } | null)?.base;
  if (!modelPath) throw new Error(`${store.file}: version 0 does not say which base model it is; give --model`);
  const expected = store.getMeta(FINGERPRINT_KEY);
  const actual = await contentFingerprint(await weightFilesOf(modelPath));
  if (expected && expected !== actual) throw new Error(`${modelPath} is not the base model of ${store.file} (weights ${actual}, the store's ${expected})`);
  const model = await loadModel(modelPath);
  // The version's bytes, verified as a load verifies them (sha256, this database's file):
  // a damaged file is refused, naming it, rather than exported.
  const file = version > 0 ? await readVerified(row, store.databaseId()).catch((e) => {
    throw new Error(`version ${version}: ${(e as Error).message}; not exported`);
  }) : null;
  const isAdapter = file?.metadata.format === ADAPTER_FORMAT;
  const metadata = { ...model.metadata, ttrl_version: String(version), ttrl_parent: String(row.parent ?? ''), ttrl_base: actual };
  if (o.adapter) {
    if (!isAdapter) throw new Error(`version ${version} ${version === 0 ? 'is the base model' : `holds full weights (${row.weights_path})`}: it has no LoRA adapters to export; leave out --adapter`);
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
