// What the OpenAI routes report of a sample's tokens beside its text, when asked: log-probs in
// OpenAI's two shapes (a completion's legacy lists, a chat's content entries) and vLLM's token
// ids. The log-probs are the sampler's, under the temperature-scaled distribution (top_p
// does not renormalise them); there are no alternatives to report, only the sampled token's.
import type { Tokenizer } from '../tokenizers/tokenizer.ts';
import type { ChatLogprobs, CompletionLogprobs } from '../protocol/openai.ts';

/** What a client asked to see of each sample's tokens. */
export interface TokenReport {
  logprobs: boolean;
  tokenIds: boolean;
}

/** A sample as drawn: its tokens (the stop token last when one ended it) and their log-probs. */
export interface DrawnTokens {
  tokens: number[];
  logprobs: number[];
}

/**
 * How many of a sample's tokens a choice reports: all, unless its text was cut at a stop
 * string; then those through the token that completed it, as vLLM (which stops sampling
 * there) reports them. Our sampler runs on past a stop string (one run draws the whole
 * batch), so the cut is found here: the shortest prefix whose text holds a stop string.
 */
export function reportedLength(tok: Tokenizer, tokens: number[], stop: string[] | undefined, cut: boolean | undefined): number {
  if (!cut || !stop?.length) return tokens.length;
  const holdsStop = (k: number) => {
    const text = tok.decode(tokens.slice(0, k));
    return stop.some((x) => text.includes(x));
  };
  // A longer prefix's text extends a shorter one's, so the first prefix that holds one is found by halving.
  let lo = 1;
  let hi = tokens.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (holdsStop(mid)) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** The sample's tokens cut to the reported length. */
export function reported(d: DrawnTokens, length: number): DrawnTokens {
  return { tokens: d.tokens.slice(0, length), logprobs: d.logprobs.slice(0, length) };
}

/** A token's own text (a stop or other special token reads as ''). */
const pieceOf = (tok: Tokenizer, id: number) => tok.decode([id]);

export function completionLogprobs(tok: Tokenizer, d: DrawnTokens): CompletionLogprobs {
  const tokens = d.tokens.map((t) => pieceOf(tok, t));
  let offset = 0;
  const text_offset = tokens.map((piece) => {
    const at = offset;
    offset += piece.length;
    return at;
  });
  return { tokens, token_logprobs: d.logprobs, top_logprobs: tokens.map((piece, i) => ({ [piece]: d.logprobs[i]! })), text_offset };
}

export function chatLogprobs(tok: Tokenizer, d: DrawnTokens): ChatLogprobs {
  return {
    content: d.tokens.map((t, i) => {
      const token = pieceOf(tok, t);
      return { token, logprob: d.logprobs[i]!, bytes: [...Buffer.from(token, 'utf8')], top_logprobs: [] };
    }),
  };
}
