// Our side of bench:llamacpp on one GGUF file, run by bench/llamacpp.ts in a process of its
// own. Plain JavaScript on the build (dist/, as `npm start` runs the server), not through tsx:
// tsx's loader hooks (in this thread, its loader thread and the sampler's worker) add about
// 60 MB of resident memory that no user's process holds, and the peak RSS is measured here.
//
//   node bench/llamacpp-ours.mjs FILE THREADS REPS   (after npm run build) -> one JSON line
import { loadModel } from '../dist/formats/checkpoint.js';
import { Sampler } from '../dist/engine/sampler.js';
import { isWeightFile } from '../dist/formats/weight-file.js';
import { Rng } from '../dist/util/rng.js';

const [path, threadsArg, repsArg] = process.argv.slice(2);
const threads = Number(threadsArg);
const reps = Number(repsArg);
const PROMPTS = 16;
const PROMPT_LEN = 32;
const NEW_TOKENS = 64;

/** Seconds: the median of `reps` timed calls after one untimed warm-up (bench/timing.ts's rule). */
async function median(fn) {
  await fn();
  const ts = [];
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    await fn();
    ts.push((performance.now() - t) / 1000);
  }
  return ts.sort((a, b) => a - b)[Math.floor(ts.length / 2)];
}

const model = await loadModel(path);
const w = model.weights;
// Bytes one decode step reads: each weight once, in the form the generate graph maps it.
let weightBytes = 0;
if (isWeightFile(w)) {
  for (const [name, t] of Object.entries(w.tensors)) {
    const q = w.quantized?.[name];
    const elements = t.shape.reduce((a, b) => a * b, 1);
    weightBytes += q ? (q.rows * q.cols * q.bits) / 8 + ((q.rows * q.cols) / q.blockSize) * (q.offsets === undefined ? 4 : 8) : elements * 4;
  }
}
const sampler = await Sampler.create({ config: model.config, weights: w, threads });
const rng = new Rng(1);
const prompts = Array.from({ length: PROMPTS }, () => Array.from({ length: PROMPT_LEN }, () => rng.int(3, model.config.vocabSize - 1)));
let seed = 0;
const run = (ps, n) => sampler.generate(ps, { samplesPerPrompt: 1, maxNewTokens: n, seed: seed++, temperature: 1, stopTokens: [], padToken: 0 });
const batch = await median(() => run(prompts, NEW_TOKENS));
const one = prompts.slice(0, 1);
const single = await median(() => run(one, NEW_TOKENS));
const singleFirst = await median(() => run(one, 1));
await sampler.close();
const step = (single - singleFirst) / (NEW_TOKENS - 1);
console.log(
  JSON.stringify({
    batch_tok_s: +((PROMPTS * NEW_TOKENS) / batch).toFixed(1),
    single_tok_s: +(NEW_TOKENS / single).toFixed(1),
    single_decode_step_ms: +(step * 1000).toFixed(2),
    weight_mb: +(weightBytes / 1e6).toFixed(1),
    single_step_gb_s: +(weightBytes / step / 1e9).toFixed(1),
    peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024),
  }),
);
