// The OpenAI-compatible routes with the official `openai` npm client against a live server
// (the shipped model, a real SQLite file): models, completions with n (the votes), chat,
// streaming, sampling parameters, errors in OpenAI's shape, API keys, and questions that
// are logged and adapt like WebSocket ones.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import type { RunningServer } from '../src/server/server.ts';
import { suite } from '../src/tasks/suites.ts';
import { collect } from './helpers/collect.ts';
import { assertJudged, startTestServer, type SettingOverrides } from './helpers/server.ts';

const start = (over: SettingOverrides = {}): Promise<RunningServer> => startTestServer(over, { prefix: 'ttrl-openai-' });
const client = (s: RunningServer, apiKey = 'none') => new OpenAI({ baseURL: `${s.url}/v1`, apiKey, maxRetries: 0 });
const MODEL = 'arith-tiny';

test('models, completions with n votes, chat: OpenAI shapes with the vote beside the choices, logged like any question', async () => {
  const s = await start();
  try {
    const ai = client(s);
    const models = await ai.models.list();
    assert.deepEqual(
      models.data.map((m) => [m.id, m.object, m.owned_by]),
      [[MODEL, 'model', 'ttrl-server']],
    );

    const c = await ai.completions.create({ model: MODEL, prompt: '12+34=', n: 8 });
    assert.equal(c.object, 'text_completion');
    assert.equal(c.choices.length, 8);
    for (const [i, ch] of c.choices.entries()) {
      assert.equal(ch.index, i);
      assert.equal(typeof ch.text, 'string');
      assert.ok(ch.finish_reason === 'stop' || ch.finish_reason === 'length');
    }
    const ttrl = (c as unknown as { ttrl: { answer: string | null; votes: Record<string, number>; confidence: number; model_version: number } }).ttrl;
    assert.equal(
      Object.values(ttrl.votes).reduce((a, b) => a + b, 0),
      8,
    );
    assert.equal(ttrl.model_version, 0);
    assert.ok(ttrl.confidence > 0 && ttrl.confidence <= 1);
    assert.equal(c.usage!.prompt_tokens, 6); // the shipped model reads one token per character
    assert.ok(c.usage!.completion_tokens > 0 && c.usage!.total_tokens === c.usage!.prompt_tokens + c.usage!.completion_tokens);

    const chat = await ai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: '12+34=' }], n: 4, seed: 7 });
    assert.equal(chat.object, 'chat.completion');
    assert.equal(chat.choices.length, 4);
    assert.ok(chat.choices.every((ch) => ch.message.role === 'assistant' && typeof ch.message.content === 'string'));
    // A seed fixes the dice: the same request gets the same samples.
    const again = await ai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: '12+34=' }], n: 4, seed: 7 });
    assert.deepEqual(
      again.choices.map((x) => x.message.content),
      chat.choices.map((x) => x.message.content),
    );
    // Both are in the log, as any question is.
    const logged = (await collect(s.store.questions())).filter((q) => q.connection === 'openai');
    assert.equal(logged.length, 3);
    assert.ok(logged.every((q) => q.status === 'answered' && q.question === '12+34='));
  } finally {
    await s.close();
  }
});

test("streaming: each choice as a chunk in OpenAI's format, the vote and usage in the final chunk, then [DONE]", async () => {
  const s = await start();
  try {
    const ai = client(s);
    const chunks = [];
    for await (const chunk of await ai.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: '3+4=' }],
      n: 3,
      stream: true,
      stream_options: { include_usage: true },
    }))
      chunks.push(chunk);
    const last = chunks.at(-1)! as unknown as { choices: unknown[]; usage: { prompt_tokens: number }; ttrl: { votes: Record<string, number> } };
    assert.deepEqual(last.choices, []);
    assert.equal(
      Object.values(last.ttrl.votes).reduce((a, b) => a + b, 0),
      3,
    );
    assert.equal(last.usage.prompt_tokens, 4);
    const content = new Map<number, string>();
    for (const ch of chunks.slice(0, -1)) for (const c of ch.choices) content.set(c.index, (content.get(c.index) ?? '') + (c.delta.content ?? ''));
    assert.equal(content.size, 3);
    assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk'));

    const texts: string[] = [];
    for await (const chunk of await ai.completions.create({ model: MODEL, prompt: '3+4=', n: 2, stream: true }))
      for (const c of chunk.choices) texts[c.index] = c.text;
    assert.equal(texts.length, 2);
    // Raw: the stream ends with [DONE].
    const raw = await (await fetch(`${s.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: '3+4=', n: 2, stream: true }) })).text();
    assert.match(raw, /data: \[DONE\]\n\n$/);
  } finally {
    await s.close();
  }
});

test('sampling parameters: max_tokens, stop, temperature 0, top_p; such questions are answered and logged but not trained on', async () => {
  const s = await start({ adapt: true, updateEvery: 1000, maxClientShare: 1 });
  try {
    const ai = client(s);
    const short = await ai.completions.create({ model: MODEL, prompt: '12+34-56+7=', n: 2, max_tokens: 3 });
    assert.ok(short.choices.every((c) => c.finish_reason === 'length'));
    assert.ok(short.usage!.completion_tokens <= 6);
    // The shipped model writes its steps separated by ';': stop at the first.
    const stopped = await ai.completions.create({ model: MODEL, prompt: '12+34-56+7=', n: 4, stop: [';'] });
    assert.ok(
      stopped.choices.every((c) => !c.text.includes(';') && c.finish_reason === 'stop'),
      JSON.stringify(stopped.choices),
    );
    const greedy = await ai.completions.create({ model: MODEL, prompt: '12+34=', n: 4, temperature: 0 });
    assert.equal(new Set(greedy.choices.map((c) => c.text)).size, 1, 'greedy samples are all alike');
    await ai.completions.create({ model: MODEL, prompt: '1+1=', n: 4, top_p: 0.5 });
    assert.equal(s.adaptation.pendingExperiences, 0, 'questions sampled otherwise are not trained on');
    // The server's own sampling (a seed only picks the dice): trained on like any other.
    await ai.completions.create({ model: MODEL, prompt: '2+2=', n: 8, seed: 3 });
    assert.equal(s.adaptation.pendingExperiences, 1);
    assert.equal((await collect(s.store.questions())).length, 5);
  } finally {
    await s.close();
  }
});

test("errors in OpenAI's shape with our codes: bad parameters, unknown fields, unsupported values, conversations, another model, too long, keys", async () => {
  const key = 'sk-ttrl-0123456789abcdef';
  const s = await start({ apiKeys: [key] });
  try {
    const ai = client(s, key);
    const expectError = async (p: Promise<unknown>, status: number, code: string) => {
      await assert.rejects(p, (e: unknown) => {
        assert.ok(e instanceof OpenAI.APIError, String(e));
        assert.equal(e.status, status);
        assert.equal(e.code, code);
        assert.equal(typeof (e.error as { message?: string }).message, 'string');
        return true;
      });
    };
    await expectError(ai.completions.create({ model: MODEL, prompt: '1+1=', n: 0 }), 400, 'bad_votes');
    await expectError(ai.completions.create({ model: MODEL, prompt: '1+1=', n: 2, presence_penalty: 1 }), 400, 'unsupported_parameter');
    await expectError(ai.completions.create({ model: MODEL, prompt: '1+1=', n: 2, logprobs: 2 }), 400, 'unsupported_parameter');
    await expectError(ai.completions.create({ model: 'gpt-4', prompt: '1+1=' }), 404, 'not_found');
    // 40 prompt tokens and the task's 72 new ones do not fit in 96; nor do 4 and 93.
    await expectError(ai.completions.create({ model: MODEL, prompt: '1'.repeat(40) }), 400, 'context_length_exceeded');
    await expectError(ai.completions.create({ model: MODEL, prompt: '1+1=', max_tokens: 93 }), 400, 'context_length_exceeded');
    await expectError(ai.completions.create({ model: MODEL, prompt: '1+1=', colour: 'red' } as never), 400, 'unknown_field');
    await expectError(
      ai.chat.completions.create({
        model: MODEL,
        messages: [
          { role: 'user', content: 'hi' },
          { role: 'assistant', content: 'x' },
          { role: 'user', content: '1+1=' },
        ],
      }),
      400,
      'unsupported_parameter',
    );
    await expectError(
      ai.chat.completions.create({
        model: MODEL,
        messages: [
          { role: 'system', content: 'You are helpful.' },
          { role: 'user', content: '1+1=' },
        ],
      }),
      400,
      'unsupported_parameter',
    );
    await expectError(client(s, 'wrong-key-0123456789').models.list(), 401, 'unauthorized');
    await expectError(
      client(s, 'wrong-key-0123456789').chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: '1+1=' }] }),
      401,
      'unauthorized',
    );
    // Bad JSON and an oversized body, in the same shape.
    const bad = await fetch(`${s.url}/v1/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: '{"prompt":' });
    assert.equal(bad.status, 400);
    assert.deepEqual(Object.keys(((await bad.json()) as { error: object }).error).sort(), ['code', 'message', 'param', 'type']);
    const big = await fetch(`${s.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}` },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(20_000) }] }),
    });
    assert.equal(big.status, 413);
    assert.equal(((await big.json()) as { error: { code: string } }).error.code, 'payload_too_large');
    // With the right key, it answers.
    assert.equal((await ai.completions.create({ model: MODEL, prompt: '1+1=', n: 2 })).choices.length, 2);
  } finally {
    await s.close();
  }
});

test('OpenAI questions adapt the model like WebSocket ones: they fill an update, which runs and is judged', async () => {
  const token = 'admin-token-1';
  // --gate 0: any split vote is a learning signal, so the update trains and is judged (not skipped).
  const s = await start({
    adapt: true,
    updateEvery: 16,
    questionsPerStep: 16,
    probeQuestions: 0,
    anchors: 0,
    votes: 8,
    gate: 0,
    maxClientShare: 1,
    adminToken: token,
  });
  try {
    const ai = client(s);
    const qs = suite('4-operand', 16, 21).map((q) => q.question);
    const ended = new Promise<{ outcome: string; reason?: string; stats?: Record<string, unknown> }>((resolve) =>
      s.adaptation.updates$.subscribe((e) => e.phase === 'end' && resolve(e.outcome)),
    );
    await Promise.all(qs.map((q) => ai.completions.create({ model: MODEL, prompt: q, n: 8 })));
    const outcome = await ended;
    assertJudged(outcome);
    assert.equal(outcome.stats?.experiences, 16, JSON.stringify(outcome));
  } finally {
    await s.close();
  }
});
