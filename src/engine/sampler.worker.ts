// Sampler worker: owns the generate-graph session and the current weight version. Weights in
// memory are fed as inputs (a swap is new arrays); a weight file is mapped by the session
// itself (a swap builds a session for the new file). With LoRA the base stays put and a swap
// hands adapters: applied in the graph (one session; the base keeps its shared, prepacked
// form) or merged into full weights fed as inputs (SamplerInit.applyAdapters).
import { buildGenerate } from './graphs.ts';
import { createSession, f32, i64, type ort } from './ort.ts';
import { niceThisThread, serveRequests } from './worker-host.ts';
import { Rng } from '../util/rng.ts';
import { checkWeights, type ParamSpec, type Weights } from '../model/family.ts';
import { paramSpecsOf, type ModelConfig } from '../model/families.ts';
import { checkAdapters, initAdapters, loraSpecs, mergeAdapters, type LoraConfig } from '../model/lora.ts';
import { checkWeightFile, isWeightFile, readWeights, type WeightSource } from '../formats/weight-file.ts';
import type { Completion, SampleOptions } from './sampler.ts';
import { leftPad } from './batch.ts';
import { weightFeedsOf } from './scoring.ts';

interface Init {
  config: ModelConfig;
  weights: WeightSource;
  version: number;
  threads: number;
  nice?: number;
  spin?: boolean;
  prepack?: boolean;
  lora?: LoraConfig;
  adapters?: Weights;
  applyAdapters?: 'graph' | 'merge';
}

let init: Init;
let specs: ParamSpec[];
/** The session for weights fed as inputs, built on first use. */
let inputsSession: Promise<ort.InferenceSession> | undefined;
/** The session serving now, and the inputs it needs beyond the batch (the weights, unless mapped). */
let active: { session: ort.InferenceSession; weightFeeds: Record<string, ort.Tensor>; version: number };
/** LoRA: the session with adapter inputs (graph mode), built once; the base in memory (merge mode), read once. */
let adaptedSession: Promise<{ session: ort.InferenceSession; baseFeeds: Record<string, ort.Tensor> }> | undefined;
let baseInMemory: Promise<Weights> | undefined;

const sessionOptions = () => ({ threads: init.threads, spin: init.spin, prepack: init.prepack ?? true });

async function sessionFor(w: WeightSource): Promise<{ session: ort.InferenceSession; weightFeeds: Record<string, ort.Tensor> }> {
  const o = sessionOptions();
  if (isWeightFile(w)) {
    checkWeightFile(specs, w);
    return { session: await createSession(buildGenerate(init.config, { weights: w }), { ...o, externalDir: w.dir }), weightFeeds: {} };
  }
  checkWeights(specs, w);
  const weightFeeds = weightFeedsOf(specs, w);
  return { session: await (inputsSession ??= createSession(buildGenerate(init.config), o)), weightFeeds };
}

async function adaptedSessionFor(adapters: Weights): Promise<{ session: ort.InferenceSession; weightFeeds: Record<string, ort.Tensor> }> {
  const lora = init.lora!;
  checkAdapters(init.config, lora, adapters);
  const base = init.weights;
  if (init.applyAdapters === 'merge') {
    baseInMemory ??= isWeightFile(base) ? (checkWeightFile(specs, base), readWeights(base, specs.map((s) => s.name))) : Promise.resolve(base);
    return sessionFor(mergeAdapters(init.config, lora, await baseInMemory, adapters));
  }
  adaptedSession ??= (async () => {
    const o = sessionOptions();
    if (isWeightFile(base)) {
      checkWeightFile(specs, base);
      return { session: await createSession(buildGenerate(init.config, { weights: base, lora }), { ...o, externalDir: base.dir }), baseFeeds: {} };
    }
    checkWeights(specs, base);
    return { session: await createSession(buildGenerate(init.config, { lora }), o), baseFeeds: weightFeedsOf(specs, base) };
  })();
  const { session, baseFeeds } = await adaptedSession;
  return { session, weightFeeds: { ...baseFeeds, ...weightFeedsOf(loraSpecs(init.config, lora), adapters) } };
}

async function setWeights(w: WeightSource, version: number): Promise<void> {
  if (init.lora) throw new Error('sampler: with LoRA the base is fixed at start; swap adapters with setAdapters()');
  await activate(await sessionFor(w), version);
}

async function activate(next: { session: ort.InferenceSession; weightFeeds: Record<string, ort.Tensor> }, version: number): Promise<void> {
  const previous = active?.session;
  active = { ...next, version };
  // A file-mapped session serves one version only: let it go once another took over.
  if (previous && previous !== active.session && previous !== (await inputsSession) && previous !== (await adaptedSession)?.session) await previous.release();
}

serveRequests({
  async init(p: Init) {
    if (p.nice) niceThisThread(p.nice);
    init = p;
    specs = paramSpecsOf(p.config);
    if (p.lora) await activate(await adaptedSessionFor(p.adapters ?? initAdapters(p.config, p.lora, new Rng(0))), p.version);
    else await setWeights(p.weights, p.version);
    return { value: null };
  },
  async setWeights(p: { weights: WeightSource; version: number }) {
    await setWeights(p.weights, p.version);
    return { value: null };
  },
  async setAdapters(p: { adapters: Weights; version: number }) {
    if (!init.lora) throw new Error('sampler: started without a lora config, so it takes full weights (setWeights)');
    await activate(await adaptedSessionFor(p.adapters), p.version);
    return { value: null };
  },
  async generate(p: { prompts: number[][]; options: SampleOptions }) {
    const t0 = performance.now();
    const { prompts, options: o } = p;
    const G = o.samplesPerPrompt;
    const { P, L, ids, mask } = leftPad(prompts, o.padToken);
    const B = P * G;
    const uniforms = o.seeds ? perPromptUniforms(o.seeds, G, o.maxNewTokens) : (new Rng(o.seed).fillUniform(new Float32Array(o.maxNewTokens * B)) as Float32Array);
    const { session, weightFeeds, version } = active;
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
    return { value: { completions, version, ms: performance.now() - t0 } };
  },
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

