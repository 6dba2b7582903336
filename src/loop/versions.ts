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
  /**
   * Mark candidates left unjudged as interrupted at start (one process: nobody else is
   * judging them). A front-end of a fleet leaves this to whoever takes the lead.
   */
  rejectStale?: boolean;
  log?: (line: string) => void;
}

/** A candidate that passed the guard. */
export interface Promotion {
  /** Its number, reserved when its update began (reserve()). */
  version: number;
  parent: number;
  /** Full weights, or with LoRA the candidate's adapters. */
  weights: Weights;
  stats: Record<string, unknown>;
}

/** A candidate that failed it: recorded, its weights not kept. */
export interface Rejection {
  version: number;
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

/** Where else a serving version must be put before it serves: an upstream fleet (upstream/pool.ts) loads its adapters. */
export interface Publisher {
  serve(version: number, adapters?: Weights): Promise<void>;
}

export class Versions {
  /** The serving version, as it changes. */
  readonly versions$: BehaviorSubject<number>;
  private publisher: Publisher | null = null;

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
    await store.ensureBaseVersion({ weightsPath: files.length === 1 ? files[0]! : o.modelPath, stats: { base: o.modelPath } });
    if (o.rejectStale ?? true) {
      const stale = await store.rejectStaleCandidates();
      if (stale) o.log?.(`marked ${stale} unfinished candidate version(s) as interrupted`);
    }
    const row = await store.activeVersion();
    if (!row) throw new Error(`${store.location}: no active model version (every version is retired, rejected or corrupt); activate one in model_versions`);
    const log = o.log ?? (() => {});
    const versionFiles = VersionFiles.open({
      dir: o.versionsDir,
      config: o.model.config,
      base: o.model.weights,
      lora: o.lora,
      fingerprint,
      databaseId: await store.databaseId(),
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

  /** Every version, with the one serving here marked. */
  async list(): Promise<(VersionRow & { serving: boolean })[]> {
    const serving = this.active.version;
    return (await this.parts.store.versions()).map((v) => ({ ...v, serving: v.version === serving }));
  }

  /**
   * Reserves the number, writes the weights (atomically), then serves them: a crash in
   * between leaves a candidate row that the next start marks interrupted, and the old version
   * serving. Weights that cannot be written leave the row rejected with the reason, and throw.
   */
  async promote(c: Promotion): Promise<number> {
    const { store, files } = this.parts;
    const { version } = c;
    const path = (await store.version(version))!.weights_path!;
    await store.setStats(version, c.stats);
    try {
      await store.setWeightsSha256(version, await files.write(path, { version, parent: c.parent, weights: c.weights }));
    } catch (e) {
      const reason = `the weights could not be written to ${path}: ${(e as Error).message}`;
      await store.reject(version, reason);
      await store.event('version_rejected', { version, parent: c.parent, reason });
      throw new Error(reason);
    }
    await store.activate(version);
    await store.event('version_promoted', { version, parent: c.parent });
    await this.serve(files.lora ? { version, weights: files.base, adapters: c.weights } : { version, weights: c.weights });
    await this.announce(version);
    // Bounding the disk is housekeeping: a failure there does not undo the promotion.
    await this.prune().catch((e: Error) => this.parts.log(`could not prune old version files: ${e.message}`));
    return version;
  }

  /**
   * Bounds the disk: of the retired versions, the newest `keepVersions` keep their weight
   * files; older ones lose theirs (the row, its stats and its place in the lineage stay, and
   * say so). A live server promotes often (every few seconds under load), and each full
   * version is the model's size. Version 0 is the model itself and is never touched.
   */
  private async prune(): Promise<void> {
    const { store, files, keepVersions } = this.parts;
    if (!keepVersions) return;
    const retired = (await store.versions()).filter((v) => v.status === 'retired' && v.version > 0 && v.weights_path).sort((a, b) => b.version - a.version);
    const pruned: number[] = [];
    for (const row of retired.slice(keepVersions)) {
      // The row first: a crash between the two leaves a stray file, never a row naming a
      // file that is gone (which a fallback would take for corruption).
      await store.pruneWeights(row.version, `retired; its weights were deleted to keep the newest ${keepVersions} retired versions' files (--keep-versions)`);
      pruned.push(row.version);
      files.remove(row);
    }
    if (pruned.length) await store.event('versions_pruned', { versions: pruned, keep: keepVersions });
  }

  /** Records a rejected candidate (weights not kept); the serving version stays. */
  async reject(c: Rejection): Promise<number> {
    const { store } = this.parts;
    await store.reject(c.version, c.reason, c.stats);
    await store.event('version_rejected', { version: c.version, parent: c.parent, reason: c.reason });
    return c.version;
  }

  /**
   * Numbers a candidate as its update begins: a `candidate` row until it is promoted or
   * rejected. One that is never settled (the process died, or in a fleet the leader did) is
   * marked interrupted by the next start, or by the next leader when it takes over.
   */
  async reserve(parent: number, stats: Record<string, unknown>): Promise<number> {
    const { store, files } = this.parts;
    return store.addVersion({ parent, status: 'candidate', stats, weightsPath: (v) => files.pathOf(v) });
  }

  /** An update that failed (or was cut off by shutdown) after its number was reserved. */
  async abandon(version: number, reason: string): Promise<void> {
    // Only a row still a candidate: one promoted before the failure stays what it became.
    if ((await this.parts.store.version(version))?.status === 'candidate') await this.parts.store.reject(version, reason);
  }

  /** Serves a stored version (admin rollback or roll forward). */
  async activate(version: number, by: string): Promise<void> {
    const { store, files, log } = this.parts;
    const row = await store.version(version);
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
    await store.activate(version);
    await store.event('version_activated', { version, by });
    await this.serve(serving);
    await this.announce(version);
  }

  /**
   * Serves the version the store says is active, when it is not the one served here: another
   * front-end promoted or activated it (a fleet). Verified as any load; a corrupt file leaves
   * the version served here as it is (and the row marked), and throws.
   */
  async follow(): Promise<{ from: number; to: number } | null> {
    const { store, files, log } = this.parts;
    const row = await store.activeVersion();
    if (!row || row.version === this.active.version) return null;
    const from = this.active.version;
    await this.serve(await loadVerified(store, files, row, log));
    log(`model version ${row.version} is serving (activated by another front-end; was ${from})`);
    return { from, to: row.version };
  }

  /** Tells the other front-ends (a fleet) that the serving version changed; they also poll, so a lost notice only delays them. */
  private async announce(version: number): Promise<void> {
    await this.parts.store.fleet?.announceVersion(version).catch((e: Error) => this.parts.log(`could not announce version ${version}: ${e.message}`));
  }

  /** Serving versions are published there too, before they serve (upstream sampling). */
  publishTo(p: Publisher): void {
    this.publisher = p;
  }

  /** The sampler takes the weights between batches (and the upstreams the adapters); then everyone hears of it. */
  private async serve(v: ServingVersion): Promise<void> {
    await this.publisher?.serve(v.version, v.adapters);
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
  for (let row: VersionRow | undefined = active; row; row = row.parent === null ? undefined : await store.version(row.parent)) {
    // A retired ancestor whose file was pruned (--keep-versions) is passed over, not corrupt.
    if (row !== active && row.version > 0 && !row.weights_path && row.status === 'retired') continue;
    try {
      const serving = await loadVerified(store, files, row, log);
      if (corrupt.length) {
        await store.activate(row.version);
        await store.event('version_fallback', { from: active.version, to: row.version, corrupt });
        log(`serving model version ${row.version}, the newest good ancestor of corrupt version ${active.version} (corrupt: ${corrupt.join(', ')})`);
      }
      return serving;
    } catch (e) {
      if (!(e instanceof CorruptWeights)) throw e;
      corrupt.push(row.version);
    }
  }
  throw new Error(`${store.location}: model version ${active.version} and every ancestor are corrupt (${corrupt.join(', ')}); nothing verified to serve`);
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
      await store.setWeightsSha256(row.version, sha256);
      log(`model version ${row.version}: ${row.weights_path} had no recorded sha256 (written before verification); recorded ${sha256} on this first load`);
    }
    return serving;
  } catch (e) {
    if (e instanceof CorruptWeights) {
      await store.markCorrupt(row.version, e.message);
      await store.event('version_corrupt', { version: row.version, path: row.weights_path, reason: e.message });
      log(`model version ${row.version} is corrupt: ${e.message}`);
    }
    throw e;
  }
}
