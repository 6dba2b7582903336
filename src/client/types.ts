// The messages of protocol 1 as the client sees them (README, "Protocol").

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

export interface Answer {
  /** The id the question had on the wire. */
  id: string;
  /** The majority answer, null when no sample had one. */
  answer: string | null;
  /** Samples per normalised answer; "" counts samples without one. */
  votes: Record<string, number>;
  /** The majority's share of all votes. */
  confidence: number;
  /** The version that produced every sample of this answer. */
  model_version: number;
  prompt_tokens: number;
  /** The server's time from arrival to answer. */
  latency_ms: number;
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
