// The wire protocol (WebSocket /v1/ws and POST /v1/ask): JSON messages checked strictly.
// Every failure maps to one error code (loop/errors.ts); a bad message never closes the connection.
import { z } from 'zod';
import { checkAsk, type AskLimits } from '../loop/admission.ts';
import { ProtocolError, type ErrorCode } from '../loop/errors.ts';

export const PROTOCOL_VERSION = 1;

const ask = z.strictObject({
  type: z.literal('ask'),
  id: z.string().min(1).max(128),
  question: z.string(),
  votes: z.number().int().optional(),
  stream: z.boolean().optional(),
});
const ping = z.strictObject({ type: z.literal('ping'), id: z.string().max(128).optional() });

export type AskMessage = z.output<typeof ask>;
export type ClientMessage = AskMessage | z.output<typeof ping>;

/** The admission limits, and the size of a message (the question's limits are checked by checkAsk). */
export interface Limits extends AskLimits {
  maxMessageBytes: number;
}

/** A body that failed its schema, as our error: unknown_field for a field not known, else invalid_message naming the field. */
export function schemaError(e: z.ZodError, whole: string, id?: string): ProtocolError {
  const issue = e.issues[0]!;
  if (issue.code === 'unrecognized_keys') return new ProtocolError('unknown_field', `unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}`, id);
  return new ProtocolError('invalid_message', `${issue.path.join('.') || whole}: ${issue.message}`, id);
}

const HTTP_STATUS: Partial<Record<ErrorCode, number>> = {
  overloaded: 503,
  shutting_down: 503,
  internal: 500,
  payload_too_large: 413,
  unsupported_encoding: 415,
  unauthorized: 401,
  not_found: 404,
  too_many_connections: 429,
  too_many_in_flight: 429,
};

/** The HTTP status of an error code (400 unless listed), on every HTTP route. */
export const httpStatus = (code: ErrorCode): number => HTTP_STATUS[code] ?? 400;

/** Parses one client message; throws ProtocolError with the right code. */
export function parseClientMessage(raw: string, l: Limits): ClientMessage {
  if (Buffer.byteLength(raw) > l.maxMessageBytes) throw new ProtocolError('payload_too_large', `the message has ${Buffer.byteLength(raw)} bytes; at most ${l.maxMessageBytes} are accepted`);
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch (e) {
    throw new ProtocolError('bad_json', `not JSON: ${(e as Error).message}`);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new ProtocolError('invalid_message', 'a message must be a JSON object');
  const obj = v as Record<string, unknown>;
  const id = typeof obj.id === 'string' ? obj.id : undefined;
  if (typeof obj.type !== 'string') throw new ProtocolError('invalid_message', 'the message needs a string "type"', id);
  const schema = obj.type === 'ask' ? ask : obj.type === 'ping' ? ping : null;
  if (!schema) throw new ProtocolError('unknown_type', `unknown message type ${JSON.stringify(obj.type)}; the server knows "ask" and "ping"`, id);
  const r = schema.safeParse(v);
  if (!r.success) throw schemaError(r.error, 'message', id);
  const msg = r.data as ClientMessage;
  if (msg.type === 'ask') checkAsk(msg, l);
  return msg;
}

/** The limits as the hello message states them, so that a client can size its questions. */
export function helloLimits(l: Limits): Record<string, number> {
  return {
    max_message_bytes: l.maxMessageBytes,
    max_prompt_tokens: l.maxPromptTokens,
    max_new_tokens: l.maxNewTokens,
    context_length: l.contextLength,
    max_votes: l.maxVotes,
    default_votes: l.defaultVotes,
  };
}

export function errorMessage(code: ErrorCode, message: string, id?: string): Record<string, unknown> {
  return id === undefined ? { type: 'error', code, message } : { type: 'error', id, code, message };
}
