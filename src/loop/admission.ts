// What a question must be to be asked, whatever it came by (WebSocket, HTTP, an offline
// replay, a question file): a non-empty question the model's tokenizer can encode, whose
// prompt (the question as the model reads it: the task's chat template, system prompt and
// special tokens included) is within the operator's token limit and leaves the task's new
// tokens room in the model's context, and a vote count in range. The transports add their
// own checks (message size, JSON shape) before.
//
// A prompt that leaves less room than the task's new tokens is refused, not served with
// fewer new tokens: one sampling run decodes one length for its whole batch, so shortening
// it for one long prompt would cut every answer in that batch, and an answer cut off has
// no vote. (vLLM refuses a prompt that fills the context, and an explicit max_tokens that
// does not fit beside it; here the task's new tokens are the deployment's explicit choice.)
import type { Tokenizer } from '../tokenizers/tokenizer.ts';
import type { Task } from '../tasks/task.ts';
import { ProtocolError } from '../protocol/errors.ts';

export interface AskLimits {
  /** Most prompt tokens accepted: the operator's limit, or the room the context leaves. */
  maxPromptTokens: number;
  /** The most tokens an answer may take (the task's), and the context they share with the prompt. */
  maxNewTokens: number;
  contextLength: number;
  maxVotes: number;
  defaultVotes: number;
  /** The prompt's tokens for a question (the task's encoding); throws where the tokenizer cannot encode it. */
  encode: (question: string) => number[];
}

/**
 * The limits of a task served by a model. Throws (at start-up) when the task's new tokens
 * leave no room for any prompt in the context: every question would be refused.
 */
export function askLimits(
  task: Task,
  tok: Tokenizer,
  contextLength: number,
  s: { maxPromptTokens?: number; maxVotes: number; votes: number },
  where = 'the model',
): AskLimits {
  const room = contextLength - task.maxNewTokens;
  if (room < 1)
    throw new Error(
      `task ${task.name}: answers of up to ${task.maxNewTokens} new tokens leave no room for a prompt in the context of ${where} (${contextLength} tokens); set --max-new-tokens below ${contextLength}`,
    );
  return {
    maxPromptTokens: Math.min(s.maxPromptTokens ?? room, room),
    maxNewTokens: task.maxNewTokens,
    contextLength,
    maxVotes: s.maxVotes,
    defaultVotes: s.votes,
    encode: (q) => task.encode(tok, q),
  };
}

/** The prompt of a question, checked against the limits: its tokens. */
export function checkPrompt(question: string, l: AskLimits, id?: string, maxNewTokens = l.maxNewTokens): number[] {
  let prompt: number[];
  try {
    prompt = l.encode(question);
  } catch (e) {
    throw new ProtocolError('unreadable_question', `the model's tokenizer cannot encode the question: ${(e as Error).message}`, id);
  }
  const n = prompt.length;
  if (n + maxNewTokens > l.contextLength)
    throw new ProtocolError(
      'context_length_exceeded',
      `the prompt has ${n} tokens and answers may take ${maxNewTokens} more: ${n + maxNewTokens} do not fit in the model's context of ${l.contextLength} tokens (at most ${l.contextLength - maxNewTokens} prompt tokens)`,
      id,
    );
  // Within the room, only the operator's own limit can be smaller.
  if (n > l.maxPromptTokens)
    throw new ProtocolError(
      'question_too_long',
      `the prompt has ${n} tokens (the question as the model reads it); at most ${l.maxPromptTokens} are accepted`,
      id,
    );
  return prompt;
}

/** The body of an ask, checked against the limits: the vote count it gets and its prompt's length. */
export function checkAsk(m: { id?: string; question: string; votes?: number; maxNewTokens?: number }, l: AskLimits): { votes: number; promptTokens: number } {
  if (!m.question) throw new ProtocolError('invalid_message', 'question must be a non-empty string', m.id);
  const votes = m.votes ?? l.defaultVotes;
  if (votes < 1 || votes > l.maxVotes) throw new ProtocolError('bad_votes', `votes must be between 1 and ${l.maxVotes}, got ${votes}`, m.id);
  return { votes, promptTokens: checkPrompt(m.question, l, m.id, m.maxNewTokens).length };
}
