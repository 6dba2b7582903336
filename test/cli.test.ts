// The CLI as a user runs it: --json prints one JSON object as the last stdout line; errors exit non-zero.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ttrl, lastJson } from './helpers/cli.ts';

test('ttrl init, info and sample, with --json', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ttrl-cli-'));
  try {
    const init = await ttrl('init', '--out', dir, '--d-model', '16', '--layers', '1', '--heads', '2', '--context', '32', '--json');
    assert.equal(init.code, 0, init.stderr);
    assert.equal(lastJson(init.stdout).config.dModel, 16);
    const info = await ttrl('info', '--model', dir, '--json');
    assert.equal(lastJson(info.stdout).params > 0, true);
    const s = await ttrl('sample', '--model', dir, '--prompt', '12+3=', '--samples', '3', '--max-new-tokens', '5', '--seed', '4', '--json');
    assert.equal(s.code, 0, s.stderr);
    const out = lastJson(s.stdout);
    assert.equal(out.completions.length, 3);
    for (const c of out.completions) assert.ok(c.tokens >= 1 && c.tokens <= 5 && typeof c.text === 'string');
    const again = await ttrl('sample', '--model', dir, '--prompt', '12+3=', '--samples', '3', '--max-new-tokens', '5', '--seed', '4', '--json');
    assert.deepEqual(lastJson(again.stdout).completions, out.completions);

    const bad = await ttrl('sample', '--model', dir, '--prompt', '12*3=');
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /cannot encode character "\*"/);
    const badOpt = await ttrl('sample', '--model', dir, '--prompt', '1=', '--top-p', '1.5');
    assert.notEqual(badOpt.code, 0);
    assert.match(badOpt.stderr, /--top-p must be in \(0, 1\]/);
    const missing = await ttrl('info', '--model', join(dir, 'nope'));
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /cannot read model .*nope/);
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('ttrl info and sample take a Llama-family Hugging Face directory or a GGUF file (stories260K: the reference story)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ttrl-cli-llama-'));
  process.env.TTRL_CACHE_DIR = dir; // the GGUF conversion of this test stays in it
  const fixture = (p: string) => fileURLToPath(new URL(`./fixtures/stories260K/${p}`, import.meta.url));
  try {
    for (const model of [fixture('hf'), fixture('stories260K.gguf')]) {
      const info = await ttrl('info', '--model', model, '--json');
      assert.equal(info.code, 0, info.stderr);
      const i = lastJson(info.stdout);
      assert.deepEqual([i.family, i.params, i.dims.kvHeads, i.tokenizer.vocab], ['llama', 260032, 4, 512]);
      const s = await ttrl(
        'sample',
        '--model',
        model,
        '--prompt',
        'Once upon a time',
        '--temperature',
        '0',
        '--samples',
        '1',
        '--max-new-tokens',
        '60',
        '--json',
      );
      assert.equal(s.code, 0, s.stderr);
      const text: string = lastJson(s.stdout).completions[0].text;
      assert.match(text, /^, there was a little girl named Lily\. She loved to play outside in the park\. One day, she saw a big, red ball\./);
    }
    const tooLong = await ttrl('sample', '--model', fixture('hf'), '--prompt', 'Once upon a time', '--max-new-tokens', '600');
    assert.notEqual(tooLong.code, 0);
    assert.match(tooLong.stderr, /prompt of 5 tokens \+ 600 new tokens exceeds the context length 512/);
  } finally {
    delete process.env.TTRL_CACHE_DIR;
    await rm(dir, { recursive: true });
  }
});
