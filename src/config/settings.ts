// Every setting, once: its type and limits (zod), default, environment variable and help
// text, in groups by what they govern (server, storage, task, sampling, limits, schedule,
// train, guard). Components take whole groups; `ttrl serve`, `adapt`, `eval` and `replay
// --offline` build their flags from the groups they run (cli.ts), the TTRL_* variables and
// the docs' settings table come from here; a bad value fails with a message naming it.
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { EXTRACTOR_NAMES, extractor } from '../tasks/extractors.ts';
import { TASK_NAMES, type TaskName } from '../tasks/task.ts';
import { LOG_LEVELS } from '../util/log.ts';

export const PROJECT_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const DEFAULT_MODEL_DIR = fileURLToPath(new URL('../../models/arith-tiny', import.meta.url));

const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
const real = (min: number, max: number) => z.coerce.number().min(min).max(max);
const bool = z.union([z.boolean(), z.enum(['true', 'false', '1', '0', 'yes', 'no', 'on', 'off']).transform((v) => ['true', '1', 'yes', 'on'].includes(v))]);
// Checked when the settings are read, so a bad pattern stops start-up before a model loads.
const extractorName = z.string().superRefine((name, ctx) => {
  try {
    extractor(name);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
  }
});

interface Setting {
  schema: z.ZodType;
  default: unknown;
  help: string;
  /** A list given by repeating a singular flag (--api-key X --api-key Y); its variable is comma-separated. */
  repeat?: string;
}

/** A comma-separated variable or a repeated flag, as a list. */
const commaList = <T extends z.ZodType>(item: T) =>
  z.preprocess(
    (v) =>
      typeof v === 'string'
        ? v
            .split(',')
            .map((k) => k.trim())
            .filter(Boolean)
        : v,
    z.array(item),
  );
type Group = Record<string, Setting>;
/** A group's values, as read: each setting's schema output. */
type ValuesOf<G extends Group> = { [K in keyof G]: z.output<G[K]['schema']> };

// ---------- the groups: each setting once, with its default and one line of help ----------
// Its flag (--kebab-case) and environment variable (TTRL_SNAKE_CASE) come from its name.

/** Where the server listens and who may use it. */
export const SERVER = {
  host: { schema: z.string().min(1), default: '127.0.0.1', help: 'address to listen on' },
  port: { schema: int(0, 65535), default: 8080, help: 'TCP port (0: any free port)' },
  apiKeys: {
    schema: commaList(z.string().regex(/^[A-Za-z0-9._~-]{16,256}$/, 'an API key is 16 to 256 characters of A-Z a-z 0-9 . _ ~ -')),
    repeat: 'apiKey',
    default: [],
    help: 'API keys /v1 routes require (repeat --api-key; TTRL_API_KEYS comma-separated); none: /v1 open to all',
  },
  adminToken: {
    schema: z.string().min(8, 'must be at least 8 characters').optional(),
    default: undefined,
    help: 'bearer token of the /admin routes, at least 8 characters (unset: admin routes off)',
  },
  logLevel: {
    schema: z.enum(LOG_LEVELS),
    default: 'info',
    help: `least level logged: ${LOG_LEVELS.join(', ')} (debug: a record per batch and per answer, with its request id)`,
  },
} satisfies Group;

/** The model: a Hugging Face or our own model directory, or a GGUF file. */
export const MODEL = {
  model: {
    schema: z.string().min(1),
    default: DEFAULT_MODEL_DIR,
    help: 'model directory (or GGUF file) to serve, evaluate or adapt (default: the shipped models/arith-tiny)',
  },
  quantize: {
    schema: z.enum(['float32', 'file', 'int8']),
    default: 'float32',
    help: "how weights are served (formats/quantize.ts): float32 (a quantized GGUF dequantized on load: the fastest for batches of votes on the CPUs measured), file (a quantized GGUF's blocks kept: a quarter of the memory, faster one sequence at a time), int8 (any float checkpoint quantized to 8-bit blocks too)",
  },
} satisfies Group;

/** Where experiences and model versions are kept. */
export const STORAGE = {
  db: {
    schema: z.string().min(1),
    default: 'data/ttrl.sqlite',
    help: 'the experience log: a SQLite file (its versions in the folder DB.versions beside it), or a postgres:// URL shared by several front-ends',
  },
  keepVersions: {
    schema: int(0, 1_000_000),
    default: 16,
    help: 'retired versions whose weight files are kept, the newest; older ones keep their rows and stats but their files are deleted (0: keep every file)',
  },
  versionsDir: {
    schema: z.string().min(1).optional(),
    default: undefined,
    help: 'folder of the version weight files (unset: DB.versions beside a SQLite file; with a postgres:// --db it is required: storage every front-end can read)',
  },
} satisfies Group;

/** Several front-ends on one PostgreSQL database (--db postgres://...): who they are, how they keep in step. */
export const FLEET = {
  frontendId: {
    schema: z
      .string()
      .regex(/^[\w.:@-]{1,64}$/)
      .optional(),
    default: undefined,
    help: "this front-end's name in the shared log (unset: host:port)",
  },
  leaderPollMs: {
    schema: int(100, 60_000),
    default: 1000,
    help: 'how often a front-end that does not lead tries to take the leader lock (a dead leader is replaced within about this)',
  },
  heartbeatMs: { schema: int(100, 60_000), default: 2000, help: 'how often a front-end records that it is alive, what it serves and whether it leads' },
  versionPollMs: {
    schema: int(100, 600_000),
    default: 5000,
    help: 'how often a front-end re-reads the serving version, beside the notices it gets at once (a missed notice is caught within this)',
  },
  experiencePollMs: { schema: int(50, 60_000), default: 250, help: "how often the leader reads the fleet's new answers to train on" },
} satisfies Group;

/** Sampling on OpenAI-compatible inference servers (vLLM, SGLang, llama.cpp, ttrl-server) instead of in this process. */
export const UPSTREAM = {
  upstreams: {
    schema: commaList(
      z
        .string()
        .url()
        .regex(/^https?:\/\//, 'an upstream is an http:// or https:// base URL such as http://gpu-1:8000/v1'),
    ),
    repeat: 'upstream',
    default: [],
    help: 'OpenAI-compatible base URL to sample on instead of in this process, e.g. http://gpu-1:8000/v1 (repeat --upstream; TTRL_UPSTREAMS comma-separated)',
  },
  upstreamApi: {
    schema: z.enum(['vllm', 'sglang', 'llamacpp']),
    default: 'vllm',
    help: "how the upstreams are spoken to: vllm (vLLM's and ttrl-server's /v1/completions), sglang (its /generate), llamacpp (llama-server's /completion)",
  },
  upstreamModel: {
    schema: z.string().min(1).optional(),
    default: undefined,
    help: "the base model's name on the upstreams (unset: the name this server serves it by, --model's folder or file name)",
  },
  upstreamApiKey: { schema: z.string().min(1).optional(), default: undefined, help: 'bearer token sent to the upstreams (unset: none)' },
  upstreamTimeoutMs: {
    schema: int(100, 3_600_000),
    default: 60_000,
    help: 'longest wait for one upstream request; a slower one is retried once on another upstream',
  },
  upstreamConcurrency: {
    schema: int(1, 65_536),
    default: 32,
    help: "requests in flight to one upstream at most, more wait their turn (each holds a connection: keep it under a ttrl-server upstream's --max-connections-per-address)",
  },
  upstreamFailures: {
    schema: int(1, 1000),
    default: 3,
    help: 'consecutive failed requests that take an upstream out of rotation (it is probed back in)',
  },
  upstreamProbeMs: { schema: int(50, 600_000), default: 2000, help: 'how often an upstream taken out is probed (GET /models)' },
  upstreamLogprobTolerance: {
    schema: real(0, 100),
    default: 0.05,
    help: "start-up check: largest mean gap (nats per token) between an upstream's log-probs and ours on a completion it drew; beyond it adaptation is refused",
  },
  adapterDir: {
    schema: z.string().min(1).optional(),
    default: undefined,
    help: 'where promoted LoRA versions are written as PEFT adapters for the upstreams to load (storage they can read; default: DB.adapters)',
  },
} satisfies Group;

/** What is asked: the prompt format, how answers are read, how long they may be. */
export const TASK = {
  task: {
    schema: z.enum(TASK_NAMES as [TaskName, ...TaskName[]]),
    default: 'arithmetic',
    help: `what is asked: ${TASK_NAMES.join(', ')} (a prompt format, an answer extractor and a length; the four settings below override its parts)`,
  },
  extractor: { schema: extractorName.optional(), default: undefined, help: `how answers are read: ${EXTRACTOR_NAMES.join(', ')} (unset: the task's)` },
  chatTemplate: {
    schema: bool.optional(),
    default: undefined,
    help: "on: prompts are the model's chat template (tokenizer_config.json); off: the raw question (unset: the task's)",
  },
  system: { schema: z.string().optional(), default: undefined, help: "system prompt of the chat template, '' for none (unset: the task's)" },
  maxNewTokens: {
    schema: int(1, 1 << 20).optional(),
    default: undefined,
    help: "most tokens per completion; every prompt must leave them room in the model's context (unset: the task's)",
  },
  maxPromptTokens: {
    schema: int(1, 1 << 20).optional(),
    default: undefined,
    help: "longest prompt accepted, in tokens: the question as the model reads it, chat template and system prompt included (unset: all that the model's context leaves beside --max-new-tokens)",
  },
} satisfies Group;

/** How answers are drawn. */
export const SAMPLING = {
  votes: { schema: int(1, 256), default: 16, help: 'samples per question when the client does not say' },
  temperature: { schema: real(0.01, 10), default: 1, help: 'sampling temperature' },
  seed: { schema: int(0, 2 ** 32 - 1), default: 0, help: 'random seed of sampling and updates' },
  threads: { schema: int(1, 256), default: 2, help: 'compute threads of the sampler' },
} satisfies Group;

/** How arriving questions are gathered into sampling runs. */
export const BATCHING = {
  batchQuestions: { schema: int(1, 4096), default: 32, help: 'most questions sampled in one run' },
  batchWaitMs: { schema: int(0, 1000), default: 5, help: 'how long a batch waits for more questions once one is queued' },
} satisfies Group;

/** What one client may ask and hold: every bound on input and load. */
export const LIMITS = {
  maxVotes: { schema: int(1, 1024), default: 64, help: 'most samples a client may ask for per question' },
  maxMessageBytes: { schema: int(64, 1 << 20), default: 8192, help: 'largest client message answered with an error; 4x this closes the connection' },
  queueLimit: { schema: int(1, 1_000_000), default: 512, help: 'questions waiting at most; beyond it clients get "overloaded" at once' },
  maxLoadedAdapters: {
    schema: int(0, 1024),
    default: 8,
    help: 'LoRA adapters /v1/load_lora_adapter may hold loaded at once (beyond it a load is refused until one is unloaded)',
  },
  maxConnections: {
    schema: int(1, 1_000_000),
    default: 1024,
    help: 'open connections in total (HTTP and WebSocket); beyond it new ones get 503 too_many_connections',
  },
  maxConnectionsPerAddress: {
    schema: int(1, 1_000_000),
    default: 64,
    help: 'open connections from one client address; beyond it new ones get 429 too_many_connections',
  },
  maxInFlight: {
    schema: int(1, 1_000_000),
    default: 64,
    help: 'questions one WebSocket connection may have waiting or being answered; beyond it asks get too_many_in_flight',
  },
  maxBufferedBytes: {
    schema: int(1024, 1 << 30),
    default: 1 << 20,
    help: 'unsent output a WebSocket client may leave unread before it is disconnected (its waiting questions are dropped, and logged)',
  },
} satisfies Group;

/** When live updates run and what they may take. */
export const SCHEDULE = {
  adapt: { schema: bool, default: true, help: 'run live TTRL updates' },
  updateEvery: { schema: int(1, 1_000_000), default: 64, help: 'voted questions between updates' },
  updateIntervalS: { schema: real(0, 86400), default: 0, help: 'also update after this many seconds with new questions (0: off)' },
  updateMax: {
    schema: int(0, 1_000_000),
    default: 0,
    help: 'most distinct questions one update trains on: those that arrived while the last update ran count too, the oldest beyond it dropped (0: --update-every)',
  },
  maxClientShare: {
    schema: real(0.01, 1),
    default: 0.5,
    help: "most of an update's questions one client may supply (a client: its API key, else its WebSocket connection or HTTP address); 1: no limit",
  },
} satisfies Group;

/** Learning rates of updates when none is set (bench/RESULTS.md says how each was chosen). */
export const FULL_LR = 3e-5;
export const LORA_LR = 3e-4;

/** What one update does: the data it trains on, the loss, the optimizer, LoRA, its threads. */
export const TRAIN = {
  lr: {
    schema: real(0, 1).optional(),
    default: undefined,
    help: `learning rate of updates (unset: ${FULL_LR} for full fine-tuning, ${LORA_LR} with --lora-rank)`,
  },
  loraRank: {
    schema: int(0, 4096),
    default: 0,
    help: 'rank of the LoRA adapters updates train on the frozen base; versions then store adapters only (0: full fine-tuning, every weight)',
  },
  loraAlpha: {
    schema: real(0, 1e6)
      .refine((a) => a > 0, 'must be > 0')
      .optional(),
    default: undefined,
    help: 'LoRA alpha: adapters are scaled by alpha / rank (unset: twice the rank)',
  },
  loraTargets: {
    schema: z
      .union([
        z.array(z.string()),
        z.string().transform((t) =>
          t
            .split(',')
            .map((x) => x.trim())
            .filter(Boolean),
        ),
      ])
      .optional(),
    default: undefined,
    help: 'comma-separated modules (or their last names, e.g. q_proj,v_proj) that get adapters (unset: every attention and MLP projection)',
  },
  gate: {
    schema: real(0, 1),
    default: 0.5,
    help: 'questions whose majority ratio is below this are not trained on (grpo, asymmetric) or have every sample pushed down (restrain)',
  },
  advantage: {
    schema: z.enum(['grpo', 'asymmetric', 'restrain']),
    default: 'grpo',
    help: 'how voted samples are rewarded (ttrl/grpo.ts): grpo (1 for the majority answer, 0 else), asymmetric (only samples against the vote are pushed down), restrain (each answer rewarded by its vote share, questions weighted by agreement, low-agreement ones pushed down)',
  },
  refGate: {
    schema: real(0, 1),
    default: 0,
    help: 'also skip questions whose majority answer the reference (shipped) model backs less than this, estimated from the samples by importance weights (ttrl/reference.ts): a gate self-training cannot open; 0: off',
  },
  restrainPenalty: {
    schema: real(0, 10),
    default: 0.5,
    help: 'restrain: the negative advantage of every sample of a question whose majority ratio is under --gate',
  },
  trainSamples: { schema: int(1, 1024), default: 8, help: 'samples per question trained on (questions asked with fewer votes are not trained on)' },
  questionsPerStep: { schema: int(1, 4096), default: 16, help: 'questions per optimizer step within an update' },
  epochs: { schema: int(1, 64), default: 1, help: 'optimizer steps per batch of questions (PPO epochs; the clipped ratio keeps later ones close)' },
  clipEps: { schema: real(0, 10), default: 0.2, help: 'PPO ratio clipping: the policy ratio is clipped to 1 +- this' },
  maxGradNorm: { schema: real(0, 1e6), default: 1, help: 'gradients are clipped to this global norm (0: no clipping)' },
  kl: { schema: real(0, 100), default: 0, help: 'KL coefficient to the initial (shipped) model; 0 leaves the term out' },
  entropyBonus: { schema: real(0, 100), default: 0, help: 'entropy bonus coefficient; 0 leaves the term out' },
  trainThreads: { schema: int(1, 256), default: 2, help: "compute threads of the trainer and the guard's prober and scorer" },
  trainNice: {
    schema: int(0, 19),
    default: 10,
    help: 'Linux nice value of training threads: higher keeps answer latency steady, lower finishes updates sooner',
  },
} satisfies Group;

/** The live guard: what a candidate version must show before it serves. */
export const GUARD = {
  entropyFloor: { schema: real(0, 10), default: 0.005, help: 'guard: reject a version whose mean token entropy falls below this' },
  probeQuestions: { schema: int(0, 4096), default: 64, help: 'guard: earlier questions a candidate must still answer sensibly, greedily (0: no probe)' },
  anchors: {
    schema: int(0, 4096),
    default: 128,
    help: 'guard: most anchors, served questions the shipped model answered with at least 90% of the votes; a candidate must stay as sure of their answers (0: no anchor check)',
  },
  anchorSlack: { schema: real(0, 100), default: 0, help: 'guard: mean log-prob (nats) per anchor answer a candidate may lose against the shipped model' },
} satisfies Group;

/**
 * Confidence may not rise where the shipped model gives no support: live, a check of the
 * guard on each candidate; offline (`ttrl adapt`), a rollback.
 */
export const CONFIDENCE = {
  confidenceRise: {
    schema: real(0, 1).optional(),
    default: undefined,
    help: "most a candidate's probability of its update's majority answers may exceed the shipped model's, on questions the shipped model does not back (its support under 0.5), in units of confidence; live a candidate beyond it is rejected, offline the model rolls back; unset: not checked",
  },
} satisfies Group;

/** `ttrl adapt` alone: offline TTRL on a question file, step by step. */
export const OFFLINE_ADAPT = {
  reward: { schema: z.enum(['majority', 'ground-truth']), default: 'majority', help: 'majority (TTRL) or ground-truth (the upper bound: labels as rewards)' },
  steps: { schema: int(1, 1_000_000), default: 150, help: 'update steps' },
  evalEvery: { schema: int(0, 1_000_000), default: 25, help: 'evaluate every N steps (0: before and after only)' },
  guard: { schema: bool, default: true, help: 'the collapse guard: roll back when the rollouts or the anchors say the model is collapsing' },
  rollbackLrFactor: { schema: real(0, 1), default: 0.5, help: 'learning rate multiplier after each rollback of the collapse guard' },
} satisfies Group;

/** Every group, by name: commands take their flags from these. */
export const GROUPS = {
  server: SERVER,
  model: MODEL,
  storage: STORAGE,
  fleet: FLEET,
  upstream: UPSTREAM,
  task: TASK,
  sampling: SAMPLING,
  batching: BATCHING,
  limits: LIMITS,
  schedule: SCHEDULE,
  train: TRAIN,
  guard: GUARD,
  confidence: CONFIDENCE,
  offlineAdapt: OFFLINE_ADAPT,
} as const;
export type GroupName = keyof typeof GROUPS;

/** The settings of a server (and of offline replays, which run the same pipeline). */
export const SETTINGS = {
  ...SERVER,
  ...MODEL,
  ...STORAGE,
  ...FLEET,
  ...UPSTREAM,
  ...TASK,
  ...SAMPLING,
  ...BATCHING,
  ...LIMITS,
  ...SCHEDULE,
  ...TRAIN,
  ...GUARD,
  ...CONFIDENCE,
} satisfies Group;
/** The server's groups, in the order the settings table lists them. */
export const SERVE_GROUPS = [
  'server',
  'model',
  'storage',
  'fleet',
  'upstream',
  'task',
  'sampling',
  'batching',
  'limits',
  'schedule',
  'train',
  'guard',
  'confidence',
] as const satisfies readonly GroupName[];

export type ServerSettings = ValuesOf<typeof SERVER>;
export type ModelSettings = ValuesOf<typeof MODEL>;
export type StorageSettings = ValuesOf<typeof STORAGE>;
export type FleetSettings = ValuesOf<typeof FLEET>;
export type UpstreamSettings = ValuesOf<typeof UPSTREAM>;
export type TaskGroupSettings = ValuesOf<typeof TASK>;
export type SamplingSettings = ValuesOf<typeof SAMPLING>;
export type BatchingSettings = ValuesOf<typeof BATCHING>;
export type LimitSettings = ValuesOf<typeof LIMITS>;
export type ScheduleSettings = ValuesOf<typeof SCHEDULE>;
export type TrainSettings = ValuesOf<typeof TRAIN>;
export type GuardSettings = ValuesOf<typeof GUARD>;
export type ConfidenceSettings = ValuesOf<typeof CONFIDENCE>;
export type OfflineAdaptSettings = ValuesOf<typeof OFFLINE_ADAPT>;

/** The learning rate updates use: the one set, else the default of full fine-tuning or of LoRA. */
export const lrOf = (s: { lr?: number; loraRank: number }) => s.lr ?? (s.loraRank > 0 ? LORA_LR : FULL_LR);

/** Settings that were removed, and what replaced them. */
const RETIRED: Record<string, string> = {
  maxQuestionLength: 'question limits are in tokens now: --max-prompt-tokens (TTRL_MAX_PROMPT_TOKENS)',
};

export type Settings = ValuesOf<typeof SETTINGS>;
export type SettingName = keyof typeof SETTINGS;
type AnyName = { [G in GroupName]: keyof (typeof GROUPS)[G] }[GroupName] & string;

export const envName = (k: string) => 'TTRL_' + k.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase();
export const flagName = (k: string) => '--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());

/** The settings of the given groups, merged (a name is in one group only). */
export function settingsOf(groups: readonly GroupName[]): Record<string, Setting> {
  return Object.assign({}, ...groups.map((g) => GROUPS[g]));
}

/**
 * The values of some groups: defaults, then TTRL_* environment variables (pass {} for none:
 * an offline run's settings are all on its command line), then explicit values (CLI flags,
 * tests). Every bad value is reported at once, each naming where it came from.
 */
export function resolveGroups(
  groups: readonly GroupName[],
  explicit: Partial<Record<AnyName, unknown>> = {},
  env: NodeJS.ProcessEnv = process.env,
): Record<string, unknown> {
  const table = settingsOf(groups);
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [k, s] of Object.entries(table)) {
    let raw: unknown = s.default;
    let from = 'default';
    if (env[envName(k)] !== undefined && env[envName(k)] !== '') [raw, from] = [env[envName(k)], envName(k)];
    if ((explicit as Record<string, unknown>)[k] !== undefined) [raw, from] = [(explicit as Record<string, unknown>)[k], flagName(k)];
    const r = s.schema.safeParse(raw);
    if (r.success) out[k] = r.data;
    else problems.push(`${from === 'default' ? k : from}: ${r.error.issues.map((i) => i.message).join('; ')} (got ${JSON.stringify(raw)})`);
  }
  // A setting that is gone must not be ignored quietly: the limit it set would vanish.
  for (const [k, instead] of Object.entries(RETIRED))
    if (env[envName(k)] !== undefined && env[envName(k)] !== '') problems.push(`${envName(k)} is no longer read: ${instead}`);
  for (const k of Object.keys(explicit).filter((k) => !(k in table))) problems.push(`unknown setting ${k}${RETIRED[k] ? `: ${RETIRED[k]}` : ''}`);
  if (!problems.length && 'votes' in out && 'maxVotes' in out && (out.votes as number) > (out.maxVotes as number))
    problems.push(`votes (${out.votes}) cannot exceed maxVotes (${out.maxVotes})`);
  if (!problems.length && 'trainSamples' in out && 'votes' in out && !('maxVotes' in out) && (out.trainSamples as number) > (out.votes as number))
    problems.push(`trainSamples (${out.trainSamples}) cannot exceed votes (${out.votes}): a question is trained on its own samples`);
  if (problems.length) throw new Error(`invalid settings:\n  ${problems.join('\n  ')}`);
  return out;
}

/** A server's settings (every group `ttrl serve` runs): defaults, then TTRL_* variables, then explicit values. */
export function resolveSettings(explicit: Partial<Record<SettingName, unknown>> = {}, env: NodeJS.ProcessEnv = process.env): Settings {
  return resolveGroups(SERVE_GROUPS, explicit, env) as Settings;
}

const GROUP_TITLES: Record<GroupName, string> = {
  server: 'Server',
  model: 'Model',
  storage: 'Storage',
  fleet: 'Fleet (several front-ends on one PostgreSQL database)',
  upstream: 'Upstreams (sampling on vLLM, SGLang, llama.cpp or ttrl-server)',
  task: 'Task',
  sampling: 'Sampling',
  batching: 'Batching',
  limits: 'Limits',
  schedule: 'Live updates: when',
  train: 'Updates: what each does',
  guard: 'Guard',
  confidence: 'Confidence without support (live and `ttrl adapt`)',
  offlineAdapt: '`ttrl adapt` only',
};

/** The flag a setting is given by (a boolean on by default is turned off with --no-NAME). */
export function flagOf(k: string, s: Setting): string {
  return s.default === true ? `--no-${flagName(k).slice(2)}` : s.repeat ? `${flagName(s.repeat)} X (repeatable)` : `${flagName(k)} X`;
}

/** The docs' settings tables, one per group (a test keeps docs/configuration.md equal to it). */
export function settingsTable(groups: readonly GroupName[] = [...SERVE_GROUPS, 'offlineAdapt']): string {
  return groups
    .map((g) => {
      const rows = Object.entries(GROUPS[g] as Group).map(([k, s]) => {
        const d = s.default;
        const shown =
          d === undefined
            ? '(unset)'
            : Array.isArray(d)
              ? d.length
                ? d.join(',')
                : '(none)'
              : typeof d === 'string' && d.startsWith(PROJECT_ROOT)
                ? d.slice(PROJECT_ROOT.length)
                : String(d);
        return `| \`${flagOf(k, s)}\` | \`${envName(k)}\` | ${shown} | ${s.help} |`;
      });
      return [`#### ${GROUP_TITLES[g]}`, '', '| flag | environment | default | meaning |', '|---|---|---|---|', ...rows].join('\n');
    })
    .join('\n\n');
}
