// Sampling N completions per question in batches, with their extracted answers and vote:
// what evaluation, offline TTRL and the server all start from.
import type { Generator, SampledBy } from '../engine/sampler.ts';
import type { Tokenizer } from '../tokenizers/tokenizer.ts';
import { ARITHMETIC_TASK, type Task } from '../tasks/task.ts';
import { majorityVote, normalizeAnswer, type VoteResult } from '../tasks/vote.ts';
import { calibration, type Calibration } from './calibration.ts';

export interface Sample {
  tokens: number[];
  logprobs: number[];
  stopped: boolean;
  text: string;
  /** Normalised extracted answer, null when unparsable. */
  answer: string | null;
  /** The text was cut at one of the request's stop strings (its tokens run past it). */
  cut?: boolean;
}

export interface Rollout {
  question: string;
  prompt: number[];
  samples: Sample[];
  vote: VoteResult;
  /** The weight version that sampled them. */
  version: number;
  /** Drawn on an upstream inference server: which, and under which model or adapter name (unset: in this process). */
  sampledBy?: SampledBy;
}

/** Nucleus mass that keeps only the most likely token: greedy decoding. */
export const GREEDY_TOP_P = 1e-9;

export interface RolloutOptions {
  votes: number;
  temperature: number;
  /** Nucleus mass kept (default 1: plain sampling; GREEDY_TOP_P: greedy). */
  topP?: number;
  seed: number;
  /** One seed per question (see SampleOptions.seeds). */
  seeds?: number[];
  /** Questions per sampling run. */
  questionsPerBatch?: number;
  /** How questions become prompts and answers are read (default: the arithmetic task). */
  task?: Task;
  /** Cap on completion length (default: the task's; also capped by the context length). */
  maxNewTokens?: number;
  /** Strings that end a completion's text (OpenAI's `stop`): the text is cut before the first, and the answer read from what is left. */
  stop?: string[];
  /** Sample with these named adapters instead of the serving version's (SampleOptions.adapter). */
  adapter?: string;
  onBatch?: (done: number) => void;
}

/** The arithmetic task's cap (kept for callers that read it). */
export const DEFAULT_MAX_NEW_TOKENS = ARITHMETIC_TASK.maxNewTokens;

export async function rollout(sampler: Generator, tok: Tokenizer, questions: string[], o: RolloutOptions): Promise<Rollout[]> {
  const perBatch = o.questionsPerBatch ?? Math.max(1, Math.floor(512 / o.votes));
  const out: Rollout[] = [];
  for (let i = 0; i < questions.length; i += perBatch) {
    const chunk = questions.slice(i, i + perBatch);
    out.push(...(await rolloutBatch(sampler, tok, chunk, { ...o, seed: (o.seed + Math.imul(i + 1, 0x2545f491)) >>> 0 })));
    o.onBatch?.(out.length);
  }
  return out;
}

/** One sampling run over a batch of questions. */
export async function rolloutBatch(sampler: Generator, tok: Tokenizer, questions: string[], o: RolloutOptions): Promise<Rollout[]> {
  const task = o.task ?? ARITHMETIC_TASK;
  const prompts = questions.map((q) => task.encode(tok, q));
  const longest = Math.max(...prompts.map((p) => p.length));
  const maxNewTokens = Math.min(o.maxNewTokens ?? task.maxNewTokens, sampler.config.contextLength - longest);
  if (maxNewTokens < 1) throw new Error(`a question of ${longest} tokens leaves no room in the context length ${sampler.config.contextLength}`);
  const r = await sampler.generate(prompts, {
    samplesPerPrompt: o.votes,
    maxNewTokens,
    seed: o.seed,
    seeds: o.seeds,
    temperature: o.temperature,
    topP: o.topP,
    stopTokens: tok.stopIds,
    padToken: tok.padId,
    ...(o.adapter === undefined ? {} : { adapter: o.adapter }),
  });
  return questions.map((question, i) => {
    const samples = r.completions[i]!.map((c) => {
      // An upstream that gave no ids gave its text: answers are read from it (training refuses such samples at start-up).
      const full = !c.tokens.length && c.text !== undefined ? c.text : tok.decode(c.tokens);
      const at = stopAt(full, o.stop);
      if (at !== undefined) {
        const text = full.slice(0, at);
        return { ...c, text, cut: true, answer: task.answer(text) };
      }
      return { ...c, text: full, answer: c.stopped ? task.answer(full) : null };
    });
    const sampledBy = r.sampledBy?.[i];
    return {
      question,
      prompt: prompts[i]!,
      samples,
      vote: majorityVote(samples.map((s) => s.answer)),
      version: r.version,
      ...(sampledBy ? { sampledBy } : {}),
    };
  });
}

/** Where a completion's text is cut: before the first of the stop strings it holds (OpenAI's `stop`); undefined when it holds none. */
export function stopAt(text: string, stop: string[] | undefined): number | undefined {
  const found = (stop ?? []).map((x) => text.indexOf(x)).filter((k) => k >= 0);
  return found.length ? Math.min(...found) : undefined;
}

export interface Accuracy {
  /** Mean over samples of "answer is right". */
  pass_at_1: number;
  /** Share of questions whose majority answer is right. */
  maj_at_n: number;
  /** Share of samples with a parsable answer. */
  parsable: number;
  /** Mean completion length in tokens (end token included). */
  mean_len: number;
  /** Mean majority ratio. */
  majority_ratio: number;
  /** The served confidence (the majority ratio) against whether the majority answer is right: its mean, ECE and reliability curve. */
  calibration: Calibration;
}

/** Scores rollouts against true answers (the rollouts and answers are aligned). */
export function accuracy(rollouts: Rollout[], answers: string[]): Accuracy {
  let right = 0,
    parsable = 0,
    len = 0,
    samples = 0,
    maj = 0,
    ratio = 0;
  rollouts.forEach((r, i) => {
    const truth = normalizeAnswer(answers[i]);
    for (const s of r.samples) {
      samples++;
      len += s.tokens.length;
      if (s.answer !== null) parsable++;
      if (s.answer !== null && s.answer === truth) right++;
    }
    if (r.vote.label !== null && r.vote.label === truth) maj++;
    ratio += r.vote.ratio;
  });
  const n = rollouts.length || 1;
  const per = samples || 1;
  const judged = rollouts.map((r, i) => ({ confidence: r.vote.ratio, correct: r.vote.label !== null && r.vote.label === normalizeAnswer(answers[i]) }));
  return {
    pass_at_1: right / per,
    maj_at_n: maj / n,
    parsable: parsable / per,
    mean_len: len / per,
    majority_ratio: ratio / n,
    calibration: calibration(judged),
  };
}
