// Records for store tests: answered and failed questions as the answerer hands them to a
// store, with token ids and log-probs a float32 holds exactly (so a stored copy compares equal).
import type { AnsweredRecord, QuestionMeta, TrainableSample } from '../../src/store/store.ts';

export function sample(text: string, answer: string | null, k = 0): TrainableSample {
  const tokenIds = [...text].map((c) => c.charCodeAt(0) + k);
  // Multiples of 1/8 below 2^10: exact in float32.
  const logprobs = tokenIds.map((t, i) => -((t % 7) + i) / 8);
  return { text, answer, tokens: tokenIds.length, logprobSum: logprobs.reduce((a, b) => a + b, 0), stopped: answer !== null, tokenIds, logprobs };
}

export function answered(question: string, o: Partial<AnsweredRecord> = {}): AnsweredRecord {
  const receivedAt = o.receivedAt ?? 1_700_000_000_000;
  return {
    clientId: `c-${question}`,
    connection: 'conn-1',
    question,
    votesRequested: 2,
    receivedAt,
    answeredAt: receivedAt + 12,
    answer: '3',
    majorityRatio: 0.5,
    votes: { '3': 1, '4': 1 },
    modelVersion: 0,
    latencyMs: 12.5,
    source: 'key:alice',
    trainable: true,
    promptIds: [...question].map((c) => c.charCodeAt(0)),
    samples: [sample(`${question}3#`, '3'), sample(`${question}4`, null, 1)],
    ...o,
  };
}

export function failed(question: string, o: Partial<QuestionMeta & { error: string }> = {}): QuestionMeta & { error: string } {
  return { clientId: `f-${question}`, connection: 'conn-2', question, votesRequested: 3, receivedAt: 1_700_000_000_500, error: 'sampling failed', ...o };
}
