// How each upstream API is asked and read (src/upstream/dialects.ts). vLLM's is exercised
// against real ttrl-server processes in upstream-fleet.test.ts; SGLang and llama.cpp cannot
// run here, so their request bodies and answers are checked against the shapes their
// documentation gives (SGLang's /generate with return_logprob: output_ids and
// meta_info.output_token_logprobs as [logprob, token id, text]; llama-server's /completion with
// return_tokens and n_probs: tokens and completion_probabilities[].logprob). A garbled answer
// of any API is a BadUpstreamAnswer (retried on another upstream), never a crash or a sample.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BadUpstreamAnswer, DIALECTS, modelIds, urlOf, type Draw } from '../src/upstream/dialects.ts';
import { baseUrlOf } from '../src/upstream/pool.ts';

const draw: Draw = { prompt: [5, 6, 7], n: 2, seed: 42, temperature: 1, topP: 1, maxTokens: 8, stopTokens: [2], model: 'ttrl-v3', adapter: true };

test('vllm: prompt ids, n, seed, log-probs and token ids asked for; choices read in index order, stopped on a stop id', () => {
  const d = DIALECTS.vllm;
  const call = d.draw(draw);
  assert.equal(call.path, '/completions');
  assert.deepEqual(call.body, {
    model: 'ttrl-v3',
    prompt: [5, 6, 7],
    n: 2,
    seed: 42,
    temperature: 1,
    top_p: 1,
    max_tokens: 8,
    stop_token_ids: [2],
    logprobs: 0,
    return_token_ids: true,
  });
  const answer = {
    choices: [
      { index: 1, text: 'b', token_ids: [9, 9, 9], logprobs: { token_logprobs: [-1, -2, -3] }, finish_reason: 'length' },
      { index: 0, text: 'a', token_ids: [8, 2], logprobs: { token_logprobs: [-0.5, -0.25] }, finish_reason: 'stop' },
    ],
  };
  assert.deepEqual(d.samples(answer, draw), [
    { tokens: [8, 2], logprobs: [-0.5, -0.25], stopped: true, text: 'a' },
    { tokens: [9, 9, 9], logprobs: [-1, -2, -3], stopped: false, text: 'b' },
  ]);
  // An older vLLM without return_token_ids: text only, no ids (the start-up check refuses to adapt on it).
  assert.deepEqual(
    d.samples(
      {
        choices: [
          { index: 0, text: 'x', finish_reason: 'stop' },
          { index: 1, text: 'y', finish_reason: 'length' },
        ],
      },
      draw,
    ),
    [
      { tokens: [], logprobs: [], stopped: true, text: 'x' },
      { tokens: [], logprobs: [], stopped: false, text: 'y' },
    ],
  );
  assert.deepEqual(d.loadAdapter('ttrl-v3', '/a/ttrl-v3'), { path: '/load_lora_adapter', body: { lora_name: 'ttrl-v3', lora_path: '/a/ttrl-v3' } });
  assert.deepEqual(d.unloadAdapter('ttrl-v3'), { path: '/unload_lora_adapter', body: { lora_name: 'ttrl-v3' } });
});

test('sglang: /generate off the root, one sample per request with its own sampling_seed, the adapter by lora_path', () => {
  const d = DIALECTS.sglang;
  assert.equal(d.takesN, false);
  const call = d.draw({ ...draw, n: 1 });
  assert.equal(urlOf('http://gpu-1:30000/v1', call.path), 'http://gpu-1:30000/generate');
  assert.deepEqual(call.body, {
    input_ids: [5, 6, 7],
    sampling_params: {
      temperature: 1,
      top_p: 1,
      top_k: -1,
      min_p: 0,
      max_new_tokens: 8,
      stop_token_ids: [2],
      sampling_seed: 42,
      skip_special_tokens: false,
    },
    return_logprob: true,
    lora_path: 'ttrl-v3',
  });
  assert.equal((d.draw({ ...draw, model: 'Qwen', adapter: false }).body as { lora_path?: string }).lora_path, undefined, 'the base model: no lora_path');
  const answer = {
    text: ' 12',
    output_ids: [31, 2],
    meta_info: {
      output_token_logprobs: [
        [-0.1, 31, null],
        [-0.2, 2, null],
      ],
      finish_reason: { type: 'stop', matched: 2 },
    },
  };
  assert.deepEqual(d.samples(answer, draw), [{ tokens: [31, 2], logprobs: [-0.1, -0.2], stopped: true, text: ' 12' }]);
  assert.equal(urlOf('http://gpu-1:30000/v1/', d.loadAdapter('a', '/p').path), 'http://gpu-1:30000/load_lora_adapter');
  assert.throws(() => d.samples({ text: '', output_ids: [1, 2], meta_info: { output_token_logprobs: [[-0.1, 1, null]] } }, draw), BadUpstreamAnswer);
});

test('llamacpp: /completion with top_k and min_p off, tokens and log-probs read; adapters refused', () => {
  const d = DIALECTS.llamacpp;
  assert.equal(d.loadsAdapters, false);
  const call = d.draw({ ...draw, n: 1 });
  assert.equal(urlOf('http://cpu-1:8080/v1', call.path), 'http://cpu-1:8080/completion');
  assert.deepEqual(call.body, {
    prompt: [5, 6, 7],
    n_predict: 8,
    temperature: 1,
    top_p: 1,
    top_k: 0,
    min_p: 0,
    seed: 42,
    n_probs: 1,
    return_tokens: true,
    cache_prompt: true,
  });
  const answer = {
    content: ' 7',
    tokens: [40, 2],
    stop_type: 'eos',
    completion_probabilities: [
      { id: 40, token: ' 7', logprob: -0.3, top_logprobs: [] },
      { id: 2, token: '', logprob: -0.01, top_logprobs: [] },
    ],
  };
  assert.deepEqual(d.samples(answer, draw), [{ tokens: [40, 2], logprobs: [-0.3, -0.01], stopped: true, text: ' 7' }]);
  assert.throws(() => d.loadAdapter('a', '/p'), /loads adapters only at start/);
});

test('a garbled answer is a BadUpstreamAnswer, whatever the API', () => {
  const bad: unknown[] = [null, 'text', [], { choices: 'x' }, { choices: [{ index: 0 }] }, { choices: [{ text: 'a', token_ids: [1.5] }, { text: 'b' }] }];
  for (const body of bad) assert.throws(() => DIALECTS.vllm.samples(body, draw), BadUpstreamAnswer, JSON.stringify(body));
  assert.throws(() => DIALECTS.vllm.samples({ choices: [{ index: 0, text: 'a' }] }, draw), /1 choices for n = 2/);
  assert.throws(
    () => DIALECTS.vllm.samples({ choices: [0, 1].map((index) => ({ index, text: 'a', token_ids: [1, 2], logprobs: { token_logprobs: [-1] } })) }, draw),
    /1 log-probs for 2 tokens/,
  );
  for (const body of [null, {}, { meta_info: {} }, { meta_info: { output_token_logprobs: [['x', 1]] } }])
    assert.throws(() => DIALECTS.sglang.samples(body, draw), BadUpstreamAnswer, JSON.stringify(body));
  for (const body of [null, {}, { tokens: 'x' }, { tokens: [1], completion_probabilities: [{}] }])
    assert.throws(() => DIALECTS.llamacpp.samples(body, draw), BadUpstreamAnswer, JSON.stringify(body));
  assert.deepEqual(modelIds({ data: [{ id: 'base' }, { id: 'ttrl-v1', root: '/a/ttrl-v1' }] }), [{ id: 'base' }, { id: 'ttrl-v1', root: '/a/ttrl-v1' }]);
  assert.throws(() => modelIds({ data: [{}] }), BadUpstreamAnswer);
});

test('an upstream URL is its OpenAI base: a bare address gets /v1, a trailing slash goes', () => {
  assert.equal(baseUrlOf('http://gpu-1:8000'), 'http://gpu-1:8000/v1');
  assert.equal(baseUrlOf('http://gpu-1:8000/'), 'http://gpu-1:8000/v1');
  assert.equal(baseUrlOf('http://gpu-1:8000/v1/'), 'http://gpu-1:8000/v1');
  assert.equal(baseUrlOf('https://x.example/openai/v1'), 'https://x.example/openai/v1');
});
