// Sampling on upstream inference servers (--upstream): a front-end in this process on two real
// ttrl-server processes that speak vLLM's API. The front-end votes on the samples the
// upstreams drew (the same dice give the same samples as in-process sampling), trains on
// their token ids, publishes the promoted version as a LoRA adapter under a new name on both,
// and asks for it; an upstream killed mid-batch is retried on the other with nothing lost, and
// when it comes back it is brought to the serving adapter before it gets traffic; a rollback
// switches names; with every upstream down, questions get 503 upstream_unavailable (logged
// as failed) and readiness says why, and both recover without a restart.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { copyFile, mkdir } from 'node:fs/promises';
import { DEFAULT_MODEL_DIR } from '../src/config/settings.ts';
import { readSafetensors, writeSafetensors } from '../src/formats/safetensors.ts';
import { join } from 'node:path';
import { startChildServer, type ChildServer } from './helpers/child-server.ts';
import { startTestServer, assertJudged } from './helpers/server.ts';
import { scratch } from './helpers/scratch.ts';
import type { RunningServer } from '../src/server/server.ts';
import type { Rollout } from '../src/sampling/rollout.ts';
import { suite } from '../src/tasks/suites.ts';

const running: { close(): Promise<void> }[] = [];
after(async () => {
  for (const s of running) await s.close().catch(() => {});
});

/** A ttrl-server upstream: LoRA-capable (adapters are loaded into it), not adapting on its own. */
async function upstream(dir: string, name: string, port = 0): Promise<ChildServer> {
  return startChildServer(['--port', String(port), '--lora-rank', '4', '--no-adapt', '--threads', '1', '--db', join(dir, `${name}.sqlite`)]);
}

const portOf = (u: ChildServer) => Number(new URL(u.url).port);

async function waitFor(what: string, ok: () => Promise<boolean> | boolean, ms = 20_000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > until) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function modelsOf(u: ChildServer): Promise<string[]> {
  const r = (await (await fetch(`${u.url}/v1/models`)).json()) as { data: { id: string }[] };
  return r.data.map((m) => m.id);
}

async function ask(s: RunningServer, question: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${s.url}/v1/ask`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ question, votes: 4 }) });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

/** Each question's samples as the answerer drew them (token ids), by asking through the pipeline. */
async function samplesOf(s: RunningServer, questions: string[]): Promise<Rollout[]> {
  return Promise.all(
    questions.map((question) => {
      let r: Rollout | undefined;
      return s.pipeline.answerer.ask({ question, votes: 4, clientId: null, connection: null, onSamples: (x) => (r = x) }).then(() => r!);
    }),
  );
}

test('a front-end on two ttrl-server upstreams: same samples as in-process, trains on their ids, publishes ttrl-v1 to both, survives a kill, rolls back, and recovers when all are down', async () => {
  const dir = await scratch('ttrl-upstream-');
  let u1 = await upstream(dir, 'u1');
  let u2 = await upstream(dir, 'u2');
  const urls = [`${u1.url}/v1`, `${u2.url}/v1`];
  const front = await startTestServer(
    {
      upstreams: urls,
      loraRank: 4,
      adapt: true,
      updateEvery: 100_000,
      gate: 0,
      anchors: 0,
      probeQuestions: 8,
      lr: 1e-4,
      trainSamples: 4,
      maxClientShare: 1,
      upstreamProbeMs: 200,
      upstreamTimeoutMs: 10_000,
      adapterDir: join(dir, 'adapters'),
    },
    { dir },
  );
  running.push(front);
  const p = front.pipeline;
  const pool = p.upstreams!;
  assert.ok(pool, 'the front-end samples on upstreams');
  await waitFor('the start-up check that the upstreams serve our model', () => p.adaptation.refused === null);

  // 1. The same dice give the same samples as in-process sampling.
  const questions = suite('4-operand', 24, 3).map((q) => q.question);
  const local = await startTestServer({}, { prefix: 'ttrl-upstream-local-' });
  running.push(local);
  const [viaUpstreams, inProcess] = [await samplesOf(front, questions.slice(0, 8)), await samplesOf(local, questions.slice(0, 8))];
  viaUpstreams.forEach((r, i) => {
    assert.deepEqual(
      r.samples.map((s) => s.tokens),
      inProcess[i]!.samples.map((s) => s.tokens),
      `question ${i}: the upstreams' samples are the in-process sampler's for the same seed`,
    );
    for (const [k, s] of r.samples.entries())
      s.logprobs.forEach((lp, t) => assert.ok(Math.abs(lp - inProcess[i]!.samples[k]!.logprobs[t]!) < 1e-4, 'log-probs as drawn in-process'));
    assert.equal(r.version, 0);
    assert.ok(r.sampledBy && urls.includes(r.sampledBy.upstream), `drawn on an upstream: ${JSON.stringify(r.sampledBy)}`);
  });
  const upstreamsUsed = new Set(viaUpstreams.map((r) => r.sampledBy!.upstream));
  assert.equal(upstreamsUsed.size, 2, 'work is spread over both upstreams');

  // 2. An update trains on the upstreams' token ids, is judged on an upstream (candidate name), published, and served by name.
  await samplesOf(front, questions.slice(8));
  const update = await p.adaptation.updateNow('admin');
  assertJudged(update, ['promoted']);
  const v = update.version!;
  assert.ok((update.stats as { probe?: unknown }).probe, 'the guard probed the candidate (on an upstream)');
  assert.deepEqual(pool.servingName, { version: v, name: `ttrl-v${v}` });
  for (const u of [u1, u2]) {
    const ids = await modelsOf(u);
    assert.ok(ids.includes(`ttrl-v${v}`), `${u.url} holds ttrl-v${v}: ${ids}`);
    assert.ok(!ids.some((id) => id.startsWith('ttrl-cand-')), `the candidate was unloaded: ${ids}`);
  }
  assert.ok(existsSync(join(dir, 'adapters', `ttrl-v${v}`, 'adapter_config.json')), 'written as a PEFT adapter');
  const metrics = await (await fetch(`${front.url}/metrics`)).text();
  for (const url of urls) {
    assert.ok(metrics.includes(`ttrl_upstream_up{upstream="${url}"} 1`), `/metrics says ${url} is up`);
    assert.match(metrics, new RegExp(`ttrl_upstream_request_seconds_count\\{upstream="${url.replace(/[.:/]/g, (c) => `\\${c}`)}"\\} [1-9]`));
  }
  const after1 = await samplesOf(
    front,
    suite('4-operand', 8, 4).map((q) => q.question),
  );
  for (const r of after1) {
    assert.equal(r.version, v);
    assert.equal(r.sampledBy!.model, `ttrl-v${v}`);
  }
  assert.equal(new Set(after1.map((r) => r.sampledBy!.upstream)).size, 2, `ttrl-v${v} answers come from both upstreams`);
  const stored = [];
  for await (const row of p.store.questions({ status: 'answered' })) stored.push(row);
  assert.ok(
    stored.slice(-8).every((r) => r.sampled_model === `ttrl-v${v}` && urls.includes(r.sampled_on!)),
    'each answer records its upstream and adapter',
  );

  // 3. One upstream killed mid-batch: retried on the other, nothing lost.
  const batch = suite('4-operand', 24, 5).map((q) => q.question);
  const asked = Promise.all(batch.map((q) => ask(front, q)));
  await new Promise((r) => setTimeout(r, 30));
  await u1.stop('SIGKILL');
  const replies = await asked;
  for (const r of replies) assert.equal(r.status, 200, `answered although an upstream died: ${JSON.stringify(r.body)}`);
  assert.equal((await p.store.counts()).failed, 0, 'nothing failed');
  await waitFor('the killed upstream to be taken out', () => pool.status().find((s) => s.url === urls[0])!.state === 'down');

  // ... restarted on its port: brought to the serving adapter before it gets traffic.
  u1 = await upstream(dir, 'u1', portOf(u1));
  await waitFor('the restarted upstream to be brought back in', () => pool.status().find((s) => s.url === urls[0])!.state === 'up');
  assert.ok((await modelsOf(u1)).includes(`ttrl-v${v}`), 'loaded with the serving adapter on its way back in');
  const back = await samplesOf(
    front,
    suite('4-operand', 8, 6).map((q) => q.question),
  );
  assert.ok(back.some((r) => r.sampledBy!.upstream === urls[0]) && back.every((r) => r.sampledBy!.model === `ttrl-v${v}`));

  // 4. Rollback switches names: the base model's, then the version's again.
  await p.activate(0, 'test');
  assert.equal(pool.servingName.name, 'arith-tiny');
  const rolledBack = await samplesOf(front, [suite('4-operand', 1, 7)[0]!.question]);
  assert.equal(rolledBack[0]!.version, 0);
  assert.equal(rolledBack[0]!.sampledBy!.model, 'arith-tiny');
  await p.activate(v, 'test');
  assert.equal((await samplesOf(front, [suite('4-operand', 1, 8)[0]!.question]))[0]!.sampledBy!.model, `ttrl-v${v}`);

  // 5. Every upstream down: 503 upstream_unavailable, logged as failed; readiness says why; both recover.
  await Promise.all([u1.stop('SIGKILL'), u2.stop('SIGKILL')]);
  const failedBefore = (await p.store.counts()).failed;
  const last = suite('4-operand', 1, 9)[0]!.question;
  const down = await ask(front, last);
  assert.equal(down.status, 503, JSON.stringify([down.body, pool.status()]));
  assert.equal((down.body.error as { code: string } | undefined)?.code ?? down.body.code, 'upstream_unavailable');
  await waitFor('the failed question to be logged', async () => (await p.store.counts()).failed === failedBefore + 1);
  const notReady = await fetch(`${front.url}/readyz`);
  assert.equal(notReady.status, 503, JSON.stringify([down.body, pool.status()]));
  assert.match(JSON.stringify(await notReady.json()), /no upstream is up/);
  u2 = await upstream(dir, 'u2', portOf(u2));
  await waitFor('readiness to recover', async () => (await fetch(`${front.url}/readyz`)).status === 200);
  const recovered = await ask(front, last);
  assert.equal(recovered.status, 200, JSON.stringify(recovered.body));
  assert.equal(recovered.body.model_version, v);
  await u2.stop();
});

test('upstream settings are checked at start: full fine-tuning with upstreams is refused, a bad URL names itself, llama.cpp serves without adapting, none up is not ready', async () => {
  await assert.rejects(
    startTestServer({ upstreams: ['http://127.0.0.1:9/v1'], adapt: true }),
    /full fine-tuning: publishing full weights to the upstreams is not supported yet/,
  );
  await assert.rejects(startTestServer({ upstreams: ['ftp://gpu-1/v1'] }), /upstreams.*http:\/\/ or https:\/\//);
  const s = await startTestServer({ upstreams: ['http://127.0.0.1:9/v1'], upstreamApi: 'llamacpp', loraRank: 4, adapt: true });
  try {
    assert.match(s.pipeline.adaptation.refused ?? '', /llamacpp upstreams cannot load LoRA adapters at run time/);
    const r = await fetch(`${s.url}/readyz`);
    assert.equal(r.status, 503);
    assert.match(JSON.stringify(await r.json()), /no upstream is up: http:\/\/127\.0\.0\.1:9\/v1/);
  } finally {
    await s.close();
  }
});

test('an upstream serving other weights under the same name: the front-end serves but refuses to adapt, naming both and the gap', async () => {
  const dir = await scratch('ttrl-upstream-mismatch-');
  // The shipped model with its output layer scaled: the same name and shapes, other log-probs.
  const other = join(dir, 'arith-tiny');
  await mkdir(other);
  for (const f of ['config.json', 'tokenizer.json']) await copyFile(join(DEFAULT_MODEL_DIR, f), join(other, f));
  const { tensors } = await readSafetensors(join(DEFAULT_MODEL_DIR, 'model.safetensors'));
  const head = tensors.get('lm_head.weight')!;
  head.data = (head.data as Float32Array).map((x) => x * 1.5);
  await writeSafetensors(join(other, 'model.safetensors'), tensors);
  const u = await upstream(dir, 'u');
  // A bare server address: the pool asks it at /v1, as OpenAI's clients do.
  const front = await startTestServer({ model: other, upstreams: [u.url], loraRank: 4, adapt: true }, { dir });
  try {
    await waitFor('the check to finish', () => !/waiting/.test(front.pipeline.adaptation.refused ?? 'waiting'));
    assert.match(
      front.pipeline.adaptation.refused ?? '',
      /does not serve the model loaded here \(.*arith-tiny\): its log-probs of a completion it drew differ from ours by [0-9.]+ nats per token on average \(tolerance 0.05/,
    );
    const answered = await ask(front, suite('4-operand', 1, 1)[0]!.question);
    assert.equal(answered.status, 200, 'it still serves');
    assert.equal((await front.pipeline.adaptation.updateNow('admin')).outcome, 'skipped');
  } finally {
    await front.close();
    await u.stop();
  }
});
