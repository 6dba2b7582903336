// The serving sampler: the one Sampler the answerer samples on, the version it serves, the
// hot swap of that version's weights between batches, and its replacement when its worker
// dies. Which version serves is decided by loop/versions.ts; this holds it so that a restart
// comes back on the same one, with the same named adapters loaded (OpenAI's load_lora_adapter).
import { NamedAdapters } from '../engine/named-adapters.ts';
import { Sampler, type SamplerInit } from '../engine/sampler.ts';
import type { Weights } from '../model/family.ts';
import type { WeightSource } from '../formats/weight-file.ts';
import type { Store } from '../store/store.ts';

export interface ServingVersion {
  version: number;
  /** Full weights; with LoRA, the frozen base (every version's). */
  weights: WeightSource;
  /** LoRA: this version's adapters on the base. */
  adapters?: Weights;
}

/** What every sampler of this server is made with; the weights and version are the serving version's. */
export type ServingSamplerInit = Omit<SamplerInit, 'weights' | 'adapters' | 'version'>;

export interface ServingSamplerOptions {
  init: ServingSamplerInit;
  /** Where a restart is recorded (a `sampler_restarted` event). */
  store: Pick<Store, 'event'>;
  log: (line: string) => void;
}

/** Least time between two attempts to restart a dead sampler. */
const RESTART_BACKOFF_MS = 1000;

export class ServingSampler {
  private restarting: Promise<Sampler> | null = null;
  private lastRestartAt = 0;
  private closed = false;

  private constructor(
    /** Only this class changes its weights, and replaces it when its worker dies. */
    private current: Sampler,
    private serving: ServingVersion,
    private o: ServingSamplerOptions,
    /** Every sampler this makes shares them: a replacement sends a name's tensors to its worker when a run first uses it. */
    private named: NamedAdapters,
  ) {}

  /** Starts a sampler serving `v`. */
  static async start(v: ServingVersion, o: ServingSamplerOptions): Promise<ServingSampler> {
    const named = new NamedAdapters();
    const sampler = await Sampler.create({ ...o.init, weights: v.weights, adapters: v.adapters, version: v.version }, named);
    return new ServingSampler(sampler, v, o, named);
  }

  /** The version served (or, while the sampler is down, to be served when it restarts). */
  get version(): ServingVersion {
    return this.serving;
  }

  /** The sampler as it is now (it may be down: live() replaces a dead one). */
  get sampler(): Sampler {
    return this.current;
  }

  /** Why sampling is down (its worker died and no replacement started yet), or null. */
  get down(): string | null {
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
      const fresh = await Sampler.create({ ...this.o.init, weights: v.weights, adapters: v.adapters, version: v.version }, this.named);
      if (this.closed) {
        await fresh.close();
        throw new Error('shutting down');
      }
      this.current = fresh;
    } catch (e) {
      this.o.log(`the sampler is down (${reason}) and did not restart: ${(e as Error).message}`);
      throw new Error(`the sampler is down (${reason}) and did not restart: ${(e as Error).message}`);
    } finally {
      // The back-off runs from the end of an attempt: a slow start (a loaded machine) does not use it up.
      this.lastRestartAt = Date.now();
    }
    this.o.store.event('sampler_restarted', { reason, version: v.version }).catch(() => undefined);
    this.o.log(`the sampler was down (${reason}); restarted on version ${v.version}`);
    return this.current;
  }

  /** The sampler takes the weights between batches (a batch never mixes versions). */
  async swap(v: ServingVersion): Promise<void> {
    // A sampler that is down gets the serving version when it restarts.
    if (!this.current.down) {
      if (v.adapters) await this.current.setAdapters(v.adapters, v.version);
      else await this.current.setWeights(v.weights, v.version);
    }
    this.serving = v;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.restarting?.catch(() => {});
    await this.current.close();
  }
}
