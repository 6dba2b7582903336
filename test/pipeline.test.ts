// The serving loop without transport. A Llama-family model: stories260K (a real 260K-param
// Llama) as a Hugging Face directory and as a GGUF file starts a pipeline with its workers
// on the model's mapped weights, and answers a question with votes and a version (the
// arithmetic extractor finds no answer in a story: every vote is ""). The shipped model:
// admin activations and updates take turns.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isWeightFile } from '../src/formats/weight-file.ts';
import { checkAsk } from '../src/loop/admission.ts';
import { FINGERPRINT_KEY } from '../src/loop/base-model.ts';
import { createPipeline } from '../src/loop/pipeline.ts';
import { resolveSettings } from '../src/config/settings.ts';
import { suite } from '../src/tasks/suites.ts';
import { collect } from './helpers/collect.ts';
import { scratch } from './helpers/scratch.ts';

const fixture = (p: string) => fileURLToPath(new URL(`./fixtures/stories260K/${p}`, import.meta.url));

test('stories260K (HF directory and GGUF) starts a pipeline and answers with votes and a version; its store is claimed by its weight file', async () => {
  const dir = await scratch('ttrl-pipeline-');
  process.env.TTRL_CACHE_DIR = dir; // the GGUF conversion stays in the scratch folder
  try {
    for (const [name, model, weightFile] of [
      ['hf', fixture('hf'), fixture('hf/model.safetensors')],
      ['gguf', fixture('stories260K.gguf'), fixture('stories260K.gguf')],
    ] as const) {
      const db = join(dir, `${name}.sqlite`);
      // Adaptation on for one of them: the trainer, prober and scorer start on the Llama weights too.
      const settings = resolveSettings({ model, db, threads: 1, trainThreads: 1, trainNice: 0, votes: 4, adapt: name === 'hf' }, {});
      const p = await createPipeline(settings);
      try {
        assert.ok(isWeightFile(p.versions.base), 'the base weights stay mapped, not read into memory');
        const question = 'Once upon a time';
        const { votes } = checkAsk({ question }, p.limits);
        const a = await p.answerer.ask({ question, votes, clientId: 'q1', connection: 'test' });
        assert.deepEqual([a.model_version, a.answer, a.votes, a.confidence], [0, null, { '': 4 }, 0]);
        const [row] = await collect(p.store.questions());
        assert.equal(row!.model_version, 0);
        const samples = await p.store.samplesOf(row!.id);
        assert.equal(samples.length, 4);
        assert.ok(samples.every((s) => s.tokens > 0 && s.text.length > 0 && Number.isFinite(s.logprobSum)));
        assert.equal(
          await p.store.getMeta(FINGERPRINT_KEY),
          createHash('sha256')
            .update(await readFile(weightFile))
            .digest('hex')
            .slice(0, 16),
        );
        // An update finds nothing to train on (no sample has an answer), and says so.
        const u = await p.adaptation.updateNow('admin');
        assert.deepEqual([u.outcome, u.reason], ['skipped', 'no question passed the gate with a learning signal']);
      } finally {
        await p.close();
      }
    }
    // The GGUF's store refuses the HF directory: other files, other bytes.
    await assert.rejects(
      createPipeline(resolveSettings({ model: fixture('hf'), db: join(dir, 'gguf.sqlite'), threads: 1, adapt: false }, {})),
      /gguf\.sqlite logs a different base model/,
    );
  } finally {
    delete process.env.TTRL_CACHE_DIR;
  }
});

test('admin activation runs between updates: after the update in flight, with none starting meanwhile; adaptation then starts afresh from what serves', async () => {
  const dir = await scratch('ttrl-pipeline-');
  // lr 0: an update that changes nothing, so it passes the guard and is promoted.
  const settings = resolveSettings(
    {
      db: join(dir, 'ttrl.sqlite'),
      threads: 1,
      trainThreads: 1,
      trainNice: 0,
      votes: 8,
      updateEvery: 1000,
      questionsPerStep: 16,
      probeQuestions: 0,
      anchors: 0,
      lr: 0,
    },
    {},
  );
  const p = await createPipeline(settings);
  try {
    const qs = suite('4-operand', 32, 12).map((q) => q.question);
    await Promise.all(p.answerer.askAll(qs.map((question) => ({ question, votes: 8, clientId: null, connection: 'test' }))));
    assert.equal(p.adaptation.pendingExperiences, qs.length);
    const update = p.adaptation.updateNow('admin');
    const rollback = p.activate(0, 'test');
    const [outcome] = await Promise.all([update, rollback]);
    assert.equal(outcome.outcome, 'promoted', JSON.stringify(outcome));
    // The admin's choice came last: version 1 was promoted, then version 0 activated.
    assert.equal(p.versions.active.version, 0);
    assert.deepEqual((await p.store.events()).map((e) => e.kind).reverse(), ['version_promoted', 'version_activated']);
    assert.equal(p.adaptation.pendingExperiences, 0, 'the experiences of the version before are not trained on');
    // While an activation runs, no update starts.
    const forward = p.activate(1, 'test');
    assert.deepEqual(await p.adaptation.updateNow('admin'), { version: null, outcome: 'skipped', reason: 'the serving version is being changed' });
    await forward;
    assert.equal(p.versions.active.version, 1);
    assert.equal((await p.answerer.ask({ question: qs[0]!, votes: 4, clientId: null, connection: 'test' })).model_version, 1);
    await assert.rejects(p.activate(7, 'test'), /no model version 7/);
    assert.equal(p.versions.active.version, 1);
  } finally {
    await p.close();
  }
});
