// The wire protocol (WebSocket /v1/ws and POST /v1/ask): JSON messages checked strictly.
// Every failure maps to one error code; a bad message never closes the connection.
import { z } from 'zod';

export const PROTOCOL_VERSION = 1;

export const ERROR_CODES = {
  bad_json: 'the message is not valid JSON',
  payload_too_large: 'the message is larger than the server accepts',
  invalid_message: 'a field is missing or has the wrong type',
  unknown_type: 'the message type is not one the server knows',
  unknown_field: 'the message has a field the server does not know',
  question_too_long: 'the question is longer than the server accepts',
  unreadable_question: 'the question has characters the model cannot read',
  bad_votes: 'votes is out of range',
  duplicate_id: 'a question with this id is still being answered on this connection',
  overloaded: 'the queue is full; retry later',
  shutting_down: 'the server is shutting down',
  internal: 'the server failed to answer this question',
  unauthorized: 'admin routes need the admin token',
  not_found: 'no such resource',
} as const;
export type ErrorCode = keyof typeof ERROR_CODES;

export class ProtocolError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly id?: string,
  ) {
    super(message);
  }
}

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

export interface Limits {
  maxMessageBytes: number;
  maxQuestionLength: number;
  maxVotes: number;
  defaultVotes: number;
  canRead: (text: string) => boolean;
}

/** The body of an ask, checked against the limits (shared by WebSocket and HTTP). */
export function checkAsk(m: { id?: string; question: string; votes?: number }, l: Limits): { votes: number } {
  if (!m.question) throw new ProtocolError('invalid_message', 'question must be a non-empty string', m.id);
  if (m.question.length > l.maxQuestionLength)
    throw new ProtocolError('question_too_long', `the question has ${m.question.length} characters; at most ${l.maxQuestionLength} are accepted`, m.id);
  if (!l.canRead(m.question)) throw new ProtocolError('unreadable_question', `the question has characters the model cannot read: ${JSON.stringify(m.question)}`, m.id);
  const votes = m.votes ?? l.defaultVotes;
  if (votes < 1 || votes > l.maxVotes) throw new ProtocolError('bad_votes', `votes must be between 1 and ${l.maxVotes}, got ${votes}`, m.id);
  return { votes };
}

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
  if (!r.success) {
    const issue = r.error.issues[0]!;
    if (issue.code === 'unrecognized_keys') throw new ProtocolError('unknown_field', `unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}`, id);
    const path = issue.path.join('.') || 'message';
    throw new ProtocolError('invalid_message', `${path}: ${issue.message}`, id);
  }
  const msg = r.data as ClientMessage;
  if (msg.type === 'ask') checkAsk(msg, l);
  return msg;
}

export function errorMessage(code: ErrorCode, message: string, id?: string): Record<string, unknown> {
  return id === undefined ? { type: 'error', code, message } : { type: 'error', id, code, message };
}
