// The errors a question can end in, by code: raised where they happen (the answerer's queue,
// the admission checks, version changes) and sent by the transports as they are (the
// WebSocket error message, HTTP statuses). Part of the wire protocol, so the typed client
// reads its codes from here too; nothing here is Node-only.
import { z } from 'zod';

export const ERROR_CODES = {
  bad_json: 'the message is not valid JSON',
  payload_too_large: 'the message is larger than the server accepts',
  invalid_message: 'a field is missing or has the wrong type',
  unknown_type: 'the message type is not one the server knows',
  unknown_field: 'the message has a field the server does not know',
  question_too_long: 'the question, as the model reads it (chat template included), has more tokens than the server accepts',
  context_length_exceeded: "the prompt and the longest answer the task allows do not fit in the model's context",
  unreadable_question: "the model's tokenizer cannot encode the question",
  bad_votes: 'votes is out of range',
  duplicate_id: 'a question with this id is still being answered on this connection',
  overloaded: 'the queue is full; retry later',
  too_many_in_flight: 'this connection already has as many questions in flight as the server allows; wait for an answer',
  too_many_connections: 'the server, or this address, has as many connections open as it allows',
  shutting_down: 'the server is shutting down',
  unsupported_encoding: "the HTTP body's Content-Encoding or charset is not one the server reads",
  bad_encoding: 'the HTTP body does not decode as its Content-Encoding says',
  internal: 'the server failed to answer this question',
  store_unavailable: 'the experience store (the database) cannot be written or read now; the question is not answered, retry later',
  upstream_unavailable: 'no upstream inference server (--upstream) could sample the question now; it is not answered, retry later',
  unauthorized: 'a missing or wrong API key (/v1 routes) or admin token (/admin routes)',
  not_found: 'no such resource',
  unsupported_parameter: 'an OpenAI request parameter the server does not support, or not at this value',
} as const;
export type ErrorCode = keyof typeof ERROR_CODES;

/** An error code on the wire: one of ERROR_CODES, nothing else. */
export const errorCode = z.enum(Object.keys(ERROR_CODES) as ErrorCode[]);

export class ProtocolError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly id?: string,
  ) {
    super(message);
  }
}

const HTTP_STATUS: Partial<Record<ErrorCode, number>> = {
  overloaded: 503,
  store_unavailable: 503,
  upstream_unavailable: 503,
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

/** A body that failed its schema, as our error: unknown_field for a field not known, else invalid_message naming the field. */
export function schemaError(e: z.ZodError, whole: string, id?: string): ProtocolError {
  const issue = e.issues[0]!;
  if (issue.code === 'unrecognized_keys')
    return new ProtocolError('unknown_field', `unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}`, id);
  return new ProtocolError('invalid_message', `${issue.path.join('.') || whole}: ${issue.message}`, id);
}
