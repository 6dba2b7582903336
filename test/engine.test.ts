// The sampler and trainer workers on real ONNX graphs: reproducibility, stopping,
// padding, agreement between the sampling loop and the scoring forward, training
// to near-zero loss, and the bad-input paths.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sampler, type Completion } from '../src/engine/sampler.ts';
import { Trainer } from '../src/engine/trainer.ts';
import { packBatch, packGroups } from '../src/engine/batch.ts';
import { initWeights, type Weights } from '../src/model/family.ts';
import { paramSpecsOf } from '../src/model/families.ts';
import type { GPTConfig } from '../src/model/gpt.ts';
import { Rng } from '../src/util/rng.ts';
import { buildLossAndGrad } from '../src/engine/graphs.ts';
import { createSession, f32, i64, type ort } from '../src/engine/ort.ts';
import { ADAMW_DEFAULTS } from '../src/engine/adamw.ts';
import { sft } from '../src/engine/sft.ts';
import { grpo, grpoOptionsFor, grpoScalars, objective as grpoObjective, type GrpoOptions } from '../src/ttrl/objective.ts';

const c: GPTConfig = { family: 'gpt', vocabSize: 12, contextLength: 24, dModel: 32, nLayers: 2, nHeads: 4, tiedHead: true, padTokenId: 11 };
const EOS = 10;
const PAD = 11;
const weights = (seed: number, scale = 1): Weights => new Map([...initWeights(paramSpecsOf(c), new Rng(seed))].map(([k, v]) => [k, v.map((x) => x * scale)]));
/** The bare policy gradient: no PPO clipping, KL or entropy terms. */
const plainGrpo: GrpoOptions = { aggregation: 'token-mean', ppoClip: false, klTerm: false, entropyTerm: false };
const base = { samplesPerPrompt: 4, maxNewTokens: 8, stopTokens: [EOS], padToken: PAD };

test('sampling is reproducible from the seed, stops at the stop token, and respects the batch layout', async () => {
  const s = await Sampler.create({ config: c, weights: weights(1, 3), version: 3 });
  try {
    const prompts = [
      [1, 2, 3],
      [4, 5, 6, 7, 8],
    ];
    const a = await s.generate(prompts, { ...base, seed: 7 });
    const b = await s.generate(prompts, { ...base, seed: 7 });
    const d = await s.generate(prompts, { ...base, seed: 8 });
    assert.deepEqual(a.completions, b.completions);
    assert.notDeepEqual(a.completions, d.completions);
    assert.equal(a.version, 3);
    assert.equal(a.completions.length, 2);
    for (const row of a.completions) {
      assert.equal(row.length, 4);
      for (const comp of row) {
        assert.ok(comp.tokens.length >= 1 && comp.tokens.length <= 8);
        assert.equal(comp.tokens.length, comp.logprobs.length);
        assert.equal(comp.stopped, comp.tokens.at(-1) === EOS);
        assert.ok(!comp.tokens.slice(0, -1).includes(EOS), 'nothing after the stop token');
        assert.ok(!comp.tokens.includes(PAD));
        assert.ok(comp.logprobs.every((x) => x <= 0 && Number.isFinite(x)));
      }
    }
  } finally {
    await s.close();
  }
});

test("with one seed per prompt, a prompt's samples do not depend on the batch it shares", async () => {
  const s = await Sampler.create({ config: c, weights: weights(1, 3) });
  try {
    const a = await s.generate(
      [
        [1, 2, 3],
        [4, 5, 6],
      ],
      { ...base, seed: 0, seeds: [11, 22] },
    );
    const b = await s.generate(
      [
        [7, 8, 9],
        [9, 8, 7],
        [1, 2, 3],
      ],
      { ...base, seed: 5, seeds: [33, 44, 11] },
    );
    const d = await s.generate([[1, 2, 3]], { ...base, seed: 0, seeds: [12] });
    assert.deepEqual(b.completions[2], a.completions[0]);
    assert.notDeepEqual(d.completions[0], a.completions[0]);
    await assert.rejects(async () => s.generate([[1, 2, 3]], { ...base, seed: 0, seeds: [1, 2] }), /one 32-bit unsigned integer per prompt/);
  } finally {
    await s.close();
  }
});

test('greedy sampling (temperature 0) of a prompt is the same alone and left-padded next to a longer one', async () => {
  const s = await Sampler.create({ config: c, weights: weights(2, 20) });
  try {
    const greedy = { ...base, samplesPerPrompt: 2, seed: 1, temperature: 0 };
    const alone = await s.generate([[1, 2]], greedy);
    const padded = await s.generate(
      [
        [1, 2],
        [3, 4, 5, 6, 7, 8, 9],
      ],
      greedy,
    );
    assert.deepEqual(
      padded.completions[0]!.map((x) => x.tokens),
      alone.completions[0]!.map((x) => x.tokens),
    );
    // both samples of a prompt are the argmax path, whatever the seed; a nucleus of one token is the same path
    assert.deepEqual(alone.completions[0]![0]!.tokens, alone.completions[0]![1]!.tokens);
    assert.deepEqual((await s.generate([[1, 2]], { ...greedy, seed: 9 })).completions, alone.completions);
    const nucleus = await s.generate([[1, 2]], { ...base, samplesPerPrompt: 2, seed: 1, topP: 1e-6 });
    assert.deepEqual(
      nucleus.completions[0]!.map((x) => x.tokens),
      alone.completions[0]!.map((x) => x.tokens),
    );
  } finally {
    await s.close();
  }
});

test('top-k keeps samples among the k most likely tokens; top-k 1 is greedy', async () => {
  const w = weights(7, 4);
  const s = await Sampler.create({ config: c, weights: w });
  const t = await Trainer.create({ config: c, weights: w, loss: sft() });
  try {
    const prompt = [1, 2, 3];
    const k1 = await s.generate([prompt], { ...base, samplesPerPrompt: 8, seed: 3, topK: 1 });
    const greedy = await s.generate([prompt], { ...base, samplesPerPrompt: 8, seed: 3, temperature: 0 });
    assert.deepEqual(
      k1.completions[0]!.map((x) => x.tokens),
      greedy.completions[0]!.map((x) => x.tokens),
    );
    // every first token drawn with top-k 3 is among the 3 most likely first tokens (scored by the trainer's forward)
    const r = await s.generate([prompt], { ...base, samplesPerPrompt: 64, seed: 4, topK: 3, maxNewTokens: 1 });
    const firsts = new Set(r.completions[0]!.map((x) => x.tokens[0]!));
    const logprobOf = async (tok: number) =>
      (await t.score(packBatch([{ tokens: [...prompt, tok], promptLength: 3 }], PAD, c.contextLength))).tokenLogprobs[3]!;
    const ranked = (await Promise.all(Array.from({ length: EOS + 1 }, async (_, tok) => [tok, await logprobOf(tok)] as const))).sort((a, b) => b[1] - a[1]);
    const top3 = new Set(ranked.slice(0, 3).map(([tok]) => tok));
    assert.ok(
      [...firsts].every((x) => top3.has(x)),
      `drawn ${[...firsts]} outside the top 3 ${[...top3]}`,
    );
    assert.ok(firsts.size >= 2, 'top-k 3 samples more than one token');
  } finally {
    await s.close();
    await t.close();
  }
});

test('any of several stop tokens ends a completion; with none, every completion runs to maxNewTokens', async () => {
  const s = await Sampler.create({ config: c, weights: weights(1, 3) });
  try {
    const prompts = [
      [1, 2, 3],
      [4, 5],
    ];
    const stops = [EOS, 7, 8];
    const r = await s.generate(prompts, { ...base, samplesPerPrompt: 16, seed: 2, stopTokens: stops });
    let stoppedByOthers = 0;
    for (const comp of r.completions.flat()) {
      assert.equal(comp.stopped, stops.includes(comp.tokens.at(-1)!));
      assert.ok(!comp.tokens.slice(0, -1).some((x) => stops.includes(x)), 'nothing after a stop token');
      if (comp.stopped && comp.tokens.at(-1) !== EOS) stoppedByOthers++;
    }
    assert.ok(stoppedByOthers > 0, 'the extra stop tokens were drawn and ended completions');
    const none = await s.generate(prompts, { ...base, seed: 2, stopTokens: [] });
    for (const comp of none.completions.flat()) assert.equal(comp.tokens.length, base.maxNewTokens);
  } finally {
    await s.close();
  }
});

test('log-probs from the sampling loop (KV cache) equal the scoring forward of the same sequences', async () => {
  const w = weights(3, 20);
  const s = await Sampler.create({ config: c, weights: w });
  const t = await Trainer.create({ config: c, weights: w, loss: sft() });
  try {
    const prompts = [
      [1, 2, 3],
      [4, 5, 6, 7, 8, 9],
    ];
    const r = await s.generate(prompts, { ...base, seed: 11 });
    const seqs = r.completions.flatMap((row, i) =>
      row.map((comp: Completion) => ({ tokens: [...prompts[i]!, ...comp.tokens], promptLength: prompts[i]!.length, lp: comp.logprobs })),
    );
    const batch = packBatch(seqs, PAD, c.contextLength);
    const { tokenLogprobs } = await t.score(batch);
    seqs.forEach((sq, b) => {
      sq.lp.forEach((lp, j) => {
        const scored = tokenLogprobs[b * batch.T + sq.promptLength + j]!;
        assert.ok(Math.abs(scored - lp) < 1e-4, `seq ${b} token ${j}: sampled ${lp} vs scored ${scored}`);
      });
    });
  } finally {
    await s.close();
    await t.close();
  }
});

test('the supervised train step drives a tiny model to near-zero loss on a toy sequence task', async () => {
  // Task: after a start digit d, count up: d, d+1, ..., then EOS. Fully determined by the first token.
  const t = await Trainer.create({ config: c, weights: weights(4), loss: sft() });
  try {
    const seqs = Array.from({ length: 8 }, (_, d) => ({ tokens: [...Array.from({ length: 10 - d }, (_, i) => d + i), EOS], promptLength: 1 }));
    const batch = packBatch(seqs, PAD, c.contextLength);
    let first = NaN;
    let last = NaN;
    for (let i = 0; i < 150; i++) {
      const st = await t.step(batch, { lr: 1e-2 });
      assert.ok(st.updated);
      if (i === 0) first = st.loss;
      last = st.loss;
    }
    assert.ok(first > 1.5, `initial loss ${first}`);
    assert.ok(last < 0.02, `final loss ${last}`);
    // and the trained weights now sample the sequence exactly
    const s = await Sampler.create({ config: c, weights: await t.getWeights() });
    const r = await s.generate([[3]], { ...base, maxNewTokens: 12, seed: 5 });
    await s.close();
    for (const comp of r.completions[0]!) assert.deepEqual(comp.tokens, [4, 5, 6, 7, 8, 9, EOS]);
  } finally {
    await t.close();
  }
});

test('a NaN in training changes nothing; bad inputs get clear errors', async () => {
  const w = weights(5);
  const t = await Trainer.create({ config: c, weights: w, loss: grpo(plainGrpo) });
  const s = await Sampler.create({ config: c, weights: w });
  try {
    const batch = packBatch(
      [
        { tokens: [1, 2, 3, 4], promptLength: 2, advantage: NaN },
        { tokens: [1, 5, 6], promptLength: 2, advantage: 1 },
      ],
      PAD,
      c.contextLength,
    );
    const st = await t.step(batch, { lr: 1e-3 });
    assert.equal(st.updated, false);
    assert.ok(Number.isNaN(st.gradNorm));
    assert.equal(st.step, 0);
    const after = await t.getWeights();
    for (const [k, v] of w) assert.deepEqual(after.get(k), v, `${k} unchanged`);
    // a good step afterwards still works
    batch.advantages![0] = -1;
    assert.equal((await t.step(batch, { lr: 1e-3 })).updated, true);

    await assert.rejects(t.step(batch, { lr: NaN }), /lr must be a finite number/);
    const noAdv = packBatch([{ tokens: [1, 2, 3], promptLength: 1 }], PAD, c.contextLength);
    await assert.rejects(t.step(noAdv, { lr: 1e-3 }), /needs advantages/);
    const foreign = packBatch([{ tokens: [1, 2, 12], promptLength: 1, advantage: 1 }], PAD, c.contextLength);
    await assert.rejects(t.step(foreign, { lr: 1e-3 }), /token id 12 outside the vocabulary \(0\.\.11\)/);
    await assert.rejects(t.score(foreign), /token id 12 outside the vocabulary/);
    assert.throws(() => packBatch([{ tokens: Array(30).fill(1), promptLength: 1 }], PAD, c.contextLength), /exceeds the context length/);
    assert.throws(() => s.generate([[1, 99]], { ...base, seed: 1 }), /outside the vocabulary/);
    assert.throws(() => s.generate([Array(20).fill(1)], { ...base, seed: 1 }), /exceeds the context length/);
    assert.throws(() => s.generate([[1]], { ...base, seed: 1, temperature: -1 }), /temperature must be a finite number >= 0/);
    assert.throws(() => s.generate([[1]], { ...base, seed: 1, topK: 1.5 }), /topK must be an integer >= 0/);
    assert.throws(() => s.generate([[1]], { ...base, seed: 1, stopTokens: [12] }), /stopTokens must be token ids of the vocabulary/);
    assert.throws(() => s.generate([], { ...base, seed: 1 }), /no prompts/);
    await assert.rejects(s.setWeights(new Map([['wte', new Float32Array(3)]]), 2), /missing or of the wrong size/);
    // the sampler still serves after a rejected swap
    assert.equal((await s.generate([[1]], { ...base, seed: 1 })).version, 0);
  } finally {
    await t.close();
    await s.close();
  }
  await assert.rejects(s.generate([[1]], { ...base, seed: 1 }), /worker closed/);
});

test('a grouped GRPO step (prompt computed once per group) equals the flat step on the same sequences', async () => {
  const w = weights(6, 3);
  const loss = grpoOptionsFor({ kl: 0.1, entropyBonus: 0, clipEps: 0.2 });
  const rng = new Rng(9);
  const groups = [
    [1, 2, 3],
    [4, 5],
  ].map((prompt) => ({
    prompt,
    completions: [
      [6, 7, EOS],
      [8, EOS],
      [9, 9, 9, 9],
    ].map((tokens) => ({
      tokens,
      advantage: rng.normal(),
      oldLogprobs: tokens.map(() => -1 - rng.next()),
      refLogprobs: tokens.map(() => -1 - rng.next()),
    })),
  }));
  const flat = packBatch(
    groups.flatMap((g) => g.completions.map((c) => ({ ...c, tokens: [...g.prompt, ...c.tokens], promptLength: g.prompt.length }))),
    PAD,
    c.contextLength,
  );
  const grouped = packGroups(groups, PAD, c.contextLength);
  const results = [];
  const hyper = { lr: 1e-3, maxGradNorm: 1, scalars: grpoScalars(loss, { kl: 0.1, clipEps: 0.2, entropyBonus: 0 }) };
  for (const batch of [flat, grouped]) {
    const t = await Trainer.create({ config: c, weights: w, loss: grpo(loss) });
    const stats = [await t.step(batch, hyper), await t.step(batch, hyper)];
    results.push({ stats, weights: await t.getWeights() });
    await t.close();
  }
  const [a, b] = results;
  for (let i = 0; i < 2; i++) {
    assert.ok(Math.abs(a!.stats[i]!.loss - b!.stats[i]!.loss) < 1e-5, `loss ${a!.stats[i]!.loss} vs ${b!.stats[i]!.loss}`);
    assert.ok(Math.abs(a!.stats[i]!.gradNorm - b!.stats[i]!.gradNorm) < 1e-4 * a!.stats[i]!.gradNorm);
  }
  for (const [k, v] of a!.weights) {
    const u = b!.weights.get(k)!;
    const maxDiff = v.reduce((m, x, i) => Math.max(m, Math.abs(x - u[i]!)), 0);
    // Adam moves every coordinate by ~lr whatever its gradient's size, so float32 noise in
    // near-zero gradient components shows up at a fraction of lr; exactness is the float64 gradcheck's job.
    assert.ok(maxDiff < 0.2 * hyper.lr, `${k} differs by ${maxDiff}`);
  }
  assert.throws(
    () =>
      packGroups(
        [
          { prompt: [1], completions: [{ tokens: [2] }] },
          { prompt: [1], completions: [] },
        ],
        PAD,
        c.contextLength,
      ),
    /same number/,
  );
});

test("a trainer step is the graph's gradient followed by textbook AdamW", async () => {
  const w = weights(8, 3);
  const batch = packGroups(
    [
      {
        prompt: [1, 2, 3],
        completions: [
          { tokens: [4, 5, EOS], advantage: 0.8 },
          { tokens: [6, EOS], advantage: -0.8 },
        ],
      },
    ],
    PAD,
    c.contextLength,
  );
  const t = await Trainer.create({ config: c, weights: w, loss: grpo(plainGrpo), layout: 'grouped' });
  const st = await t.step(batch, { lr: 1e-2, maxGradNorm: 0.5 });
  const after = await t.getWeights();
  await t.close();
  // The gradient from the same graph, then AdamW's first step written out by hand (m = (1-b1) g', v = (1-b2) g'^2, bias-corrected).
  const specs = paramSpecsOf(c);
  const session = await createSession(buildLossAndGrad(c, grpoObjective(plainGrpo), 'float32', 'grouped'));
  const feeds: Record<string, ort.Tensor> = {
    input_ids: i64(batch.inputIds, [batch.B, batch.T]),
    attention_mask: i64(batch.attentionMask, [batch.B, batch.T]),
    loss_mask: f32(batch.lossMask, [batch.B, batch.T]),
    prompt_ids: i64(batch.prompts!.ids, [1, 3]),
    prompt_mask: i64(batch.prompts!.mask, [1, 3]),
    advantages: f32(batch.advantages!, [batch.B]),
  };
  for (const sp of specs) feeds[sp.name] = f32(w.get(sp.name)!, sp.shape);
  const out = await session.run(feeds);
  const norm = (out.grad_norm!.data as Float32Array)[0]!;
  assert.ok(Math.abs(norm - st.gradNorm) < 1e-6 * norm);
  const { beta1: b1, beta2: b2, eps, weightDecay } = ADAMW_DEFAULTS;
  const scale = Math.min(1, 0.5 / (norm + 1e-6));
  for (const sp of specs) {
    const g = out[`grad.${sp.name}`]!.data as Float32Array;
    const p0 = w.get(sp.name)!;
    after.get(sp.name)!.forEach((got, i) => {
      const gs = g[i]! * scale;
      const mh = ((1 - b1) * gs) / (1 - b1);
      const vh = ((1 - b2) * gs * gs) / (1 - b2);
      const want = p0[i]! * (sp.decay ? 1 - 1e-2 * weightDecay : 1) - (1e-2 * mh) / (Math.sqrt(vh) + eps);
      assert.ok(Math.abs(got - want) < 1e-6 + 1e-5 * Math.abs(want), `${sp.name}[${i}]: ${got} vs ${want}`);
    });
  }
});

test('the GRPO objective reaches the trainer by module URL: its loss is the textbook clipped surrogate, its log-ratio statistics the hand-computed ones, and what it needs is named', async () => {
  const w = weights(9, 3);
  const loss = grpoOptionsFor({ kl: 0, entropyBonus: 0, clipEps: 0.2 }); // PPO clipping on, no KL or entropy terms
  const rng = new Rng(4);
  const seqs = [
    [1, 2, 3, 4, EOS],
    [1, 5, 6, EOS],
  ].map((tokens, i) => ({ tokens, promptLength: 2, advantage: i ? -0.7 : 1.2 }));
  const t = await Trainer.create({ config: c, weights: w, loss: grpo(loss) });
  try {
    const batch = packBatch(seqs, PAD, c.contextLength);
    const { tokenLogprobs } = await t.score(batch);
    // Old log-probs off the current ones by up to +-0.5, so some ratios fall outside 1 +- eps.
    const old = seqs.map((s, b) => s.tokens.slice(s.promptLength).map((_, j) => tokenLogprobs[b * batch.T + s.promptLength + j]! + (rng.next() - 0.5)));
    const withOld = packBatch(
      seqs.map((s, b) => ({ ...s, oldLogprobs: old[b]! })),
      PAD,
      c.contextLength,
    );
    // Written out: token-mean of -min(r A, clip(r, 1-eps, 1+eps) A) over the completion tokens.
    const eps = 0.2;
    let sum = 0;
    let absLogratio = 0;
    let clipped = 0;
    let n = 0;
    seqs.forEach((s, b) =>
      old[b]!.forEach((o, j) => {
        const logRatio = tokenLogprobs[b * batch.T + s.promptLength + j]! - o;
        const r = Math.exp(logRatio);
        sum += -Math.min(r * s.advantage, Math.min(Math.max(r, 1 - eps), 1 + eps) * s.advantage);
        absLogratio += Math.abs(logRatio);
        if (Math.abs(r - 1) > eps) clipped++;
        n++;
      }),
    );
    assert.ok(clipped > 0 && clipped < n, 'the old log-probs put some tokens outside the clip and some inside');
    const st = await t.step(withOld, { lr: 1e-3, scalars: grpoScalars(loss, { clipEps: eps, kl: 0, entropyBonus: 0 }) });
    assert.ok(Math.abs(st.loss - sum / n) < 1e-5, `loss ${st.loss} vs ${sum / n}`);
    assert.deepEqual(Object.keys(st.stats).sort(), ['abs_logratio', 'clipped_share', 'entropy']);
    assert.ok(Math.abs(st.stats.abs_logratio! - absLogratio / n) < 1e-5, `abs_logratio ${st.stats.abs_logratio} vs ${absLogratio / n}`);
    assert.ok(Math.abs(st.stats.clipped_share! - clipped / n) < 1e-6, `clipped_share ${st.stats.clipped_share} vs ${clipped / n}`);
    await assert.rejects(t.step(withOld, { lr: 1e-3 }), /this loss needs the scalar clip_eps \(StepHyper\.scalars\)/);
    await assert.rejects(t.step(batch, { lr: 1e-3, scalars: { clip_eps: 0.2 } }), /this loss needs old_logprobs/);
    await assert.rejects(t.step(withOld, { lr: 1e-3, scalars: { clip_eps: NaN } }), /scalar clip_eps must be finite/);
  } finally {
    await t.close();
  }
  await assert.rejects(
    Trainer.create({ config: c, weights: w, loss: { module: new URL('../src/engine/adamw.ts', import.meta.url).href } }),
    /exports no objective\(options\) function/,
  );
});
