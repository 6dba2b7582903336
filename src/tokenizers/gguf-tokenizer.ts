// Converts the tokenizer a GGUF file carries in its metadata (tokenizer.ggml.*) into a
// Hugging Face tokenizer.json + tokenizer_config.json pair. Only SentencePiece BPE
// (tokenizer.ggml.model = "llama") is supported. The output has the shape transformers'
// LlamaConverter gives a SentencePiece model: spaces become "▁" with one prepended, no
// pre-tokenizer, a BPE model with byte fallback, control tokens as special added tokens,
// and a template that adds <s>. Matching that converter matters: the same vocabulary with
// differently ordered merges can split words differently.

import type { GGUFFile, GGUFValue } from '../formats/gguf.ts';

export interface HFTokenizerFiles {
  /** tokenizer.json */
  tokenizerJson: Record<string, unknown>;
  /** tokenizer_config.json */
  tokenizerConfig: Record<string, unknown>;
  /** bos_token_id / eos_token_id / pad_token_id for config.json, where the file names them. */
  specialTokenIds: Record<string, number>;
  tokenCount: number;
}

// tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

const SPACE_MARK = '\u2581'; // "▁", SentencePiece's visible space

// llama.cpp's defaults for SentencePiece vocabularies when the file does not say.
const DEFAULT_IDS = { unknown: 0, bos: 1, eos: 2 };

interface Vocabulary {
  tokens: string[];
  scores: number[];
  types: number[];
}

const isString = (v: GGUFValue): v is string => typeof v === 'string';
const isFiniteNumber = (v: GGUFValue): v is number => typeof v === 'number' && Number.isFinite(v);
const isInteger = (v: GGUFValue): v is number => typeof v === 'number' && Number.isInteger(v);

function readVocabulary(file: GGUFFile): Vocabulary {
  const tokens = file.array('tokenizer.ggml.tokens', isString, 'strings');
  if (!tokens || tokens.length === 0) throw new Error(`${file.label}: metadata key tokenizer.ggml.tokens is missing or empty`);
  // Without scores, SentencePiece ranks pieces by id, which a falling score reproduces.
  const scores = file.array('tokenizer.ggml.scores', isFiniteNumber, 'finite numbers') ?? tokens.map((_, id) => -id);
  const types = file.array('tokenizer.ggml.token_type', isInteger, 'integers') ?? tokens.map(() => TOKEN_TYPE.NORMAL);
  for (const [key, list] of [
    ['tokenizer.ggml.scores', scores],
    ['tokenizer.ggml.token_type', types],
  ] as const) {
    if (list.length !== tokens.length) {
      throw new Error(`${file.label}: metadata key ${key} has ${list.length} entries but tokenizer.ggml.tokens has ${tokens.length}`);
    }
  }
  return { tokens, scores, types };
}

/** A token id from the metadata; the default when absent, undefined when out of range (llama.cpp writes -1 or 2^32-1 for "none"). */
function tokenId(file: GGUFFile, name: string, vocabSize: number, fallback?: number): number | undefined {
  const id = file.integer(`tokenizer.ggml.${name}_token_id`) ?? fallback;
  return id !== undefined && id >= 0 && id < vocabSize ? id : undefined;
}

/** token -> id; a token spelled twice cannot be told apart in tokenizer.json, so it is refused. */
function vocabularyMap(file: GGUFFile, tokens: string[]): Map<string, number> {
  const ids = new Map<string, number>();
  tokens.forEach((token, id) => {
    const earlier = ids.get(token);
    if (earlier !== undefined)
      throw new Error(`${file.label}: token ${JSON.stringify(token)} appears twice in tokenizer.ggml.tokens (ids ${earlier} and ${id})`);
    ids.set(token, id);
  });
  return ids;
}

/**
 * SentencePiece BPE files keep scored pieces but no merge list, so one is rebuilt the way
 * transformers' SentencePieceExtractor does: every split of a piece into two pieces that
 * are both in the vocabulary is a merge (splits fall between code points, as Python slices
 * strings). Merges are ranked by the merged piece's score, highest first; ties keep the
 * order they were generated in: by the merged piece's id, then by the left piece's id.
 */
export function sentencePieceMerges(tokens: string[], scores: number[], ids: Map<string, number>): [string, string][] {
  const merges: { left: string; right: string; score: number; mergedId: number; leftId: number }[] = [];
  tokens.forEach((piece, mergedId) => {
    let splitAt = 0;
    for (const char of piece) {
      splitAt += char.length;
      if (splitAt === piece.length) break;
      const left = piece.slice(0, splitAt);
      const right = piece.slice(splitAt);
      const leftId = ids.get(left);
      if (leftId !== undefined && ids.has(right)) merges.push({ left, right, score: scores[mergedId], mergedId, leftId });
    }
  });
  merges.sort((a, b) => b.score - a.score || a.mergedId - b.mergedId || a.leftId - b.leftId);
  return merges.map(({ left, right }) => [left, right]);
}

/** Unknown and control tokens are special added tokens; user-defined ones are added but not special. */
function addedTokens(vocabulary: Vocabulary): object[] {
  const added: object[] = [];
  vocabulary.types.forEach((type, id) => {
    if (type !== TOKEN_TYPE.UNKNOWN && type !== TOKEN_TYPE.CONTROL && type !== TOKEN_TYPE.USER_DEFINED) return;
    added.push({
      id,
      content: vocabulary.tokens[id],
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: type !== TOKEN_TYPE.USER_DEFINED,
    });
  });
  return added;
}

/** Adds bos/eos as transformers' LlamaTokenizerFast does, for single texts and pairs. */
function templateProcessor(tokens: string[], bos: number | undefined, eos: number | undefined): object {
  const special = (id: number | undefined, typeId: number) => (id === undefined ? [] : [{ SpecialToken: { id: tokens[id], type_id: typeId } }]);
  const sequence = (name: string, typeId: number) => [{ Sequence: { id: name, type_id: typeId } }];
  const specialTokens: Record<string, object> = {};
  for (const id of [bos, eos]) if (id !== undefined) specialTokens[tokens[id]] = { id: tokens[id], ids: [id], tokens: [tokens[id]] };
  return {
    type: 'TemplateProcessing',
    single: [...special(bos, 0), ...sequence('A', 0), ...special(eos, 0)],
    pair: [...special(bos, 0), ...sequence('A', 0), ...special(eos, 0), ...special(bos, 1), ...sequence('B', 1), ...special(eos, 1)],
    special_tokens: specialTokens,
  };
}

/**
 * llama.cpp prefixes every run of text with a space (tokenizer.ggml.add_space_prefix,
 * default true); the Prepend normalizer does the same, and the Strip decoder undoes it.
 */
function spaceHandling(addSpacePrefix: boolean): { normalizer: object; decoder: object } {
  const replaceSpaces = { type: 'Replace', pattern: { String: ' ' }, content: SPACE_MARK };
  const restoreSpaces = { type: 'Replace', pattern: { String: SPACE_MARK }, content: ' ' };
  const prepend = addSpacePrefix ? [{ type: 'Prepend', prepend: SPACE_MARK }] : [];
  const strip = addSpacePrefix ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : [];
  return {
    normalizer: { type: 'Sequence', normalizers: [...prepend, replaceSpaces] },
    decoder: { type: 'Sequence', decoders: [restoreSpaces, { type: 'ByteFallback' }, { type: 'Fuse' }, ...strip] },
  };
}

function sentencePieceTokenizer(file: GGUFFile, modelMaxLength: number | undefined): HFTokenizerFiles {
  const vocabulary = readVocabulary(file);
  const { tokens } = vocabulary;
  const ids = vocabularyMap(file, tokens);
  const unk = tokenId(file, 'unknown', tokens.length, DEFAULT_IDS.unknown);
  const bos = tokenId(file, 'bos', tokens.length, DEFAULT_IDS.bos);
  const eos = tokenId(file, 'eos', tokens.length, DEFAULT_IDS.eos);
  const pad = tokenId(file, 'padding', tokens.length);
  const addBos = file.boolean('tokenizer.ggml.add_bos_token') ?? true;
  const addEos = file.boolean('tokenizer.ggml.add_eos_token') ?? false;
  for (const [wanted, id, name] of [
    [addBos, bos, 'bos'],
    [addEos, eos, 'eos'],
  ] as const) {
    if (wanted && id === undefined)
      throw new Error(`${file.label}: tokenizer.ggml.add_${name}_token is set but tokenizer.ggml.${name}_token_id names no token`);
  }
  if (file.boolean('tokenizer.ggml.remove_extra_whitespaces')) {
    throw new Error(`${file.label}: tokenizer.ggml.remove_extra_whitespaces is set; collapsing whitespace as SentencePiece does is not supported`);
  }
  const { normalizer, decoder } = spaceHandling(file.boolean('tokenizer.ggml.add_space_prefix') ?? true);
  const vocab: Record<string, number> = Object.create(null); // a token may be spelled "__proto__"
  tokens.forEach((token, id) => (vocab[token] = id));

  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens(vocabulary),
    normalizer,
    pre_tokenizer: null,
    post_processor: templateProcessor(tokens, addBos ? bos : undefined, addEos ? eos : undefined),
    decoder,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: unk === undefined ? null : tokens[unk],
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: vocabulary.types.includes(TOKEN_TYPE.BYTE),
      ignore_merges: false,
      vocab,
      merges: sentencePieceMerges(tokens, vocabulary.scores, ids),
    },
  };
  const name = (id: number | undefined) => (id === undefined ? null : tokens[id]);
  const chatTemplate = file.string('tokenizer.chat_template');
  const tokenizerConfig = {
    add_bos_token: addBos,
    add_eos_token: addEos,
    bos_token: name(bos),
    eos_token: name(eos),
    unk_token: name(unk),
    pad_token: name(pad),
    clean_up_tokenization_spaces: false,
    legacy: false,
    ...(modelMaxLength === undefined ? {} : { model_max_length: modelMaxLength }),
    tokenizer_class: 'LlamaTokenizer',
    ...(chatTemplate === undefined ? {} : { chat_template: chatTemplate }),
  };
  const specialTokenIds: Record<string, number> = {};
  for (const [key, id] of [
    ['bos_token_id', bos],
    ['eos_token_id', eos],
    ['pad_token_id', pad],
  ] as const) {
    if (id !== undefined) specialTokenIds[key] = id;
  }
  return { tokenizerJson, tokenizerConfig, specialTokenIds, tokenCount: tokens.length };
}

/** The file's tokenizer as Hugging Face files; refuses tokenizer models other than "llama" by name. */
export function tokenizerFromGGUF(file: GGUFFile, modelMaxLength?: number): HFTokenizerFiles {
  const model = file.requireString('tokenizer.ggml.model');
  if (model !== 'llama') {
    throw new Error(`${file.label}: tokenizer.ggml.model is ${JSON.stringify(model)}; only "llama" (SentencePiece BPE) tokenizers convert`);
  }
  return sentencePieceTokenizer(file, modelMaxLength);
}
