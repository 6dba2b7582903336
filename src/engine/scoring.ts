// What the scorer and the trainer workers share: a packed batch as ONNX feeds, and the score
// graph's outputs turned into the batch's layout. Worker-side code (no worker of its own).
import { f32, i64, type ort } from './ort.ts';
import type { PackedBatch } from './batch.ts';

export interface TokenScores {
  /** [B, T]: position t holds the log-prob of token t given the tokens before it (0 at t = 0). */
  tokenLogprobs: Float32Array;
  entropy: Float32Array;
}

export function batchFeeds(b: PackedBatch): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = { input_ids: i64(b.inputIds, [b.B, b.T]), attention_mask: i64(b.attentionMask, [b.B, b.T]) };
  if (b.prompts) {
    if (b.B % b.prompts.P) throw new Error(`train step: ${b.B} completions do not divide into ${b.prompts.P} prompts`);
    feeds.prompt_ids = i64(b.prompts.ids, [b.prompts.P, b.prompts.L]);
    feeds.prompt_mask = i64(b.prompts.mask, [b.prompts.P, b.prompts.L]);
  }
  return feeds;
}

/** Runs a score-graph session (weights already bound or in `weightFeeds`) on a flat batch. */
export async function scoreBatch(session: ort.InferenceSession, weightFeeds: Record<string, ort.Tensor>, b: PackedBatch): Promise<TokenScores> {
  if (b.prompts) throw new Error('score: takes the flat layout (packBatch)');
  const out = await session.run({ ...weightFeeds, ...batchFeeds(b) });
  // The graph scores token t+1 at column t: shift right by one so position t holds token t's.
  const shift = (src: Float32Array) => {
    const dst = new Float32Array(b.B * b.T);
    for (let r = 0; r < b.B; r++) dst.set(src.subarray(r * (b.T - 1), (r + 1) * (b.T - 1)), r * b.T + 1);
    return dst;
  };
  return { tokenLogprobs: shift(out.token_logprobs!.data as Float32Array), entropy: shift(out.entropy!.data as Float32Array) };
}

export const weightFeedsOf = (specs: { name: string; shape: number[] }[], w: Map<string, Float32Array>) =>
  Object.fromEntries(specs.map((s) => [s.name, f32(w.get(s.name)!, s.shape)]));
