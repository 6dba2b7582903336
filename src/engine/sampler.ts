// Batched sampling from the generate graph, in a worker thread. Prompts of different
// lengths are left-padded into one run; each prompt is prefilled once and its cache
// shared by its samples. Results are reproducible from the seed: the uniforms that
// drive sampling come from a seeded JS RNG.
import type { WeightSource } from '../formats/weight-file.ts';
import type { Weights } from '../model/family.ts';
import { dimsOf, type ModelConfig } from '../model/families.ts';
import { checkAdapters, type LoraConfig } from '../model/lora.ts';
import { NamedAdapters, UnknownAdapter, type NamedAdapter } from './named-adapters.ts';
import { WorkerClient } from './worker-host.ts';

export interface SampleOptions {
  samplesPerPrompt: number;
  maxNewTokens: number;
  seed: number;
  /**
   * One seed per prompt instead: a prompt's samples then depend on its own seed only, not
   * on the batch it shares (the server keys them by question, so runs that differ only in
   * their model versions draw the same dice).
   */
  seeds?: number[];
  /** Token ids that end a completion (e.g. every id of generation_config's eos_token_id); none: run to maxNewTokens. */
  stopTokens: number[];
  padToken: number;
  /** 0: greedy (argmax). Default 1. */
  temperature?: number;
  /** Sample among the k most likely tokens only; 0 (default): no limit. */
  topK?: number;
  /** Nucleus: the smallest set of most likely tokens holding this much mass. Default 1. */
  topP?: number;
  /**
   * LoRA: sample this run with the adapters loaded under this name (Sampler.loadAdapter)
   * instead of the serving version's, which stay as they are; the result's version is still
   * the serving one. Unset: the serving version.
   */
  adapter?: string;
}

export interface Completion {
  /** Generated tokens, up to and including the stop token when one was produced. */
  tokens: number[];
  /** Log-prob of each generated token under the temperature-scaled distribution. */
  logprobs: number[];
  stopped: boolean;
  /** An upstream's own text of the sample, where it returned no token ids (then `tokens` is empty and nothing is trained on it). */
  text?: string;
}

export interface SampleResult {
  /** completions[i][j]: sample j of prompt i. */
  completions: Completion[][];
  /** The weight version that produced them. */
  version: number;
  ms: number;
  /** Where prompt i's samples were drawn, when not in this process: the upstream(s) and the model or adapter name they were asked for. */
  sampledBy?: SampledBy[];
}

/** Which upstream inference server drew a prompt's samples, and under which model or adapter name. */
export interface SampledBy {
  /** The upstream's base URL; several, comma-separated, when its votes went to more than one. */
  upstream: string;
  model: string;
}

/** What the answerer, evaluation and the guard sample on: a local Sampler, or a fleet of upstream servers. */
export interface Generator {
  readonly config: ModelConfig;
  generate(prompts: number[][], o: SampleOptions): Promise<SampleResult>;
}

export interface SamplerInit {
  config: ModelConfig;
  /** In memory (fed as inputs: swaps are cheap), or a weight file the session maps (shared by every worker). */
  weights: WeightSource;
  version?: number;
  /** Threads for one op (default 1). */
  threads?: number;
  /** Linux nice value of the worker's threads. */
  nice?: number;
  /** Let idle compute threads spin (default true; false when sharing cores with a trainer). */
  spin?: boolean;
  /**
   * Let ORT repack mapped weights for its GEMM kernels (default true): decoding about 1.5x
   * faster, at the cost of the sampler keeping a packed private copy instead of reading the
   * shared mapping (see SessionOptions.prepack; bench/RESULTS.md has both).
   */
  prepack?: boolean;
  /** Serve LoRA adapters on the frozen base `weights`: swaps then hand adapters (setAdapters). */
  lora?: LoraConfig;
  /** The adapters to serve first (default: fresh ones, which change nothing). */
  adapters?: Weights;
  /**
   * 'graph' (default): adapters applied in the graph, the base kept as it is (mapped, prepacked);
   * a swap hands the adapter tensors only. 'merge': each swap merges them into full weights,
   * fed as inputs (the base is then held in memory; no prepacking). See bench/RESULTS.md.
   */
  applyAdapters?: 'graph' | 'merge';
}

/** The sampler worker's calls (sampler.worker.ts serves them). */
export interface SamplerCalls {
  init: (init: SamplerInit & { version: number }) => void;
  setWeights: (p: { weights: WeightSource; version: number }) => void;
  setAdapters: (p: { adapters: Weights; version: number }) => void;
  /** Holds adapters under a name for runs that ask for it (SampleOptions.adapter); a name taken is replaced. */
  loadAdapter: (p: { name: string; adapters: Weights }) => void;
  unloadAdapter: (p: { name: string }) => void;
  generate: (p: { prompts: number[][]; options: SampleOptions }) => SampleResult;
}

export class Sampler {
  /** Which load of each named adapter this sampler's worker holds (NamedAdapter.load). */
  private sent = new Map<string, number>();

  private constructor(
    private client: WorkerClient<SamplerCalls>,
    readonly config: ModelConfig,
    private lora: LoraConfig | undefined,
    /** Shared with the samplers that replace this one (a restart keeps the names loaded). */
    private named: NamedAdapters,
  ) {}

  /** `named`: the named adapters this sampler serves (default: a set of its own, empty). */
  static async create(o: SamplerInit, named = new NamedAdapters()): Promise<Sampler> {
    const client = await WorkerClient.start<SamplerCalls>('sampler', {
      config: o.config,
      weights: o.weights,
      version: o.version ?? 0,
      threads: o.threads ?? 1,
      nice: o.nice,
      spin: o.spin,
      prepack: o.prepack,
      lora: o.lora,
      adapters: o.adapters,
      applyAdapters: o.applyAdapters,
    });
    return new Sampler(client, o.config, o.lora, named);
  }

  /** Takes effect for the next generate() call: a batch never mixes versions. */
  setWeights(weights: WeightSource, version: number): Promise<void> {
    return this.client.call('setWeights', { weights, version });
  }

  /** LoRA: serve these adapters from the next generate() call on. */
  setAdapters(adapters: Weights, version: number): Promise<void> {
    return this.client.call('setAdapters', { adapters, version });
  }

  /**
   * LoRA: holds `adapters` under `name` for runs that ask for it (SampleOptions.adapter),
   * beside the serving version. Throws for adapters of another shape or a name already
   * loaded (names are never reloaded in place: unload first). A worker that is down gets
   * them when a run first uses them.
   */
  async loadAdapter(name: string, adapters: Weights): Promise<void> {
    if (!this.lora) throw new Error('sampler: started without a lora config, so it samples full weights and takes no adapters');
    checkAdapters(this.config, this.lora, adapters, `adapter ${name}`);
    const entry = this.named.add(name, adapters);
    if (this.down) return;
    try {
      await this.send(name, entry);
    } catch (e) {
      this.named.delete(name);
      throw e;
    }
  }

  /** Frees a named adapter, here and in the worker; false when no adapter had that name. */
  async unloadAdapter(name: string): Promise<boolean> {
    const had = this.named.delete(name);
    // A worker that is down holds nothing; its replacement never gets this name.
    if (this.sent.delete(name) && !this.down) await this.client.call('unloadAdapter', { name }).catch(() => undefined);
    return had;
  }

  generate(prompts: number[][], o: SampleOptions): Promise<SampleResult> {
    validate(this.config, prompts, o);
    const run = () => this.client.call('generate', { prompts, options: o });
    return o.adapter === undefined ? run() : this.withAdapter(o.adapter, run);
  }

  /** Runs `run` once the worker holds the named adapter's current load (sent first when it does not: a fresh worker, or a name loaded again). */
  private withAdapter(name: string, run: () => Promise<SampleResult>): Promise<SampleResult> {
    const entry = this.named.get(name);
    if (!entry) return Promise.reject(new UnknownAdapter(`no adapter named ${JSON.stringify(name)} is loaded`));
    const sending = this.sent.get(name) === entry.load ? Promise.resolve() : this.send(name, entry);
    // The worker takes calls in order, so the run, sent after the adapters, finds them there.
    return Promise.all([sending, run()]).then(([, r]) => r);
  }

  private send(name: string, entry: NamedAdapter): Promise<void> {
    this.sent.set(name, entry.load);
    return this.client.call('loadAdapter', { name, adapters: entry.adapters }).catch((e: Error) => {
      if (this.sent.get(name) === entry.load) this.sent.delete(name);
      throw e;
    });
  }

  /** Why this sampler can sample no more (its worker died or was closed); null while it can. */
  get down(): Error | null {
    return this.client.failure;
  }

  close(): Promise<void> {
    return this.client.close();
  }
}

export function validate(c: ModelConfig, prompts: number[][], o: SampleOptions): void {
  const { vocabSize, contextLength } = dimsOf(c);
  const isToken = (t: number) => Number.isInteger(t) && t >= 0 && t < vocabSize;
  if (!prompts.length) throw new Error('generate: no prompts');
  if (prompts.some((p) => p.length === 0)) throw new Error('generate: empty prompt');
  for (const p of prompts) for (const t of p) if (!isToken(t)) throw new Error(`generate: token id ${t} outside the vocabulary (0..${vocabSize - 1})`);
  if (!Number.isInteger(o.samplesPerPrompt) || o.samplesPerPrompt < 1) throw new Error('generate: samplesPerPrompt must be a positive integer');
  if (!Number.isInteger(o.maxNewTokens) || o.maxNewTokens < 1) throw new Error('generate: maxNewTokens must be a positive integer');
  const longest = Math.max(...prompts.map((p) => p.length));
  if (longest + o.maxNewTokens > contextLength)
    throw new Error(`generate: prompt of ${longest} tokens + ${o.maxNewTokens} new tokens exceeds the context length ${contextLength}`);
  if (!o.stopTokens.every(isToken)) throw new Error(`generate: stopTokens must be token ids of the vocabulary, got [${o.stopTokens}]`);
  if (!isToken(o.padToken)) throw new Error(`generate: padToken ${o.padToken} outside the vocabulary`);
  const t = o.temperature ?? 1;
  if (!(t >= 0) || !Number.isFinite(t)) throw new Error(`generate: temperature must be a finite number >= 0 (0: greedy), got ${t}`);
  const k = o.topK ?? 0;
  if (!Number.isInteger(k) || k < 0) throw new Error(`generate: topK must be an integer >= 0 (0: no limit), got ${k}`);
  const p = o.topP ?? 1;
  if (!(p > 0 && p <= 1)) throw new Error(`generate: topP must be in (0, 1], got ${p}`);
  if (o.seeds && (o.seeds.length !== prompts.length || !o.seeds.every((s) => Number.isInteger(s) && s >= 0 && s < 2 ** 32)))
    throw new Error(`generate: seeds must hold one 32-bit unsigned integer per prompt (${prompts.length})`);
}
