// Tokenizers. Our own models use a character-level WordLevel tokenizer, stored as a Hugging
// Face tokenizer.json so that other tools read the same file; it is checked strictly here.
// Every other tokenizer.json (BPE, byte-level or with byte fallback) goes through
// @huggingface/tokenizers: see hf-tokenizer.ts.

import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/atomic-write.ts';

export interface Tokenizer {
  readonly vocabSize: number;
  /** The end token a training sequence ends with. */
  readonly eosId: number;
  /** Every token that ends a completion (eosId among them; generation_config may list several). */
  readonly stopIds: number[];
  /** Fills unused places of a batch; attention never reads it. */
  readonly padId: number;
  /**
   * With the model's own special tokens (e.g. a leading BOS) unless `specialTokens` is false
   * (a rendered chat template already holds them). Throws an Error naming what it cannot encode.
   */
  encode(text: string, o?: { specialTokens?: boolean }): number[];
  /** Stops at the first stop token; skips padding and other special tokens. */
  decode(ids: ArrayLike<number>): string;
  canEncode(text: string): boolean;
  /** The tokenizer.json content. */
  toJSON(): object;
}

/** The alphabet of the default arithmetic model: 15 chars, then eos = 15, pad = 16. */
export const ARITHMETIC_CHARS = '0123456789+-=;#';

export const TOKENIZER_FILE = 'tokenizer.json';
const EOS_TOKEN = '<eos>';
const PAD_TOKEN = '<pad>';
// HF requires WordLevel to name an unk token. Leaving it out of the vocabulary makes HF
// fail on unknown characters, just as encode() does here, instead of silently mapping them.
const UNK_TOKEN = '<unk>';

// One pre-token per character (per code point), so WordLevel becomes a char lookup.
const PER_CHAR_PRE_TOKENIZER = { type: 'Split', pattern: { Regex: '.' }, behavior: 'Isolated', invert: false };
// Without a decoder HF joins tokens with spaces; Fuse concatenates them.
const CONCAT_DECODER = { type: 'Fuse' };

function describeChar(ch: string): string {
  const codePoint = ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0');
  return `${JSON.stringify(ch)} (U+${codePoint})`;
}

export class CharTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly eosId: number;
  readonly padId: number;
  readonly stopIds: number[];
  private readonly chars: string[];
  private readonly idByChar = new Map<string, number>();

  /** Ids 0..n-1 are the characters of `chars` (code points, in order), then eos, then pad. */
  constructor(chars: string) {
    this.chars = Array.from(chars);
    this.chars.forEach((ch, id) => {
      if (this.idByChar.has(ch)) throw new Error(`CharTokenizer: character ${describeChar(ch)} appears twice`);
      this.idByChar.set(ch, id);
    });
    this.eosId = this.chars.length;
    this.padId = this.chars.length + 1;
    this.stopIds = [this.eosId];
    this.vocabSize = this.chars.length + 2;
  }

  encode(text: string): number[] {
    const ids: number[] = [];
    let index = 0;
    for (const ch of text) {
      const id = this.idByChar.get(ch);
      if (id === undefined) {
        throw new Error(`cannot encode character ${describeChar(ch)} at index ${index}: it is not in the tokenizer vocabulary`);
      }
      ids.push(id);
      index += ch.length;
    }
    return ids;
  }

  decode(ids: ArrayLike<number>): string {
    let text = '';
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id === this.eosId) break;
      if (id === this.padId) continue;
      const ch = Number.isInteger(id) ? this.chars[id] : undefined;
      if (ch === undefined) throw new Error(`cannot decode token id ${id}: vocabulary ids are 0..${this.vocabSize - 1}`);
      text += ch;
    }
    return text;
  }

  canEncode(text: string): boolean {
    for (const ch of text) if (!this.idByChar.has(ch)) return false;
    return true;
  }

  toJSON(): object {
    const addedToken = (id: number, content: string) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    });
    const vocab = Object.fromEntries([...this.chars.map((ch, id) => [ch, id] as const), [EOS_TOKEN, this.eosId], [PAD_TOKEN, this.padId]]);
    return {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [addedToken(this.eosId, EOS_TOKEN), addedToken(this.padId, PAD_TOKEN)],
      normalizer: null,
      pre_tokenizer: PER_CHAR_PRE_TOKENIZER,
      post_processor: null,
      decoder: CONCAT_DECODER,
      model: { type: 'WordLevel', vocab, unk_token: UNK_TOKEN },
    };
  }
}

// ---------------------------------------------------------------------------------------
// tokenizer.json

const UNSUPPORTED = 'unsupported tokenizer.json';

type JsonObject = Record<string, unknown>;

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function sameJSON(a: unknown, b: unknown): boolean {
  if (isObject(a) && isObject(b)) {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((k) => Object.hasOwn(b, k) && sameJSON(a[k], b[k]));
  }
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => sameJSON(x, b[i]));
  return a === b;
}

function isAbsent(value: unknown): boolean {
  return value === undefined || value === null;
}

export function tokenizerFromJSON(json: unknown): Tokenizer {
  if (!isObject(json)) throw new Error(`${UNSUPPORTED}: expected a JSON object`);
  if (json.version !== '1.0') throw new Error(`${UNSUPPORTED}: version ${JSON.stringify(json.version)}; only "1.0" is supported`);
  if (!isObject(json.model)) throw new Error(`${UNSUPPORTED}: missing "model" object`);
  switch (json.model.type) {
    case 'WordLevel':
      return charTokenizerFromWordLevel(json, json.model);
    default:
      throw new Error(`${UNSUPPORTED}: model type ${JSON.stringify(json.model.type)}; only WordLevel over single characters is supported`);
  }
}

function unsupportedCharTokenizer(why: string): never {
  throw new Error(`${UNSUPPORTED}: ${why}; only a per-character WordLevel tokenizer with ${EOS_TOKEN} and ${PAD_TOKEN} is supported`);
}

/** Accepts exactly what CharTokenizer.toJSON writes (the decoder may also be null). */
function charTokenizerFromWordLevel(json: JsonObject, model: JsonObject): CharTokenizer {
  const fail: (why: string) => never = unsupportedCharTokenizer;
  for (const field of ['normalizer', 'post_processor', 'truncation', 'padding']) {
    if (!isAbsent(json[field])) fail(`"${field}" must be null`);
  }
  if (!sameJSON(json.pre_tokenizer, PER_CHAR_PRE_TOKENIZER)) fail('pre_tokenizer must split every character (Split, Regex ".", Isolated)');
  if (!isAbsent(json.decoder) && !sameJSON(json.decoder, CONCAT_DECODER)) fail('decoder must be null or Fuse');
  const vocab = model.vocab;
  if (!isObject(vocab)) fail('model.vocab must be an object');

  // Characters must take ids 0..n-1; the specials, if listed in the vocab, follow at n and n+1.
  const charById = new Map<number, string>();
  const specialIds = new Map<string, number>();
  for (const [token, id] of Object.entries(vocab)) {
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) {
      fail(`vocab id for ${JSON.stringify(token)} must be a non-negative integer`);
    }
    if (token === EOS_TOKEN || token === PAD_TOKEN) specialIds.set(token, id);
    else if (Array.from(token).length !== 1) fail(`vocab entry ${JSON.stringify(token)} is not a single character`);
    else if (charById.has(id)) fail(`vocab id ${id} is used twice`);
    else charById.set(id, token);
  }
  const charCount = charById.size;
  const chars = Array.from({ length: charCount }, (_, id) => charById.get(id) ?? fail(`character ids must be numbered 0..${charCount - 1}`));
  const expectedIds = new Map([
    [EOS_TOKEN, charCount],
    [PAD_TOKEN, charCount + 1],
  ]);
  for (const [token, id] of specialIds) {
    if (id !== expectedIds.get(token)) fail(`vocab id of ${token} must be ${expectedIds.get(token)}`);
  }

  const added = json.added_tokens;
  const addedOk =
    Array.isArray(added) &&
    added.length === 2 &&
    added.every((t) => isObject(t) && t.special === true && typeof t.content === 'string' && expectedIds.get(t.content) === t.id) &&
    added[0].content !== added[1].content;
  if (!addedOk) fail(`added_tokens must be exactly ${EOS_TOKEN} (id ${charCount}) and ${PAD_TOKEN} (id ${charCount + 1}), both special`);

  return new CharTokenizer(chars.join(''));
}

export async function loadTokenizer(dir: string): Promise<Tokenizer> {
  const path = join(dir, TOKENIZER_FILE);
  const text = await readFile(path, 'utf8');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Error(`${path}: not valid JSON: ${(err as Error).message}`);
  }
  try {
    return tokenizerFromJSON(json);
  } catch (err) {
    throw new Error(`${path}: ${(err as Error).message}`);
  }
}

/** Writes DIR/tokenizer.json atomically (temp file, fsync, rename). */
export async function saveTokenizer(dir: string, tok: Tokenizer): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, TOKENIZER_FILE), JSON.stringify(tok.toJSON(), null, 2) + '\n');
}
