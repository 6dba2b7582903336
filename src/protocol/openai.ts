// The OpenAI-compatible routes' shapes (README, "OpenAI-compatible API"): the request bodies
// of POST /v1/completions and /v1/chat/completions as zod schemas, and what the server sends
// back (model list, completions, stream chunks, errors) as types with their constructors.
// The routes themselves (server/openai.ts) decide what a request means; this file says only
// what goes over the wire.
//
// Requests are checked strictly: an unknown field is refused (unknown_field). A known OpenAI
// parameter the server does not implement is in the schema, to be refused at any value but
// its neutral one by the route (unsupported_parameter), rather than silently ignored.
import { z } from 'zod';
import type { ErrorCode } from './errors.ts';
import type { Answer } from './messages.ts';

const stop = z.union([z.string().min(1), z.array(z.string().min(1)).min(1).max(4)]).nullable();
/** The sampling parameters both routes take. */
const sampling = {
  model: z.string().optional(),
  n: z.number().int().optional(),
  temperature: z.number().min(0).max(10).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
  max_tokens: z.number().int().min(1).nullable().optional(),
  stop: stop.optional(),
  // JSON numbers beyond 2^53 are not integers a client can name exactly: two would read the same.
  seed: z.number().int().min(Number.MIN_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER).nullable().optional(),
  stream: z.boolean().nullable().optional(),
  stream_options: z.strictObject({ include_usage: z.boolean().optional() }).nullable().optional(),
  user: z.string().optional(),
  // Accepted at their neutral values only (the route checks).
  presence_penalty: z.number().nullable().optional(),
  frequency_penalty: z.number().nullable().optional(),
  logit_bias: z.record(z.string(), z.number()).nullable().optional(),
};
export const completionBody = z.strictObject({
  ...sampling,
  prompt: z.union([z.string(), z.array(z.string()).length(1)]),
  logprobs: z.number().int().nullable().optional(),
  echo: z.boolean().nullable().optional(),
  best_of: z.number().int().nullable().optional(),
  suffix: z.string().nullable().optional(),
});
const textPart = z.strictObject({ type: z.literal('text'), text: z.string() });
const chatMessage = z.strictObject({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: z.union([z.string(), z.array(textPart)]).nullable(),
  name: z.string().optional(),
});
export const chatBody = z.strictObject({
  ...sampling,
  messages: z.array(chatMessage).min(1),
  max_completion_tokens: z.number().int().min(1).nullable().optional(),
  logprobs: z.boolean().nullable().optional(),
  top_logprobs: z.number().int().nullable().optional(),
  response_format: z.strictObject({ type: z.literal('text') }).optional(),
});
export type CompletionBody = z.output<typeof completionBody>;
export type ChatBody = z.output<typeof chatBody>;
export type ChatMessage = z.output<typeof chatMessage>;

// --- responses -------------------------------------------------------------------------

export interface OpenAiErrorBody {
  error: { message: string; type: 'authentication_error' | 'rate_limit_error' | 'server_error' | 'invalid_request_error'; code: ErrorCode; param: null };
}

/** OpenAI's error object, with our code: the type by status as OpenAI's API uses them. */
export function openAiError(code: ErrorCode, message: string, status: number): OpenAiErrorBody {
  const type = status === 401 ? 'authentication_error' : status === 429 ? 'rate_limit_error' : status >= 500 ? 'server_error' : 'invalid_request_error';
  return { error: { message, type, code, param: null } };
}

/** GET /v1/models: the one model served, with the version serving now. */
export interface ModelList {
  object: 'list';
  data: { id: string; object: 'model'; created: number; owned_by: 'ttrl-server'; ttrl: { model_version: number } }[];
}

export function modelList(id: string, created: number, modelVersion: number): ModelList {
  return { object: 'list', data: [{ id, object: 'model', created, owned_by: 'ttrl-server', ttrl: { model_version: modelVersion } }] };
}

/** The vote beside the choices: every field of the answer but prompt_tokens (that is usage.prompt_tokens). */
export type TtrlExtension = Omit<Answer, 'prompt_tokens'>;

export function ttrlExtension(a: Answer): TtrlExtension {
  return { answer: a.answer, votes: a.votes, confidence: a.confidence, model_version: a.model_version, latency_ms: a.latency_ms };
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** "stop": the sample ended (its stop token, or a stop string); "length": it ran out of new tokens. */
export type FinishReason = 'stop' | 'length';

export interface CompletionChoice {
  index: number;
  text: string;
  logprobs: null;
  finish_reason: FinishReason;
}
export interface ChatChoice {
  index: number;
  message: { role: 'assistant'; content: string };
  logprobs: null;
  finish_reason: FinishReason;
}

/** A whole response: one choice per sample, usage, and the vote. */
export interface CompletionResponse<C extends CompletionChoice | ChatChoice> {
  id: string;
  object: 'text_completion' | 'chat.completion';
  model: string;
  created: number;
  choices: C[];
  usage: Usage;
  ttrl: TtrlExtension;
}

/** A chat stream's choice chunk: the sample's whole text in one delta, then its finish reason in another. */
export interface ChatChunkChoice {
  index: number;
  delta: { role: 'assistant'; content: string } | Record<string, never>;
  logprobs: null;
  finish_reason: FinishReason | null;
}

/** One server-sent event of a stream; the last carries no choice, and the vote (usage too when asked for). */
export interface CompletionChunk {
  id: string;
  object: 'text_completion' | 'chat.completion.chunk';
  created: number;
  model: string;
  choices: (CompletionChoice | ChatChunkChoice)[];
  usage?: Usage;
  ttrl?: TtrlExtension;
}
