// LoRA TTRL served end to end on a real model: stories260K over loopback WebSockets, votes on
// the first word of 8 sampled continuations, rank-4 adapters trained live on the frozen
// base. An update is promoted and hot-swapped (answers carry the new version and are the
// engine's samples under base + adapters), the version is stored as adapters only, a restart
// serves it, a server of another kind refuses it, and an admin rollback serves the base.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { resolveSettings } from '../src/config/settings.ts';
import type { RunningServer } from '../src/server/server.ts';
import { Sampler } from '../src/engine/sampler.ts';
import { inMemory, loadModel } from '../src/formats/checkpoint.ts';
import { loadVersionWeights } from '../src/loop/version-files.ts';
import { loraConfigFor, readAdapterFile, readPeftAdapter, type LoraConfig } from '../src/model/lora.ts';
import { readSafetensors } from '../src/formats/safetensors.ts';
import type { Weights } from '../src/model/family.ts';
import { FINGERPRINT_KEY } from '../src/loop/base-model.ts';
import { seedOf } from '../src/util/rng.ts';
import { collect } from './helpers/collect.ts';
import { scratch } from './helpers/scratch.ts';
import { startTestServer, type SettingOverrides } from './helpers/server.ts';
import { ttrl } from './helpers/cli.ts';
import { connect, STORIES_LORA, STORY_PROMPTS, storiesOneSentence } from './helpers/stories.ts';

const TOKEN = 'test-admin-token';

function serve(model: string, db: string, over: SettingOverrides = {}): Promise<RunningServer> {
  return startTestServer({
    db,
    model,
    ...STORIES_LORA,
    adapt: true,
    adminToken: TOKEN,
    maxClientShare: 1,
    ...over,
  });
}

/** The engine's samples of a question's first ask (the server's dice for it) under the base, or the base with adapters. */
async function engineSamples(dir: string, question: string, lora?: { config: LoraConfig; adapters: Weights }): Promise<{ text: string; logprob: number }[]> {
  const m = await loadModel(dir);
  const sampler = await Sampler.create({ config: m.config, weights: m.weights, lora: lora?.config, adapters: lora?.adapters, threads: 1 });
  try {
    const r = await sampler.generate([m.tokenizer.encode(question)], {
      samplesPerPrompt: 8,
      maxNewTokens: 48,
      seed: 0,
      seeds: [seedOf(0, question, 0)],
      temperature: 1,
      stopTokens: m.tokenizer.stopIds,
      padToken: m.tokenizer.padId,
    });
    return r.completions[0]!.map((c) => ({ text: m.tokenizer.decode(c.tokens), logprob: c.logprobs.reduce((a, b) => a + b, 0) }));
  } finally {
    await sampler.close();
  }
}

test('stories260K with LoRA rank 4: an update trains adapters only, is promoted and hot-swapped, stored as adapters, served after a restart, refused by a full fine-tuning server, rolled back', async () => {
  const dir = await storiesOneSentence();
  const db = join(await scratch('ttrl-lora-serve-'), 'lora.sqlite');
  const baseBytes = await readFile(join(dir, 'model.safetensors'));
  let s = await serve(dir, db);
  let adapters: Weights;
  let lora: LoraConfig;
  try {
    const c = await connect(s.wsUrl);
    for (const [i, q] of STORY_PROMPTS.entries()) {
      const { reply } = await c.ask(`a${i}`, q);
      assert.equal(reply.type, 'answer', JSON.stringify(reply));
      assert.equal(reply.model_version, 0);
    }
    const u = await s.adaptation.updateNow('admin');
    assert.equal(u.outcome, 'promoted', JSON.stringify(u));
    assert.equal(u.version, 1);

    // Stored as adapters only, naming the base they belong to; the base file is untouched.
    const row = (await s.store.version(1))!;
    assert.match(row.weights_path!, /v1\.adapter\.safetensors$/);
    const f = await readAdapterFile(row.weights_path!, (await loadModel(dir)).config);
    lora = f.lora;
    adapters = f.adapters;
    assert.deepEqual(lora, loraConfigFor((await loadModel(dir)).config, { rank: 4 }));
    assert.equal(f.baseModel, await s.store.getMeta(FINGERPRINT_KEY));
    assert.ok((await stat(row.weights_path!)).size < baseBytes.length / 2, 'an adapter file is a fraction of the model');
    assert.ok(
      [...adapters].some(([k, a]) => k.includes('lora_B') && a.some((x) => x !== 0)),
      'the update moved the adapters off their init',
    );
    assert.deepEqual(await readFile(join(dir, 'model.safetensors')), baseBytes);

    // Answers now come from version 1: the engine's samples under base + these adapters, not the base's.
    const fresh = 'The cat sat on the';
    const { reply, votes } = await c.ask('after', fresh);
    assert.equal(reply.model_version, 1);
    const adapted = await engineSamples(dir, fresh, { config: lora, adapters });
    assert.deepEqual(
      votes.map((v) => v.text),
      adapted.map((e) => e.text),
    );
    const stored = await s.store.samplesOf((await collect(s.store.questions())).find((q) => q.client_id === 'after')!.id);
    const base = await engineSamples(dir, fresh);
    stored.forEach((x, k) => assert.ok(Math.abs(x.logprobSum - adapted[k]!.logprob) < 1e-3, `sample ${k}: ${x.logprobSum} vs ${adapted[k]!.logprob}`));
    assert.ok(
      adapted.some((a, k) => a.text !== base[k]!.text || Math.abs(a.logprob - base[k]!.logprob) > 1e-3),
      'the adapters change what is sampled',
    );
    c.close();
  } finally {
    await s.close();
  }

  // A restart serves version 1 from its adapter file.
  s = await serve(dir, db);
  try {
    const c = await connect(s.wsUrl);
    const q = 'A big red ball was';
    const { reply, votes } = await c.ask('restart', q);
    assert.equal(reply.model_version, 1);
    assert.deepEqual(
      votes.map((v) => v.text),
      (await engineSamples(dir, q, { config: lora, adapters })).map((e) => e.text),
    );
    c.close();
    // Rollback: the base serves again, and the next update trains from it.
    const r = await fetch(`${s.url}/admin/versions/0/activate`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(r.status, 200, await r.text());
    const c2 = await connect(s.wsUrl);
    const q2 = 'The happy frog jumped';
    const back = await c2.ask('rollback', q2);
    assert.equal(back.reply.model_version, 0);
    assert.deepEqual(
      back.votes.map((v) => v.text),
      (await engineSamples(dir, q2)).map((e) => e.text),
    );
    c2.close();
    const activated = await fetch(`${s.url}/admin/versions/1/activate`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(activated.status, 200, 'and forward again to the adapters');
  } finally {
    await s.close();
  }

  // Exported for other tools: merged into a Hugging Face directory, and as a PEFT adapter.
  const out = await scratch('ttrl-lora-export-');
  const merged = join(out, 'merged');
  const e1 = await ttrl('export', '--db', db, '--version', '1', '--out', merged);
  assert.equal(e1.code, 0, e1.stderr);
  const m = await loadModel(merged);
  assert.equal(m.config.family, 'llama');
  const names = [...(await readSafetensors(join(merged, 'model.safetensors'))).tensors.keys()];
  assert.ok(
    names.includes('model.layers.0.self_attn.q_proj.weight') && !names.some((n) => n.includes('lora')),
    "transformers' tensor names, adapters folded in",
  );
  const q = 'Lily and her mom';
  const inGraph = await engineSamples(dir, q, { config: lora, adapters });
  const fromMerged = await engineSamples(merged, q);
  inGraph.forEach((a, k) => {
    assert.equal(fromMerged[k]!.text, a.text);
    assert.ok(Math.abs(fromMerged[k]!.logprob - a.logprob) < 1e-3, 'the merged weights sample as base + adapters');
  });
  const peft = join(out, 'peft');
  const e2 = await ttrl('export', '--db', db, '--version', '1', '--out', peft, '--adapter');
  assert.equal(e2.code, 0, e2.stderr);
  const cfg = JSON.parse(await readFile(join(peft, 'adapter_config.json'), 'utf8'));
  assert.equal(cfg.peft_type, 'LORA');
  assert.equal(cfg.r, 4);
  assert.equal(cfg.lora_alpha, 8);
  assert.deepEqual(cfg.target_modules, lora.targets);
  assert.equal(cfg.base_model_name_or_path, dir.replace(/\/$/, ''));
  const back = await readPeftAdapter(peft, m.config, lora);
  assert.deepEqual(back.adapters, adapters);
  const bad = await ttrl('export', '--db', db, '--version', '0', '--out', join(out, 'x'), '--adapter');
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /version 0 is the base model: it has no LoRA adapters to export/);
  const missing = await ttrl('export', '--db', db, '--version', '7', '--out', join(out, 'y'));
  assert.match(missing.stderr, /no model version 7/);
  const noOut = await ttrl('export', '--db', db, '--version', '1');
  assert.match(noOut.stderr, /--version needs --out DIR/);
  const wrongBase = await ttrl('export', '--db', db, '--version', '1', '--out', join(out, 'z'), '--model', 'test/fixtures/stories260K/stories260K.gguf');
  assert.match(wrongBase.stderr, /is not the base model of/);

  // A server of another kind must not serve these adapters as something else.
  await assert.rejects(serve(dir, db, { loraRank: 0 }), /model version 1: cannot load its weights from .*v1\.adapter\.safetensors: it holds LoRA adapters/);
  await assert.rejects(serve(dir, db, { loraRank: 8 }), /v1\.adapter\.safetensors.*rank mismatch: the file has rank 4, expected 8/);
});

test('a LoRA server refuses a version of full weights, naming the file; bad LoRA settings are refused at start', async () => {
  const dir = await storiesOneSentence();
  const db = join(await scratch('ttrl-lora-kinds-'), 'full.sqlite');
  const s = await serve(dir, db, { loraRank: 0, lr: 1e-3 });
  try {
    const c = await connect(s.wsUrl);
    for (const [i, q] of STORY_PROMPTS.entries()) await c.ask(`f${i}`, q);
    c.close();
    assert.equal((await s.adaptation.updateNow('admin')).outcome, 'promoted');
  } finally {
    await s.close();
  }
  await assert.rejects(serve(dir, db), /model version 1: cannot load its weights from .*v1\.safetensors: it holds full weights: serve it with --lora-rank 0/);
  // A full fine-tuning version exports as its weights, and has no adapters.
  const out = join(await scratch('ttrl-full-export-'), 'v1');
  const e = await ttrl('export', '--db', db, '--version', '1', '--out', out);
  assert.equal(e.code, 0, e.stderr);
  const m = await loadModel(dir);
  assert.deepEqual(await inMemory((await loadModel(out)).weights), await loadVersionWeights(join(`${db}.versions`, 'v1.safetensors'), m.config));
  assert.match(
    (await ttrl('export', '--db', db, '--version', '1', '--out', `${out}-a`, '--adapter')).stderr,
    /holds full weights .*no LoRA adapters to export/,
  );
  // A damaged version file (same size) is refused by its hash, naming it, not exported.
  const file = join(`${db}.versions`, 'v1.safetensors');
  const bytes = await readFile(file);
  bytes.fill(7, bytes.length >> 1, (bytes.length >> 1) + 64);
  await writeFile(file, bytes);
  const damaged = await ttrl('export', '--db', db, '--version', '1', '--out', `${out}-d`);
  assert.notEqual(damaged.code, 0);
  assert.match(damaged.stderr, /version 1: .*v1\.safetensors .*has sha256 \w+, not the \w+ recorded when it was written.*not exported/);
  const other = join(await scratch('ttrl-lora-bad-'), 'x.sqlite');
  await assert.rejects(serve(dir, other, { loraTargets: 'q_proj,c_attn' }), /target "c_attn" matches no linear module of this llama model/);
  assert.throws(() => resolveSettings({ loraRank: -1 }, {}), /--lora-rank/);
  assert.throws(() => resolveSettings({ loraAlpha: 0 }, {}), /--lora-alpha: must be > 0/);
});
