// The OpenAI-compatible routes' shapes (README, "OpenAI-compatible API"): the request bodies
// of POST /v1/completions and /v1/chat/completions (and vLLM's /v1/load_lora_adapter and
// /v1/unload_lora_adapter) as zod schemas, and what the server sends back (model list,
// completions, log-probs, stream chunks, errors) as types with their constructors. Where
// OpenAI has no word for something (a prompt of token ids, token ids back, stop token ids,
// adapters), vLLM's spelling is used, so that clients written for vLLM work unchanged.
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
/** Token ids as sent; the route checks that each is an integer of the model's vocabulary (and says which is not). */
const tokenIds = z.array(z.number()).min(1);
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
  // vLLM's extensions: ids that also end a sample (raw completions), and the token ids back.
  stop_token_ids: z.array(z.number()).nullable().optional(),
  return_token_ids: z.boolean().nullable().optional(),
  // Accepted at their neutral values only (the route checks).
  presence_penalty: z.number().nullable().optional(),
  frequency_penalty: z.number().nullable().optional(),
  logit_bias: z.record(z.string(), z.number()).nullable().optional(),
};
export const completionBody = z.strictObject({
  ...sampling,
  // A question (a string), or a raw prompt of token ids (vLLM's); a list of either is
  // accepted with one element (the route refuses several).
  prompt: z.union([z.string(), z.array(z.string()).min(1), tokenIds, z.array(tokenIds).min(1)]),
  logprobs: z.number().int().min(0).nullable().optional(),
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
  top_logprobs: z.number().int().min(0).nullable().optional(),
  response_format: z.strictObject({ type: z.literal('text') }).optional(),
});
export type CompletionBody = z.output<typeof completionBody>;
export type ChatBody = z.output<typeof chatBody>;
export type ChatMessage = z.output<typeof chatMessage>;

/** vLLM's POST /v1/load_lora_adapter: a PEFT adapter directory, served under a name (load_inplace only false: a name is never reloaded in place). */
export const loadLoraAdapterBody = z.strictObject({
  lora_name: z.string(),
  lora_path: z.string().min(1),
  load_inplace: z.boolean().nullable().optional(),
});
/** vLLM's POST /v1/unload_lora_adapter. */
export const unloadLoraAdapterBody = z.strictObject({ lora_name: z.string() });

// --- responses -------------------------------------------------------------------------

export interface OpenAiErrorBody {
  error: { message: string; type: 'authentication_error' | 'rate_limit_error' | 'server_error' | 'invalid_request_error'; code: ErrorCode; param: null };
}

/** OpenAI's error object, with our code: the type by status as OpenAI's API uses them. */
export function openAiError(code: ErrorCode, message: string, status: number): OpenAiErrorBody {
  const type = status === 401 ? 'authentication_error' : status === 429 ? 'rate_limit_error' : status >= 500 ? 'server_error' : 'invalid_request_error';
  return { error: { message, type, code, param: null } };
}

/** A model card: the served model (with the version serving now), or a loaded adapter (vLLM's: its path as `root`, the served model as `parent`). */
export interface ModelCard {
  id: string;
  object: 'model';
  created: number;
  owned_by: 'ttrl-server';
  ttrl?: { model_version: number };
  root?: string;
  parent?: string;
}

/** GET /v1/models: the model served, then the adapters loaded (as vLLM lists them). */
export interface ModelList {
  object: 'list';
  data: ModelCard[];
}

export function modelList(id: string, created: number, modelVersion: number, adapters: { name: string; path: string; created: number }[] = []): ModelList {
  return {
    object: 'list',
    data: [
      { id, object: 'model', created, owned_by: 'ttrl-server', ttrl: { model_version: modelVersion } },
      ...adapters.map((a): ModelCard => ({ id: a.name, object: 'model', created: a.created, owned_by: 'ttrl-server', root: a.path, parent: id })),
    ],
  };
}

/** What /v1/load_lora_adapter and /v1/unload_lora_adapter answer (vLLM answers in plain text; JSON here, as every reply is). */
export interface LoraAdapterReply {
  object: 'lora_adapter';
  lora_name: string;
  lora_path: string;
  loaded: boolean;
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

/**
 * A completion's log-probs (`logprobs: 0`), OpenAI's legacy shape: per sampled token its text
 * (decoded alone), its log-prob, the same as the only "top" entry (no alternatives are kept),
 * and where its text starts in the choice's text.
 */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[];
  text_offset: number[];
}

/** A chat token's log-prob (`logprobs: true`): its text, log-prob and UTF-8 bytes; no alternatives. */
export interface ChatTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: [];
}

export interface ChatLogprobs {
  content: ChatTokenLogprob[];
}

/** vLLM's `return_token_ids`: the sampled ids (the stop token included when one ended the sample), and the prompt's. */
export interface TokenIds {
  token_ids?: number[];
  prompt_token_ids?: number[];
}

export interface CompletionChoice extends TokenIds {
  index: number;
  text: string;
  logprobs: CompletionLogprobs | null;
  finish_reason: FinishReason;
}
/** A chat choice; vLLM puts the prompt's ids on the response, not on each choice. */
export interface ChatChoice extends Pick<TokenIds, 'token_ids'> {
  index: number;
  message: { role: 'assistant'; content: string };
  logprobs: ChatLogprobs | null;
  finish_reason: FinishReason;
}

/** A whole response: one choice per sample, usage, and the vote (a question's; a raw completion has none). */
export interface CompletionResponse<C extends CompletionChoice | ChatChoice> {
  id: string;
  object: 'text_completion' | 'chat.completion';
  model: string;
  created: number;
  choices: C[];
  usage: Usage;
  ttrl?: TtrlExtension;
  /** Chat with `return_token_ids`. */
  prompt_token_ids?: number[];
}

/** A chat stream's choice chunk: the sample's whole text in one delta, then its finish reason in another. */
export interface ChatChunkChoice extends Pick<TokenIds, 'token_ids'> {
  index: number;
  delta: { role: 'assistant'; content: string } | Record<string, never>;
  logprobs: ChatLogprobs | null;
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
  /** Chat with `return_token_ids`: in the first chunk. */
  prompt_token_ids?: number[];
}
