// Model versions: the one owner of the version rows in the store (promote, reject, activate,
// the lineage) and of which version serves (versions$). Version 0 is the base model as
// loaded; every later version is a promoted candidate of live adaptation. Its parts: the
// version files (version-files.ts: writing, verifying, pruning) and the serving sampler
// (serving-sampler.ts: the hot swap, restarts). Start-up serves the database's active
// version, after marking candidates a crash left unjudged.
//
// A version file that fails verification marks its row `corrupt`; at start-up the newest
// good ancestor serves instead (version 0, the base model, at worst), and an admin
// activation of it is refused. A row written before verification gets its hash recorded on
// its first good load.
import { BehaviorSubject } from 'rxjs';
import type { Sampler } from '../engine/sampler.ts';
import type { Model } from '../formats/checkpoint.ts';
import type { Weights } from '../model/family.ts';
import type { WeightSource } from '../formats/weight-file.ts';
import type { LoraConfig } from '../model/lora.ts';
import type { Store, VersionRow } from '../store/store.ts';
import { claimBaseModel } from './base-model.ts';
import { ProtocolError } from '../protocol/errors.ts';
import type { Metrics } from './metrics.ts';
import { CorruptWeights, VersionFiles } from './version-files.ts';
import { ServingSampler, type ServingVersion } from './serving-sampler.ts';

export type { ServingVersion } from './serving-sampler.ts';

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

/** What a Versions is made of: the store it keeps rows in, and its two parts. */
interface VersionsParts {
  store: Store;
  files: VersionFiles;
  sampler: ServingSampler;
  metrics: Metrics;
  log: (line: string) => void;
  /** Retired versions whose weight files are kept, the newest (0: all). */
  keepVersions: number;
}

export class Versions {
  /** The serving version, as it changes. */
  readonly versions$: BehaviorSubject<number>;

  private constructor(private parts: VersionsParts) {
    const { version } = parts.sampler.version;
    this.versions$ = new BehaviorSubject(version);
    parts.metrics.modelVersion.set(version);
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
    const versionFiles = VersionFiles.open({
      dir: o.versionsDir,
      config: o.model.config,
      base: o.model.weights,
      lora: o.lora,
      fingerprint,
      databaseId: store.databaseId(),
      log,
    });
    const serving = await servingAtStart(store, versionFiles, row, log);
    const init = { config: o.model.config, lora: o.lora, threads: o.sampler.threads, spin: o.sampler.spin };
    const sampler = await ServingSampler.start(serving, { init, store, log });
    return new Versions({ store, files: versionFiles, sampler, metrics: o.metrics, log, keepVersions: o.keepVersions ?? 0 });
  }

  /** Version 0's weights. */
  get base(): WeightSource {
    return this.parts.files.base;
  }

  /** The base model's fingerprint: adapter files name it. */
  get fingerprint(): string {
    return this.parts.files.fingerprint;
  }

  get lora(): LoraConfig | undefined {
    return this.parts.files.lora;
  }

  get active(): ServingVersion {
    return this.parts.sampler.version;
  }

  /** The sampler as it is now (it may be down: live() replaces a dead one). */
  get sampler(): Sampler {
    return this.parts.sampler.sampler;
  }

  /** Why sampling is down (its worker died and no replacement started yet), or null. */
  get samplerDown(): string | null {
    return this.parts.sampler.down;
  }

  /** The sampler to run a batch on, restarted on the serving version if its worker died. */
  live(): Promise<Sampler> {
    return this.parts.sampler.live();
  }

  /** Every version, with the one serving marked. */
  list(): (VersionRow & { serving: boolean })[] {
    const serving = this.active.version;
    return this.parts.store.versions().map((v) => ({ ...v, serving: v.version === serving }));
  }

  /**
   * Reserves the number, writes the weights (atomically), then serves them: a crash in
   * between leaves a candidate row that the next start marks interrupted, and the old version
   * serving. Weights that cannot be written leave the row rejected with the reason, and throw.
   */
  async promote(c: Promotion): Promise<number> {
    const { store, files } = this.parts;
    const version = store.addVersion({ parent: c.parent, status: 'candidate', stats: c.stats, weightsPath: (v) => files.pathOf(v) });
    const path = store.version(version)!.weights_path!;
    try {
      store.setWeightsSha256(version, await files.write(path, { version, parent: c.parent, weights: c.weights }));
    } catch (e) {
      const reason = `the weights could not be written to ${path}: ${(e as Error).message}`;
      store.reject(version, reason);
      store.event('version_rejected', { version, parent: c.parent, reason });
      throw new Error(reason);
    }
    store.activate(version);
    store.event('version_promoted', { version, parent: c.parent });
    await this.serve(files.lora ? { version, weights: files.base, adapters: c.weights } : { version, weights: c.weights });
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
    const { store, files, keepVersions } = this.parts;
    if (!keepVersions) return;
    const retired = store
      .versions()
      .filter((v) => v.status === 'retired' && v.version > 0 && v.weights_path)
      .sort((a, b) => b.version - a.version);
    const pruned: number[] = [];
    for (const row of retired.slice(keepVersions)) {
      // The row first: a crash between the two leaves a stray file, never a row naming a
      // file that is gone (which a fallback would take for corruption).
      store.pruneWeights(row.version, `retired; its weights were deleted to keep the newest ${keepVersions} retired versions' files (--keep-versions)`);
      pruned.push(row.version);
      files.remove(row);
    }
    if (pruned.length) store.event('versions_pruned', { versions: pruned, keep: keepVersions });
  }

  /** Records a rejected candidate (weights not kept); the serving version stays. */
  reject(c: Rejection): number {
    const { store } = this.parts;
    const version = store.addVersion({ parent: c.parent, status: 'rejected', stats: c.stats, reason: c.reason, weightsPath: null });
    store.event('version_rejected', { version, parent: c.parent, reason: c.reason });
    return version;
  }

  /** Serves a stored version (admin rollback or roll forward). */
  async activate(version: number, by: string): Promise<void> {
    const { store, files, log } = this.parts;
    const row = store.version(version);
    if (!row) throw new ProtocolError('not_found', `no model version ${version}`);
    if (!row.weights_path) throw new ProtocolError('invalid_message', `version ${version} was ${row.status} and its weights were not kept`);
    let serving: ServingVersion;
    try {
      serving = await loadVerified(store, files, row, log);
    } catch (e) {
      // Marked corrupt by loadVerified; the serving version stays.
      if (e instanceof CorruptWeights) throw new ProtocolError('invalid_message', `${e.message}; version ${version} is marked corrupt and was not activated`);
      throw e;
    }
    store.activate(version);
    store.event('version_activated', { version, by });
    await this.serve(serving);
  }

  /** The sampler takes the weights between batches; then everyone hears of it. */
  private async serve(v: ServingVersion): Promise<void> {
    await this.parts.sampler.swap(v);
    this.parts.metrics.modelVersion.set(v.version);
    this.versions$.next(v.version);
  }

  async close(): Promise<void> {
    await this.parts.sampler.close();
    this.versions$.complete();
  }
}

/**
 * The active version's weights, verified; if its file is corrupt, its newest good ancestor
 * (walking the parent chain; version 0, the base model, always loads), which becomes the
 * active version, said in the log and in a `version_fallback` event. Errors that are not
 * corruption (a LoRA file on a full fine-tuning server, say) still stop the start.
 */
async function servingAtStart(store: Store, files: VersionFiles, active: VersionRow, log: (line: string) => void): Promise<ServingVersion> {
  const corrupt: number[] = [];
  for (let row: VersionRow | undefined = active; row; row = row.parent === null ? undefined : store.version(row.parent)) {
    // A retired ancestor whose file was pruned (--keep-versions) is passed over, not corrupt.
    if (row !== active && row.version > 0 && !row.weights_path && row.status === 'retired') continue;
    try {
      const serving = await loadVerified(store, files, row, log);
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
async function loadVerified(store: Store, files: VersionFiles, row: VersionRow, log: (line: string) => void): Promise<ServingVersion> {
  try {
    const { serving, sha256 } = await files.read(row);
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
