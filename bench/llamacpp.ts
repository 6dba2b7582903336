// Our engine against llama.cpp (../shared/peers/llamacpp_peer.mjs, node-llama-cpp 3.21.1) on the
// same GGUF files, in the same run, one after the other (never both at once):
//  - files: ../shared/peers/llamacpp_make_gguf.py's random SmolLM2-135M-shaped F32 and Q8_0
//    files (python3 with numpy), and a Q4_K_M file re-quantized from the F32 one by
//    bench/ggml-quantize.ts (llama.cpp's Q4_K_M type mix; rows of 576 fall back to Q5_0/Q8_0
//    as llama.cpp's do); all in --dir;
//  - workload (both sides): 16 prompts x 1 sample of 32 random tokens, exactly 64 new tokens,
//    temperature 1, no truncation, 2 threads; tokens/s = 1024 / wall time, median of --reps
//    after a warm-up; one sequence the same, and its decode step (t(64) - t(1)) / 63;
//  - memory: peak RSS of each side's process; the share of the machine's memory bandwidth
//    (a large ReduceSum in ORT) the single-sequence decode step reaches, reading the weights
//    once per step (the bytes the sampler's graph maps).
// Ours runs in a child process per file (bench/llamacpp-ours.mjs, on the build in dist/, which
// this script makes first), so each RSS is its own and holds what a user's process holds. llama.cpp needs
// node-llama-cpp installed outside the project: NODE_LLAMA_CPP=<its package folder>.
// The JSON line printed last ends with q8_batch_ratio, q8_single_ratio, q8_rss_ratio (ours over llama.cpp's).
//
//   NODE_LLAMA_CPP=$SCRATCH/node_modules/node-llama-cpp npm run bench:llamacpp -- --dir $SCRATCH [--formats f32,q8,q4km] [--reps 3] [--no-peer]
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { q4KMType, requantizeGGUF } from './ggml-quantize.ts';
import { memoryBandwidth } from './timing.ts';

const FILES: Record<string, string> = { f32: 'smol-f32.gguf', q8: 'smol-q8.gguf', q4km: 'smol-q4km.gguf' };

const opts = new Command()
  .option('--dir <dir>', 'folder of the GGUF files (made there when missing)', '/tmp/ttrl-llamacpp')
  .option('--formats <list>', 'files to measure', 'f32,q8,q4km')
  .option('--threads <n>', 'threads on both sides', '2')
  .option('--reps <n>', 'timed repetitions (median), after a warm-up', '3')
  .option('--no-peer', 'skip llama.cpp')
  .option('--json', 'only the JSON line on stdout')
  .option('--bandwidth-child', '(internal) measure the memory bandwidth and print it')
  .parse()
  .opts<{ dir: string; formats: string; threads: string; reps: string; peer: boolean; json?: boolean; bandwidthChild?: boolean }>();
const threads = Number(opts.threads);
const reps = Number(opts.reps);
const log = (...a: unknown[]) => console.error(...a);

function makeFiles(dir: string): void {
  const script = fileURLToPath(new URL('../../shared/peers/llamacpp_make_gguf.py', import.meta.url));
  if (!existsSync(join(dir, FILES.f32!)) || !existsSync(join(dir, FILES.q8!))) {
    log(`writing ${dir}/smol-f32.gguf and smol-q8.gguf (${script})`);
    const r = spawnSync('python3', [script, '--out-dir', dir], { stdio: ['ignore', 'inherit', 'inherit'] });
    if (r.status !== 0) throw new Error(`${script} failed (python3 with numpy: apt-get install -y python3-numpy)`);
  }
  if (!existsSync(join(dir, FILES.q4km!))) {
    log(`writing ${dir}/smol-q4km.gguf (Q4_K_M mix, re-quantized from the F32 file)`);
    requantizeGGUF(join(dir, FILES.f32!), join(dir, FILES.q4km!), (name, dims) => q4KMType(name, dims, 30, true));
  }
}

function runPeer(path: string): Record<string, unknown> {
  const script = fileURLToPath(new URL('../../shared/peers/llamacpp_peer.mjs', import.meta.url));
  if (!process.env.NODE_LLAMA_CPP) return { error: 'NODE_LLAMA_CPP is not set (npm i -E node-llama-cpp@3.21.1 in a scratch folder)' };
  const args = [script, '--model', path, '--modes', 'lockstep', '--threads', String(threads), '--reps', String(reps)];
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) return { error: `llama.cpp peer failed (${r.status}): ${r.stderr.trim().split('\n').at(-1)}` };
  const j = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
  const step = j.single_decode_step_ms as number;
  return {
    batch_tok_s: j.batch_lockstep.tok_s,
    single_tok_s: j.single_tok_s,
    single_decode_step_ms: step,
    peak_rss_mb: j.peak_rss_mb,
    single_step_gb_s: +(statSync(path).size / (step / 1000) / 1e9).toFixed(1),
  };
}

if (opts.bandwidthChild) {
  console.log(JSON.stringify(await memoryBandwidth(threads)));
} else {
  const dir = resolve(opts.dir);
  makeFiles(dir);
  // Ours is measured on the build (see bench/llamacpp-ours.mjs): make it from these sources.
  const build = spawnSync('npm', ['run', 'build'], { cwd: fileURLToPath(new URL('..', import.meta.url)), stdio: ['ignore', 'ignore', 'inherit'] });
  if (build.status !== 0) throw new Error('npm run build failed');
  // In a child of its own: Linux keeps a process's peak RSS across fork and exec, so a parent
  // that had grown (the bandwidth probe's buffers) would set every measured child's floor.
  const probe = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--bandwidth-child', '--threads', String(threads)], {
    encoding: 'utf8',
  });
  if (probe.status !== 0) throw new Error(`the bandwidth probe failed: ${probe.stderr}`);
  const bandwidth = JSON.parse(probe.stdout.trim().split('\n').at(-1)!) as number;
  log(`memory bandwidth (ORT ReduceSum, ${threads} threads): ${bandwidth.toFixed(1)} GB/s`);
  const out: Record<string, unknown> = { threads, reps, bandwidth_gb_s: +bandwidth.toFixed(1) };
  for (const format of opts.formats.split(',')) {
    const path = join(dir, FILES[format]!);
    const r = spawnSync(process.execPath, [fileURLToPath(new URL('llamacpp-ours.mjs', import.meta.url)), path, String(threads), String(reps)], {
      encoding: 'utf8',
      maxBuffer: 1 << 24,
      env: { ...process.env, TTRL_CACHE_DIR: process.env.TTRL_CACHE_DIR ?? join(dir, 'cache') },
    });
    if (r.status !== 0) throw new Error(`ours on ${path} failed: ${r.stderr}`);
    const ours = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    ours.bandwidth_share = +(ours.single_step_gb_s / bandwidth).toFixed(2);
    log(`ours ${format}: ${JSON.stringify(ours)}`);
    const peer = opts.peer ? runPeer(path) : undefined;
    if (peer && !peer.error) peer.bandwidth_share = +((peer.single_step_gb_s as number) / bandwidth).toFixed(2);
    if (peer) log(`llama.cpp ${format}: ${JSON.stringify(peer)}`);
    out[format] = { ours, ...(peer ? { llamacpp: peer } : {}) };
  }
  const q8 = out.q8 as { ours: Record<string, number>; llamacpp?: Record<string, number> } | undefined;
  if (q8?.llamacpp && !q8.llamacpp.error) {
    out.q8_batch_ratio = +(q8.ours.batch_tok_s! / q8.llamacpp.batch_tok_s!).toFixed(2);
    out.q8_single_ratio = +(q8.ours.single_tok_s! / q8.llamacpp.single_tok_s!).toFixed(2);
    out.q8_rss_ratio = +(q8.ours.peak_rss_mb! / q8.llamacpp.peak_rss_mb!).toFixed(2);
  }
  console.log(JSON.stringify(out));
}
