// Calibration of the served confidence (src/sampling/calibration.ts): the expected
// calibration error and reliability curve, checked against values worked out by hand.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { calibration } from '../src/sampling/calibration.ts';

test('ECE is the answer-weighted mean gap between confidence and accuracy, bin by bin', () => {
  // Bin [0.9, 1]: confidences 0.9 and 1.0 (mean 0.95), one right: gap 0.45, weight 2/5.
  // Bin [0.5, 0.6): 0.5, 0.5, 0.5 (mean 0.5), two right: gap 1/6, weight 3/5.
  const c = calibration([
    { confidence: 0.9, correct: true },
    { confidence: 1, correct: false },
    { confidence: 0.5, correct: true },
    { confidence: 0.5, correct: true },
    { confidence: 0.5, correct: false },
  ]);
  assert.ok(Math.abs(c.ece! - ((2 / 5) * 0.45 + (3 / 5) * (2 / 3 - 0.5))) < 1e-12);
  assert.ok(Math.abs(c.mean_confidence! - 3.4 / 5) < 1e-12);
  assert.equal(c.accuracy, 3 / 5);
  assert.equal(c.bins.length, 10);
  assert.deepEqual(c.bins[5], { lo: 0.5, hi: 0.6, n: 3, confidence: 0.5, accuracy: 2 / 3 });
  assert.equal(c.bins[9]!.n, 2, '1.0 falls in the last bin');
  assert.equal(c.bins[0]!.confidence, null);
});

test('a perfectly calibrated set has ECE 0; a confidently wrong one has ECE equal to its confidence; none has none', () => {
  const fair = [...Array(10)].map((_, i) => ({ confidence: 0.8, correct: i < 8 }));
  assert.ok(Math.abs(calibration(fair).ece!) < 1e-12);
  const wrong = [...Array(4)].map(() => ({ confidence: 0.75, correct: false }));
  assert.equal(calibration(wrong).ece, 0.75);
  assert.equal(calibration([]).ece, null);
  assert.throws(() => calibration([{ confidence: 1.5, correct: true }]), /not in \[0, 1\]/);
});
