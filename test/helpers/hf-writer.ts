// Writes Hugging Face model directories the way transformers' save_pretrained lays them out
// (config.json, tokenizer files, weights in BF16/F16/F32 safetensors, sharded with an index),
// so the loader is tested on what it meets in the wild, not on what our saver writes.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeSafetensors, type NamedTensor } from '../../src/formats/safetensors.ts';

/** float32 -> bfloat16 bits, rounding to nearest even (what torch's .to(torch.bfloat16) does). */
export function toBfloat16(x: Float32Array): Uint16Array {
  const u32 = new Uint32Array(x.buffer, x.byteOffset, x.length);
  return Uint16Array.from(u32, (u) => ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff);
}

/** The float32 values a bfloat16 rounding leaves. */
export function roundToBfloat16(x: Float32Array): Float32Array {
  const bits = toBfloat16(x);
  return new Float32Array(Uint32Array.from(bits, (b) => b << 16).buffer);
}

/** A word-level tokenizer.json over `words` (ids in order; the last is the end token). */
export function wordTokenizer(words: string[]): { json: object; config: object } {
  const eos = words.at(-1)!;
  return {
    json: {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [{ id: words.length - 1, content: eos, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
      normalizer: null,
      pre_tokenizer: { type: 'Whitespace' },
      post_processor: null,
      decoder: null,
      model: { type: 'WordLevel', vocab: Object.fromEntries(words.map((w, i) => [w, i])), unk_token: words[0] },
    },
    config: { eos_token: eos, unk_token: words[0], tokenizer_class: 'PreTrainedTokenizerFast' },
  };
}

export interface HFWriteOptions {
  dtype: 'F32' | 'BF16';
  /** Number of safetensors files; more than one writes model.safetensors.index.json as transformers does. */
  shards: number;
  tokenizer: { json: object; config: object };
  generationConfig?: object;
}

export async function writeHFDirectory(
  dir: string,
  config: object,
  weights: Map<string, { shape: number[]; data: Float32Array }>,
  o: HFWriteOptions,
): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(o.tokenizer.json));
  await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify(o.tokenizer.config));
  if (o.generationConfig) await writeFile(join(dir, 'generation_config.json'), JSON.stringify(o.generationConfig));
  const names = [...weights.keys()];
  const tensor = (name: string): NamedTensor => {
    const { shape, data } = weights.get(name)!;
    return o.dtype === 'BF16' ? { dtype: 'BF16', shape, data: toBfloat16(data) } : { dtype: 'F32', shape, data };
  };
  if (o.shards === 1) {
    await writeSafetensors(join(dir, 'model.safetensors'), new Map(names.map((n) => [n, tensor(n)])), { format: 'pt' });
    return;
  }
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < o.shards; i++) {
    const file = `model-${String(i + 1).padStart(5, '0')}-of-${String(o.shards).padStart(5, '0')}.safetensors`;
    const mine = names.filter((_, j) => j % o.shards === i);
    for (const n of mine) weightMap[n] = file;
    await writeSafetensors(join(dir, file), new Map(mine.map((n) => [n, tensor(n)])), { format: 'pt' });
  }
  await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
}
