// One CLI for everything: `ttrl <subcommand>`. With --json a subcommand prints exactly one
// JSON object as the last line of stdout; progress and logs go to stderr.
import { Command, InvalidArgumentError } from 'commander';
import { describe, loadModel, saveModel } from './formats/checkpoint.ts';
import { initWeights, paramCount } from './model/family.ts';
import { paramSpecsOf } from './model/families.ts';
import type { GPTConfig } from './model/gpt.ts';
import { isWeightFile } from './formats/weight-file.ts';
import { ARITHMETIC_CHARS, CharTokenizer } from './tokenizers/tokenizer.ts';
import { Sampler, validate } from './engine/sampler.ts';
import { Rng } from './util/rng.ts';
import { suite, SUITE_NAMES, SUITES } from './tasks/suites.ts';
import { pretrain } from './train/pretrain.ts';
import { readQuestions } from './tasks/question-file.ts';
import { accuracy, rollout } from './sampling/rollout.ts';
import { Progress } from './util/progress.ts';
import { adapt, type AdaptSettings, type StepRow } from './ttrl/adapt.ts';
import { lrOf } from './config/settings.ts';
import { linePlot, toCsv } from './util/svg-plot.ts';
import { writeFileAtomic } from './util/atomic-write.ts';
import { join } from 'node:path';
import {
  flagName,
  resolveGroups,
  resolveSettings,
  SERVE_GROUPS,
  settingsOf,
  type GroupName,
  type SamplingSettings,
  type TaskGroupSettings,
  type ModelSettings,
} from './config/settings.ts';
import { addFlags, givenFlags } from './config/flags.ts';
import { startServer } from './server/server.ts';
import { createLogger } from './util/log.ts';
import { WS_PATH } from './server/gateway.ts';
import { parseTime, readSource } from './replay/source.ts';
import { replayLive } from './replay/live.ts';
import { REPLAY_EXACT, replayOffline } from './replay/offline.ts';
import { buildReport, writeReport, type Outcome } from './replay/report.ts';
import type { VersionRow } from './store/store.ts';
import { hidePassword, openStore } from './store/open.ts';
import { EXTRACTOR_NAMES, extractor } from './tasks/extractors.ts';
import { describeVote, voteLine } from './tasks/vote-lines.ts';
import { createInterface } from 'node:readline';
import type { Model } from './formats/checkpoint.ts';
import { taskFromSettings, type Task } from './tasks/task.ts';
import { askLimits, checkPrompt } from './loop/admission.ts';
import { exportVersion } from './loop/version-files.ts';
import type { QuestionRecord } from './tasks/question-file.ts';
import { runCopy } from './store/copy.ts';

/** The settings the shipped model was trained with (models/arith-tiny/README.md). */
const DEFAULT_PRETRAIN = { steps: 5800, batchSize: 64, lr: 1e-3, warmup: 200, anneal: 0, aggregation: 'sequence-mean' as 'sequence-mean' | 'token-mean' };

export function int(name: string, min = 0) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
    return n;
  };
}
export function num(name: string, check: (n: number) => boolean, what: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || !check(n)) throw new InvalidArgumentError(`${name} must be ${what}`);
    return n;
  };
}

export function choice(name: string, allowed: string[]) {
  return (v: string) => {
    if (!allowed.includes(v)) throw new InvalidArgumentError(`${name} must be one of: ${allowed.join(', ')}`);
    return v;
  };
}

/**
 * The task a command's settings ask of a model, and every question checked as the server
 * checks it at its door (it encodes; its prompt leaves the task's new tokens room in the context).
 */
function taskOf(s: TaskGroupSettings, model: Model, modelPath: string, questions: QuestionRecord[], file: string): Task {
  const task = taskFromSettings(s, model.tokenizer, modelPath);
  const limits = askLimits(task, model.tokenizer, model.config.contextLength, { maxVotes: 1, votes: 1, maxPromptTokens: s.maxPromptTokens }, modelPath);
  questions.forEach((q, i) => {
    try {
      checkPrompt(q.question, limits);
    } catch (e) {
      throw new Error(`${file}: question ${i + 1}: ${(e as Error).message}`);
    }
  });
  return task;
}

/**
 * The settings of an offline command (eval, adapt, replay --offline): its groups' defaults and
 * the flags given, no TTRL_* variables: a run's settings are all on its command line.
 */
function offlineSettings<T>(cmd: Command, o: Record<string, unknown>, groups: readonly GroupName[], extra: Record<string, unknown> = {}): T {
  return resolveGroups(groups, { ...givenFlags(cmd, o, groups), ...extra }, {}) as T;
}

const program = new Command('ttrl').description('Test-time reinforcement learning server and tools').showHelpAfterError();

program
  .command('init')
  .description('write a model directory with random weights (config.json, tokenizer.json, model.safetensors)')
  .requiredOption('--out <dir>', 'model directory to write')
  .option('--d-model <n>', 'embedding width', int('--d-model', 1), 128)
  .option('--layers <n>', 'transformer blocks', int('--layers', 1), 4)
  .option('--heads <n>', 'attention heads', int('--heads', 1), 4)
  .option('--context <n>', 'context length', int('--context', 2), 96)
  .option('--tied-head', 'share the embedding matrix with the output head', false)
  .option('--seed <n>', 'random seed', int('--seed'), 0)
  .option('--json', 'print a JSON summary line')
  .action(async (o) => {
    const tokenizer = new CharTokenizer(ARITHMETIC_CHARS);
    const config: GPTConfig = {
      family: 'gpt',
      vocabSize: tokenizer.vocabSize,
      contextLength: o.context,
      dModel: o.dModel,
      nLayers: o.layers,
      nHeads: o.heads,
      tiedHead: o.tiedHead,
      padTokenId: tokenizer.padId,
    };
    if (config.dModel % config.nHeads) throw new InvalidArgumentError('--d-model must be divisible by --heads');
    const specs = paramSpecsOf(config);
    await saveModel(o.out, { config, tokenizer, weights: initWeights(specs, new Rng(o.seed)), metadata: { init_seed: String(o.seed) } });
    const summary = { out: o.out, params: paramCount(specs), config };
    console.error(`wrote ${o.out}: ${summary.params} parameters`);
    if (o.json) console.log(JSON.stringify(summary));
  });

program
  .command('info')
  .description('describe a model: a directory (ours or Hugging Face) or a .gguf file')
  .requiredOption('--model <path>', 'model directory or GGUF file')
  .option('--json', 'print JSON')
  .action(async (o) => {
    const m = await loadModel(o.model);
    const { params, ...dims } = describe(m.config);
    const info = {
      model: o.model,
      family: m.config.family,
      params,
      dims,
      config: m.config,
      tokenizer: { vocab: m.tokenizer.vocabSize, eos: m.tokenizer.eosId, stop: m.tokenizer.stopIds, pad: m.tokenizer.padId },
      weights: isWeightFile(m.weights) ? { mapped_from: m.weights.dir } : { in_memory: true },
      metadata: m.metadata,
    };
    console.log(o.json ? JSON.stringify(info) : JSON.stringify(info, null, 2));
  });

program
  .command('sample')
  .description('sample completions of a prompt')
  .requiredOption('--model <path>', 'model directory (ours or Hugging Face) or GGUF file')
  .requiredOption('--prompt <text>', 'the prompt, e.g. 12+34-56+7=')
  .option('--samples <n>', 'completions to draw', int('--samples', 1), 4)
  .option('--max-new-tokens <n>', 'tokens per completion at most (prompt + these must fit the context)', int('--max-new-tokens', 1), 64)
  .option(
    '--temperature <t>',
    'sampling temperature (0: greedy)',
    num('--temperature', (n) => n >= 0, 'a number >= 0'),
    1,
  )
  .option('--top-k <k>', 'sample among the k most likely tokens (0: no limit)', int('--top-k'), 0)
  .option(
    '--top-p <p>',
    'nucleus sampling mass',
    num('--top-p', (n) => n > 0 && n <= 1, 'in (0, 1]'),
    1,
  )
  .option('--seed <n>', 'random seed', int('--seed'), 0)
  .option('--threads <n>', 'compute threads', int('--threads', 1), 2)
  .option('--json', 'print one JSON line')
  .action(async (o) => {
    const m = await loadModel(o.model);
    const prompt = m.tokenizer.encode(o.prompt);
    const options = {
      samplesPerPrompt: o.samples,
      maxNewTokens: o.maxNewTokens,
      temperature: o.temperature,
      topK: o.topK,
      topP: o.topP,
      seed: o.seed,
      stopTokens: m.tokenizer.stopIds,
      padToken: m.tokenizer.padId,
    };
    validate(m.config, [prompt], options); // before starting a worker: a too-long prompt is an input error
    const sampler = await Sampler.create({ config: m.config, weights: m.weights, threads: o.threads });
    try {
      const r = await sampler.generate([prompt], options);
      const completions = r.completions[0]!.map((c) => ({
        text: m.tokenizer.decode(c.tokens),
        tokens: c.tokens.length,
        logprob: +c.logprobs.reduce((a, b) => a + b, 0).toFixed(4),
        stopped: c.stopped,
      }));
      if (o.json) console.log(JSON.stringify({ prompt: o.prompt, completions, ms: Math.round(r.ms) }));
      else for (const c of completions) console.log(`${o.prompt}${c.text}${c.stopped ? '' : ' …'}   (logprob ${c.logprob})`);
    } finally {
      await sampler.close();
    }
  });

program
  .command('suite')
  .description(`write a JSONL question file ({"question","answer"} per line) to stdout`)
  .argument('<name>', `one of: ${SUITE_NAMES.join(', ')}`)
  .option('--n <n>', 'questions', int('--n', 1), 256)
  .option('--seed <n>', 'random seed', int('--seed'), 0)
  .action((name: string, o) => {
    if (!SUITES[name]) throw new InvalidArgumentError(`unknown suite ${JSON.stringify(name)}; one of: ${SUITE_NAMES.join(', ')}`);
    process.stdout.write(
      suite(name, o.n, o.seed)
        .map((q) => JSON.stringify(q) + '\n')
        .join(''),
    );
  });

program
  .command('pretrain')
  .description('pretrain the default model on worked arithmetic chains (resumes from --out if interrupted)')
  .requiredOption('--out <dir>', 'model directory to write (and resume from)')
  .option('--steps <n>', 'total optimizer steps', int('--steps', 1), DEFAULT_PRETRAIN.steps)
  .option('--seed <n>', 'random seed (initial weights and data)', int('--seed'), 0)
  .option('--batch-size <n>', 'sequences per step', int('--batch-size', 1), DEFAULT_PRETRAIN.batchSize)
  .option(
    '--lr <x>',
    'peak learning rate',
    num('--lr', (n) => n > 0, 'a number > 0'),
    DEFAULT_PRETRAIN.lr,
  )
  .option('--warmup <n>', 'warm-up steps (then inverse-sqrt decay)', int('--warmup', 1), DEFAULT_PRETRAIN.warmup)
  .option(
    '--aggregation <how>',
    'loss weighting: sequence-mean (each question alike) or token-mean',
    choice('--aggregation', ['sequence-mean', 'token-mean']),
    DEFAULT_PRETRAIN.aggregation,
  )
  .option('--anneal <n>', 'anneal the learning rate linearly to 0 over the last N steps', int('--anneal'), DEFAULT_PRETRAIN.anneal)
  .option('--checkpoint-every <n>', 'steps between checkpoints', int('--checkpoint-every', 1), 250)
  .option('--d-model <n>', 'embedding width (new runs)', int('--d-model', 1), 128)
  .option('--layers <n>', 'transformer blocks (new runs)', int('--layers', 1), 4)
  .option('--heads <n>', 'attention heads (new runs)', int('--heads', 1), 4)
  .option('--context <n>', 'context length (new runs)', int('--context', 2), 96)
  .option('--threads <n>', 'compute threads', int('--threads', 1), 2)
  .option('--json', 'print a JSON summary line')
  .action(async (o) => {
    if (o.dModel % o.heads) throw new InvalidArgumentError('--d-model must be divisible by --heads');
    let interrupted = false;
    const onSignal = () => {
      if (interrupted) process.exit(130);
      interrupted = true;
      console.error('\ninterrupted: writing a checkpoint (Ctrl-C again to quit now)');
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    let bar = new Progress(o.steps, 'pretrain', 100);
    const r = await pretrain({
      out: o.out,
      steps: o.steps,
      seed: o.seed,
      batchSize: o.batchSize,
      lr: o.lr,
      warmup: o.warmup,
      anneal: o.anneal,
      aggregation: o.aggregation,
      checkpointEvery: o.checkpointEvery,
      threads: o.threads,
      arch: { contextLength: o.context, dModel: o.dModel, nLayers: o.layers, nHeads: o.heads, tiedHead: false },
      onStart: (s) => (bar = new Progress(o.steps, 'pretrain', 100, process.stderr, s.resumedFrom)),
      onStep: (s) => bar.update(s.step, { loss: s.loss.toFixed(4), 'tok/s': (s.tokensPerSec / 1000).toFixed(1) + 'K' }),
      shouldStop: () => interrupted,
    });
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    const summary = { out: o.out, step: r.step, resumed_from: r.resumedFrom, loss: +r.loss.toFixed(5), wall_s: +r.wallS.toFixed(1), interrupted };
    console.error(`${interrupted ? 'stopped' : 'done'} at step ${r.step} (loss ${r.loss.toFixed(4)}), ${o.out} written`);
    if (o.json) console.log(JSON.stringify(summary));
    if (interrupted) process.exitCode = 130;
  });

const EVAL_GROUPS = ['model', 'task', 'sampling'] as const satisfies readonly GroupName[];
addFlags(
  program
    .command('eval')
    .description('sample N answers per question and report pass@1, maj@N, parsable share and length (groups: model, task, sampling)')
    .requiredOption('--questions <file>', 'JSONL question file with answers'),
  EVAL_GROUPS,
)
  .option('--json', 'print one JSON line')
  .action(async (o: Record<string, unknown>, cmd: Command) => {
    const t0 = performance.now();
    const s = offlineSettings<ModelSettings & TaskGroupSettings & SamplingSettings>(cmd, o, EVAL_GROUPS);
    const file = o.questions as string;
    const questions = await readQuestions(file);
    const missing = questions.findIndex((q) => q.answer === undefined);
    if (missing >= 0) throw new Error(`${file}: question ${missing + 1} has no answer to score against`);
    const m = await loadModel(s.model, { quantize: s.quantize });
    const task = taskOf(s, m, s.model, questions, file);
    const sampler = await Sampler.create({ config: m.config, weights: m.weights, threads: s.threads });
    try {
      const bar = new Progress(questions.length, 'eval', 1e9);
      const rollouts = await rollout(
        sampler,
        m.tokenizer,
        questions.map((q) => q.question),
        {
          task,
          votes: s.votes,
          temperature: s.temperature,
          seed: s.seed,
          onBatch: (n) => bar.update(n),
        },
      );
      const a = accuracy(
        rollouts,
        questions.map((q) => q.answer!),
      );
      const r = {
        pass_at_1: a.pass_at_1,
        maj_at_n: a.maj_at_n,
        // The confidence a server would report (the majority's share) against the majority answer's correctness.
        mean_confidence: a.calibration.mean_confidence ?? 0,
        ece: a.calibration.ece ?? 0,
        votes: s.votes,
        parsable: a.parsable,
        mean_len: a.mean_len,
        questions: questions.length,
        wall_s: (performance.now() - t0) / 1000,
      };
      const round = (x: number) => +x.toFixed(4);
      const reliability = a.calibration.bins.map((b) => ({
        ...b,
        confidence: b.confidence === null ? null : round(b.confidence),
        accuracy: b.accuracy === null ? null : round(b.accuracy),
      }));
      if (o.json) console.log(JSON.stringify({ ...Object.fromEntries(Object.entries(r).map(([k, v]) => [k, round(v)])), reliability }));
      else {
        console.log(
          `${questions.length} questions, ${s.votes} votes: pass@1 ${round(a.pass_at_1)}  maj@${s.votes} ${round(a.maj_at_n)}  confidence ${round(r.mean_confidence)}  ECE ${round(r.ece)}  parsable ${round(a.parsable)}  mean length ${a.mean_len.toFixed(1)}  (${r.wall_s.toFixed(1)} s)`,
        );
        console.log(
          `reliability (confidence bin: answers, mean confidence, accuracy): ${reliability
            .filter((b) => b.n)
            .map((b) => `[${b.lo.toFixed(1)},${b.hi.toFixed(1)}) ${b.n} ${b.confidence} ${b.accuracy}`)
            .join('; ')}`,
        );
      }
    } finally {
      await sampler.close();
    }
  });

const ADAPT_GROUPS = ['model', 'task', 'sampling', 'train', 'confidence', 'offlineAdapt'] as const satisfies readonly GroupName[];
addFlags(
  program
    .command('adapt')
    .description(
      'TTRL on a question file: evaluate, adapt without labels (majority votes), evaluate again, save (groups: model, task, sampling, train, confidence, and its own)',
    )
    .requiredOption('--questions <file>', 'JSONL question file (answers, when present, are used only for metrics in majority mode)'),
  ADAPT_GROUPS,
)
  .option('--out <dir>', 'write the adapted model, metrics.csv and metrics.svg here')
  .option('--json', 'print one JSON line')
  .action(async (flags: Record<string, unknown>, cmd: Command) => {
    const s = offlineSettings<Omit<AdaptSettings, 'task'> & TaskGroupSettings & ModelSettings>(cmd, flags, ADAPT_GROUPS);
    const o = { ...s, questions: flags.questions as string, out: flags.out as string | undefined, json: flags.json as boolean | undefined };
    const questions = await readQuestions(o.questions);
    const model = await loadModel(s.model, { quantize: s.quantize });
    const task = taskOf(s, model, s.model, questions, o.questions);
    const settings: AdaptSettings = { ...s, task };
    const bar = new Progress(o.steps, `adapt (${o.reward})`, 10);
    const r = await adapt(model, questions, settings, (row) =>
      bar.update(row.step, {
        ...(row.label_accuracy !== null ? { 'label acc': row.label_accuracy.toFixed(3) } : {}),
        'maj ratio': row.majority_ratio.toFixed(3),
        len: row.mean_len.toFixed(1),
        ...(row.pass_at_1 !== null ? { 'pass@1': row.pass_at_1.toFixed(3) } : {}),
        ...(row.event ? { event: row.event } : {}),
      }),
    );
    if (o.out) {
      const metadata = {
        ...model.metadata,
        adapted_from: s.model,
        adapt_reward: o.reward,
        adapt_steps: String(o.steps),
        adapt_seed: String(o.seed),
        adapt_lr: String(lrOf(s)),
        adapt_task: task.name,
        ...(s.loraRank ? { adapt_lora_rank: String(s.loraRank) } : {}),
      };
      await saveModel(o.out, { ...model, weights: r.weights, metadata });
      await writeFileAtomic(join(o.out, 'metrics.csv'), toCsv(r.rows as unknown as Record<string, unknown>[]));
      // A metric over steps; the evaluated ones start at step 0 with the evaluation before.
      const series = (name: string, key: keyof StepRow, before?: number) => ({
        name,
        points: [
          ...(before === undefined ? [] : [[0, before]]),
          ...r.rows.filter((x) => typeof x[key] === 'number').map((x) => [x.step, x[key] as number]),
        ] as [number, number][],
      });
      await writeFileAtomic(
        join(o.out, 'metrics.svg'),
        linePlot(
          [
            series('pass@1', 'pass_at_1', r.before?.pass_at_1),
            series(`maj@${o.votes}`, 'maj_at_n', r.before?.maj_at_n),
            series('label accuracy', 'label_accuracy'),
            series('majority ratio', 'majority_ratio'),
            series('anchor agreement', 'anchor_agreement'),
            series('entropy', 'entropy'),
          ],
          { title: `TTRL (${o.reward} rewards) on ${o.questions}`, xLabel: 'step', yMin: 0 },
        ),
      );
    }
    const round = (a: { pass_at_1: number; maj_at_n: number } | null) => (a ? { pass_at_1: +a.pass_at_1.toFixed(4), maj_at_n: +a.maj_at_n.toFixed(4) } : null);
    const summary = { before: round(r.before), after: round(r.after), steps: o.steps, rollbacks: r.rollbacks, wall_s: +r.wallS.toFixed(1), reward: o.reward };
    if (o.json) console.log(JSON.stringify(summary));
    else console.log(`before ${JSON.stringify(summary.before)}  after ${JSON.stringify(summary.after)}  rollbacks ${r.rollbacks}  (${summary.wall_s} s)`);
  });

const serve = program
  .command('serve')
  .description(`serve the model: WebSocket ${WS_PATH}, HTTP /v1/ask, /healthz, /readyz, /metrics, /admin; every setting also reads TTRL_<NAME>`);
addFlags(serve, SERVE_GROUPS, { showEnv: true });
serve.action(async (o: Record<string, unknown>, cmd: Command) => {
  const settings = resolveSettings(givenFlags(cmd, o, SERVE_GROUPS));
  const logger = createLogger({ level: settings.logLevel });
  const log = (line: string) => logger.info(line);
  const server = await startServer(settings, logger);
  log(
    `serving ${settings.model} (version ${server.versions$.value}) at ${server.url}  websocket ${server.wsUrl}  db ${hidePassword(settings.db)}  adaptation ${settings.adapt ? 'on' : 'off'}`,
  );
  server.versions$.subscribe((v) => log(`model version ${v} is serving`));
  let stoppingAt = 0;
  const stop = async (signal: string) => {
    // Ctrl-C under `npm start` arrives twice at once (from the terminal, and forwarded by
    // npm): only a signal a moment later asks to quit now.
    if (stoppingAt) {
      if (Date.now() - stoppingAt > 500) process.exit(130);
      return;
    }
    stoppingAt = Date.now();
    log(`${signal}: finishing the batch in flight, then stopping (again to quit now)`);
    await server.close();
    log('stopped');
    process.exit(0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
});

/** What an offline replay runs: the serving loop's groups (every adaptation setting of serve, LoRA included). */
const OFFLINE_REPLAY_GROUPS = ['model', 'storage', 'task', 'sampling', 'batching', 'schedule', 'train', 'guard'] as const satisfies readonly GroupName[];
const replay = program
  .command('replay')
  .description('replay a logged stream (server SQLite file or JSONL) against a server, or offline through the same pipeline')
  .requiredOption('--from <file>', 'a server database (.sqlite) or a JSONL question file ({"question","answer"?,"at"?})')
  .option('--to <url>', 'a running server', 'ws://127.0.0.1:8080/v1/ws')
  .option('--offline', 'run the stream in-process through batching, voting and updates, with a fixed seed')
  .option(
    '--speed <x>',
    'time scale of the original inter-arrival times (1, 10, ...) or max',
    (v: string) => {
      if (v === 'max') return 'max';
      const n = Number(v);
      if (!(n > 0) || !Number.isFinite(n)) throw new InvalidArgumentError('--speed must be a number > 0 or max');
      return n;
    },
    'max' as number | 'max',
  )
  .option('--since <t>', 'first arrival time to replay (ISO date-time or epoch ms; for JSONL, ms from the start)')
  .option('--until <t>', 'replay arrivals before this time')
  .option('--clients <n>', 'WebSocket connections', int('--clients', 1), 4)
  .option('--api-key <key>', "the server's API key, when it requires one (or TTRL_API_KEY)")
  .option('--window <n>', 'questions per window of the accuracy-over-time report', int('--window', 1), 100)
  .option('--report <dir>', 'write report.csv and report.svg (accuracy and majority ratio over the stream) here')
  .option('--json', 'print one JSON line');
// --db: offline, the replay's experience log is kept in this SQLite file (else a temporary one).
addFlags(replay, OFFLINE_REPLAY_GROUPS, { helpPrefix: 'offline: ' });
replay.action(async (o: Record<string, unknown>, cmd: Command) => {
  const since = o.since === undefined ? undefined : parseTime(o.since as string, '--since');
  const until = o.until === undefined ? undefined : parseTime(o.until as string, '--until');
  const { kind, items } = await readSource(o.from as string, { since, until });
  if (!items.length) throw new Error(`${o.from}: no questions${since !== undefined || until !== undefined ? ' in the --since/--until range' : ''}`);
  const bar = new Progress(items.length, `replay (${o.offline ? 'offline' : o.to})`, 100);
  let r: { outcomes: Outcome[]; sent: number; wallS: number; fatal?: string; versions?: VersionRow[] };
  if (o.offline) {
    // Flags only (no TTRL_* variables): the settings of a run are all on its command line;
    // repeatable (REPLAY_EXACT) unless --train-threads or --update-interval-s say otherwise.
    const settings = resolveSettings({ ...REPLAY_EXACT, ...givenFlags(cmd, o, OFFLINE_REPLAY_GROUPS) }, {});
    r = await replayOffline(items, settings, { keepDb: cmd.getOptionValueSource('db') === 'cli', onProgress: (n) => bar.update(n) });
  } else {
    for (const k of Object.keys(settingsOf(OFFLINE_REPLAY_GROUPS)))
      if (cmd.getOptionValueSource(k) === 'cli')
        throw new InvalidArgumentError(`${k === 'adapt' ? '--no-adapt' : flagName(k)} applies to --offline replays only`);
    const apiKey = (o.apiKey as string | undefined) ?? process.env.TTRL_API_KEY;
    r = await replayLive(items, {
      to: o.to as string,
      speed: o.speed as number | 'max',
      clients: o.clients as number,
      apiKey,
      onProgress: (n) => bar.update(n),
    });
  }
  const report = buildReport(r.outcomes, r.sent, r.wallS, o.window as number);
  if (o.report) await writeReport(o.report as string, report, `replay of ${o.from}`);
  const summary = {
    source: kind,
    questions: report.questions,
    sent: report.sent,
    answered: report.answered,
    errors: report.errors,
    error_codes: report.error_codes,
    questions_per_s: report.questions_per_s,
    p50_ms: report.p50_ms,
    p99_ms: report.p99_ms,
    accuracy: report.accuracy,
    per_version: report.per_version,
    versions: report.versions,
    digest: report.digest,
    wall_s: report.wall_s,
    ...(r.versions ? { updates: r.versions.filter((v) => v.version > 0).map((v) => ({ version: v.version, status: v.status, reason: v.reason })) } : {}),
    ...(r.fatal ? { error: r.fatal } : {}),
  };
  if (o.json) console.log(JSON.stringify(summary));
  else {
    console.log(
      `${report.questions} questions: ${report.sent} sent, ${report.answered} answered, ${report.errors} errors ${JSON.stringify(report.error_codes)}`,
    );
    console.log(`${report.questions_per_s} questions/s, latency p50 ${report.p50_ms} ms, p99 ${report.p99_ms} ms`);
    if (report.accuracy !== null) {
      console.log(`served accuracy ${report.accuracy}; per version ${JSON.stringify(report.per_version)}`);
      console.log(`over time (windows of ${o.window}): ${report.windows.map((w) => w.accuracy).join(' ')}`);
    }
    console.log(`versions ${report.versions.join(', ')}; digest ${report.digest}`);
  }
  if (r.fatal) {
    console.error(`ttrl: replay stopped early: ${r.fatal}`);
    process.exitCode = 1;
  }
});

program
  .command('export')
  .description('write the logged stream of a server database for other tools, or with --version a model version')
  .requiredOption('--db <file>', 'server SQLite file')
  .option('--format <f>', 'jsonl or csv', choice('--format', ['jsonl', 'csv']), 'jsonl')
  .option('--since <t>', 'first arrival time (ISO date-time or epoch ms)')
  .option('--until <t>', 'arrivals before this time')
  .option('--samples', 'include every sample (jsonl only)')
  .option(
    '--version <n>',
    'write this model version to --out instead: merged, as a model directory (Hugging Face layout for Llama-family models)',
    int('--version', 0),
  )
  .option('--out <dir>', 'where --version is written')
  .option('--adapter', "with --version: the version's LoRA adapters in PEFT's layout (adapter_config.json, adapter_model.safetensors)")
  .option('--model <path>', 'with --version: the base model (default: the one the database was created with)')
  .action(async (o) => {
    if (o.version !== undefined) {
      if (!o.out) throw new Error('--version needs --out DIR');
      const store = await openStore(o.db);
      try {
        const r = await exportVersion(store, o.version, { out: o.out, adapter: o.adapter, model: o.model });
        console.log(
          `wrote version ${o.version} of ${r.model} (${o.adapter ? 'its adapters, PEFT layout' : r.kind === 'lora' ? 'adapters merged' : 'full weights'}) to ${o.out}`,
        );
      } finally {
        await store.close();
      }
      return;
    }
    if (o.out || o.adapter || o.model) throw new Error('--out, --adapter and --model go with --version');
    const store = await openStore(o.db);
    try {
      const csv: Record<string, unknown>[] = [];
      for await (const r of store.questions({ since: o.since && parseTime(o.since, '--since'), until: o.until && parseTime(o.until, '--until') })) {
        const record = {
          id: r.id,
          question: r.question,
          answer: r.answer,
          label: r.label,
          votes: r.votes,
          majority_ratio: r.majority_ratio,
          model_version: r.model_version,
          status: r.status,
          error: r.error,
          received_at: new Date(r.received_at).toISOString(),
          answered_at: r.answered_at === null ? null : new Date(r.answered_at).toISOString(),
          latency_ms: r.latency_ms,
          client_id: r.client_id,
          connection: r.connection,
          frontend: r.frontend,
          ...(o.samples ? { samples: await store.samplesOf(r.id) } : {}),
        };
        if (o.format === 'jsonl') process.stdout.write(JSON.stringify(record) + '\n');
        else csv.push({ ...record, votes: JSON.stringify(record.votes) });
      }
      if (o.format !== 'jsonl') process.stdout.write(csv.length ? toCsv(csv) : '');
    } finally {
      await store.close();
    }
  });

program
  .command('vote')
  .description('majority-vote completions from stdin, one JSON line {"completions": [...]} each, with an answer extractor: what it reads in your own logs')
  .requiredOption('--extractor <name>', `answer extractor: ${EXTRACTOR_NAMES.join(', ')}`)
  .option('--json', 'one JSON line {"answer","votes","confidence","answers"} per input line; a bad line gets {"line","error"}')
  .action(async (o) => {
    const ex = extractor(o.extractor);
    // Output line k answers input record k (blank lines are not records); a bad line is
    // reported on stderr, gets an error line, and the exit code is 1 once all are read.
    let line = 0;
    let bad = 0;
    for await (const text of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
      line++;
      if (!text.trim()) continue;
      const r = voteLine(text, line, ex);
      if ('error' in r) {
        bad++;
        console.error(`ttrl: ${r.error}`);
      }
      process.stdout.write((o.json ? JSON.stringify('error' in r ? { line: r.line, error: r.error } : r.vote) : describeVote(r)) + '\n');
    }
    if (bad) {
      console.error(`ttrl: ${bad} line${bad === 1 ? '' : 's'} could not be read`);
      process.exitCode = 1;
    }
  });

program
  .command('copy')
  .description(
    'copy a whole store into an empty one (the log, the version lineage and its weight files, meta and events): from one process on a SQLite file to a PostgreSQL fleet, or back. Stop the server writing to --from first',
  )
  .requiredOption('--from <db>', 'the store copied: a SQLite file or a postgres:// URL')
  .requiredOption('--to <db>', 'the empty store filled: a SQLite file or a postgres:// URL (one that holds questions or versions is refused)')
  .option(
    '--versions-dir <dir>',
    'where the version weight files are copied, unchanged; serve the copy with this --versions-dir (default: DST.versions beside a SQLite --to; needed with a postgres:// --to)',
  )
  .option('--json', 'print a JSON summary line')
  .action(async (o) => {
    const r = await runCopy({ from: o.from, to: o.to, versionsDir: o.versionsDir, log: (line) => console.error(line) });
    for (const p of r.problems) console.error(`ttrl: warning: version ${p.version}: ${p.path} ${p.problem}`);
    console.error(
      `copied ${r.from} to ${r.to}: ${r.questions} questions (${r.samples} samples), ${r.versions} model versions (${r.files.length} weight files to ${r.versionsDir}), ${r.meta} meta rows, ${r.events} events; database id ${r.databaseId ?? '(none yet)'}`,
    );
    if (o.json) console.log(JSON.stringify(r));
  });

program.parseAsync().catch((e: Error) => {
  console.error(`ttrl: ${e.message}`);
  process.exitCode = 1;
});
