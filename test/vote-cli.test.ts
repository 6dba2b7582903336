// `ttrl vote` as a user runs it: JSONL completions on stdin, one vote per line on stdout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../bin/ttrl.js', import.meta.url));

function vote(input: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [bin, 'vote', ...args], (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
    child.stdin!.end(input);
  });
}
const lines = (out: string) =>
  out
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));

test('ttrl vote --json: one vote per input line, in order; null when no completion has an answer', async () => {
  const boxed = readFileSync(new URL('./fixtures/completions/boxed.jsonl', import.meta.url), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l).completion as string);
  const input = [
    { completions: ['so $\\boxed{\\frac{1}{2}}$', 'hence \\boxed{0.5}.', 'I get \\boxed{1/3}', boxed[1]!, 'no box here: 7'] },
    { completions: ['The answer is 42.', 'cut off \\boxed{4'] },
    { completions: [] },
    { completions: ['\\boxed{3}', '\\boxed{2}'], question: 'other fields are ignored' },
  ];
  const r = await vote(input.map((x) => JSON.stringify(x)).join('\n') + '\n', '--extractor', 'boxed', '--json');
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(lines(r.stdout), [
    { answer: '0.5', votes: { '0.5': 3, '1/3': 1, '': 1 }, confidence: 0.6, answers: ['0.5', '0.5', '1/3', '0.5', null] },
    { answer: null, votes: { '': 2 }, confidence: 0, answers: [null, null] },
    { answer: null, votes: {}, confidence: 0, answers: [] },
    { answer: '2', votes: { '3': 1, '2': 1 }, confidence: 0.5, answers: ['3', '2'] },
  ]);
});

test('ttrl vote: a bad line is named on stderr and gets an error line, the others are still voted, exit code 1', async () => {
  const input = [
    '{"completions": ["Answer: B", "(B)", "**C**"]}',
    '',
    'not json',
    '{"completions": "B"}',
    '[1]',
    '{"completions": ["A", 3]}',
    '{"other": 1}',
    '{"completions": ["The answer is (D)."]}',
  ].join('\n');
  const r = await vote(input, '--extractor', 'choice', '--json');
  assert.equal(r.code, 1);
  const out = lines(r.stdout);
  assert.equal(out.length, 7, 'one line per record: the blank line is not a record');
  assert.deepEqual(out[0], { answer: 'B', votes: { B: 2, C: 1 }, confidence: 2 / 3, answers: ['B', 'B', 'C'] });
  assert.deepEqual(
    out.slice(1, 6).map((o) => o.line),
    [3, 4, 5, 6, 7],
    'errors carry the input line number',
  );
  assert.match(out[1].error, /^line 3: not JSON/);
  assert.match(out[2].error, /^line 4: "completions" must be an array of strings, got a string/);
  assert.match(out[3].error, /^line 5: expected an object \{"completions": \[\.\.\.\]\}, got an array/);
  assert.match(out[4].error, /^line 6: completions\[1\] must be a string, got a number/);
  assert.match(out[5].error, /^line 7: "completions" must be an array of strings, got nothing/);
  assert.equal(out[6].answer, 'D');
  for (const n of [3, 4, 5, 6, 7]) assert.match(r.stderr, new RegExp(`ttrl: line ${n}: `));
  assert.match(r.stderr, /ttrl: 5 lines could not be read/);
});

test('ttrl vote without --json: a readable line per input line', async () => {
  const r = await vote('{"completions": ["#### 1,000", "so 1000.", "about 999"]}\n{"completions": ["none"]}\n', '--extractor', 'number');
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.trim().split('\n'), ['"1000"  2/3 votes (0.667)  ["1000" 2, "999" 1]', 'no answer  0/1 votes (0.000)  [(none) 1]']);
});

test('ttrl vote refuses an unknown extractor or a bad pattern before reading anything', async () => {
  const unknown = await vote('{"completions": []}\n', '--extractor', 'boxes');
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /ttrl: unknown extractor "boxes"; one of: arithmetic, boxed, number, choice/);
  assert.equal(unknown.stdout, '');
  const bad = await vote('', '--extractor', 'regex:(');
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /ttrl: extractor "regex:\(": invalid regular expression/);
  const missing = await vote('');
  assert.notEqual(missing.code, 0);
  assert.match(missing.stderr, /required option '--extractor <name>' not specified/);
  const regex = await vote('{"completions": ["Once upon a time", "Once more", "Lily ran"]}\n', '--extractor', 'regex:^(\\w+)', '--json');
  assert.deepEqual(lines(regex.stdout), [{ answer: 'Once', votes: { Once: 2, Lily: 1 }, confidence: 2 / 3, answers: ['Once', 'Once', 'Lily'] }]);
});
