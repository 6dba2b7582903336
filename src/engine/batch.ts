// Packs sequences into the rectangular inputs of the train-step and score graphs:
// right-padded tokens, attention mask, and per-token loss weights on the completion;
// or, grouped (GRPO), each prompt once and its completions as rows.

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
  /** Grouped layout only: the distinct prompts [P, L], left-padded; the rows above are their completions. */
  prompts?: { P: number; L: number; ids: BigInt64Array; mask: BigInt64Array };
  inputIds: BigInt64Array;
  attentionMask: BigInt64Array;
  lossMask: Float32Array;
  advantages?: Float32Array;
  oldLogprobs?: Float32Array;
  refLogprobs?: Float32Array;
}

export function packBatch(seqs: TrainSequence[], padId: number, contextLength: number): PackedBatch {
  if (!seqs.length) throw new Error('packBatch: no sequences');
  const T = Math.max(...seqs.map((s) => s.tokens.length));
  if (T < 2) throw new Error('packBatch: sequences need at least 2 tokens');
  if (T > contextLength) throw new Error(`packBatch: a sequence of ${T} tokens exceeds the context length ${contextLength}`);
  for (const s of seqs) if (s.promptLength < 1 || s.promptLength > s.tokens.length) throw new Error(`packBatch: promptLength ${s.promptLength} out of range`);
  return packRows(seqs, padId);
}

/** Right-padded rows; tokens from promptLength on carry the loss and the per-token arrays. */
function packRows(seqs: TrainSequence[], padId: number): PackedBatch {
  const B = seqs.length;
  const T = Math.max(...seqs.map((s) => s.tokens.length));
  const inputIds = new BigInt64Array(B * T).fill(BigInt(padId));
  const attentionMask = new BigInt64Array(B * T);
  const lossMask = new Float32Array(B * T);
  const has = (k: 'advantage' | 'oldLogprobs' | 'refLogprobs') => seqs.every((s) => s[k] !== undefined);
  const advantages = has('advantage') ? Float32Array.from(seqs, (s) => s.advantage!) : undefined;
  const oldLogprobs = has('oldLogprobs') ? new Float32Array(B * T) : undefined;
  const refLogprobs = has('refLogprobs') ? new Float32Array(B * T) : undefined;
  seqs.forEach((s, b) => {
    const completion = s.tokens.length - s.promptLength;
    for (const [name, arr, dst] of [
      ['oldLogprobs', s.oldLogprobs, oldLogprobs],
      ['refLogprobs', s.refLogprobs, refLogprobs],
    ] as const) {
      if (!arr || !dst) continue;
      if (arr.length !== completion) throw new Error(`pack: ${name} has ${arr.length} entries for ${completion} completion tokens`);
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

/** G completions of one prompt (the unit of GRPO). */
export interface TrainGroup {
  prompt: number[];
  completions: Omit<TrainSequence, 'promptLength'>[];
}

/**
 * The grouped layout: prompts once, left-padded [P, Lp]; completions right-padded [P*G, Lc],
 * with every per-token array aligned to the completion tokens. Every group needs the same G.
 */
export function packGroups(groups: TrainGroup[], padId: number, contextLength: number): PackedBatch {
  if (!groups.length) throw new Error('packGroups: no groups');
  const G = groups[0]!.completions.length;
  if (G < 1 || groups.some((g) => g.completions.length !== G)) throw new Error('packGroups: every group needs the same number (>= 1) of completions');
  if (groups.some((g) => g.prompt.length < 1)) throw new Error('packGroups: empty prompt');
  const prompts = leftPad(
    groups.map((g) => g.prompt),
    padId,
  );
  const completions = groups.flatMap((g) => g.completions.map((c) => ({ ...c, promptLength: 0 })));
  for (const [i, c] of completions.entries()) {
    if (!c.tokens.length) throw new Error('packGroups: empty completion');
    const total = groups[Math.floor(i / G)]!.prompt.length + c.tokens.length;
    if (total > contextLength) throw new Error(`packGroups: a sequence of ${total} tokens exceeds the context length ${contextLength}`);
  }
  // The completions alone, every token trained: the same packing as flat, with nothing masked as prompt.
  return { ...packRows(completions, padId), prompts };
}

/** Throws unless every token id of the batch is in the vocabulary (onnxruntime's own error would name a graph node). */
export function checkTokenIds(b: PackedBatch, vocabSize: number): void {
  for (const ids of [b.inputIds, b.prompts?.ids ?? new BigInt64Array(0)])
    for (const t of ids) if (t < 0n || t >= BigInt(vocabSize)) throw new Error(`batch: token id ${t} outside the vocabulary (0..${vocabSize - 1})`);
}

/** Prompts [P, L], left-padded so that every prompt ends in the last column. */
export function leftPad(prompts: number[][], padId: number): { P: number; L: number; ids: BigInt64Array; mask: BigInt64Array } {
  const P = prompts.length;
  const L = Math.max(...prompts.map((p) => p.length));
  const ids = new BigInt64Array(P * L).fill(BigInt(padId));
  const mask = new BigInt64Array(P * L);
  prompts.forEach((prompt, i) =>
    prompt.forEach((t, j) => {
      ids[i * L + L - prompt.length + j] = BigInt(t);
      mask[i * L + L - prompt.length + j] = 1n;
    }),
  );
  return { P, L, ids, mask };
}
