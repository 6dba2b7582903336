// The messages of protocol 1 as the client sees them (README, "Protocol").
import type { Answer as ServerAnswer } from '../loop/answer.ts';

/** The limits a server states in hello; max_in_flight is absent from servers that do not state it. */
export interface Limits {
  max_message_bytes: number;
  max_prompt_tokens: number;
  max_new_tokens: number;
  context_length: number;
  max_votes: number;
  default_votes: number;
  max_in_flight?: number;
}

export interface Hello {
  protocol: number;
  /** This connection's name on the server (c1, c2, ...): a new one on every reconnect. */
  connection: string;
  model_version: number;
  limits: Limits;
}

/**
 * An answer as it comes on the wire: the server's answer object (one owner of its shape, a
 * type-only import that leaves nothing in the client's JavaScript) and the question's id.
 */
export interface Answer extends ServerAnswer {
  /** The id the question had on the wire. */
  id: string;
}

/** One sample, streamed before the answer. */
export interface VoteEvent {
  type: 'vote';
  id: string;
  index: number;
  answer: string | null;
  text: string;
  tokens: number;
}

export interface AnswerEvent extends Answer {
  type: 'answer';
}

export type StreamEvent = VoteEvent | AnswerEvent;
