import { test } from 'node:test';
import assert from 'node:assert/strict';
import { suite, SUITE_NAMES, PRETRAIN_MIXTURE, drawFrom } from '../src/tasks/suites.ts';
import { parseChain } from '../src/tasks/arithmetic.ts';
import { parseQuestions } from '../src/tasks/question-file.ts';
import { Rng } from '../src/util/rng.ts';

const jsValue = (q: string) => Function(`return ${q.slice(0, -1)}`)() as number;

test('every suite draws reproducible questions with right answers and its own shapes', () => {
  const shapes: Record<string, { operands: number[]; min: number; max: number }> = {
    'in-distribution': { operands: [2, 3], min: 0, max: 99 },
    '4-operand': { operands: [4], min: 0, max: 99 },
    '5-operand': { operands: [5], min: 0, max: 99 },
    '3-digit': { operands: [2, 3], min: 100, max: 999 },
  };
  assert.deepEqual([...SUITE_NAMES].sort(), Object.keys(shapes).sort());
  for (const name of SUITE_NAMES) {
    const qs = suite(name, 300, 7);
    assert.deepEqual(suite(name, 300, 7), qs);
    assert.notDeepEqual(suite(name, 300, 8), qs);
    const want = shapes[name]!;
    const seen = new Set<number>();
    for (const q of qs) {
      const { numbers } = parseChain(q.question);
      seen.add(numbers.length);
      assert.ok(
        numbers.every((n) => n >= want.min && n <= want.max),
        q.question,
      );
      assert.equal(q.answer, String(jsValue(q.question)));
    }
    assert.deepEqual([...seen].sort(), want.operands, name);
  }
  assert.throws(() => suite('6-operand', 1, 0), /unknown suite "6-operand"; one of: in-distribution/);
});

test('the pretraining mixture has 44/44/12 percent 2/3/4-operand chains', () => {
  const rng = new Rng(3);
  const counts = [0, 0, 0, 0, 0, 0];
  const n = 20000;
  for (let i = 0; i < n; i++) counts[parseChain(drawFrom(PRETRAIN_MIXTURE, rng).question).numbers.length]!++;
  assert.ok(Math.abs(counts[2]! / n - 0.44) < 0.015 && Math.abs(counts[3]! / n - 0.44) < 0.015 && Math.abs(counts[4]! / n - 0.12) < 0.01, String(counts));
});

test('question files: answers optional, bad lines named', () => {
  assert.deepEqual(parseQuestions('{"question":"1+2=","answer":"3"}\n\n{"question":"4-5="}\n{"question":"1+1=","answer":2}\n'), [
    { question: '1+2=', answer: '3' },
    { question: '4-5=' },
    { question: '1+1=', answer: '2' },
  ]);
  assert.throws(() => parseQuestions('{"question":"1+2="}\n{oops', 'f.jsonl'), /f\.jsonl:2: not JSON/);
  assert.throws(() => parseQuestions('[1]', 'f'), /f:1: expected an object/);
  assert.throws(() => parseQuestions('{"q":"1+2="}', 'f'), /f:1: "question" must be a non-empty string/);
  assert.throws(() => parseQuestions('{"question":"1=","answer":{}}', 'f'), /"answer" must be a string or a number/);
});
