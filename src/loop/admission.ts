// What a question must be to be asked, whatever it came by (WebSocket, HTTP, an offline
// replay): a non-empty question the model can read, within the length limit, and a vote
// count in range. The transports add their own checks (message size, JSON shape) before.
import { ProtocolError } from './errors.ts';

export interface AskLimits {
  maxQuestionLength: number;
  maxVotes: number;
  defaultVotes: number;
  canRead: (text: string) => boolean;
}

/** The body of an ask, checked against the limits; the vote count it gets. */
export function checkAsk(m: { id?: string; question: string; votes?: number }, l: AskLimits): { votes: number } {
  if (!m.question) throw new ProtocolError('invalid_message', 'question must be a non-empty string', m.id);
  if (m.question.length > l.maxQuestionLength)
    throw new ProtocolError('question_too_long', `the question has ${m.question.length} characters; at most ${l.maxQuestionLength} are accepted`, m.id);
  if (!l.canRead(m.question)) throw new ProtocolError('unreadable_question', `the question has characters the model cannot read: ${JSON.stringify(m.question)}`, m.id);
  const votes = m.votes ?? l.defaultVotes;
  if (votes < 1 || votes > l.maxVotes) throw new ProtocolError('bad_votes', `votes must be between 1 and ${l.maxVotes}, got ${votes}`, m.id);
  return { votes };
}
