import { test } from 'node:test';
import assert from 'node:assert/strict';
import { evaluate, extractAnswer, makeQuestion, parseChain, workedSolution } from '../src/tasks/arithmetic.ts';
import { Rng } from '../src/util/rng.ts';

test('generated questions carry their true value, and the worked solution reaches it', () => {
  const rng = new Rng(1);
  for (let i = 0; i < 500; i++) {
    const operands = 2 + (i % 4);
    const q = makeQuestion(rng, { operands, min: 0, max: 99 });
    const { numbers, ops } = parseChain(q.question);
    assert.equal(numbers.length, operands);
    assert.ok(numbers.every((n) => n >= 0 && n <= 99));
    // an independent evaluation: JavaScript's own arithmetic on the expression
    const expected = Function(`return ${q.question.slice(0, -1)}`)() as number;
    assert.equal(q.answer, String(expected));
    assert.equal(Number(q.answer), evaluate(q.question));
    const sol = workedSolution(q.question);
    assert.equal(sol.split(';').length, ops.length);
    assert.equal(extractAnswer(sol), q.answer);
  }
  assert.equal(workedSolution('12+34-56+7='), '12+34=46;46-56=-10;-10+7=-3#-3');
});

test('the extractor gives no answer for bad or partial completions, and never throws', () => {
  assert.equal(extractAnswer('12+34=46#46'), '46');
  assert.equal(extractAnswer('5-9=-4#-4'), '-4');
  assert.equal(extractAnswer('#007'), '7');
  for (const bad of ['', '12+34=46', '12+34=46#', '#-', '#4-', '#4#', '#1;2', '#+5', '#4.0', '#--3', '12#4a']) assert.equal(extractAnswer(bad), null, bad);
  assert.equal(extractAnswer('1#2#3'), '3');
  assert.throws(() => parseChain('12*3='), /not an arithmetic chain/);
  assert.throws(() => parseChain('12+3'), /not an arithmetic chain/);
});
