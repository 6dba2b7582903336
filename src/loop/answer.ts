// The answer to a question, as every transport sends it (and the typed client receives
// it): its own module with no imports, so that the client's types pull in nothing else.

export interface Answer {
  /** The majority answer, null when no sample had one. */
  answer: string | null;
  /** Samples per normalised answer; "" counts samples without one. */
  votes: Record<string, number>;
  /** The majority's share of all votes. */
  confidence: number;
  /** The version that produced every sample of this answer (a batch never mixes versions). */
  model_version: number;
  /** Tokens of the prompt the model read (the question in the task's template), as OpenAI's usage.prompt_tokens. */
  prompt_tokens: number;
  /** The server's time from arrival to answer. */
  latency_ms: number;
}
