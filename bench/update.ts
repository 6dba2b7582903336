// A whole live TTRL update at a real model's shape, timed: the serving pipeline (no
// transport) on a random checkpoint of the peer's preset, written as Hugging Face ships one
// (sharded BF16) with a tokenizer naming every id, answers `--questions` random prompts of
// `--prompt-len` tokens with `--votes` votes each (voted on their first sampled word: random
// weights have no real answers, but they disagree, which is all an update's cost needs;
// completions end at any of 1/16 of the ids, about 16 tokens), then runs one update as the server does: GRPO over those experiences in steps of
// `--questions-per-step`, the guard's probe (greedy answers of parent and candidate on the
// probe set), and the candidate written as a version. Reports the serving time, the update's
// wall time and what it was spent on, the stored version's size and the process's peak RSS
// (sampler, trainer, prober and scorer workers together). Prints one JSON line last.
//
//   npm run bench:update -- [--preset smollm2-135m] [--lora-rank 16] [--questions 64] [--votes 8]
//                           [--questions-per-step 4] [--prompt-len 32] [--new-tokens 32] [--quantize int8] [--json]
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { createPipeline } from '../src/loop/pipeline.ts';
import { resolveSettings } from '../src/config/settings.ts';
import { Rng } from '../src/util/rng.ts';
import { PRESETS, writeCheckpoint } from './checkpoint.ts';

const o = new Command()
  .option('--json', 'print only the JSON line on stdout')
  .option('--preset <name>', Object.keys(PRESETS).join(' or '), 'smollm2-135m')
  .option('--lora-rank <r>', 'LoRA rank (0: full fine-tuning)', '16')
  .option('--questions <n>', 'questions answered, then trained on in one update', '64')
  .option('--votes <n>', 'samples per question (all trained on)', '8')
  .option('--questions-per-step <n>', 'questions per optimizer step', '4')
  .option('--prompt-len <n>', 'prompt tokens', '32')
  .option('--new-tokens <n>', 'new tokens per completion', '32')
  .option('--threads <n>', 'threads of the sampler and of the trainer', '2')
  .option('--quantize <mode>', 'how the sampler holds the weights: float32, int8 (8-bit blocks; the trainer reads their dequantization)', 'float32')
  .parse()
  .opts<{
    json?: boolean;
    preset: string;
    loraRank: string;
    questions: string;
    votes: string;
    questionsPerStep: string;
    promptLen: string;
    newTokens: string;
    threads: string;
    quantize: 'float32' | 'int8';
  }>();
const log = (...a: unknown[]) => console.error(...a);
const preset = PRESETS[o.preset];
if (!preset) throw new Error(`unknown preset ${o.preset} (${Object.keys(PRESETS).join(', ')})`);

const root = await mkdtemp(join(tmpdir(), 'ttrl-bench-update-'));
// The BF16 checkpoint's float32 (and int8) conversions go with the rest of the run's files.
process.env.TTRL_CACHE_DIR ??= join(root, 'cache');
try {
  const modelDir = join(root, o.preset);
  await mkdir(modelDir);
  log(`${o.preset}: writing a random BF16 checkpoint`);
  await writeCheckpoint(modelDir, preset.config, { wordPerId: true });
  // Random weights almost never sample one end token; every 16th id ends a completion, so
  // completions stop after about 16 tokens (and only finished ones have an answer to vote on).
  const vocab = preset.config.vocab_size as number;
  const stops = Array.from({ length: Math.floor(vocab / 16) }, (_, i) => 2 + 16 * i).filter((id) => id < vocab);
  await writeFile(join(modelDir, 'generation_config.json'), JSON.stringify({ eos_token_id: stops }));
  const votes = Number(o.votes);
  const settings = resolveSettings(
    {
      model: modelDir,
      db: join(root, 'u.sqlite'),
      extractor: 'regex:^\\s*(w\\d+)',
      maxNewTokens: Number(o.newTokens),
      votes,
      trainSamples: votes,
      loraRank: Number(o.loraRank),
      updateEvery: 1_000_000,
      gate: 0,
      questionsPerStep: Number(o.questionsPerStep),
      threads: Number(o.threads),
      trainThreads: Number(o.threads),
      trainNice: 0,
      quantize: o.quantize,
    },
    {},
  );
  let t = performance.now();
  const p = await createPipeline(settings);
  const startS = (performance.now() - t) / 1000;
  try {
    const rng = new Rng(1);
    const questions = Array.from({ length: Number(o.questions) }, () =>
      Array.from({ length: Number(o.promptLen) }, () => `w${rng.int(3, vocab - 1)}`).join(' '),
    );
    t = performance.now();
    const answers = await Promise.all(questions.map((question) => p.answerer.ask({ question, votes, clientId: null, connection: null })));
    const serveS = (performance.now() - t) / 1000;
    log(
      `${o.preset}: ${questions.length} questions x ${votes} votes answered in ${serveS.toFixed(1)} s (${answers.filter((a) => a.answer !== null).length} with an answer)`,
    );
    t = performance.now();
    const u = await p.adaptation.updateNow('admin');
    const updateS = (performance.now() - t) / 1000;
    const stats = (u.stats ?? {}) as Record<string, unknown>;
    const row = u.version === null ? undefined : await p.store.version(u.version);
    const versionMb = row?.weights_path ? +((await stat(row.weights_path)).size / 2 ** 20).toFixed(2) : null;
    const r = {
      bench: 'update',
      date: new Date().toISOString().slice(0, 10),
      preset: o.preset,
      lora_rank: Number(o.loraRank),
      quantize: o.quantize,
      questions: questions.length,
      votes,
      questions_per_step: Number(o.questionsPerStep),
      prompt_len: Number(o.promptLen),
      new_tokens: Number(o.newTokens),
      threads: Number(o.threads),
      start_s: +startS.toFixed(1),
      serve_s: +serveS.toFixed(1),
      update_s: +updateS.toFixed(1),
      update_train_s: typeof stats.train_seconds === 'number' ? +stats.train_seconds.toFixed(1) : null,
      optimizer_steps: stats.steps ?? null,
      first_step_abs_logratio: stats.first_step_abs_logratio ?? null,
      clipped_share: stats.clipped_share ?? null,
      outcome: u.outcome,
      reason: u.reason ?? null,
      version_mb: versionMb,
      peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024),
    };
    log(
      `${o.preset}: update ${r.outcome} in ${r.update_s} s (GRPO ${r.update_train_s} s, ${r.optimizer_steps} steps), version ${versionMb} MB, peak RSS ${r.peak_rss_mb} MB`,
    );
    console.log(JSON.stringify(r));
  } finally {
    await p.close();
  }
} finally {
  await rm(root, { recursive: true, force: true });
}
