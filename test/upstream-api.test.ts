// ttrl-server's OpenAI routes as another front-end's upstream inference server, spelled as
// vLLM spells them, against live servers (the shipped model, real SQLite files) and real
// in-process samplers: a raw completion (a prompt of token ids) draws exactly what the
// in-process sampler draws with the same seed, alone or batched with others, and is kept
// out of the log; log-probs and token ids in vLLM's shapes; what is refused; LoRA adapters
// loaded and unloaded at run time (auth, errors, GET /v1/models), sampled with by `model`,
// and kept across a restart of the sampler's worker.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import pino from 'pino';
import { DEFAULT_MODEL_DIR } from '../src/config/settings.ts';
import { Sampler, type Completion, type SampleOptions } from '../src/engine/sampler.ts';
import { loadModel, type Model } from '../src/formats/checkpoint.ts';
import type { Weights } from '../src/model/family.ts';
import { initAdapters, loraConfigFor, loraB, loraModules, writePeftAdapter, type LoraConfig } from '../src/model/lora.ts';
import type { ModelList } from '../src/protocol/openai.ts';
import type { RunningServer } from '../src/server/server.ts';
import { Rng } from '../src/util/rng.ts';
import { scratch } from './helpers/scratch.ts';
import { startTestServer } from './helpers/server.ts';

const MODEL = 'arith-tiny';
const ADMIN = 'admin-token-upstream';

interface Choice {
  index: number;
  text: string;
  finish_reason: string;
  logprobs: { tokens: string[]; token_logprobs: number[]; top_logprobs: Record<string, number>[]; text_offset: number[] } | null;
  token_ids?: number[];
  prompt_token_ids?: number[];
}
interface Reply {
  status: number;
  headers: Headers;
  body: {
    model: string;
    choices: Choice[];
    usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
    ttrl?: unknown;
    prompt_token_ids?: number[];
    error?: { code: string; message: string };
  } & Record<string, unknown>;
}

const post = async (s: RunningServer, path: string, body: object, token?: string): Promise<Reply> => {
  const r = await fetch(`${s.url}${path}`, { method: 'POST', headers: token ? { authorization: `Bearer ${token}` } : {}, body: JSON.stringify(body) });
  return { status: r.status, headers: r.headers, body: (await r.json()) as Reply['body'] };
};
const models = async (s: RunningServer) => ((await (await fetch(`${s.url}/v1/models`)).json()) as ModelList).data;

/** Fails unless the reply is this error. */
function refused(r: Reply, status: number, code: string, message?: RegExp): void {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.equal(r.body.error?.code, code, JSON.stringify(r.body));
  if (message) assert.match(r.body.error!.message, message);
}

/** The choices carry exactly these samples: the same tokens, log-probs within 1e-5. */
function sameSamples(choices: Choice[], expected: Completion[], what: string): void {
  assert.equal(choices.length, expected.length, what);
  choices.forEach((c, i) => {
    assert.deepEqual(c.token_ids, expected[i]!.tokens, `${what}: sample ${i}'s tokens`);
    const got = c.logprobs!.token_logprobs;
    assert.equal(got.length, expected[i]!.logprobs.length, what);
    got.forEach((lp, k) => assert.ok(Math.abs(lp - expected[i]!.logprobs[k]!) < 1e-5, `${what}: sample ${i} token ${k}: ${lp} vs ${expected[i]!.logprobs[k]}`));
  });
}

let model: Model;
/** The in-process sampler every raw completion of the plain server is compared with. */
let sampler: Sampler;
let plain: RunningServer;
/** The plain server's log records (debug), to see which requests shared a sampling run. */
const records: Record<string, unknown>[] = [];

before(async () => {
  model = await loadModel(DEFAULT_MODEL_DIR);
  const logger = pino({ level: 'debug' }, { write: (line: string) => void records.push(JSON.parse(line)) });
  // Batches wait a while for company, so that concurrent requests share a run.
  [sampler, plain] = await Promise.all([
    Sampler.create({ config: model.config, weights: model.weights }),
    startTestServer({ batchWaitMs: 150, maxPromptTokens: 40 }, { prefix: 'ttrl-upstream-', logger }),
  ]);
});
after(async () => {
  await plain?.close();
  await sampler?.close();
});

/** What a front-end asks for, and the in-process call it must equal. */
const sampling = { n: 4, temperature: 0.8, top_p: 0.95, max_tokens: 40 };
const inProcess = (s: Sampler, prompt: number[], seed: number, extra: Partial<SampleOptions> = {}) =>
  s.generate([prompt], {
    samplesPerPrompt: sampling.n,
    seeds: [seed],
    seed,
    temperature: sampling.temperature,
    topP: sampling.top_p,
    maxNewTokens: sampling.max_tokens,
    stopTokens: model.tokenizer.stopIds,
    padToken: model.tokenizer.padId,
    ...extra,
  });

test('a raw completion draws what the in-process sampler draws with the same seed, alone and batched with others; it is not logged', async () => {
  const tok = model.tokenizer;
  const [p, q, r] = ['12+34-5=', '1+2+3+4+5+66-7=', '9='].map((x) => tok.encode(x)) as [number[], number[], number[]];
  const before = await plain.store.counts();
  const ask = (prompt: number[] | number[][], seed: number) =>
    post(plain, '/v1/completions', { model: MODEL, prompt, seed, ...sampling, logprobs: 0, return_token_ids: true });

  const alone = await ask(p, 123_456_789);
  assert.equal(alone.status, 200, JSON.stringify(alone.body));
  const expected = (await inProcess(sampler, p, 123_456_789)).completions[0]!;
  sameSamples(alone.body.choices, expected, 'alone');
  // vLLM's shapes: the text, the finish reason, the log-probs' four lists, the ids; no vote.
  assert.equal(alone.body.ttrl, undefined);
  assert.equal(alone.body.model, MODEL);
  alone.body.choices.forEach((c, i) => {
    const e = expected[i]!;
    assert.equal(c.index, i);
    assert.equal(c.text, tok.decode(e.tokens));
    assert.equal(c.finish_reason, e.stopped ? 'stop' : 'length');
    assert.deepEqual(c.prompt_token_ids, p);
    const lp = c.logprobs!;
    assert.deepEqual(
      lp.tokens,
      e.tokens.map((t) => tok.decode([t])),
    );
    assert.deepEqual(
      lp.top_logprobs,
      lp.tokens.map((t, k) => ({ [t]: lp.token_logprobs[k] })),
    );
    assert.deepEqual(lp.text_offset.slice(0, 3), [0, 1, 2]); // one character per token
  });
  const drawn = expected.reduce((n, e) => n + e.tokens.length, 0);
  assert.deepEqual(alone.body.usage, { prompt_tokens: p.length, completion_tokens: drawn, total_tokens: p.length + drawn });

  // Three at once, of three lengths (left-padded into one run), each on its own seed; a
  // one-element list of ids is a prompt too. A question at the same time is not in their run.
  const question = post(plain, '/v1/completions', { model: MODEL, prompt: '3+4=', n: 4 });
  const batched = await Promise.all([ask(q, 1), ask([p], 123_456_789), ask(r, 3)]);
  assert.equal((await question).status, 200);
  sameSamples(batched[1]!.body.choices, expected, 'batched');
  sameSamples(batched[0]!.body.choices, (await inProcess(sampler, q, 1)).completions[0]!, 'batched, the longest');
  sameSamples(batched[2]!.body.choices, (await inProcess(sampler, r, 3)).completions[0]!, 'batched, the shortest');
  const ids = batched.map((b) => b.headers.get('x-request-id'));
  const run = records.find((x) => x.msg === 'batch' && x.raw === true && (x.req_ids as string[]).includes(ids[0]!));
  assert.deepEqual(new Set(run?.req_ids as string[]), new Set(ids), 'the three shared one sampling run, and only they');

  // Streamed: each choice one chunk, as whole; the last chunk has no vote.
  const streamed = await (
    await fetch(`${plain.url}/v1/completions`, {
      method: 'POST',
      body: JSON.stringify({ model: MODEL, prompt: p, seed: 123_456_789, ...sampling, stream: true, return_token_ids: true }),
    })
  ).text();
  const chunks = streamed
    .split('\n\n')
    .filter((e) => e.startsWith('data: {'))
    .map((e) => JSON.parse(e.slice(6)) as { choices: Choice[]; ttrl?: unknown });
  assert.deepEqual(
    chunks.slice(0, -1).map((c) => c.choices[0]!.token_ids),
    expected.map((e) => e.tokens),
  );
  assert.ok(chunks.every((c) => c.ttrl === undefined));
  assert.match(streamed, /data: \[DONE\]\n\n$/);

  // Only the question is in the log.
  const afterwards = await plain.store.counts();
  assert.equal(afterwards.answered, before.answered + 1);
  assert.equal(afterwards.failed, before.failed);
});

test('seeds: a question with a seed in [0, 2^32) draws what the in-process sampler draws on its prompt with that seed; log-probs and token ids on questions', async () => {
  const tok = model.tokenizer;
  const prompt = tok.encode('12+34-56+7=');
  const expected = (await inProcess(sampler, prompt, 4_000_000_000, { temperature: 1, topP: 1, maxNewTokens: 72 })).completions[0]!;
  const c = await post(plain, '/v1/completions', { model: MODEL, prompt: '12+34-56+7=', n: 4, seed: 4_000_000_000, logprobs: 0, return_token_ids: true });
  assert.equal(c.status, 200, JSON.stringify(c.body));
  sameSamples(c.body.choices, expected, 'question');
  assert.ok(c.body.ttrl, 'a question keeps its vote');

  const chat = await post(plain, '/v1/chat/completions', {
    model: MODEL,
    messages: [{ role: 'user', content: '12+34-56+7=' }],
    n: 4,
    seed: 4_000_000_000,
    logprobs: true,
    top_logprobs: 0,
    return_token_ids: true,
  });
  assert.equal(chat.status, 200, JSON.stringify(chat.body));
  // vLLM's chat puts the prompt's ids on the response, the samples' on each choice.
  assert.deepEqual(chat.body.prompt_token_ids, prompt);
  const choices = chat.body.choices as unknown as {
    token_ids: number[];
    logprobs: { content: { token: string; logprob: number; bytes: number[]; top_logprobs: [] }[] };
  }[];
  choices.forEach((ch, i) => {
    assert.deepEqual(ch.token_ids, expected[i]!.tokens);
    const content = ch.logprobs.content;
    assert.deepEqual(
      content.map((x) => x.token),
      expected[i]!.tokens.map((t) => tok.decode([t])),
    );
    content.forEach((x, k) => {
      assert.ok(Math.abs(x.logprob - expected[i]!.logprobs[k]!) < 1e-5);
      assert.deepEqual(x.bytes, [...Buffer.from(x.token)]);
      assert.deepEqual(x.top_logprobs, []);
    });
  });

  // A stop string cuts the text, and the tokens through the one that completed it (vLLM stops there).
  const cut = await post(plain, '/v1/completions', {
    model: MODEL,
    prompt: tok.encode('12+34-56+7='),
    n: 2,
    seed: 9,
    stop: [';'],
    return_token_ids: true,
    logprobs: 0,
  });
  for (const ch of cut.body.choices) {
    assert.ok(!ch.text.includes(';') && ch.finish_reason === 'stop', JSON.stringify(ch));
    assert.equal(tok.decode(ch.token_ids!), `${ch.text};`);
    assert.equal(ch.logprobs!.token_logprobs.length, ch.token_ids!.length);
  }
});

test('refused: logprobs above 0, ids outside the vocabulary, several prompts, unknown fields, prompts that fill the context, stop ids on questions, adapters without --lora-rank', async () => {
  const ids = model.tokenizer.encode('1+1=');
  const ask = (body: object) => post(plain, '/v1/completions', { model: MODEL, prompt: ids, ...body });
  refused(await ask({ logprobs: 1 }), 400, 'unsupported_parameter', /logprobs is supported at 0/);
  refused(
    await post(plain, '/v1/chat/completions', { messages: [{ role: 'user', content: '1+1=' }], logprobs: true, top_logprobs: 2 }),
    400,
    'unsupported_parameter',
    /top_logprobs/,
  );
  refused(await ask({ prompt: [1, 17] }), 400, 'invalid_message', /prompt\[1\]: 17 is not a token id/);
  refused(await ask({ prompt: [1, -1] }), 400, 'invalid_message', /prompt\[1\]/);
  refused(await ask({ prompt: [1.5] }), 400, 'invalid_message', /prompt\[0\]/);
  refused(await ask({ prompt: [] }), 400, 'invalid_message');
  refused(await ask({ prompt: [ids, ids] }), 400, 'unsupported_parameter', /one per request/);
  refused(await ask({ prompt: ['1+1=', '2+2='] }), 400, 'unsupported_parameter', /one per request/);
  refused(await ask({ colour: 'red' }), 400, 'unknown_field', /colour/);
  refused(await ask({ stop_token_ids: [99] }), 400, 'invalid_message', /stop_token_ids\[0\]/);
  refused(await ask({ n: 0 }), 400, 'bad_votes');
  refused(await ask({ prompt: Array(41).fill(1) }), 400, 'question_too_long', /--max-prompt-tokens/);
  refused(await ask({ max_tokens: 93 }), 400, 'context_length_exceeded');
  refused(await ask({ model: 'gpt-4' }), 404, 'not_found');
  refused(await post(plain, '/v1/completions', { prompt: '1+1=', stop_token_ids: [3] }), 400, 'unsupported_parameter', /raw completion/);
  refused(await post(plain, '/v1/load_lora_adapter', { lora_name: 'a', lora_path: '/nowhere' }), 400, 'invalid_message', /--lora-rank/);
  refused(await ask({ prompt: Array(30).fill(1), max_tokens: 67 }), 400, 'context_length_exceeded', /at most 66 new tokens/);
  // Without max_tokens a raw prompt gets the server's new tokens (72), cut to what the context leaves (66): no refusal.
  const fit = await ask({ n: 1, seed: 1, temperature: 10, prompt: Array(30).fill(1), return_token_ids: true });
  assert.equal(fit.status, 200, JSON.stringify(fit.body));
  assert.ok(fit.body.choices[0]!.token_ids!.length <= 66);
});

// ---------- LoRA adapters ----------

/** Adapters that change what the model draws: PEFT's init with B non-zero. */
function someAdapters(lora: LoraConfig, seed: number): Weights {
  const rng = new Rng(seed);
  const a = initAdapters(model.config, lora, rng);
  for (const m of loraModules(model.config, lora)) a.get(loraB(m.module))!.forEach((_, i, b) => (b[i] = 0.3 * rng.normal()));
  return a;
}

test('LoRA adapters at run time: load (admin token), list, sample with one by `model` (its samples, not the base), keep across a worker restart, unload; and what is refused', async () => {
  const lora = loraConfigFor(model.config, { rank: 2 });
  const dir = await scratch('ttrl-adapters-');
  const s = await startTestServer({ loraRank: 2, adminToken: ADMIN, maxLoadedAdapters: 2, batchWaitMs: 0 }, { dir });
  const adapters = someAdapters(lora, 7);
  const own = join(dir, 'ttrl-v1');
  await writePeftAdapter(own, model.config, { lora, baseModel: s.versions.fingerprint, adapters });
  const wrongRank = join(dir, 'rank4');
  await writePeftAdapter(wrongRank, model.config, {
    lora: loraConfigFor(model.config, { rank: 4 }),
    baseModel: s.versions.fingerprint,
    adapters: someAdapters(loraConfigFor(model.config, { rank: 4 }), 1),
  });
  const foreign = join(dir, 'foreign');
  await writePeftAdapter(foreign, model.config, { lora, baseModel: '0123456789abcdef', adapters });
  // The same adapters in process: served as a sampler's version, and held by name beside a fresh one.
  const [served, named] = await Promise.all([
    Sampler.create({ config: model.config, weights: model.weights, lora, adapters }),
    Sampler.create({ config: model.config, weights: model.weights, lora }),
  ]);
  try {
    const load = (body: object, token: string | null = ADMIN) => post(s, '/v1/load_lora_adapter', body, token ?? undefined);
    const prompt = model.tokenizer.encode('12+34-56+7=');
    const draw = (m: string) => post(s, '/v1/completions', { model: m, prompt, seed: 11, ...sampling, logprobs: 0, return_token_ids: true });

    refused(await load({ lora_name: 'ttrl-v1', lora_path: own }, null), 401, 'unauthorized', /admin token/);
    refused(await load({ lora_name: 'ttrl-v1', lora_path: own }, 'wrong-token-123'), 401, 'unauthorized');
    const loaded = await load({ lora_name: 'ttrl-v1', lora_path: own });
    assert.equal(loaded.status, 200, JSON.stringify(loaded.body));
    assert.deepEqual(loaded.body, { object: 'lora_adapter', lora_name: 'ttrl-v1', lora_path: own, loaded: true });
    refused(await load({ lora_name: 'ttrl-v1', lora_path: own }), 400, 'invalid_message', /already loaded/);
    refused(await load({ lora_name: 'x', lora_path: join(dir, 'missing') }), 404, 'not_found');
    refused(await load({ lora_name: 'x', lora_path: wrongRank }), 400, 'invalid_message', /rank mismatch/);
    refused(await load({ lora_name: 'x', lora_path: foreign }), 400, 'invalid_message', /trained on base model 0123456789abcdef/);
    refused(await load({ lora_name: MODEL, lora_path: own }), 400, 'invalid_message', /served model/);
    refused(await load({ lora_name: '../x', lora_path: own }), 400, 'invalid_message', /lora_name/);
    refused(await load({ lora_name: 'x', lora_path: own, colour: 1 }), 400, 'unknown_field');
    const listed = await models(s);
    assert.ok(listed.every((m) => Number.isInteger(m.created)));
    assert.deepEqual(
      listed.map(({ created: _, ...card }) => card),
      [
        { id: MODEL, object: 'model', owned_by: 'ttrl-server', ttrl: { model_version: 0 } },
        { id: 'ttrl-v1', object: 'model', owned_by: 'ttrl-server', root: own, parent: MODEL },
      ],
    );

    // `model` naming the adapter: its samples, as a sampler serving it draws them, and as one holding it by name does.
    const withAdapter = await draw('ttrl-v1');
    assert.equal(withAdapter.status, 200, JSON.stringify(withAdapter.body));
    assert.equal(withAdapter.body.model, 'ttrl-v1');
    const expected = (await inProcess(served, prompt, 11)).completions[0]!;
    sameSamples(withAdapter.body.choices, expected, 'the adapter');
    await named.loadAdapter('ttrl-v1', adapters);
    sameSamples(withAdapter.body.choices, (await inProcess(named, prompt, 11, { adapter: 'ttrl-v1' })).completions[0]!, 'the adapter, by name');
    const base = await draw(MODEL);
    assert.notDeepEqual(
      base.body.choices.map((c) => c.logprobs!.token_logprobs),
      withAdapter.body.choices.map((c) => c.logprobs!.token_logprobs),
      "the base model's samples are not the adapter's",
    );

    // A question asked of the adapter: answered and logged, by the serving version's number, but not trained on.
    const pending = s.adaptation.pendingExperiences;
    const question = await post(s, '/v1/completions', { model: 'ttrl-v1', prompt: '5+6=', n: 4 });
    assert.equal(question.status, 200, JSON.stringify(question.body));
    assert.equal((question.body.ttrl as { model_version: number }).model_version, 0);
    assert.equal(s.adaptation.pendingExperiences, pending, "another policy's samples are not trained on");
    assert.equal((await s.store.counts()).answered, 1);

    // The sampler's worker dies: its replacement still samples the adapter, the same samples.
    await s.versions.sampler.close();
    sameSamples((await draw('ttrl-v1')).body.choices, expected, 'the adapter after a restart');
    assert.ok((await s.store.events(10)).some((e) => e.kind === 'sampler_restarted'));

    assert.equal((await load({ lora_name: 'second', lora_path: own })).status, 200);
    refused(await load({ lora_name: 'third', lora_path: own }), 400, 'invalid_message', /--max-loaded-adapters/);
    const unloaded = await post(s, '/v1/unload_lora_adapter', { lora_name: 'ttrl-v1' }, ADMIN);
    assert.equal(unloaded.status, 200, JSON.stringify(unloaded.body));
    assert.equal(unloaded.body.loaded, false);
    refused(await post(s, '/v1/unload_lora_adapter', { lora_name: 'ttrl-v1' }, ADMIN), 404, 'not_found');
    refused(await draw('ttrl-v1'), 404, 'not_found');
    assert.deepEqual(
      (await models(s)).map((m) => m.id),
      [MODEL, 'second'],
    );
    // A name unloaded may be loaded again (from the same place or another).
    assert.equal((await load({ lora_name: 'ttrl-v1', lora_path: own })).status, 200);
    sameSamples((await draw('ttrl-v1')).body.choices, expected, 'the adapter loaded again');
  } finally {
    await Promise.all([served.close(), named.close(), s.close()]);
  }
});

test('without an admin token the adapter routes fall under the API keys; an adapter unloaded while its request waits answers it 404', async () => {
  const key = 'sk-upstream-0123456789';
  const lora = loraConfigFor(model.config, { rank: 2 });
  const dir = await scratch('ttrl-adapter-keys-');
  const s = await startTestServer({ loraRank: 2, apiKeys: [key], batchWaitMs: 300 }, { dir });
  try {
    const path = join(dir, 'a');
    await writePeftAdapter(path, model.config, { lora, baseModel: s.versions.fingerprint, adapters: someAdapters(lora, 3) });
    refused(await post(s, '/v1/load_lora_adapter', { lora_name: 'a', lora_path: path }), 401, 'unauthorized');
    assert.equal((await post(s, '/v1/load_lora_adapter', { lora_name: 'a', lora_path: path }, key)).status, 200);
    // The request waits in the queue for company (300 ms) while the adapter goes.
    const waiting = post(s, '/v1/completions', { model: 'a', prompt: [1, 2, 10], max_tokens: 4 }, key);
    const queued = async () => /^ttrl_queue_depth 1$/m.test(await (await fetch(`${s.url}/metrics`)).text());
    for (let tries = 0; !(await queued()); tries++) {
      assert.ok(tries < 200, 'the request never waited in the queue');
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.equal((await post(s, '/v1/unload_lora_adapter', { lora_name: 'a' }, key)).status, 200);
    refused(await waiting, 404, 'not_found', /no adapter named "a"/);
    refused(await post(s, '/v1/unload_lora_adapter', { lora_name: 'a' }, key), 404, 'not_found');
  } finally {
    await s.close();
  }
});
