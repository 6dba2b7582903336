// Sampler worker: owns the generate-graph session and the current weight version. Weights in
// memory are fed as inputs (a swap is new arrays); a weight file is mapped by the session
// itself (a swap builds a session for the new file). With LoRA the base stays put and a swap
// hands adapters: applied in the graph (one session; the base keeps its shared, prepacked
// form) or merged into full weights fed as inputs (SamplerInit.applyAdapters). Named adapter
// sets are held beside the serving version, for runs that ask for one by name.
import { buildGenerate } from './graphs.ts';
import { f32, i64, type ort } from './ort.ts';
import { serveWorker, type PayloadOf } from './worker-host.ts';
import { bindWeights, WorkerSessions } from './session.ts';
import { Rng } from '../util/rng.ts';
import type { ParamSpec, Weights } from '../model/family.ts';
import { paramSpecsOf, type ModelConfig } from '../model/families.ts';
import { checkAdapters, initAdapters, loraSpecs, mergeAdapters, type LoraConfig } from '../model/lora.ts';
import { checkWeightFile, isWeightFile, readWeights, type WeightSource } from '../formats/weight-file.ts';
import type { Completion, SampleOptions, SampleResult, SamplerCalls } from './sampler.ts';
import { leftPad } from './batch.ts';
import { weightFeedsOf } from './scoring.ts';

/** A session and the inputs it needs beyond the batch (the weights, unless it maps them). */
interface Serving {
  session: ort.InferenceSession;
  weightFeeds: Record<string, ort.Tensor>;
}

/** Everything this worker holds, made by its init. */
class SamplerWorker {
  private readonly config: ModelConfig;
  private readonly specs: ParamSpec[];
  private readonly sessions: WorkerSessions;
  /** The weights given at init: with LoRA, the fixed base. */
  private readonly base: WeightSource;
  private readonly lora: LoraConfig | undefined;
  private readonly mergesAdapters: boolean;
  /** The session for weights fed as inputs, built on first use. */
  private inputsSession: Promise<ort.InferenceSession> | undefined;
  /** LoRA: the session with adapter inputs (graph mode), built once; the base in memory (merge mode), read once. */
  private adaptedSession: Promise<{ session: ort.InferenceSession; baseFeeds: Record<string, ort.Tensor> }> | undefined;
  private baseInMemory: Promise<Weights> | undefined;
  /** The session serving now and the version it serves. */
  private active: (Serving & { version: number }) | undefined;
  /** LoRA: adapter sets held by name (loadAdapter), each with what a run on it feeds. */
  private named = new Map<string, Serving>();

  static async start(init: PayloadOf<SamplerCalls, 'init'>): Promise<SamplerWorker> {
    const w = new SamplerWorker(init);
    if (init.lora) await w.activate(await w.adaptedSessionFor(init.adapters ?? initAdapters(init.config, init.lora, new Rng(0))), init.version);
    else await w.setWeights(init.weights, init.version);
    return w;
  }

  private constructor(init: PayloadOf<SamplerCalls, 'init'>) {
    this.sessions = new WorkerSessions(init, { prepack: init.prepack ?? true });
    this.config = init.config;
    this.specs = paramSpecsOf(init.config);
    this.base = init.weights;
    this.lora = init.lora;
    this.mergesAdapters = init.applyAdapters === 'merge';
  }

  async setWeights(w: WeightSource, version: number): Promise<void> {
    if (this.lora) throw new Error('sampler: with LoRA the base is fixed at start; swap adapters with setAdapters()');
    await this.activate(await this.sessionFor(w), version);
  }

  async setAdapters(adapters: Weights, version: number): Promise<void> {
    if (!this.lora) throw new Error('sampler: started without a lora config, so it takes full weights (setWeights)');
    await this.activate(await this.adaptedSessionFor(adapters), version);
  }

  async loadAdapter(name: string, adapters: Weights): Promise<void> {
    if (!this.lora) throw new Error('sampler: started without a lora config, so it takes no adapters');
    this.named.set(name, await this.adaptedSessionFor(adapters));
  }

  unloadAdapter(name: string): void {
    this.named.delete(name);
  }

  /** What a run feeds: the named adapters it asks for, else the serving version's. */
  private servingFor(o: SampleOptions): Serving {
    if (o.adapter === undefined) return this.active!;
    const named = this.named.get(o.adapter);
    if (!named) throw new Error(`sampler: no adapter named ${JSON.stringify(o.adapter)} is loaded in this worker`);
    return named;
  }

  async generate(prompts: number[][], o: SampleOptions): Promise<SampleResult> {
    const t0 = performance.now();
    const G = o.samplesPerPrompt;
    const { P, L, ids, mask } = leftPad(prompts, o.padToken);
    const B = P * G;
    const uniforms = o.seeds
      ? perPromptUniforms(o.seeds, G, o.maxNewTokens)
      : (new Rng(o.seed).fillUniform(new Float32Array(o.maxNewTokens * B)) as Float32Array);
    const { session, weightFeeds } = this.servingFor(o);
    // A named adapter's run is still answered by the serving version's number: versions are
    // this server's lineage, and the adapters someone else's.
    const { version } = this.active!;
    const out = await session.run({
      ...weightFeeds,
      input_ids: i64(ids, [P, L]),
      attention_mask: i64(mask, [P, L]),
      num_samples: i64([G], []),
      max_new_tokens: i64([o.maxNewTokens], []),
      uniforms: f32(uniforms, [o.maxNewTokens, B]),
      temperature: f32(Float32Array.of(o.temperature ?? 1), []),
      top_k: i64([o.topK ?? 0], []),
      top_p: f32(Float32Array.of(o.topP ?? 1), []),
      // No stop token: -1 matches no sampled id, so every sequence runs to max_new_tokens.
      stop_tokens: o.stopTokens.length ? i64(o.stopTokens, [o.stopTokens.length]) : i64([-1], [1]),
      pad_token: i64([o.padToken], []),
    });
    const tokens = out.tokens!.data as BigInt64Array;
    const logprobs = out.logprobs!.data as Float32Array;
    const steps = out.tokens!.dims[0]!;
    const stops = new Set(o.stopTokens);
    const completions: Completion[][] = prompts.map(() => []);
    for (let b = 0; b < B; b++) {
      const c: Completion = { tokens: [], logprobs: [], stopped: false };
      for (let s = 0; s < steps; s++) {
        const t = Number(tokens[s * B + b]);
        c.tokens.push(t);
        c.logprobs.push(logprobs[s * B + b]!);
        if (stops.has(t)) {
          c.stopped = true;
          break;
        }
      }
      completions[Math.floor(b / G)]!.push(c);
    }
    return { completions, version, ms: performance.now() - t0 };
  }

  private async sessionFor(w: WeightSource): Promise<Serving> {
    const { file, feeds } = bindWeights(this.specs, w);
    if (file) return { session: await this.sessions.create(buildGenerate(this.config, { weights: file }), file), weightFeeds: feeds };
    return { session: await (this.inputsSession ??= this.sessions.create(buildGenerate(this.config))), weightFeeds: feeds };
  }

  private async adaptedSessionFor(adapters: Weights): Promise<Serving> {
    const { config, lora, base, specs } = this;
    checkAdapters(config, lora!, adapters);
    if (this.mergesAdapters) {
      this.baseInMemory ??= isWeightFile(base)
        ? (checkWeightFile(specs, base),
          readWeights(
            base,
            specs.map((s) => s.name),
          ))
        : Promise.resolve(base);
      return this.sessionFor(mergeAdapters(config, lora!, await this.baseInMemory, adapters));
    }
    this.adaptedSession ??= (async () => {
      const { file, feeds } = bindWeights(specs, base);
      return { session: await this.sessions.create(buildGenerate(config, { weights: file, lora }), file), baseFeeds: feeds };
    })();
    const { session, baseFeeds } = await this.adaptedSession;
    return { session, weightFeeds: { ...baseFeeds, ...weightFeedsOf(loraSpecs(config, lora!), adapters) } };
  }

  private async activate(next: Serving, version: number): Promise<void> {
    const previous = this.active?.session;
    this.active = { ...next, version };
    // A file-mapped session serves one version only: let it go once another took over.
    if (previous && previous !== next.session && previous !== (await this.inputsSession) && previous !== (await this.adaptedSession)?.session)
      await previous.release();
  }
}

serveWorker<SamplerCalls>(async (init) => {
  const sampler = await SamplerWorker.start(init);
  return {
    setWeights: (p) => sampler.setWeights(p.weights, p.version),
    setAdapters: (p) => sampler.setAdapters(p.adapters, p.version),
    loadAdapter: (p) => sampler.loadAdapter(p.name, p.adapters),
    unloadAdapter: (p) => sampler.unloadAdapter(p.name),
    generate: (p) => sampler.generate(p.prompts, p.options),
  };
});

/** Uniforms [maxNewTokens, P*G] where prompt p's G columns come from its own seed, token by token. */
function perPromptUniforms(seeds: number[], G: number, maxNewTokens: number): Float32Array {
  const B = seeds.length * G;
  const u = new Float32Array(maxNewTokens * B);
  seeds.forEach((seed, p) => {
    const rng = new Rng(seed);
    for (let s = 0; s < maxNewTokens; s++) for (let g = 0; g < G; g++) u[s * B + p * G + g] = rng.next();
  });
  return u;
}
