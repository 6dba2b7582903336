// Sampler worker: owns the generate-graph session and the current weight version. Weights in
// memory are fed as inputs (a swap is new arrays); a weight file is mapped by the session
// itself (a swap builds a session for the new file).
import { buildGenerate } from './graphs.ts';
import { createSession, f32, i64, type ort } from './ort.ts';
import { niceThisThread, serveRequests } from './worker-host.ts';
import { Rng } from '../util/rng.ts';
import { checkWeights, type ParamSpec } from '../model/family.ts';
import { paramSpecsOf, type ModelConfig } from '../model/families.ts';
import { checkWeightFile, isWeightFile, type WeightSource } from '../model/weight-file.ts';
import type { Completion, SampleOptions } from './sampler.ts';
import { leftPad } from './batch.ts';

interface Init {
  config: ModelConfig;
  weights: WeightSource;
  version: number;
  threads: number;
  nice?: number;
  spin?: boolean;
  prepack?: boolean;
}

let init: Init;
let specs: ParamSpec[];
/** The session for weights fed as inputs, built on first use. */
let inputsSession: Promise<ort.InferenceSession> | undefined;
/** The session serving now, and the inputs it needs beyond the batch (the weights, unless mapped). */
let active: { session: ort.InferenceSession; weightFeeds: Record<string, ort.Tensor>; version: number };

async function sessionFor(w: WeightSource): Promise<{ session: ort.InferenceSession; weightFeeds: Record<string, ort.Tensor> }> {
  const o = { threads: init.threads, spin: init.spin, prepack: init.prepack ?? true };
  if (isWeightFile(w)) {
    checkWeightFile(specs, w);
    return { session: await createSession(buildGenerate(init.config, { weights: w }), { ...o, externalDir: w.dir }), weightFeeds: {} };
  }
  checkWeights(specs, w);
  const weightFeeds = Object.fromEntries(specs.map((s) => [s.name, f32(w.get(s.name)!, s.shape)]));
  return { session: await (inputsSession ??= createSession(buildGenerate(init.config), o)), weightFeeds };
}

async function setWeights(w: WeightSource, version: number): Promise<void> {
  const previous = active?.session;
  active = { ...(await sessionFor(w)), version };
  // A file-mapped session serves one version only: let it go once another took over.
  if (previous && previous !== active.session && previous !== (await inputsSession)) await previous.release();
}

serveRequests({
  async init(p: Init) {
    if (p.nice) niceThisThread(p.nice);
    init = p;
    specs = paramSpecsOf(p.config);
    await setWeights(p.weights, p.version);
    return { value: null };
  },
  async setWeights(p: { weights: WeightSource; version: number }) {
    await setWeights(p.weights, p.version);
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

