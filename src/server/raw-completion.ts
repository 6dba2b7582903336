// What a raw completion must be (POST /v1/completions with a prompt of token ids, as vLLM
// takes them): ids of the model's vocabulary taken as they are (no task format, no chat
// template), n samples, and the sampling the request asks for, refused where it cannot be
// honoured exactly. Its samples are another front-end's to vote on and log: nothing here
// decides anything about them but how they are drawn.
import { randomInt } from 'node:crypto';
import type { RawSampling } from '../loop/answerer.ts';
import { ProtocolError } from '../protocol/errors.ts';
import type { CompletionBody } from '../protocol/openai.ts';

export interface RawLimits {
  vocabSize: number;
  contextLength: number;
  /** New tokens when the request does not say (the server's --max-new-tokens), cut to what the context leaves. */
  maxNewTokens: number;
  maxVotes: number;
  /** The operator's own --max-prompt-tokens (unset: a prompt may fill all the context but one new token). */
  maxPromptTokens?: number;
  /** The tokenizer's stop ids: they end a sample whatever the request says (vLLM's end-of-sequence). */
  stopIds: number[];
  /** The server's --temperature, when the request gives none. */
  temperature: number;
}

/** The ids a list must hold: integers of the vocabulary (`what` names the list in the message). */
function checkIds(ids: number[], vocabSize: number, what: string): void {
  const bad = ids.findIndex((t) => !Number.isInteger(t) || t < 0 || t >= vocabSize);
  if (bad >= 0)
    throw new ProtocolError('invalid_message', `${what}[${bad}]: ${ids[bad]} is not a token id of this model's vocabulary (integers 0..${vocabSize - 1})`);
}

/**
 * A raw completion's sample count and sampling, checked: the prompt within the operator's
 * limit and leaving room in the context, max_tokens (default: the server's, cut to the room
 * left) fitting beside it, stop ids of the vocabulary. `dice` turns an OpenAI seed into the
 * sampler's (one is drawn at random when the request gives none).
 */
export function checkRawCompletion(
  b: CompletionBody,
  prompt: number[],
  l: RawLimits,
  dice: (seed: number) => number,
  adapter: string | undefined,
): { samples: number; sampling: RawSampling } {
  checkIds(prompt, l.vocabSize, 'prompt');
  const samples = b.n ?? 1;
  if (samples < 1 || samples > l.maxVotes) throw new ProtocolError('bad_votes', `n must be between 1 and ${l.maxVotes}, got ${samples}`);
  const n = prompt.length;
  if (l.maxPromptTokens !== undefined && n > l.maxPromptTokens)
    throw new ProtocolError('question_too_long', `the prompt has ${n} tokens; at most ${l.maxPromptTokens} are accepted (--max-prompt-tokens)`);
  const room = l.contextLength - n;
  if (room < 1)
    throw new ProtocolError('context_length_exceeded', `the prompt has ${n} tokens: it leaves no room in the model's context of ${l.contextLength} tokens`);
  const asked = b.max_tokens ?? undefined;
  if (asked !== undefined && asked > room)
    throw new ProtocolError(
      'context_length_exceeded',
      `the prompt has ${n} tokens and max_tokens is ${asked}: ${n + asked} do not fit in the model's context of ${l.contextLength} tokens (at most ${room} new tokens)`,
    );
  const extraStops = b.stop_token_ids ?? [];
  checkIds(extraStops, l.vocabSize, 'stop_token_ids');
  return {
    samples,
    sampling: {
      temperature: b.temperature ?? l.temperature,
      ...(b.top_p !== undefined && b.top_p !== null ? { topP: b.top_p } : {}),
      maxNewTokens: asked ?? Math.min(l.maxNewTokens, room),
      // As vLLM's, stop_token_ids end a sample besides the model's own end tokens; sorted so
      // that requests naming the same ids are batched together.
      stopTokens: [...new Set([...l.stopIds, ...extraStops])].sort((x, y) => x - y),
      seed: b.seed === undefined || b.seed === null ? randomInt(2 ** 32) : dice(b.seed),
      ...(adapter === undefined ? {} : { adapter }),
    },
  };
}
