import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ARITHMETIC_CHARS, CharTokenizer, loadTokenizer, saveTokenizer, tokenizerFromJSON } from '../src/tokenizers/tokenizer.ts';

const arithmetic = new CharTokenizer(ARITHMETIC_CHARS);

/** The parts of a tokenizer.json that these tests change. */
interface TokenizerJson {
  [key: string]: unknown;
  model: { [key: string]: unknown; vocab: Record<string, number> };
  added_tokens: { id: number; content: string; special: boolean }[];
}

/** A fresh, mutable copy of the arithmetic tokenizer.json. */
function arithmeticJSON(): TokenizerJson {
  return JSON.parse(JSON.stringify(arithmetic.toJSON()));
}

test('arithmetic vocabulary: 15 chars, then eos and pad', () => {
  assert.equal(arithmetic.vocabSize, 17);
  assert.equal(arithmetic.eosId, 15);
  assert.equal(arithmetic.padId, 16);
});

test('encode maps each character to its index', () => {
  assert.deepEqual(arithmetic.encode('12+3=15;'), [1, 2, 10, 3, 12, 1, 5, 13]);
  assert.deepEqual(arithmetic.encode('-#'), [11, 14]);
  assert.deepEqual(arithmetic.encode(''), []);
});

test('encode names the first character it cannot read', () => {
  assert.throws(() => arithmetic.encode('1+x=y'), /cannot encode character "x" \(U\+0078\) at index 2/);
  assert.throws(() => arithmetic.encode('1 + 2'), /cannot encode character " " \(U\+0020\) at index 1/);
});

test('canEncode', () => {
  assert.equal(arithmetic.canEncode('99-1=98;'), true);
  assert.equal(arithmetic.canEncode(''), true);
  assert.equal(arithmetic.canEncode('9*9'), false);
});

test('decode inverts encode, stops at eos and skips pad', () => {
  const text = '7-12=-5;#';
  assert.equal(arithmetic.decode(arithmetic.encode(text)), text);
  const { eosId, padId } = arithmetic;
  assert.equal(arithmetic.decode([padId, 4, padId, 2, eosId, 3, 3]), '42');
  assert.equal(arithmetic.decode(new Int32Array([1, eosId])), '1');
  assert.equal(arithmetic.decode([eosId, 1]), '');
});

test('decode rejects ids outside the vocabulary', () => {
  assert.throws(() => arithmetic.decode([1, 17]), /cannot decode token id 17: vocabulary ids are 0..16/);
  assert.throws(() => arithmetic.decode([-1]), /cannot decode token id -1/);
  assert.throws(() => arithmetic.decode([1.5]), /cannot decode token id 1.5/);
});

test('characters are code points, so astral characters work', () => {
  const tok = new CharTokenizer('aé😀');
  assert.equal(tok.vocabSize, 5);
  assert.deepEqual(tok.encode('😀aé'), [2, 0, 1]);
  assert.equal(tok.decode([2, 0, 1]), '😀aé');
  assert.throws(() => tok.encode('a😀b'), /"b" \(U\+0062\) at index 3/);
  assert.deepEqual(tokenizerFromJSON(tok.toJSON()).encode('é😀'), [1, 2]);
});

test('constructor rejects repeated characters', () => {
  assert.throws(() => new CharTokenizer('abca'), /character "a" \(U\+0061\) appears twice/);
});

test('toJSON writes the Hugging Face tokenizer.json layout', () => {
  const json = new CharTokenizer('ab').toJSON();
  const special = { single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
  assert.deepEqual(json, {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [
      { id: 2, content: '<eos>', ...special },
      { id: 3, content: '<pad>', ...special },
    ],
    normalizer: null,
    pre_tokenizer: { type: 'Split', pattern: { Regex: '.' }, behavior: 'Isolated', invert: false },
    post_processor: null,
    decoder: { type: 'Fuse' },
    model: { type: 'WordLevel', vocab: { a: 0, b: 1, '<eos>': 2, '<pad>': 3 }, unk_token: '<unk>' },
  });
});

test('tokenizer.json round trips', () => {
  const restored = tokenizerFromJSON(JSON.parse(JSON.stringify(arithmetic)));
  assert.equal(restored.vocabSize, 17);
  assert.equal(restored.eosId, 15);
  assert.equal(restored.padId, 16);
  assert.deepEqual(restored.encode('12+3=15;'), arithmetic.encode('12+3=15;'));
  assert.deepEqual(restored.toJSON(), arithmetic.toJSON());
});

test('tokenizer.json variants that mean the same thing are accepted', () => {
  const nullDecoder = arithmeticJSON();
  nullDecoder.decoder = null;
  assert.equal(tokenizerFromJSON(nullDecoder).vocabSize, 17);

  const specialsOnlyInAddedTokens = arithmeticJSON();
  delete specialsOnlyInAddedTokens.model.vocab['<eos>'];
  delete specialsOnlyInAddedTokens.model.vocab['<pad>'];
  assert.equal(tokenizerFromJSON(specialsOnlyInAddedTokens).eosId, 15);
});

test('rejects other model types, naming the type', () => {
  const bpe = arithmeticJSON();
  bpe.model = { type: 'BPE', vocab: {}, merges: [] };
  assert.throws(() => tokenizerFromJSON(bpe), /unsupported tokenizer.json: model type "BPE"; only WordLevel over single characters is supported/);
  assert.throws(() => tokenizerFromJSON({ version: '1.0' }), /unsupported tokenizer.json: missing "model" object/);
  assert.throws(() => tokenizerFromJSON([]), /unsupported tokenizer.json: expected a JSON object/);
  assert.throws(() => tokenizerFromJSON({ ...arithmeticJSON(), version: '2.0' }), /version "2.0"/);
});

test('rejects WordLevel files that are not per-character', () => {
  const variants: [string, (json: TokenizerJson) => void, RegExp][] = [
    ['normalizer', (j) => (j.normalizer = { type: 'Lowercase' }), /"normalizer" must be null/],
    ['post_processor', (j) => (j.post_processor = { type: 'ByteLevel' }), /"post_processor" must be null/],
    ['pre_tokenizer', (j) => (j.pre_tokenizer = { type: 'Whitespace' }), /pre_tokenizer must split every character/],
    ['decoder', (j) => (j.decoder = { type: 'ByteLevel' }), /decoder must be null or Fuse/],
    ['multi-char vocab', (j) => (j.model.vocab['12'] = 17), /vocab entry "12" is not a single character/],
    ['bad id', (j) => (j.model.vocab['x'] = -3), /vocab id for "x" must be a non-negative integer/],
    ['id gap', (j) => (j.model.vocab['9'] = 20), /character ids must be numbered 0..14/],
    ['shared id', (j) => (j.model.vocab['9'] = 0), /vocab id 0 is used twice/],
    ['eos id', (j) => (j.model.vocab['<eos>'] = 3), /vocab id of <eos> must be 15/],
    ['no vocab', (j) => Reflect.deleteProperty(j.model, 'vocab'), /model.vocab must be an object/],
    ['missing pad', (j) => j.added_tokens.pop(), /added_tokens must be exactly <eos> \(id 15\) and <pad> \(id 16\)/],
    ['pad id', (j) => (j.added_tokens[1]!.id = 20), /added_tokens must be exactly/],
    ['not special', (j) => (j.added_tokens[0]!.special = false), /added_tokens must be exactly/],
    ['extra token', (j) => j.added_tokens.push({ id: 17, content: '<unk>', special: true }), /added_tokens must be exactly/],
  ];
  for (const [what, mutate, error] of variants) {
    const json = arithmeticJSON();
    mutate(json);
    assert.throws(() => tokenizerFromJSON(json), error, what);
    assert.throws(() => tokenizerFromJSON(json), /^Error: unsupported tokenizer.json: .*only a per-character WordLevel/, what);
  }
});

test('saveTokenizer and loadTokenizer round trip through DIR/tokenizer.json', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tokenizer-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await saveTokenizer(dir, arithmetic);
  assert.deepEqual(await readdir(dir), ['tokenizer.json']);
  assert.deepEqual(JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8')), arithmetic.toJSON());
  const loaded = await loadTokenizer(dir);
  assert.equal(loaded.decode(loaded.encode('3+4=7;')), '3+4=7;');
  assert.equal(loaded.vocabSize, 17);
});

test('loadTokenizer errors name the file', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tokenizer-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'tokenizer.json');
  await assert.rejects(loadTokenizer(dir), /ENOENT/);
  await writeFile(path, '{ not json');
  await assert.rejects(loadTokenizer(dir), (err: Error) => err.message.startsWith(`${path}: not valid JSON`));
  await writeFile(path, JSON.stringify({ version: '1.0', model: { type: 'Unigram' } }));
  await assert.rejects(loadTokenizer(dir), (err: Error) => err.message.startsWith(`${path}: unsupported tokenizer.json: model type "Unigram"`));
});
