// Packs sequences into the rectangular inputs of the train-step and score graphs:
// right-padded tokens, attention mask, and per-token loss weights on the completion.

export interface TrainSequence {
  /** Prompt then completion tokens. */
  tokens: number[];
  /** Tokens before this index are the prompt (no loss on them). */
  promptLength: number;
  /** GRPO advantage of this sequence. */
  advantage?: number;
  /** Log-probs of the completion tokens under the sampling policy (PPO ratio). */
  oldLogprobs?: number[];
  /** Log-probs of the completion tokens under the reference model (KL). */
  refLogprobs?: number[];
}

export interface PackedBatch {
  B: number;
  T: number;
  inputIds: BigInt64Array;
  attentionMask: BigInt64Array;
  lossMask: Float32Array;
  advantages?: Float32Array;
  oldLogprobs?: Float32Array;
  refLogprobs?: Float32Array;
}

export function packBatch(seqs: TrainSequence[], padId: number, contextLength: number): PackedBatch {
  if (!seqs.length) throw new Error('packBatch: no sequences');
  const B = seqs.length;
  const T = Math.max(...seqs.map((s) => s.tokens.length));
  if (T < 2) throw new Error('packBatch: sequences need at least 2 tokens');
  if (T > contextLength) throw new Error(`packBatch: a sequence of ${T} tokens exceeds the context length ${contextLength}`);
  const inputIds = new BigInt64Array(B * T).fill(BigInt(padId));
  const attentionMask = new BigInt64Array(B * T);
  const lossMask = new Float32Array(B * T);
  const has = (k: 'advantage' | 'oldLogprobs' | 'refLogprobs') => seqs.every((s) => s[k] !== undefined);
  const advantages = has('advantage') ? Float32Array.from(seqs, (s) => s.advantage!) : undefined;
  const oldLogprobs = has('oldLogprobs') ? new Float32Array(B * T) : undefined;
  const refLogprobs = has('refLogprobs') ? new Float32Array(B * T) : undefined;
  seqs.forEach((s, b) => {
    if (s.promptLength < 1 || s.promptLength > s.tokens.length) throw new Error(`packBatch: promptLength ${s.promptLength} out of range`);
    const completion = s.tokens.length - s.promptLength;
    for (const [name, arr, dst] of [['oldLogprobs', s.oldLogprobs, oldLogprobs], ['refLogprobs', s.refLogprobs, refLogprobs]] as const) {
      if (!arr || !dst) continue;
      if (arr.length !== completion) throw new Error(`packBatch: ${name} has ${arr.length} entries for ${completion} completion tokens`);
      arr.forEach((v, j) => (dst[b * T + s.promptLength + j] = v));
    }
    s.tokens.forEach((t, j) => {
      inputIds[b * T + j] = BigInt(t);
      attentionMask[b * T + j] = 1n;
      if (j >= s.promptLength) lossMask[b * T + j] = 1;
    });
  });
  return { B, T, inputIds, attentionMask, lossMask, advantages, oldLogprobs, refLogprobs };
}
