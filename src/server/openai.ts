// OpenAI-compatible routes: GET /v1/models, POST /v1/completions and /v1/chat/completions,
// so that the clients people already have (the openai SDKs, LangChain, curl scripts written
// for vLLM or llama.cpp) can ask. `n` is the vote count; the n samples are the choices, and
// the vote goes in an extension object beside them: "ttrl": {answer, votes, confidence,
// model_version} (in the final chunk when streaming). The question goes through the same
// answerer as WebSocket questions (same queue, log and updates), in the task's prompt format.
//
// Parameters are checked strictly: an unknown field is refused (unknown_field), and a known
// OpenAI parameter this server does not implement is accepted only at its neutral value
// (presence_penalty 0, logprobs null, ...), else refused (unsupported_parameter) rather
// than silently ignored. A request's own temperature, top_p, max_tokens or stop are honoured
// and its question is answered and logged, but not trained on (its samples are not the
// policy's); a seed alone keeps it trainable.
import { randomUUID } from 'node:crypto';
import express, { type Request, type Response, type Router } from 'express';
import type { z } from 'zod';
import { checkAsk } from '../loop/admission.ts';
import type { Answerer, AskRequest, SamplingOverrides } from '../loop/answerer.ts';
import type { Metrics } from '../loop/metrics.ts';
import { httpStatus, ProtocolError, schemaError } from '../protocol/errors.ts';
import type { Answer } from '../protocol/messages.ts';
import {
  chatBody,
  completionBody,
  modelList,
  openAiError,
  ttrlExtension,
  type ChatBody,
  type ChatChoice,
  type ChatMessage,
  type CompletionBody,
  type CompletionChoice,
  type CompletionChunk,
  type CompletionResponse,
  type FinishReason,
  type Usage,
} from '../protocol/openai.ts';
import type { Task } from '../tasks/task.ts';
import type { Rollout } from '../sampling/rollout.ts';
import type { ServerLimits } from './client-messages.ts';
import { seedOf } from '../util/rng.ts';
import { httpAsker, requestIdHeaders } from './http-asker.ts';
import { jsonBody } from './json-body.ts';

export const OPENAI_PATHS = ['/v1/models', '/v1/completions', '/v1/chat/completions'];

export interface OpenAiOptions {
  answerer: Answerer;
  limits: ServerLimits;
  metrics: Metrics;
  task: Task;
  /** The id clients name the model by (GET /v1/models). */
  modelId: string;
  /** When the served model was loaded (epoch s, /v1/models' `created`). */
  created: number;
  version: () => number;
  /** How the server samples: a request's value equal to the server's is no override (top_p's is 1). */
  serverSampling: { temperature: number };
}

/** OpenAI parameters this server does not implement, refused unless neutral. */
function neutral(b: Record<string, unknown>, n: number): void {
  const off = (name: string, ok: boolean, what: string) => {
    if (!ok) throw new ProtocolError('unsupported_parameter', `${name} is not supported (${what})`);
  };
  off('presence_penalty', !b.presence_penalty, 'only 0');
  off('frequency_penalty', !b.frequency_penalty, 'only 0');
  off('logit_bias', !b.logit_bias || Object.keys(b.logit_bias as object).length === 0, 'only {}');
  off('logprobs', !b.logprobs, "the samples' log-probs are not returned");
  off('top_logprobs', !b.top_logprobs, 'only 0');
  off('echo', !b.echo, 'only false');
  off('suffix', !b.suffix, 'only none');
  off('best_of', b.best_of === undefined || b.best_of === null || b.best_of === n, 'only equal to n: every sample is a vote and a choice');
}

/**
 * The request's own sampling, where it departs from the server's: a value equal to the
 * server's own (its temperature, top_p 1, its longest answer) is no override, whether sent or
 * not, so it leaves the question trainable.
 */
function overrides(
  b: CompletionBody | ChatBody,
  maxTokens: number | null | undefined,
  server: { temperature: number; maxNewTokens: number },
): SamplingOverrides {
  const s: SamplingOverrides = {};
  if (b.temperature !== undefined && b.temperature !== null && b.temperature !== server.temperature) s.temperature = b.temperature;
  if (b.top_p !== undefined && b.top_p !== null && b.top_p !== 1) s.topP = b.top_p;
  if (maxTokens !== undefined && maxTokens !== null && maxTokens !== server.maxNewTokens) s.maxNewTokens = maxTokens;
  if (b.stop) s.stop = typeof b.stop === 'string' ? [b.stop] : b.stop;
  // The sampler's dice take 32 bits; the whole seed is hashed into them, so seeds that differ
  // anywhere (by 2^32 too) draw different dice. Distinct seeds collide with odds 2^-32.
  if (b.seed !== undefined && b.seed !== null) s.seed = seedOf('openai-seed', String(b.seed));
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

export function openAiRouter(o: OpenAiOptions): Router {
  const router = express.Router();
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

  router.get('/models', (_req, res) => {
    res.json(modelList(o.modelId, o.created, o.version()));
  });

  /** Asks the answerer; what both routes share. */
  const ask = async (req: Request, res: Response, b: CompletionBody | ChatBody, question: string, maxTokens: number | null | undefined) => {
    if (b.model !== undefined && b.model !== o.modelId)
      throw new ProtocolError('not_found', `the model ${JSON.stringify(b.model)} is not served here; GET /v1/models lists ${JSON.stringify(o.modelId)}`);
    const n = b.n ?? o.limits.defaultVotes;
    neutral(b as Record<string, unknown>, n);
    const s = overrides(b, maxTokens, { temperature: o.serverSampling.temperature, maxNewTokens: o.limits.maxNewTokens });
    const { votes } = checkAsk({ question, votes: n, maxNewTokens: s.maxNewTokens ?? o.limits.maxNewTokens }, o.limits);
    o.metrics.questions.inc({ transport: 'openai' });
    let rollout: Rollout | undefined;
    const request: AskRequest = { ...httpAsker(req, res), question, votes, sampling: s, clientId: null, connection: 'openai', onSamples: (r) => (rollout = r) };
    const pending = o.answerer.ask(request);
    requestIdHeaders(res, request);
    const answer = await pending;
    return { answer, rollout: rollout! };
  };

  const json = jsonBody(o.limits.maxMessageBytes);
  router.post('/completions', json, async (req, res) => {
    try {
      const b = parse(completionBody, req.body);
      const question = typeof b.prompt === 'string' ? b.prompt : b.prompt[0]!;
      const { answer, rollout } = await ask(req, res, b, question, b.max_tokens);
      const choices = rollout.samples.map((s, index): CompletionChoice => ({ index, text: s.text, logprobs: null, finish_reason: finishReason(s) }));
      send(res, b, { id: `cmpl-${randomUUID()}`, object: 'text_completion', model: o.modelId }, choices, answer, rollout, 'completion');
    } catch (e) {
      fail(res, e);
    }
  });
  router.post('/chat/completions', json, async (req, res) => {
    try {
      const b = parse(chatBody, req.body);
      const question = chatQuestion(b.messages, o.task);
      const { answer, rollout } = await ask(req, res, b, question, b.max_completion_tokens ?? b.max_tokens);
      const choices = rollout.samples.map((s, index): ChatChoice => ({
        index,
        message: { role: 'assistant', content: s.text },
        logprobs: null,
        finish_reason: finishReason(s),
      }));
      send(res, b, { id: `chatcmpl-${randomUUID()}`, object: 'chat.completion', model: o.modelId }, choices, answer, rollout, 'chat');
    } catch (e) {
      fail(res, e);
    }
  });
  return router;
}

const finishReason = (s: { stopped: boolean; cut?: boolean }): FinishReason => (s.stopped || s.cut ? 'stop' : 'length');

/** The response, whole or (stream: true) as server-sent events in OpenAI's chunk format, ending with [DONE]. */
function send<C extends CompletionChoice | ChatChoice>(
  res: Response,
  b: CompletionBody | ChatBody,
  head: { id: string; object: CompletionResponse<C>['object']; model: string },
  choices: C[],
  a: Answer,
  r: Rollout,
  kind: 'completion' | 'chat',
): void {
  // The client went away while its question was sampled: nothing to write to.
  if (res.destroyed) return;
  const created = Math.floor(Date.now() / 1000);
  const completionTokens = r.samples.reduce((t, s) => t + s.tokens.length, 0);
  const usage: Usage = { prompt_tokens: a.prompt_tokens, completion_tokens: completionTokens, total_tokens: a.prompt_tokens + completionTokens };
  const ttrl = ttrlExtension(a);
  if (!b.stream) {
    const whole: CompletionResponse<C> = { ...head, created, choices, usage, ttrl };
    res.json(whole);
    return;
  }
  // The samples exist only when the batch's run ends (one ONNX graph samples them all), so
  // each choice comes as one chunk, not token by token.
  const object: CompletionChunk['object'] = kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
  res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-cache', Connection: 'keep-alive' });
  const event = (data: CompletionChunk) => res.write(`data: ${JSON.stringify(data)}\n\n`);
  const base = { id: head.id, object, created, model: head.model };
  r.samples.forEach((s, index) => {
    if (kind === 'chat') {
      event({ ...base, choices: [{ index, delta: { role: 'assistant', content: s.text }, logprobs: null, finish_reason: null }] });
      event({ ...base, choices: [{ index, delta: {}, logprobs: null, finish_reason: finishReason(s) }] });
    } else event({ ...base, choices: [{ index, text: s.text, logprobs: null, finish_reason: finishReason(s) }] });
  });
  event({ ...base, choices: [], ...(b.stream_options?.include_usage ? { usage } : {}), ttrl });
  res.end('data: [DONE]\n\n');
}
