import { test } from 'node:test';
import assert from 'node:assert/strict';
import { majorityVote, normalizeAnswer } from '../src/tasks/vote.ts';

test('answers normalise: numbers by value, text by trimmed spacing', () => {
  for (const [a, b] of [
    ['+5', '5'],
    ['05', '5'],
    ['5.0', '5'],
    ['-0', '0'],
    ['-07', '-7'],
    [' 12 ', '12'],
    ['1e2', '100'],
    ['.5', '0.5'],
  ] as const)
    assert.equal(normalizeAnswer(a), b, a);
  assert.equal(normalizeAnswer(null), null);
  assert.equal(normalizeAnswer('   '), null);
  assert.equal(normalizeAnswer(' x  y '), 'x y');
  assert.equal(normalizeAnswer('5-'), '5-');
});

test('the majority counts normalised votes; no answer is not a candidate', () => {
  const v = majorityVote(['5', '+5', '05', '7', null, '7', undefined]);
  assert.equal(v.label, '5');
  assert.equal(v.count, 3);
  assert.equal(v.ratio, 3 / 7);
  assert.deepEqual(v.counts, { '5': 3, '7': 2, '': 2 });
  const none = majorityVote([null, null]);
  assert.equal(none.label, null);
  assert.equal(none.ratio, 0);
  assert.equal(majorityVote([]).label, null);
});

test('ties break the same way whatever the order of the samples', () => {
  const votes = ['12', '-3', '12', '-3', '4', null];
  const labels = new Set<string | null>();
  for (let r = 0; r < 20; r++) {
    const shuffled = [...votes].sort(() => Math.sin(r * 7 + votes.length) - 0.1);
    labels.add(majorityVote(shuffled).label);
    labels.add(majorityVote([...shuffled].reverse()).label);
  }
  assert.deepEqual([...labels], ['-3']);
});
