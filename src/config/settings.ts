// Every server setting in one table: its type and limits (zod), default, environment
// variable and help text. `ttrl serve` flags, TTRL_* variables and the README table all
// come from here; a bad value fails start-up with a message that names the setting.
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { EXTRACTOR_NAMES, extractor } from '../tasks/extractors.ts';
import { TASK_NAMES, type TaskName } from '../tasks/task.ts';
import { LOG_LEVELS } from '../util/log.ts';
import { FULL_LR, LORA_LR } from '../loop/adaptation.ts';

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
}

export const SETTINGS = {
  host: { schema: z.string().min(1), default: '127.0.0.1', help: 'address to listen on' },
  port: { schema: int(0, 65535), default: 8080, help: 'TCP port (0: any free port)' },
  model: { schema: z.string().min(1), default: DEFAULT_MODEL_DIR, help: 'model directory to serve (default: the shipped models/arith-tiny)' },
  db: { schema: z.string().min(1), default: 'data/ttrl.sqlite', help: 'SQLite experience log; its model versions go in the folder DB.versions beside it' },
  votes: { schema: int(1, 256), default: 16, help: 'samples per question when the client does not say' },
  maxVotes: { schema: int(1, 1024), default: 64, help: 'most samples a client may ask for per question' },
  temperature: { schema: real(0.01, 10), default: 1, help: 'sampling temperature' },
  task: { schema: z.enum(TASK_NAMES as [TaskName, ...TaskName[]]), default: 'arithmetic', help: `what is asked: ${TASK_NAMES.join(', ')} (a prompt format, an answer extractor and a length; the four settings below override its parts)` },
  extractor: { schema: extractorName.optional(), default: undefined, help: `how answers are read: ${EXTRACTOR_NAMES.join(', ')} (unset: the task's)` },
  chatTemplate: { schema: bool.optional(), default: undefined, help: "on: prompts are the model's chat template (tokenizer_config.json); off: the raw question (unset: the task's)" },
  system: { schema: z.string().optional(), default: undefined, help: "system prompt of the chat template, '' for none (unset: the task's)" },
  maxNewTokens: { schema: int(1, 1 << 20).optional(), default: undefined, help: "most tokens per completion; every prompt must leave them room in the model's context (unset: the task's)" },
  maxPromptTokens: {
    schema: int(1, 1 << 20).optional(),
    default: undefined,
    help: "longest prompt accepted, in tokens: the question as the model reads it, chat template and system prompt included (unset: all that the model's context leaves beside --max-new-tokens)",
  },
  maxMessageBytes: { schema: int(64, 1 << 20), default: 8192, help: 'largest client message answered with an error; 4x this closes the connection' },
  batchQuestions: { schema: int(1, 4096), default: 32, help: 'most questions sampled in one run' },
  batchWaitMs: { schema: int(0, 1000), default: 5, help: 'how long a batch waits for more questions once one is queued' },
  queueLimit: { schema: int(1, 1_000_000), default: 512, help: 'questions waiting at most; beyond it clients get "overloaded" at once' },
  maxConnections: { schema: int(1, 1_000_000), default: 1024, help: 'open connections in total (HTTP and WebSocket); beyond it new ones get 503 too_many_connections' },
  maxConnectionsPerAddress: { schema: int(1, 1_000_000), default: 64, help: 'open connections from one client address; beyond it new ones get 429 too_many_connections' },
  maxInFlight: { schema: int(1, 1_000_000), default: 64, help: 'questions one WebSocket connection may have waiting or being answered; beyond it asks get too_many_in_flight' },
  maxBufferedBytes: { schema: int(1024, 1 << 30), default: 1 << 20, help: 'unsent output a WebSocket client may leave unread before it is disconnected (its waiting questions are dropped, and logged)' },
  apiKeys: {
    // TTRL_API_KEYS is one string, comma-separated; --api-key repeated is a list.
    schema: z.preprocess(
      (v) => (typeof v === 'string' ? v.split(',').map((k) => k.trim()).filter(Boolean) : v),
      z.array(z.string().regex(/^[A-Za-z0-9._~-]{16,256}$/, 'an API key is 16 to 256 characters of A-Z a-z 0-9 . _ ~ -')),
    ),
    default: [],
    help: 'API keys /v1 routes require (repeat --api-key; TTRL_API_KEYS comma-separated); none: /v1 open to all',
  },
  threads: { schema: int(1, 256), default: 2, help: 'compute threads of the sampler' },
  trainThreads: { schema: int(1, 256), default: 2, help: 'compute threads of the trainer and the guard\'s prober and scorer' },
  trainNice: { schema: int(0, 19), default: 10, help: 'Linux nice value of training threads: higher keeps answer latency steady, lower finishes updates sooner' },
  seed: { schema: int(0, 2 ** 32 - 1), default: 0, help: 'random seed of sampling and updates' },
  adapt: { schema: bool, default: true, help: 'run live TTRL updates' },
  updateEvery: { schema: int(1, 1_000_000), default: 64, help: 'voted questions between updates' },
  updateIntervalS: { schema: real(0, 86400), default: 0, help: 'also update after this many seconds with new questions (0: off)' },
  lr: { schema: real(0, 1).optional(), default: undefined, help: `learning rate of live updates (unset: ${FULL_LR} for full fine-tuning, ${LORA_LR} with --lora-rank)` },
  loraRank: { schema: int(0, 4096), default: 0, help: 'rank of the LoRA adapters live updates train on the frozen base; versions then store adapters only (0: full fine-tuning, every weight)' },
  loraAlpha: { schema: real(0, 1e6).refine((a) => a > 0, 'must be > 0').optional(), default: undefined, help: 'LoRA alpha: adapters are scaled by alpha / rank (unset: twice the rank)' },
  loraTargets: {
    schema: z.string().transform((t) => t.split(',').map((x) => x.trim()).filter(Boolean)).optional(),
    default: undefined,
    help: 'comma-separated modules (or their last names, e.g. q_proj,v_proj) that get adapters (unset: every attention and MLP projection)',
  },
  keepVersions: { schema: int(0, 1_000_000), default: 16, help: 'retired versions whose weight files are kept, the newest; older ones keep their rows and stats but their files are deleted (0: keep every file)' },
  maxClientShare: { schema: real(0.01, 1), default: 0.5, help: "most of an update's questions one client may supply (a client: its API key, else its WebSocket connection or HTTP address); 1: no limit" },
  gate: { schema: real(0, 1), default: 0.5, help: 'train only on questions whose majority ratio is at least this' },
  trainSamples: { schema: int(1, 1024), default: 8, help: 'samples per question trained on (questions asked with fewer votes are not trained on)' },
  questionsPerStep: { schema: int(1, 4096), default: 16, help: 'questions per optimizer step within an update' },
  kl: { schema: real(0, 100), default: 0, help: 'KL coefficient to the shipped model' },
  entropyFloor: { schema: real(0, 10), default: 0.005, help: 'guard: reject a version whose mean token entropy falls below this' },
  probeQuestions: { schema: int(0, 4096), default: 64, help: 'guard: earlier questions a candidate must still answer sensibly, greedily (0: no probe)' },
  anchors: { schema: int(0, 4096), default: 128, help: 'guard: most anchors, served questions the shipped model answered with at least 90% of the votes; a candidate must stay as sure of their answers (0: no anchor check)' },
  anchorSlack: { schema: real(0, 100), default: 0, help: 'guard: mean log-prob (nats) per anchor answer a candidate may lose against the shipped model' },
  logLevel: { schema: z.enum(LOG_LEVELS), default: 'info', help: `least level logged: ${LOG_LEVELS.join(', ')} (debug: a record per batch and per answer, with its request id)` },
  adminToken: { schema: z.string().min(8, 'must be at least 8 characters').optional(), default: undefined, help: 'bearer token of the /admin routes, at least 8 characters (unset: admin routes off)' },
} satisfies Record<string, Setting>;

/** Settings that were removed, and what replaced them. */
const RETIRED: Record<string, string> = {
  maxQuestionLength: 'question limits are in tokens now: --max-prompt-tokens (TTRL_MAX_PROMPT_TOKENS)',
};

export type Settings = { [K in keyof typeof SETTINGS]: z.output<(typeof SETTINGS)[K]['schema']> };
export type SettingName = keyof typeof SETTINGS;

export const envName = (k: string) => 'TTRL_' + k.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase();
export const flagName = (k: string) => '--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());

/** Defaults, then TTRL_* environment variables, then explicit values (CLI flags, tests). */
export function resolveSettings(explicit: Partial<Record<SettingName, unknown>> = {}, env: NodeJS.ProcessEnv = process.env): Settings {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [k, s] of Object.entries(SETTINGS) as [SettingName, Setting][]) {
    let raw: unknown = s.default;
    let from = 'default';
    if (env[envName(k)] !== undefined && env[envName(k)] !== '') [raw, from] = [env[envName(k)], envName(k)];
    if (explicit[k] !== undefined) [raw, from] = [explicit[k], flagName(k)];
    const r = s.schema.safeParse(raw);
    if (r.success) out[k] = r.data;
    else problems.push(`${from === 'default' ? k : from}: ${r.error.issues.map((i) => i.message).join('; ')} (got ${JSON.stringify(raw)})`);
  }
  // A setting that is gone must not be ignored quietly: the limit it set would vanish.
  for (const [k, instead] of Object.entries(RETIRED)) if (env[envName(k)] !== undefined && env[envName(k)] !== '') problems.push(`${envName(k)} is no longer read: ${instead}`);
  const unknown = Object.keys(explicit).filter((k) => !(k in SETTINGS));
  for (const k of unknown) problems.push(`unknown setting ${k}${RETIRED[k] ? `: ${RETIRED[k]}` : ''}`);
  const s = out as Settings;
  if (!problems.length && s.votes > s.maxVotes) problems.push(`votes (${s.votes}) cannot exceed maxVotes (${s.maxVotes})`);
  if (problems.length) throw new Error(`invalid settings:\n  ${problems.join('\n  ')}`);
  return s;
}

/** The README's configuration table (a test keeps the two equal). */
export function settingsTable(): string {
  const rows = Object.entries(SETTINGS).map(([k, s]) => {
    const d = s.default;
    const flag = d === true ? `--no-${flagName(k).slice(2)}` : k === 'apiKeys' ? '--api-key X (repeatable)' : `${flagName(k)} X`;
    const shown = d === undefined ? '(unset)' : Array.isArray(d) ? (d.length ? d.join(',') : '(none)') : typeof d === 'string' && d.startsWith(PROJECT_ROOT) ? d.slice(PROJECT_ROOT.length) : String(d);
    return `| \`${flag}\` | \`${envName(k)}\` | ${shown} | ${s.help} |`;
  });
  return ['| flag | environment | default | meaning |', '|---|---|---|---|', ...rows].join('\n');
}
