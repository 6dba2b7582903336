// Answer extractors on realistic completions (test/fixtures/completions: the styles of
// Qwen2.5-Math, Qwen3, GSM8K and Llama multiple-choice answers), their hard cases, and
// arbitrary text.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { extractor, EXTRACTORS } from '../src/tasks/extractors.ts';
import { extractAnswer } from '../src/tasks/arithmetic.ts';
import { normalizeAnswer } from '../src/tasks/normalize.ts';
import { Rng } from '../src/util/rng.ts';

interface Case {
  completion: string;
  expected: string | null;
  note: string;
}
const cases = (file: string): Case[] =>
  readFileSync(new URL(`./fixtures/completions/${file}`, import.meta.url), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Case);

for (const [file, name] of [
  ['boxed.jsonl', 'boxed'],
  ['number.jsonl', 'number'],
  ['choice.jsonl', 'choice'],
  ['choice-a-j.jsonl', 'choice:A-J'],
] as const)
  test(`--extractor ${name} reads the answers of realistic completions (${file}), nulls included`, () => {
    const ex = extractor(name);
    const all = cases(file);
    assert.ok(all.some((c) => c.expected === null) || name === 'choice:A-J', 'the fixture has cases without an answer');
    for (const c of all) assert.equal(normalizeAnswer(ex.extract(c.completion)), c.expected, `${c.note}: ${JSON.stringify(c.completion.slice(-80))}`);
  });

test('boxed returns the box as written, braces balanced; the last box decides even when it is broken', () => {
  const boxed = extractor('boxed');
  assert.equal(boxed.extract('so $\\boxed{\\frac{1}{2}}$.'), '\\frac{1}{2}');
  assert.equal(boxed.extract('\\boxed{a^{2} + \\{b\\}}'), 'a^{2} + \\{b\\}');
  assert.equal(boxed.extract('first \\boxed{3}, then \\boxed{\\frac{4}{'), null, 'an earlier box is not used instead');
  assert.equal(boxed.extract('\\boxedx and \\boxes{5}'), null, 'other commands are not boxes');
  assert.equal(boxed.extract('\\boxed'), null);
  assert.equal(boxed.extract('\\fbox{7} \\boxed {8}'), '8', 'a space before the brace is allowed');
});

test('number: the GSM8K marker, else the last number; list markers and digits in words are skipped', () => {
  const number = extractor('number');
  assert.equal(number.extract('#### -3.5'), '-3.5');
  assert.equal(number.extract('#### nothing here, but 12 apples'), '12', 'a marker without a number falls back to the last number');
  assert.equal(number.extract('from 3-5 people'), '5', 'a hyphen after a digit is not a sign');
  assert.equal(number.extract('1,2,3'), '3', 'commas that do not group thousands separate numbers');
  assert.equal(number.extract('1,2345'), '2345');
  assert.equal(number.extract('costs .5 dollars'), '.5');
  assert.equal(number.extract('the answer: 7\n1) recheck the sum'), '7');
  assert.equal(number.extract('2. done'), null, 'a lone list marker is not an answer');
  assert.equal(number.extract('9.'), '9', 'a number that ends a sentence is not a list marker');
});

test('choice: explicit statements win over strong forms, the article "a" and the pronoun "I" are never read, and letters stay within range', () => {
  const choice = extractor('choice');
  assert.equal(choice.extract('(A) is tempting, but **B** ... The answer is (C).'), 'C');
  assert.equal(choice.extract('The answer is (C). Some would say **B**, or (A).'), 'C', 'an explicit statement wins over strong forms after it');
  assert.equal(choice.extract('(A) or (B)? I go with (B)'), 'B', 'the last strong form');
  assert.equal(choice.extract('The answer is (G).'), null, 'G is not among A-D');
  assert.equal(extractor('choice:A-J').extract('The answer is (G).'), 'G');
  assert.equal(choice.extract('a'), null);
  assert.equal(choice.extract('Answer: a dog'), null);
  assert.equal(choice.extract('answer: **c**'), 'C', 'a wrapped lower-case letter after a cue');
  assert.equal(choice.extract('The answer is A.'), 'A');
  assert.equal(choice.extract('Answer:B'), 'B');
  assert.equal(choice.extract('the answers are many'), null);
  assert.equal(choice.extract('I choose (D)'), 'D');
  assert.equal(choice.extract("Answer: A's claim is wrong; (B)"), 'B', "A's is a word");
});

test('regex: the first group of the last match, or the whole match; bad patterns fail when named', () => {
  assert.equal(extractor('regex:answer=(\\w+)').extract('answer=cat ... answer=dog'), 'dog');
  assert.equal(extractor('regex:\\d+').extract('3 then 14'), '14');
  assert.equal(extractor('regex:(x)|(y)').extract('y'), null, 'the first group did not take part');
  assert.equal(extractor('regex:z*').extract('abc'), null, 'an empty match is no answer');
  assert.equal(extractor('regex:^\\s*(\\w+)').extract(' Once upon a time'), 'Once');
  assert.throws(() => extractor('regex:(unclosed'), /extractor "regex:\(unclosed": invalid regular expression/);
  assert.throws(() => extractor('regex:'), /has no pattern/);
});

test('unknown extractors are refused by name', () => {
  assert.throws(() => extractor('boxxed'), /unknown extractor "boxxed"; one of: arithmetic, boxed, number, choice, choice:A-J, regex:PATTERN/);
  assert.throws(() => extractor('choice:A-Z'), /choice:A-B \.\.\. choice:A-J/);
  assert.throws(() => extractor('choice:B-D'), /choice:A-B/);
});

test("arithmetic is the shipped model's marker rule", () => {
  const arithmetic = extractor('arithmetic');
  for (const t of ['12+34=46#46', '5-9=-4#-4', '#007', '12+34=46', '#4.0', '1#2#3', '']) assert.equal(arithmetic.extract(t), extractAnswer(t), t);
});

test('no extractor throws on arbitrary text, and each returns a string or null', () => {
  const rng = new Rng(12);
  const alphabet = [
    '\\boxed',
    '\\fbox',
    '{',
    '}',
    '\\',
    '#',
    '####',
    ' ',
    '\n',
    '(',
    ')',
    '*',
    '**',
    'A',
    'a',
    'I',
    'answer is',
    'Answer:',
    '$',
    '1',
    ',',
    '.',
    '-',
    '\u2212',
    '9',
    '=',
    'x',
    '\\frac',
    'é',
    '\u0000',
  ];
  const all = [...Object.keys(EXTRACTORS), 'choice:A-J', 'regex:(\\d+)', 'regex:a|'].map(extractor);
  for (let i = 0; i < 3000; i++) {
    let text = '';
    for (let n = rng.int(0, 30); n > 0; n--) text += alphabet[rng.int(0, alphabet.length - 1)];
    for (const ex of all) {
      const a = ex.extract(text);
      assert.ok(a === null || (typeof a === 'string' && a.length > 0), `${ex.name} on ${JSON.stringify(text)}: ${JSON.stringify(a)}`);
      const n = normalizeAnswer(a);
      assert.equal(normalizeAnswer(n), n, `normalising twice on ${JSON.stringify(a)}`);
    }
  }
});

test('long and deeply nested text is read in linear time (it was quadratic: seconds per completion)', () => {
  const texts = [
    '1,'.repeat(100_000),
    '\n1. a'.repeat(40_000),
    '\\boxed{'.repeat(30_000),
    '\\text{'.repeat(20_000) + '5' + '}'.repeat(20_000),
    'answer is '.repeat(20_000),
    '(A) '.repeat(50_000),
    `A${' '.repeat(100_000)}b`,
    `#### ${' '.repeat(100_000)}x`,
  ];
  const all = [...Object.keys(EXTRACTORS), 'choice:A-J'].map(extractor);
  const t0 = performance.now();
  for (const t of texts) {
    for (const ex of all) ex.extract(t);
    normalizeAnswer(t);
  }
  assert.equal(normalizeAnswer('\\text{'.repeat(10_000) + '5' + '}'.repeat(10_000)), '5');
  assert.ok(performance.now() - t0 < 2000, `${(performance.now() - t0).toFixed(0)} ms`);
});
