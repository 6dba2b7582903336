// Whether this process may train on what the upstreams sample. Training takes the upstreams'
// token ids and log-probs as the policy's: that is only true when they serve the checkpoint
// loaded here. The check: the upstream lists the base model by the expected name, returns
// token ids and log-probs, and its log-probs of a short completion it drew match ours of the
// same tokens within a tolerance (a GPU's bf16 is not our float32, so not exactly).
import type { Scorer } from '../engine/scorer.ts';
import type { ModelConfig } from '../model/families.ts';
import type { Tokenizer } from '../tokenizers/tokenizer.ts';
import type { Task } from '../tasks/task.ts';
import { completionLogprobs } from '../ttrl/updater.ts';
import type { UpstreamPool } from './pool.ts';

export interface MatchCheck {
  /** Why adaptation is refused; null: the upstream serves our model. */
  refused: string | null;
  /** Mean |ours - theirs| per token, in nats (when measured). */
  gap?: number;
  tokens?: number;
}

/** The question the check's completion answers: any prompt does; digits and + are in every tokenizer's reach (the shipped model's knows little else). */
const CHECK_QUESTION = '2+3';

export async function checkUpstreamMatch(
  pool: UpstreamPool,
  o: {
    config: ModelConfig;
    /** Scores under the base model's weights (the guard's reference scorer). */
    reference: Pick<Scorer, 'score'>;
    tok: Tokenizer;
    task: Task;
    tolerance: number;
    localModel: string;
  },
): Promise<MatchCheck> {
  const prompt = o.task.encode(o.tok, CHECK_QUESTION);
  const maxNewTokens = Math.max(1, Math.min(16, o.config.contextLength - prompt.length));
  // Temperature 1: the log-probs an upstream returns are its raw model's (vLLM's default), ours are the same only there.
  const drawn = await pool
    .baseGenerator()
    .generate([prompt], { samplesPerPrompt: 1, maxNewTokens, seed: 1, seeds: [1], temperature: 1, topP: 1, stopTokens: o.tok.stopIds, padToken: o.tok.padId });
  const sample = drawn.completions[0]![0]!;
  const who = `${drawn.sampledBy?.[0]?.upstream ?? 'the upstream'} (${drawn.sampledBy?.[0]?.model ?? '?'})`;
  if (!sample.tokens.length) return { refused: `${who} returns no token ids (${pool.dialect.name}); training needs the exact ids it sampled` };
  if (sample.logprobs.length !== sample.tokens.length || sample.logprobs.some((x) => !Number.isFinite(x)))
    return { refused: `${who} returns no log-probs of its samples (${pool.dialect.name}); training needs them` };
  const [ours] = await completionLogprobs(
    o.reference,
    [{ tokens: [...prompt, ...sample.tokens], promptLength: prompt.length }],
    o.tok.padId,
    o.config.contextLength,
  );
  const gap = ours!.reduce((a, x, i) => a + Math.abs(x - sample.logprobs[i]!), 0) / ours!.length;
  if (!(gap <= o.tolerance))
    return {
      refused: `${who} does not serve the model loaded here (${o.localModel}): its log-probs of a completion it drew differ from ours by ${gap.toFixed(4)} nats per token on average (tolerance ${o.tolerance}, --upstream-logprob-tolerance)`,
      gap,
      tokens: ours!.length,
    };
  return { refused: null, gap, tokens: ours!.length };
}
