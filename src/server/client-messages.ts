// What the server accepts from a client, against the deployment's limits: a WebSocket message
// read (size, JSON, the protocol's schema, then admission), and the limits as hello states
// them. The shapes are the protocol's (protocol/messages.ts); the limits are this server's.
// Every failure maps to one error code; a bad message never closes the connection.
import type { z } from 'zod';
import { checkAsk, type AskLimits } from '../loop/admission.ts';
import { ProtocolError, schemaError } from '../protocol/errors.ts';
import { clientMessages, type ClientMessage, type Limits } from '../protocol/messages.ts';

/** The admission limits, and the size of a message (the question's limits are checked by checkAsk). */
export interface ServerLimits extends AskLimits {
  maxMessageBytes: number;
}

/** Parses one client message; throws ProtocolError with the right code. */
export function parseClientMessage(raw: string, l: ServerLimits): ClientMessage {
  if (Buffer.byteLength(raw) > l.maxMessageBytes)
    throw new ProtocolError('payload_too_large', `the message has ${Buffer.byteLength(raw)} bytes; at most ${l.maxMessageBytes} are accepted`);
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch (e) {
    throw new ProtocolError('bad_json', `not JSON: ${(e as Error).message}`);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new ProtocolError('invalid_message', 'a message must be a JSON object');
  const id = 'id' in v && typeof v.id === 'string' ? v.id : undefined;
  const type = 'type' in v ? v.type : undefined;
  if (typeof type !== 'string') throw new ProtocolError('invalid_message', 'the message needs a string "type"', id);
  if (type === 'ping') return decode(clientMessages.ping, v, id);
  if (type !== 'ask') throw new ProtocolError('unknown_type', `unknown message type ${JSON.stringify(type)}; the server knows "ask" and "ping"`, id);
  const ask = decode(clientMessages.ask, v, id);
  checkAsk(ask, l);
  return ask;
}

function decode<T>(schema: z.ZodType<T>, v: unknown, id: string | undefined): T {
  const r = schema.safeParse(v);
  if (!r.success) throw schemaError(r.error, 'message', id);
  return r.data;
}

/** The limits as the hello message states them, so that a client can size its questions. */
export function helloLimits(l: ServerLimits): Limits {
  return {
    max_message_bytes: l.maxMessageBytes,
    max_prompt_tokens: l.maxPromptTokens,
    max_new_tokens: l.maxNewTokens,
    context_length: l.contextLength,
    max_votes: l.maxVotes,
    default_votes: l.defaultVotes,
  };
}
