// A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) through
// @huggingface/tokenizers, the maintained JS port: byte-level BPE (Qwen, Llama 3),
// SentencePiece BPE with byte fallback (Llama 2, stories260K), special and added tokens.
// This file only adapts it to our Tokenizer interface: special-token ids, stop tokens, and
// "cannot encode" for tokenizers that map unknown text to an unk token.
import { Tokenizer as HF } from '@huggingface/tokenizers';
import type { Tokenizer } from './tokenizer.ts';

type JsonObject = Record<string, unknown>;

/** A special token in tokenizer_config.json: a string, or an AddedToken object with `content`. */
function specialContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as JsonObject).content === 'string') return (v as JsonObject).content as string;
  return undefined;
}

export interface HFTokenizerOptions {
  /** Extra ids that end a completion (generation_config.json's eos_token_id, a number or a list). */
  stopIds?: number[];
  /** Where errors point (the model directory or file). */
  source?: string;
}

export class HFTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly eosId: number;
  readonly stopIds: number[];
  readonly padId: number;
  readonly bosId: number | undefined;
  private readonly unkId: number | undefined;
  private readonly hf: HF;

  constructor(
    readonly json: JsonObject,
    readonly config: JsonObject,
    o: HFTokenizerOptions = {},
  ) {
    const where = o.source ?? 'tokenizer';
    try {
      this.hf = new HF(json, config);
    } catch (e) {
      throw new Error(`${where}: tokenizer.json cannot be loaded: ${(e as Error).message}`);
    }
    const idOf = (field: string) => {
      const content = specialContent(config[field]);
      return content === undefined ? undefined : this.hf.token_to_id(content);
    };
    let top = -1;
    for (const id of this.hf.get_vocab(true).values()) top = Math.max(top, id);
    this.vocabSize = top + 1;
    const stops = [...new Set([idOf('eos_token'), ...(o.stopIds ?? [])].filter((t): t is number => t !== undefined))];
    if (!stops.length) throw new Error(`${where}: no end token: tokenizer_config.json has no eos_token and generation_config.json no eos_token_id`);
    this.stopIds = stops;
    this.eosId = idOf('eos_token') ?? stops[0]!;
    this.padId = idOf('pad_token') ?? this.eosId;
    this.bosId = idOf('bos_token');
    this.unkId = idOf('unk_token');
  }

  encode(text: string, o: { specialTokens?: boolean } = {}): number[] {
    const ids = this.hf.encode(text, { add_special_tokens: o.specialTokens ?? true }).ids;
    if (this.unkId !== undefined && ids.includes(this.unkId))
      throw new Error(`cannot encode ${JSON.stringify(text.length > 40 ? text.slice(0, 40) + '…' : text)}: part of it has no token but the unknown token`);
    return ids;
  }

  decode(ids: ArrayLike<number>): string {
    const kept: number[] = [];
    for (let i = 0; i < ids.length && !this.stopIds.includes(ids[i]!); i++) kept.push(ids[i]!);
    // A completion that is its end token alone is the empty text (the library throws on no ids).
    return kept.length ? this.hf.decode(kept, { skip_special_tokens: true }) : '';
  }

  /** Byte-level and byte-fallback tokenizers encode every string; others fail where they would need the unknown token. */
  canEncode(text: string): boolean {
    return this.unkId === undefined || !this.hf.encode(text).ids.includes(this.unkId);
  }

  toJSON(): object {
    return this.json;
  }
}
