// OpenAI-compatible routes: GET /v1/models, POST /v1/completions and /v1/chat/completions,
// so that the clients people already have (the openai SDKs, LangChain, curl scripts written
// for vLLM or llama.cpp) can ask. `n` is the vote count; the n samples are the choices, and
// the vote goes in an extension object beside them: "ttrl": {answer, votes, confidence,
// model_version} (in the final chunk when streaming). The question goes through the same
// answerer as WebSocket questions (same queue, log and updates), in the task's prompt format.
//
// A completion whose prompt is token ids is a raw completion, as vLLM takes it: the ids as
// given, n samples, no vote, nothing logged or trained on (another front-end sampling on this
// server logs them). With vLLM's /v1/load_lora_adapter and /unload_lora_adapter, `model` may
// name a LoRA adapter loaded at run time instead of the served model.
//
// Parameters are checked strictly: an unknown field is refused (unknown_field), and a known
// OpenAI parameter this server does not implement is accepted only at its neutral value
// (presence_penalty 0, top_logprobs 0, ...), else refused (unsupported_parameter) rather
// than silently ignored. A request's own temperature, top_p, max_tokens or stop are honoured
// and its question is answered and logged, but not trained on (its samples are not the
// policy's); a seed alone keeps it trainable.
import { randomUUID } from 'node:crypto';
import express, { type Request, type Response, type Router } from 'express';
import type { z } from 'zod';
import { checkAsk } from '../loop/admission.ts';
import type { Answerer, AskRequest, RawCompletionRequest, SamplingOverrides } from '../loop/answerer.ts';
import type { Metrics } from '../loop/metrics.ts';
import { httpStatus, ProtocolError, schemaError } from '../protocol/errors.ts';
import {
  chatBody,
  completionBody,
  loadLoraAdapterBody,
  modelList,
  openAiError,
  ttrlExtension,
  unloadLoraAdapterBody,
  type ChatBody,
  type ChatChoice,
  type ChatMessage,
  type CompletionBody,
  type CompletionChoice,
  type CompletionChunk,
  type CompletionResponse,
  type FinishReason,
  type LoraAdapterReply,
  type Usage,
} from '../protocol/openai.ts';
import type { Task } from '../tasks/task.ts';
import type { Tokenizer } from '../tokenizers/tokenizer.ts';
import { stopAt, type Rollout } from '../sampling/rollout.ts';
import type { ServerLimits } from './client-messages.ts';
import { seedOf } from '../util/rng.ts';
import { httpAsker, requestIdHeaders } from './http-asker.ts';
import { jsonBody } from './json-body.ts';
import type { LoadedAdapters } from './lora-adapters.ts';
import { checkRawCompletion } from './raw-completion.ts';
import { chatLogprobs, completionLogprobs, reported, reportedLength, type DrawnTokens, type TokenReport } from './openai-tokens.ts';

/** vLLM's routes for adapters loaded at run time (an admin's, when the server has an admin token). */
export const ADAPTER_PATHS = ['/v1/load_lora_adapter', '/v1/unload_lora_adapter'];
export const OPENAI_PATHS = ['/v1/models', '/v1/completions', '/v1/chat/completions', ...ADAPTER_PATHS];

export interface OpenAiOptions {
  answerer: Answerer;
  limits: ServerLimits;
  metrics: Metrics;
  task: Task;
  /** The model's tokenizer: a raw prompt's ids are checked against it, and sampled tokens read with it. */
  tokenizer: Tokenizer;
  /** The id clients name the model by (GET /v1/models). */
  modelId: string;
  /** When the served model was loaded (epoch s, /v1/models' `created`). */
  created: number;
  version: () => number;
  /** How the server samples: a request's value equal to the server's is no override (top_p's is 1). */
  serverSampling: { temperature: number };
  /** The operator's own --max-prompt-tokens, for raw prompts (unset: they may fill the context but one new token). */
  maxPromptTokens?: number;
  /** LoRA adapters loaded at run time, which `model` may name. */
  adapters: LoadedAdapters;
}

/** OpenAI parameters this server does not implement, refused unless neutral. */
function neutral(b: Record<string, unknown>, n: number): void {
  const off = (name: string, ok: boolean, what: string) => {
    if (!ok) throw new ProtocolError('unsupported_parameter', `${name} is not supported (${what})`);
  };
  off('presence_penalty', !b.presence_penalty, 'only 0');
  off('frequency_penalty', !b.frequency_penalty, 'only 0');
  off('logit_bias', !b.logit_bias || Object.keys(b.logit_bias as object).length === 0, 'only {}');
  off('echo', !b.echo, 'only false');
  off('suffix', !b.suffix, 'only none');
  off('best_of', b.best_of === undefined || b.best_of === null || b.best_of === n, 'only equal to n: every sample is a vote and a choice');
}

/**
 * What the client asks to see of each sample's tokens. Only the sampled token's log-prob is
 * known (the sampling graph keeps no alternatives), so a completion's `logprobs` is taken at 0
 * and a chat's `top_logprobs` at 0 only.
 */
function tokenReport(b: CompletionBody | ChatBody, kind: 'completion' | 'chat'): TokenReport {
  const only = (name: string, what: string) =>
    new ProtocolError('unsupported_parameter', `${name} is supported at ${what} only: the server keeps the sampled token's log-prob, not the top alternatives`);
  if (kind === 'chat') {
    const c = b as ChatBody;
    if (c.top_logprobs) throw only('top_logprobs', '0');
    return { logprobs: !!c.logprobs, tokenIds: !!b.return_token_ids };
  }
  const logprobs = (b as CompletionBody).logprobs;
  if (logprobs) throw only('logprobs', '0 (the sampled token)');
  return { logprobs: logprobs === 0, tokenIds: !!b.return_token_ids };
}

/**
 * The sampler's dice for an OpenAI seed: a seed in [0, 2^32) is the dice itself, so that a
 * front-end sampling here gets what it would get sampling the same prompt with that seed in
 * process. Any other seed is hashed whole into 32 bits, so that seeds differing anywhere (by
 * 2^32 too) draw different dice; distinct seeds collide with odds 2^-32.
 */
export const diceOf = (seed: number): number => (seed >= 0 && seed < 2 ** 32 ? seed : seedOf('openai-seed', String(seed)));

/**
 * The request's own sampling, where it departs from the server's: a value equal to the
 * server's own (its temperature, top_p 1, its longest answer) is no override, whether sent or
 * not, so it leaves the question trainable.
 */
function overrides(
  b: CompletionBody | ChatBody,
  maxTokens: number | null | undefined,
  server: { temperature: number; maxNewTokens: number },
  adapter: string | undefined,
): SamplingOverrides {
  const s: SamplingOverrides = {};
  if (b.temperature !== undefined && b.temperature !== null && b.temperature !== server.temperature) s.temperature = b.temperature;
  if (b.top_p !== undefined && b.top_p !== null && b.top_p !== 1) s.topP = b.top_p;
  if (maxTokens !== undefined && maxTokens !== null && maxTokens !== server.maxNewTokens) s.maxNewTokens = maxTokens;
  if (b.stop) s.stop = typeof b.stop === 'string' ? [b.stop] : b.stop;
  if (b.seed !== undefined && b.seed !== null) s.seed = diceOf(b.seed);
  if (adapter !== undefined) s.adapter = adapter;
  return s;
}

const text = (c: string | { text: string }[] | null) => (c === null ? '' : typeof c === 'string' ? c : c.map((p) => p.text).join(''));

/**
 * The question of a chat: its one user message. TTRL votes on one question in the task's
 * prompt format, so a conversation is refused, and a system message is accepted only when it
 * is the one the task already sends (--system): another would be text the model never reads.
 */
function chatQuestion(messages: ChatMessage[], task: Task): string {
  const user = messages.filter((m) => m.role === 'user');
  const others = messages.filter((m) => m.role !== 'user' && m.role !== 'system' && m.role !== 'developer');
  if (user.length !== 1 || others.length || messages.at(-1)!.role !== 'user')
    throw new ProtocolError(
      'unsupported_parameter',
      'messages must be one user message (after an optional system message): the server votes on single questions, not conversations',
    );
  for (const m of messages.filter((x) => x.role === 'system' || x.role === 'developer')) {
    const got = text(m.content);
    if (got !== task.parts.system)
      throw new ProtocolError(
        'unsupported_parameter',
        `the system message is the deployment's (${task.parts.system ? JSON.stringify(task.parts.system) : 'none'}: --system); omit it, or send exactly that`,
      );
  }
  return text(user[0]!.content);
}

/** A completion's one prompt: a question (a string) or token ids; a list of several is refused. */
function onePrompt(p: CompletionBody['prompt']): string | number[] {
  if (typeof p === 'string' || typeof p[0] === 'number') return p as string | number[];
  if (p.length > 1)
    throw new ProtocolError('unsupported_parameter', `prompt holds ${p.length} prompts; send one per request (several requests are batched together)`);
  return p[0] as string | number[];
}

/** A sample as a choice reports it: its text (cut at a stop string), why it ended, and its tokens (through that cut). */
interface ReportedSample extends DrawnTokens {
  text: string;
  finish: FinishReason;
}

export function openAiRouter(o: OpenAiOptions): Router {
  const router = express.Router();
  const tok = o.tokenizer;
  const fail = (res: Response, e: unknown, status?: number) => {
    const pe = e instanceof ProtocolError ? e : new ProtocolError('internal', (e as Error).message ?? String(e));
    const st = status ?? httpStatus(pe.code);
    if (pe.code !== 'overloaded') o.metrics.rejected.inc({ code: pe.code });
    // A client that left gets nothing; a stream already begun is cut off instead.
    if (res.headersSent || res.destroyed) return void res.socket?.destroy();
    res.status(st).json(openAiError(pe.code, pe.message, st));
  };
  const parse = <T>(schema: z.ZodType<T>, body: unknown): T => {
    const r = schema.safeParse(body);
    if (r.success) return r.data;
    throw schemaError(r.error, 'body');
  };
  /** The adapter a request's `model` names (undefined: the served model); a name neither is not served. */
  const adapterOf = (model: string | undefined): string | undefined => {
    if (model === undefined || model === o.modelId) return undefined;
    if (o.adapters.has(model)) return model;
    const served = [o.modelId, ...o.adapters.list.map((a) => a.name)].map((id) => JSON.stringify(id)).join(', ');
    throw new ProtocolError('not_found', `the model ${JSON.stringify(model)} is not served here; GET /v1/models lists ${served}`);
  };
  /** A sample as reported: the text cut at a stop string (`cut`), the tokens through it. */
  const reportOf = (d: DrawnTokens & { text: string; stopped: boolean; cut?: boolean }, stop: string[] | undefined): ReportedSample => ({
    ...reported(d, reportedLength(tok, d.tokens, stop, d.cut)),
    text: d.text,
    finish: d.stopped || d.cut ? 'stop' : 'length',
  });
  const completionChoice = (index: number, s: ReportedSample, report: TokenReport, prompt: number[]): CompletionChoice => ({
    index,
    text: s.text,
    logprobs: report.logprobs ? completionLogprobs(tok, s) : null,
    finish_reason: s.finish,
    ...(report.tokenIds ? { token_ids: s.tokens, prompt_token_ids: prompt } : {}),
  });
  const stopsOf = (b: CompletionBody | ChatBody) => (b.stop ? (typeof b.stop === 'string' ? [b.stop] : b.stop) : undefined);

  router.get('/models', (_req, res) => {
    res.json(modelList(o.modelId, o.created, o.version(), o.adapters.list));
  });

  /** Asks the answerer; what both routes share. */
  const ask = async (req: Request, res: Response, b: CompletionBody | ChatBody, question: string, maxTokens: number | null | undefined) => {
    const adapter = adapterOf(b.model);
    const n = b.n ?? o.limits.defaultVotes;
    neutral(b as Record<string, unknown>, n);
    if (b.stop_token_ids?.length)
      throw new ProtocolError(
        'unsupported_parameter',
        "stop_token_ids is taken with a prompt of token ids (a raw completion); a question's samples end at the model's own stop tokens",
      );
    const s = overrides(b, maxTokens, { temperature: o.serverSampling.temperature, maxNewTokens: o.limits.maxNewTokens }, adapter);
    const { votes } = checkAsk({ question, votes: n, maxNewTokens: s.maxNewTokens ?? o.limits.maxNewTokens }, o.limits);
    o.metrics.questions.inc({ transport: 'openai' });
    let rollout: Rollout | undefined;
    const request: AskRequest = { ...httpAsker(req, res), question, votes, sampling: s, clientId: null, connection: 'openai', onSamples: (r) => (rollout = r) };
    const pending = o.answerer.ask(request);
    requestIdHeaders(res, request);
    const answer = await pending;
    return { answer, rollout: rollout! };
  };

  /** A prompt of token ids: sampled as given, not voted, logged or trained on. */
  const rawCompletion = async (req: Request, res: Response, b: CompletionBody, prompt: number[], report: TokenReport) => {
    const adapter = adapterOf(b.model);
    neutral(b as Record<string, unknown>, b.n ?? 1);
    const limits = {
      ...o.limits,
      vocabSize: tok.vocabSize,
      maxPromptTokens: o.maxPromptTokens,
      stopIds: tok.stopIds,
      temperature: o.serverSampling.temperature,
    };
    const { samples, sampling } = checkRawCompletion(b, prompt, limits, diceOf, adapter);
    const { clientRequestId, lane, signal } = httpAsker(req, res);
    const request: RawCompletionRequest = { clientRequestId, lane, signal, clientId: null, connection: 'openai', prompt, samples, sampling };
    const pending = o.answerer.complete(request);
    requestIdHeaders(res, request);
    const r = await pending;
    const stop = stopsOf(b);
    const choices = r.completions.map((c, index) => {
      const full = tok.decode(c.tokens);
      const at = stopAt(full, stop);
      const s = reportOf({ ...c, text: at === undefined ? full : full.slice(0, at), cut: at !== undefined }, stop);
      return completionChoice(index, s, report, prompt);
    });
    const usage = usageOf(prompt.length, r.completions);
    send(res, b, { id: `cmpl-${randomUUID()}`, object: 'text_completion', model: b.model ?? o.modelId, created: now(), choices, usage }, 'completion');
  };

  const json = jsonBody(o.limits.maxMessageBytes);
  router.post('/completions', json, async (req, res) => {
    try {
      const b = parse(completionBody, req.body);
      const prompt = onePrompt(b.prompt);
      const report = tokenReport(b, 'completion');
      if (typeof prompt !== 'string') return await rawCompletion(req, res, b, prompt, report);
      const { answer, rollout } = await ask(req, res, b, prompt, b.max_tokens);
      const stop = stopsOf(b);
      const choices = rollout.samples.map((s, index) => completionChoice(index, reportOf(s, stop), report, rollout.prompt));
      const whole: CompletionResponse<CompletionChoice> = {
        id: `cmpl-${randomUUID()}`,
        object: 'text_completion',
        model: b.model ?? o.modelId,
        created: now(),
        choices,
        usage: usageOf(answer.prompt_tokens, rollout.samples),
        ttrl: ttrlExtension(answer),
      };
      send(res, b, whole, 'completion');
    } catch (e) {
      fail(res, e);
    }
  });
  router.post('/chat/completions', json, async (req, res) => {
    try {
      const b = parse(chatBody, req.body);
      const report = tokenReport(b, 'chat');
      const question = chatQuestion(b.messages, o.task);
      const { answer, rollout } = await ask(req, res, b, question, b.max_completion_tokens ?? b.max_tokens);
      const stop = stopsOf(b);
      const choices = rollout.samples.map((sample, index): ChatChoice => {
        const s = reportOf(sample, stop);
        return {
          index,
          message: { role: 'assistant', content: s.text },
          logprobs: report.logprobs ? chatLogprobs(tok, s) : null,
          finish_reason: s.finish,
          ...(report.tokenIds ? { token_ids: s.tokens } : {}),
        };
      });
      const whole: CompletionResponse<ChatChoice> = {
        id: `chatcmpl-${randomUUID()}`,
        object: 'chat.completion',
        model: b.model ?? o.modelId,
        created: now(),
        choices,
        usage: usageOf(answer.prompt_tokens, rollout.samples),
        ttrl: ttrlExtension(answer),
        ...(report.tokenIds ? { prompt_token_ids: rollout.prompt } : {}),
      };
      send(res, b, whole, 'chat');
    } catch (e) {
      fail(res, e);
    }
  });

  router.post('/load_lora_adapter', json, async (req, res) => {
    try {
      const b = parse(loadLoraAdapterBody, req.body);
      if (b.load_inplace)
        throw new ProtocolError(
          'unsupported_parameter',
          'load_inplace is supported at false only: a name is never reloaded in place; unload it, then load it again',
        );
      const a = await o.adapters.load(b.lora_name, b.lora_path);
      res.json({ object: 'lora_adapter', lora_name: a.name, lora_path: a.path, loaded: true } satisfies LoraAdapterReply);
    } catch (e) {
      fail(res, e);
    }
  });
  router.post('/unload_lora_adapter', json, async (req, res) => {
    try {
      const b = parse(unloadLoraAdapterBody, req.body);
      const a = await o.adapters.unload(b.lora_name);
      res.json({ object: 'lora_adapter', lora_name: a.name, lora_path: a.path, loaded: false } satisfies LoraAdapterReply);
    } catch (e) {
      fail(res, e);
    }
  });
  return router;
}

const now = () => Math.floor(Date.now() / 1000);

/** Usage counts every token drawn (a sample cut at a stop string ran on past it). */
function usageOf(promptTokens: number, samples: { tokens: number[] }[]): Usage {
  const completionTokens = samples.reduce((t, s) => t + s.tokens.length, 0);
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
}

/** The response, whole or (stream: true) as server-sent events in OpenAI's chunk format, ending with [DONE]. */
function send<C extends CompletionChoice | ChatChoice>(
  res: Response,
  b: CompletionBody | ChatBody,
  whole: CompletionResponse<C>,
  kind: 'completion' | 'chat',
): void {
  // The client went away while its question was sampled: nothing to write to.
  if (res.destroyed) return;
  if (!b.stream) {
    res.json(whole);
    return;
  }
  // The samples exist only when the batch's run ends (one ONNX graph samples them all), so
  // each choice comes as one chunk, not token by token.
  const object: CompletionChunk['object'] = kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
  res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-cache', Connection: 'keep-alive' });
  const event = (data: CompletionChunk) => res.write(`data: ${JSON.stringify(data)}\n\n`);
  const base = { id: whole.id, object, created: whole.created, model: whole.model };
  whole.choices.forEach((choice, index) => {
    if (kind === 'completion') return event({ ...base, choices: [choice as CompletionChoice] });
    const c = choice as ChatChoice;
    // vLLM sends the prompt's ids once, in the first chunk.
    const prompt = index === 0 && whole.prompt_token_ids ? { prompt_token_ids: whole.prompt_token_ids } : {};
    const ids = c.token_ids ? { token_ids: c.token_ids } : {};
    event({
      ...base,
      ...prompt,
      choices: [{ index: c.index, delta: { role: 'assistant', content: c.message.content }, logprobs: c.logprobs, finish_reason: null, ...ids }],
    });
    event({ ...base, choices: [{ index: c.index, delta: {}, logprobs: null, finish_reason: c.finish_reason }] });
  });
  event({ ...base, choices: [], ...(b.stream_options?.include_usage ? { usage: whole.usage } : {}), ...(whole.ttrl ? { ttrl: whole.ttrl } : {}) });
  res.end('data: [DONE]\n\n');
}
