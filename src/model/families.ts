// Every model family, by the name its config carries: the one place that knows them all.
import type { ModelFamily } from './family.ts';
import { gpt, type GPTConfig } from './gpt.ts';
import { llama, type LlamaConfig } from './llama.ts';

export type ModelConfig = GPTConfig | LlamaConfig;

const FAMILIES: { [K in ModelConfig['family']]: ModelFamily<Extract<ModelConfig, { family: K }>> } = { gpt, llama };

export function familyOf(c: ModelConfig): ModelFamily<ModelConfig> {
  const f = FAMILIES[c.family] as ModelFamily<ModelConfig> | undefined;
  if (!f) throw new Error(`unknown model family ${JSON.stringify((c as { family?: unknown }).family)}`);
  return f;
}

export const paramSpecsOf = (c: ModelConfig) => familyOf(c).paramSpecs(c);
export const dimsOf = (c: ModelConfig) => familyOf(c).dims(c);
