// Sampler worker: owns the generate-graph session and the current weight version.
import { buildGenerate } from './graphs.ts';
import { createSession, f32, i64, type ort } from './ort.ts';
import { niceThisThread, serveRequests } from './worker-host.ts';
import { Rng } from './rng.ts';
import { checkWeights, paramSpecs, type GPTConfig, type Weights } from '../model/gpt.ts';
import type { Completion, SampleOptions } from './sampler.ts';
import { leftPad } from './batch.ts';

let config: GPTConfig;
let session: ort.InferenceSession;
let weightFeeds: Record<string, ort.Tensor> = {};
let version = 0;

function setWeights(w: Weights, v: number): void {
  checkWeights(config, w);
  weightFeeds = Object.fromEntries(paramSpecs(config).map((s) => [s.name, f32(w.get(s.name)!, s.shape)]));
  version = v;
}

serveRequests({
  async init(p: { config: GPTConfig; weights: Weights; version: number; threads: number; nice?: number; spin?: boolean }) {
    if (p.nice) niceThisThread(p.nice);
    config = p.config;
    setWeights(p.weights, p.version);
    session = await createSession(buildGenerate(config), { threads: p.threads, spin: p.spin });
    return { value: null };
  },
  setWeights(p: { weights: Weights; version: number }) {
    setWeights(p.weights, p.version);
    return { value: null };
  },
  async generate(p: { prompts: number[][]; options: SampleOptions }) {
    const t0 = performance.now();
    const { prompts, options: o } = p;
    const G = o.samplesPerPrompt;
    const { P, L, ids, mask } = leftPad(prompts, o.padToken);
    const B = P * G;
    const uniforms = o.seeds ? perPromptUniforms(o.seeds, G, o.maxNewTokens) : (new Rng(o.seed).fillUniform(new Float32Array(o.maxNewTokens * B)) as Float32Array);
    const out = await session.run({
      ...weightFeeds,
      input_ids: i64(ids, [P, L]),
      attention_mask: i64(mask, [P, L]),
      num_samples: i64([G], []),
      max_new_tokens: i64([o.maxNewTokens], []),
      uniforms: f32(uniforms, [o.maxNewTokens, B]),
      temperature: f32(Float32Array.of(o.temperature ?? 1), []),
      top_p: f32(Float32Array.of(o.topP ?? 1), []),
      stop_token: i64([o.stopToken], []),
      pad_token: i64([o.padToken], []),
    });
    const tokens = out.tokens!.data as BigInt64Array;
    const logprobs = out.logprobs!.data as Float32Array;
    const steps = out.tokens!.dims[0]!;
    const completions: Completion[][] = prompts.map(() => []);
    for (let b = 0; b < B; b++) {
      const c: Completion = { tokens: [], logprobs: [], stopped: false };
      for (let s = 0; s < steps; s++) {
        const t = Number(tokens[s * B + b]);
        c.tokens.push(t);
        c.logprobs.push(logprobs[s * B + b]!);
        if (t === o.stopToken) {
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
