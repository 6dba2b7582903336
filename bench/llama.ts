// Real-size Llama-family benchmark: our engine against ../shared/peers/torch_llama_peer.py at
// its presets (random weights at the real sizes; the same batch, prompt length and new tokens),
// one after the other in the same run (never both at once: 2 cores). Per preset:
//  - load: a sharded BF16 checkpoint the bench writes, loaded (converted once into the float32
//    cache that workers map), and loaded again (the cache hit);
//  - sample: tokens/s of the generate graph (prefill + in-graph decode loop), exactly N new
//    tokens per sequence, temperature 1, no truncation; the decode step alone from N and 1;
//  - train: one full-parameter GRPO step (forward, backward, AdamW) on the sampled sequences,
//    tokens/s counting prompt + completion of every sequence, as the peer counts them; and one
//    LoRA step (rank 16, alpha 32 on q,k,v,o,gate,up,down, the base frozen and mapped: the
//    peer's lora_train), with the size of a stored version (its adapter file);
//  - memory: peak RSS, and the bandwidth this machine streams memory at (a large ReduceSum in
//    ORT), to say what share of the bandwidth limit decoding reaches.
// Prints one JSON line last.
//
//   npm run bench:llama -- [--json] [--presets smollm2-135m,qwen2.5-0.5b] [--threads 2] [--reps 3] [--no-peer] [--no-train] [--no-prepack]
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { Sampler } from '../src/engine/sampler.ts';
import { Trainer } from '../src/engine/trainer.ts';
import { Scorer } from '../src/engine/scorer.ts';
import { packBatch, packGroups } from '../src/engine/batch.ts';
import { loadModel, type Model } from '../src/formats/checkpoint.ts';
import { paramCount } from '../src/model/family.ts';
import { paramSpecsOf } from '../src/model/families.ts';
import { Rng } from '../src/util/rng.ts';
import { stat } from 'node:fs/promises';
import { grpo } from '../src/ttrl/objective.ts';
import { initAdapters, loraConfigFor, writeAdapterFile } from '../src/model/lora.ts';
import { PRESETS, writeCheckpoint } from './checkpoint.ts';
import { median as medianOf, memoryBandwidth } from './timing.ts';

const PROMPT_LEN = 32;

const opts = new Command()
  .option('--json', 'print only the JSON line on stdout')
  .option('--presets <list>', 'comma-separated presets', Object.keys(PRESETS).join(','))
  .option('--threads <n>', 'threads on both sides', '2')
  .option('--reps <n>', 'timed repetitions (median reported), after one warm-up', '3')
  .option('--no-peer', 'skip the PyTorch peer')
  .option('--no-train', 'skip the train steps')
  .option('--no-prepack', 'the sampler reads the shared mapping instead of a repacked private copy')
  .option('--child <preset>', '(internal) measure our engine on one preset in this process and print its JSON')
  .parse()
  .opts<{ json?: boolean; presets: string; threads: string; reps: string; peer: boolean; train: boolean; prepack: boolean; child?: string }>();
const threads = Number(opts.threads);
const reps = Number(opts.reps);
const median = (fn: () => Promise<unknown>) => medianOf(fn, reps);
const log = (...a: unknown[]) => console.error(...a);
const round = (x: number, d = 1) => +x.toFixed(d);

function runPeer(preset: string, p: (typeof PRESETS)[string]): Record<string, unknown> {
  const script = fileURLToPath(new URL('../../shared/peers/torch_llama_peer.py', import.meta.url));
  if (!existsSync(script)) return { error: `peer not found at ${script}` };
  const args = [
    script,
    '--preset',
    preset,
    '--threads',
    String(threads),
    '--prompts',
    String(p.prompts),
    '--samples',
    String(p.samples),
    '--prompt-len',
    String(PROMPT_LEN),
    '--new-tokens',
    String(p.newTokens),
    '--repeats',
    String(reps),
    '--json',
    ...(opts.train ? ['--full'] : []),
  ];
  const r = spawnSync('/usr/bin/python3', args, { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0)
    return {
      error: `peer failed (${r.status}): ${(r.stderr || r.error?.message || '').trim().split('\n').at(-1)} -- apt-get install -y python3-torch libopenblas0-pthread`,
    };
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

const rssMb = () => process.resourceUsage().maxRSS / 1024;
/** Proportional set size now: mapped file pages count once however many mappings share them (Linux). */
function pssMb(): number | null {
  try {
    const line = readFileSync('/proc/self/smaps_rollup', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Pss:'));
    return line ? Math.round(Number(line.split(/\s+/)[1]) / 1024) : null;
  } catch {
    return null;
  }
}

async function benchPreset(name: string) {
  const p = PRESETS[name];
  if (!p) throw new Error(`unknown preset ${name}; one of ${Object.keys(PRESETS).join(', ')}`);
  const dir = await mkdtemp(join(tmpdir(), `ttrl-bench-${name}-`));
  process.env.TTRL_CACHE_DIR = join(dir, 'cache');
  try {
    log(`${name}: writing a random BF16 checkpoint in 2 shards`);
    await writeCheckpoint(dir, p.config);
    let t = performance.now();
    const model: Model = await loadModel(dir);
    const loadS = (performance.now() - t) / 1000;
    t = performance.now();
    await loadModel(dir);
    const reloadS = (performance.now() - t) / 1000;
    const specs = paramSpecsOf(model.config);
    const params = paramCount(specs);
    const weightBytes = params * 4;
    log(`${name}: ${(params / 1e6).toFixed(1)}M params; load (BF16 -> float32 cache) ${loadS.toFixed(2)} s, again (cache hit) ${reloadS.toFixed(2)} s`);

    const B = p.prompts * p.samples;
    const N = p.newTokens;
    const rng = new Rng(1);
    const prompts = Array.from({ length: p.prompts }, () => Array.from({ length: PROMPT_LEN }, () => rng.int(3, model.config.vocabSize - 1)));
    const sampleOpts = (maxNewTokens: number, seed: number) => ({
      samplesPerPrompt: p.samples,
      maxNewTokens,
      seed,
      temperature: 1,
      stopTokens: [],
      padToken: 0,
    });
    const sampler = await Sampler.create({ config: model.config, weights: model.weights, threads, prepack: opts.prepack });
    let seed = 0;
    let completions: number[][] = [];
    const sampleS = await median(async () => {
      const r = await sampler.generate(prompts, sampleOpts(N, seed++));
      completions = r.completions.flatMap((row) => row.map((c) => c.tokens));
    });
    const firstTokenS = await median(() => sampler.generate(prompts, sampleOpts(1, seed++)));
    const samplePss = pssMb();
    // A scorer of the same weights beside the sampler: with the mapping shared, the weights do not count twice.
    const scorer = await Scorer.create({ config: model.config, weights: model.weights, threads });
    await scorer.score(
      packBatch(
        completions.slice(0, 4).map((c, i) => ({ tokens: [...prompts[Math.floor(i / p.samples)]!, ...c], promptLength: PROMPT_LEN })),
        0,
        model.config.contextLength,
      ),
    );
    const withScorerPss = pssMb();
    await scorer.close();
    await sampler.close();
    if (completions.some((c) => c.length !== N)) throw new Error('expected exactly N new tokens per sequence');
    const decodeStepS = (sampleS - firstTokenS) / (N - 1);
    const sampleRss = rssMb();
    const sampleTok = (B * N) / sampleS;
    log(
      `${name}: memory (PSS) with the sampler ${samplePss} MB, with a scorer of the same weights beside it ${withScorerPss} MB (weights ${Math.round(weightBytes / 1048576)} MB)`,
    );
    log(
      `${name}: sample ${sampleS.toFixed(2)} s for ${B}x${N} tokens = ${sampleTok.toFixed(1)} tokens/s; prefill + first token ${(firstTokenS * 1000).toFixed(0)} ms, decode step ${(decodeStepS * 1000).toFixed(1)} ms (${(weightBytes / decodeStepS / 1e9).toFixed(1)} GB/s of weights); peak RSS ${sampleRss.toFixed(0)} MB`,
    );

    let train: Record<string, number> | null = null;
    if (opts.train) {
      const advantages = completions.map(() => rng.normal());
      const grouped = packGroups(
        prompts.map((prompt, i) => ({
          prompt,
          completions: completions.slice(i * p.samples, (i + 1) * p.samples).map((tokens, j) => ({ tokens, advantage: advantages[i * p.samples + j]! })),
        })),
        0,
        model.config.contextLength,
      );
      const flat = packBatch(
        completions.map((c, i) => ({ tokens: [...prompts[Math.floor(i / p.samples)]!, ...c], promptLength: PROMPT_LEN, advantage: advantages[i]! })),
        0,
        model.config.contextLength,
      );
      const tokens = B * (PROMPT_LEN + N);
      // One trainer per layout, as the server has (GRPO is grouped), the first closed before the second starts.
      // The peer's step: the bare policy gradient (no PPO clip, KL or entropy terms).
      const loss = grpo({ aggregation: 'token-mean', ppoClip: false, klTerm: false, entropyTerm: false });
      const lora = loraConfigFor(model.config, { rank: 16, alpha: 32, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] });
      const stepTime = async (layout: 'grouped' | 'flat', batch: typeof flat, withLora = false) => {
        const trainer = await Trainer.create({ config: model.config, weights: model.weights, threads, layout, loss, lora: withLora ? lora : undefined });
        try {
          return await median(() => trainer.step(batch, { lr: 1e-5, maxGradNorm: 1 }));
        } finally {
          await trainer.close();
        }
      };
      // LoRA first: peak RSS only grows, so measured before the full steps it is LoRA's own (beside what sampling left).
      const loraS = await stepTime('grouped', grouped, true);
      const loraRss = rssMb();
      log(
        `${name}: GRPO LoRA train step (rank 16), grouped: ${loraS.toFixed(2)} s = ${(tokens / loraS).toFixed(1)} tokens/s; peak RSS ${loraRss.toFixed(0)} MB`,
      );
      const loraFlatS = await stepTime('flat', flat, true);
      log(`${name}: GRPO LoRA train step (rank 16), flat: ${loraFlatS.toFixed(2)} s = ${(tokens / loraFlatS).toFixed(1)} tokens/s`);
      const adapterPath = join(dir, 'adapters.safetensors');
      await writeAdapterFile(adapterPath, model.config, { lora, baseModel: name, adapters: initAdapters(model.config, lora, new Rng(0)) });
      const adapterMb = (await stat(adapterPath)).size / 1048576;
      log(`${name}: a stored LoRA version (adapter file) is ${adapterMb.toFixed(2)} MB`);
      const groupedS = await stepTime('grouped', grouped);
      const groupedRss = rssMb();
      log(
        `${name}: GRPO full train step, grouped: ${groupedS.toFixed(2)} s = ${(tokens / groupedS).toFixed(1)} tokens/s; peak RSS ${groupedRss.toFixed(0)} MB`,
      );
      const flatS = await stepTime('flat', flat);
      log(`${name}: GRPO full train step, flat: ${flatS.toFixed(2)} s = ${(tokens / flatS).toFixed(1)} tokens/s; peak RSS ${rssMb().toFixed(0)} MB`);
      train = {
        grouped_tok_s: round(tokens / groupedS),
        flat_tok_s: round(tokens / flatS),
        grouped_s: round(groupedS, 3),
        flat_s: round(flatS, 3),
        grouped_peak_rss_mb: Math.round(groupedRss),
        peak_rss_mb: Math.round(rssMb()),
        lora_train_tok_s: round(tokens / loraS),
        lora_train_flat_tok_s: round(tokens / loraFlatS),
        lora_train_s: round(loraS, 3),
        lora_peak_rss_mb: Math.round(loraRss),
        adapter_file_mb: round(adapterMb, 2),
      };
    }
    return {
      preset: name,
      params,
      batch: B,
      prompt_len: PROMPT_LEN,
      new_tokens: N,
      load_bf16_s: round(loadS, 2),
      load_cached_s: round(reloadS, 2),
      sample_tok_s: round(sampleTok),
      prefill_first_token_ms: Math.round(firstTokenS * 1000),
      decode_step_ms: round(decodeStepS * 1000),
      decode_weight_gb_s: round(weightBytes / decodeStepS / 1e9),
      sample_peak_rss_mb: Math.round(sampleRss),
      sample_pss_mb: samplePss,
      sample_and_scorer_pss_mb: withScorerPss,
      weights_mb: Math.round(weightBytes / 1048576),
      train,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Our side of one preset in a child process: its peak memory is the preset's alone. */
function runOurs(preset: string): ReturnType<typeof benchPreset> extends Promise<infer R> ? R : never {
  const flags = ['--threads', String(threads), '--reps', String(reps), ...(opts.train ? [] : ['--no-train']), ...(opts.prepack ? [] : ['--no-prepack'])];
  const r = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), '--child', preset, ...flags], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 1 << 24,
  });
  if (r.status !== 0) throw new Error(`${preset}: our run failed (exit ${r.status}${r.signal ? `, ${r.signal}` : ''})`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

if (opts.child) {
  console.log(JSON.stringify(await benchPreset(opts.child)));
} else {
  const bandwidth = await memoryBandwidth(threads);
  log(`memory: ORT streams ${bandwidth.toFixed(1)} GB/s through a ReduceSum on ${threads} threads`);
  const results = [];
  for (const name of opts.presets.split(',').map((x) => x.trim())) {
    const ours = runOurs(name);
    const peer = opts.peer ? runPeer(name, PRESETS[name]!) : { error: 'skipped (--no-peer)' };
    if ('error' in peer) log(`peer: ${peer.error}`);
    else
      log(
        `peer ${peer.peer}: sample ${peer.sample_tok_s} tokens/s, full train ${peer.full_train_tok_s} tokens/s, LoRA train ${peer.lora_train_tok_s} tokens/s, peak RSS ${peer.peak_rss_mb} MB`,
      );
    const ok = !('error' in peer);
    const ratio = (x: number | undefined, theirs: unknown) => (ok && x && typeof theirs === 'number' ? round(x / theirs, 2) : null);
    results.push({
      ...ours,
      decode_bandwidth_share: round(ours.decode_weight_gb_s / bandwidth, 2),
      peer: ok ? peer : { error: peer.error },
      sample_ratio: ratio(ours.sample_tok_s, peer.sample_tok_s),
      train_ratio_grouped: ratio(ours.train?.grouped_tok_s, peer.full_train_tok_s),
      train_ratio_flat: ratio(ours.train?.flat_tok_s, peer.full_train_tok_s),
      lora_train_ratio: ratio(ours.train?.lora_train_tok_s, peer.lora_train_tok_s),
      lora_train_ratio_flat: ratio(ours.train?.lora_train_flat_tok_s, peer.lora_train_tok_s),
    });
  }
  console.log(JSON.stringify({ date: new Date().toISOString().slice(0, 10), threads, reps, prepack: opts.prepack, memory_gb_s: round(bandwidth), results }));
}
