// Canonical answers: equivalent forms vote together, different answers stay apart, and the
// arithmetic task's integers are what they were.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isCorrect, normalizeAnswer } from '../src/tasks/normalize.ts';
import { majorityVote } from '../src/tasks/vote.ts';

const SAME: [string, string[]][] = [
  ['1000', ['1000', '1,000', '1000.0', '$1,000$', '1{,}000', '1\\,000', '\\$1,000', '1000.', '\\text{1000}', '+1000', '01000', '1e3']],
  [
    '0.5',
    [
      '\\frac{1}{2}',
      '\\dfrac{1}{2}',
      '\\tfrac12',
      '\\frac 1 2',
      '\\frac{ 1 }{ 2 }',
      '1/2',
      '0.5',
      '.5',
      '0.50',
      '$\\frac{1}{2}$',
      '\\frac{2}{4}',
      '\\(\\frac12\\)',
      '\\frac{1.5}{3}',
    ],
  ],
  ['1/3', ['1/3', '\\frac{1}{3}', '\\frac{2}{6}', '2/6', '\\dfrac{3}{9}']],
  ['-0.5', ['-\\frac{1}{2}', '\\frac{-1}{2}', '\\frac{1}{-2}', '-0.5', '\u22120.5', '-1/2']],
  ['B', ['B', 'b', '(B)', '(b)', '\\text{(B)}', 'B.', '$B$', '\\textbf{B}']],
  ['5', ['5', '5\\text{ cm}', '5 \\mbox{cm}', 'x = 5', 'x=5', 'k_1 = 5', '\\boxed{5}', '5^\\circ', '5^{\\circ}', '5°', '5.']],
  ['x+1', ['x+1', 'x + 1', '$x + 1$', 'x +1']],
  ['\\frac{\\sqrt{3}}{2}', ['\\frac{\\sqrt{3}}{2}', '\\dfrac{\\sqrt3}{2}', '\\frac{\\sqrt{3}} {2}', '\\displaystyle\\frac{\\sqrt 3}{2}']],
  ['50%', ['50%', '50\\%', '50.0%']],
  ['(1,2)', ['(1,2)', '(1, 2)', '\\left(1, 2\\right)']],
  ['x y', ['x y', ' x  y ', 'x\\quad y']],
];

test('equivalent answers share one canonical form', () => {
  for (const [canonical, forms] of SAME) for (const f of forms) assert.equal(normalizeAnswer(f), canonical, JSON.stringify(f));
});

test('different answers stay different', () => {
  const distinct = [
    '0.333',
    '1/3',
    'x+1',
    'X+1',
    '1,2',
    '12',
    '(1,2)',
    '\\sqrt{2}',
    '2',
    '10%',
    '10',
    '-5',
    '5',
    'mL',
    'Ml',
    '123456789012345678901',
    '123456789012345678900',
  ];
  const forms = distinct.map(normalizeAnswer);
  assert.equal(new Set(forms).size, distinct.length, JSON.stringify(forms));
  assert.equal(normalizeAnswer('123456789012345678901'), '123456789012345678901', 'integers are exact, whatever their size');
});

test("the arithmetic task's integers keep their form", () => {
  for (let i = -300; i <= 300; i++) assert.equal(normalizeAnswer(String(i)), String(i));
  for (const [a, b] of [
    ['+5', '5'],
    ['05', '5'],
    ['-0', '0'],
    ['-07', '-7'],
    ['5-', '5-'],
    ['#4', '#4'],
  ])
    assert.equal(normalizeAnswer(a), b, a);
});

test('nothing left is no answer; normalising twice changes nothing', () => {
  for (const empty of ['', '  ', '$$', '\\text{}', '.', '$ $']) assert.equal(normalizeAnswer(empty), null, JSON.stringify(empty));
  assert.equal(normalizeAnswer(null), null);
  for (const [, forms] of SAME)
    for (const f of forms) {
      const once = normalizeAnswer(f);
      assert.equal(normalizeAnswer(once), once, JSON.stringify(f));
    }
});

test('votes count equivalent answers together', () => {
  const v = majorityVote(['\\frac{1}{2}', '0.5', '1/2', '\\dfrac12', '1', '1.0', null]);
  assert.equal(v.label, '0.5');
  assert.deepEqual(v.counts, { '0.5': 4, '1': 2, '': 1 });
});

test('an answer is correct when it is the known answer once both are normalised; no answer is never correct', () => {
  for (const [canonical, forms] of SAME) for (const f of forms) assert.ok(isCorrect(canonical, f) && isCorrect(f, canonical), JSON.stringify(f));
  assert.ok(isCorrect('-5', '-5.0'));
  assert.equal(isCorrect('5', '-5'), false);
  assert.equal(isCorrect('x+1', 'X+1'), false);
  // Nothing against nothing is not a right answer, whatever form the nothing takes.
  for (const [answer, truth] of [
    [null, null],
    [null, ''],
    ['', ''],
    ['  ', '$$'],
    [undefined, '3'],
  ] as const)
    assert.equal(isCorrect(answer, truth), false, JSON.stringify([answer, truth]));
});
