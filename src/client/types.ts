// The messages of protocol 1 as the client sees them (README, "Protocol"): the protocol's own
// types (protocol/messages.ts, the one owner of every shape), less what the client keeps to
// itself (a hello's type, an answer's id only once it is known).
import type { Answer as AnswerBody, HelloMessage, VoteMessage } from '../protocol/messages.ts';

/** The limits a server states in hello; max_in_flight is absent from servers that do not state it. */
export type { Limits } from '../protocol/messages.ts';

export type Hello = Omit<HelloMessage, 'type'>;

/** An answer as it comes on the wire: the server's answer and the question's id. */
export interface Answer extends AnswerBody {
  /** The id the question had on the wire. */
  id: string;
}

/** One sample, streamed before the answer. */
export type VoteEvent = VoteMessage;

export interface AnswerEvent extends Answer {
  type: 'answer';
}

export type StreamEvent = VoteEvent | AnswerEvent;
