// Random checkpoints at real models' shapes, written the way Hugging Face ships them (BF16,
// two shards and an index), for the benchmarks: the peer's presets, and a tokenizer that
// names every id so completions decode (a word per id; no real text).
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { paramSpecsOf } from '../src/model/families.ts';
import { llamaConfigFromHF } from '../src/formats/hf.ts';
import { writeSafetensorsStreaming } from '../src/formats/safetensors.ts';
import { Rng } from '../src/util/rng.ts';

/** The peer's presets (torch_llama_peer.py PRESETS), as the config.json of such a checkpoint, with the batch each phase uses. */
export const PRESETS: Record<string, { config: Record<string, unknown>; prompts: number; samples: number; newTokens: number }> = {
  'smollm2-135m': {
    config: {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      hidden_size: 576,
      intermediate_size: 1536,
      num_hidden_layers: 30,
      num_attention_heads: 9,
      num_key_value_heads: 3,
      vocab_size: 49152,
      tie_word_embeddings: true,
      rope_theta: 100000.0,
      rms_norm_eps: 1e-5,
      max_position_embeddings: 8192,
      hidden_act: 'silu',
    },
    prompts: 4,
    samples: 4,
    newTokens: 64,
  },
  'qwen2.5-0.5b': {
    config: {
      architectures: ['Qwen2ForCausalLM'],
      model_type: 'qwen2',
      hidden_size: 896,
      intermediate_size: 4864,
      num_hidden_layers: 24,
      num_attention_heads: 14,
      num_key_value_heads: 2,
      vocab_size: 151936,
      tie_word_embeddings: true,
      rope_theta: 1000000.0,
      rms_norm_eps: 1e-6,
      max_position_embeddings: 32768,
      hidden_act: 'silu',
    },
    prompts: 2,
    samples: 4,
    newTokens: 32,
  },
};

/**
 * Writes random weights for `config` as two BF16 shards with an index, config.json and a
 * tokenizer: with `wordPerId`, a word-level vocabulary naming every id ("w0", "w1", ...;
 * "</s>" ends), so a server can serve and vote on what it samples; else a three-word one
 * that only keeps the directory loadable.
 */
export async function writeCheckpoint(dir: string, config: Record<string, unknown>, o: { wordPerId?: boolean } = {}): Promise<void> {
  const specs = paramSpecsOf(llamaConfigFromHF(config, 'preset'));
  const rng = new Rng(0);
  const toBf16 = (x: number) => {
    const u = new Uint32Array(Float32Array.of(x).buffer)[0]!;
    return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
  };
  const shards = [specs.filter((_, i) => i % 2 === 0), specs.filter((_, i) => i % 2 === 1)];
  const weightMap: Record<string, string> = {};
  for (const [i, shard] of shards.entries()) {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    const layout = new Map(shard.map((s) => [s.name, { dtype: 'BF16' as const, shape: s.shape }]));
    await writeSafetensorsStreaming(
      join(dir, file),
      layout,
      (name) => {
        const s = shard.find((x) => x.name === name)!;
        const n = s.shape.reduce((a, b) => a * b, 1);
        return Uint16Array.from({ length: n }, () => toBf16(s.init === 'ones' ? 1 : s.init === 'zeros' ? 0 : rng.normal() * 0.02));
      },
      { format: 'pt' },
    );
    for (const s of shard) weightMap[s.name] = file;
  }
  await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  await writeFile(join(dir, 'config.json'), JSON.stringify({ ...config, torch_dtype: 'bfloat16' }));
  const words = o.wordPerId
    ? Array.from({ length: config.vocab_size as number }, (_, i) => (i === 0 ? '<unk>' : i === 2 ? '</s>' : `w${i}`))
    : ['<unk>', 'a', '</s>'];
  const vocab = Object.fromEntries(words.map((w, i) => [w, i]));
  const decoder = o.wordPerId ? { type: 'WordPiece', prefix: '##', cleanup: false } : null;
  await writeFile(
    join(dir, 'tokenizer.json'),
    JSON.stringify({
      version: '1.0',
      added_tokens: [],
      normalizer: null,
      pre_tokenizer: { type: 'Whitespace' },
      post_processor: null,
      decoder,
      model: { type: 'WordLevel', vocab, unk_token: '<unk>' },
    }),
  );
  await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '</s>', unk_token: '<unk>' }));
}
