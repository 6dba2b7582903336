// The wire protocol, both directions (README, "Protocol"): the messages a client sends over
// the WebSocket /v1/ws (ask, ping) and in the body of POST /v1/ask, and the messages the
// server sends (hello, answer, vote, error, pong, model), each as a zod schema with its type.
// The server builds its messages only through the constructors below, so that what it sends
// is the shape written here; the typed client (src/client/) decodes them with these schemas.
// Nothing here is Node-only: the client runs in browsers too.
import { z } from 'zod';
import { errorCode, type ErrorCode } from './errors.ts';

export const PROTOCOL_VERSION = 1;

// --- client to server ------------------------------------------------------------------

/** A question's id: the client's own, echoed on every reply that belongs to it. */
const questionId = z.string().min(1).max(128);

/** The most characters a label may have: room for any answer a task states, not for a document. */
export const MAX_LABEL_CHARS = 1024;

/**
 * A question's known answer, when the client has one (a labelled replay): the server scores
 * its answer against it to measure calibration (the dashboard) and logs it with the
 * question. For measurement only: live adaptation never reads it (it trains on majority
 * votes, without labels).
 */
const label = z.string().min(1).max(MAX_LABEL_CHARS);

/** The client messages, by type; every field is checked and no other is accepted. */
export const clientMessages = {
  ask: z.strictObject({
    type: z.literal('ask'),
    id: questionId,
    question: z.string(),
    votes: z.number().int().optional(),
    stream: z.boolean().optional(),
    label: label.optional(),
  }),
  ping: z.strictObject({ type: z.literal('ping'), id: z.string().max(128).optional() }),
};
export type AskMessage = z.output<typeof clientMessages.ask>;
export type PingMessage = z.output<typeof clientMessages.ping>;
export type ClientMessage = AskMessage | PingMessage;

/** The body of POST /v1/ask: an ask without its type, whose id is optional. */
export const httpAskBody = z.strictObject({ id: questionId.optional(), question: z.string(), votes: z.number().int().optional(), label: label.optional() });
export type HttpAskBody = z.output<typeof httpAskBody>;

// --- server to client ------------------------------------------------------------------

/** An object schema: exactly its fields (z.strictObject), or its fields with others dropped (z.object). */
type ObjectSchema = <S extends z.core.$ZodLooseShape>(shape: S) => z.ZodObject<z.core.util.Writeable<S>>;

const count = z.number().int().min(1);
const tokens = z.number().int().nonnegative();

/**
 * The server's messages, each built by `object`. The server's own are strict: a field
 * not written here fails, so a test decoding what the server sends catches a field
 * added without the protocol saying so. The client reads them tolerantly (see
 * tolerantServerMessages) so that a newer server's added field does not break it.
 */
function serverMessageSchemas(object: ObjectSchema) {
  /** The limits a server states in hello; max_in_flight is absent from servers that do not state it. */
  const limits = object({
    max_message_bytes: count,
    max_prompt_tokens: count,
    max_new_tokens: count,
    context_length: count,
    max_votes: count,
    default_votes: count,
    max_in_flight: count.optional(),
  });
  /** The answer to a question, as every transport sends it. */
  const answer = {
    /** The majority answer, null when no sample had one. */
    answer: z.string().nullable(),
    /** Samples per normalised answer; "" counts samples without one. */
    votes: z.record(z.string(), tokens),
    /** The majority's share of all votes. */
    confidence: z.number().min(0).max(1),
    /** The version that produced every sample of this answer (a batch never mixes versions). */
    model_version: tokens,
    /** Tokens of the prompt the model read (the question in the task's template), as OpenAI's usage.prompt_tokens. */
    prompt_tokens: tokens,
    /** The server's time from arrival to answer. */
    latency_ms: z.number().nonnegative(),
  };
  return {
    limits,
    /** The answer alone, as the answerer gives it (and the OpenAI routes' ttrl extension carries most of it). */
    answer: object(answer),
    messages: {
      /** The first message on every connection. */
      hello: object({
        type: z.literal('hello'),
        protocol: z.literal(PROTOCOL_VERSION),
        /** This connection's name on the server (c1, c2, ...): a new one on every reconnect. */
        connection: z.string(),
        model_version: tokens,
        limits,
      }),
      /** The reply to an ask; POST /v1/ask sends it too, with the id only when the request had one. */
      answer: object({ type: z.literal('answer'), id: z.string().optional(), ...answer }),
      /** One sample, streamed before the answer (ask with stream: true). */
      vote: object({
        type: z.literal('vote'),
        id: z.string(),
        /** The sample's place among the question's votes, from 0. */
        index: z.number().int().nonnegative(),
        /** The sample's normalised answer, null when it has none. */
        answer: z.string().nullable(),
        text: z.string(),
        /** Tokens the sample took. */
        tokens,
      }),
      /** The reply to a message that failed, or to a question that could not be answered; the id when the message had one. */
      error: object({ type: z.literal('error'), id: z.string().optional(), code: errorCode, message: z.string() }),
      pong: object({ type: z.literal('pong'), id: z.string().optional() }),
      /** Sent to every connection when the serving version changes. */
      model: object({ type: z.literal('model'), model_version: tokens }),
    },
  };
}

const strict = serverMessageSchemas(z.strictObject);
/** The server's messages, by type, exactly as it sends them. */
export const serverMessages = strict.messages;
/** Any server message, by its type. */
export const serverMessage = z.discriminatedUnion('type', [
  serverMessages.hello,
  serverMessages.answer,
  serverMessages.vote,
  serverMessages.error,
  serverMessages.pong,
  serverMessages.model,
]);
/**
 * The same messages read as a client reads them: a field it does not know is dropped, not
 * refused (a newer server may add one); every field it knows must still be as written here.
 */
export const tolerantServerMessages = serverMessageSchemas(z.object).messages;

export type Limits = z.output<typeof strict.limits>;
export type Answer = z.output<typeof strict.answer>;
export type HelloMessage = z.output<typeof serverMessages.hello>;
export type AnswerMessage = z.output<typeof serverMessages.answer>;
export type VoteMessage = z.output<typeof serverMessages.vote>;
export type ErrorMessage = z.output<typeof serverMessages.error>;
export type PongMessage = z.output<typeof serverMessages.pong>;
export type ModelMessage = z.output<typeof serverMessages.model>;
export type ServerMessage = z.output<typeof serverMessage>;

// The constructors: the only way the server makes a message. Each names its fields one by
// one, in the order they go on the wire, so nothing else rides along.

export function helloMessage(connection: string, o: { model_version: number; limits: Limits }): HelloMessage {
  return { type: 'hello', protocol: PROTOCOL_VERSION, connection, model_version: o.model_version, limits: o.limits };
}

/** An answer; `id` is the question's (always on the WebSocket; on POST /v1/ask only when the request gave one). */
export function answerMessage(a: Answer, id?: string): AnswerMessage {
  const body = {
    answer: a.answer,
    votes: a.votes,
    confidence: a.confidence,
    model_version: a.model_version,
    prompt_tokens: a.prompt_tokens,
    latency_ms: a.latency_ms,
  };
  return id === undefined ? { type: 'answer', ...body } : { type: 'answer', id, ...body };
}

export function voteMessage(id: string, index: number, sample: { answer: string | null; text: string; tokens: number }): VoteMessage {
  return { type: 'vote', id, index, answer: sample.answer, text: sample.text, tokens: sample.tokens };
}

export function errorMessage(code: ErrorCode, message: string, id?: string): ErrorMessage {
  return id === undefined ? { type: 'error', code, message } : { type: 'error', id, code, message };
}

export function pongMessage(id?: string): PongMessage {
  return id === undefined ? { type: 'pong' } : { type: 'pong', id };
}

export function modelMessage(version: number): ModelMessage {
  return { type: 'model', model_version: version };
}
