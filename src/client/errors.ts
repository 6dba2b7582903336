// The one error type of the typed client: a server's error code as it came, or one of the
// client's own (a timeout, a connection that failed or was lost, a reply that breaks the
// protocol). Browser-safe: no Node imports.
import type { ErrorCode } from '../protocol/errors.ts';

/** Failures the client itself detects; the server's codes are ERROR_CODES (protocol/errors.ts, docs/protocol.md's error table). */
export type ClientErrorCode =
  /** No reply within timeoutMs (a question), or no hello within connectTimeoutMs. */
  | 'timeout'
  /** The WebSocket could not be opened (nothing listening, a refused upgrade, a network error). */
  | 'connection_failed'
  /** The connection dropped and was not re-established (reconnect off, or its attempts used up). */
  | 'connection_lost'
  /** close() was called. */
  | 'closed'
  /** The caller's AbortSignal fired. */
  | 'aborted'
  /** The server sent something this client cannot read (not JSON, a malformed answer, another protocol version). */
  | 'protocol_error';

export type TtrlErrorCode = ErrorCode | ClientErrorCode;

/** Server codes the client retries by itself, with jittered exponential backoff. */
export const RETRIED_CODES: ReadonlySet<string> = new Set(['overloaded', 'too_many_in_flight', 'shutting_down']);
/** Codes for a condition that may pass: asking again later can succeed. */
const TRANSIENT: ReadonlySet<string> = new Set([...RETRIED_CODES, 'too_many_connections', 'timeout', 'connection_failed', 'connection_lost']);

export class TtrlError extends Error {
  override readonly name = 'TtrlError';
  /** True when the same request may succeed later (the server was busy, stopping or unreachable). */
  readonly retryable: boolean;
  /** The question's id on the wire, when the error belongs to one. */
  readonly id?: string;
  /** The HTTP status of a refused WebSocket upgrade (401 for a missing or wrong API key). */
  readonly status?: number;
  /** How many times the question was sent before it failed. */
  readonly attempts?: number;

  constructor(
    readonly code: TtrlErrorCode,
    message: string,
    o: { id?: string; status?: number; attempts?: number; cause?: unknown } = {},
  ) {
    super(message, o.cause === undefined ? undefined : { cause: o.cause });
    this.retryable = TRANSIENT.has(code);
    if (o.id !== undefined) this.id = o.id;
    if (o.status !== undefined) this.status = o.status;
    if (o.attempts !== undefined) this.attempts = o.attempts;
  }
}
