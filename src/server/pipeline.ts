// The serving pipeline without any transport: model, experience store, sampler, answerer
// (batching + voting + logging) and live adaptation (updates + guard + hot swap). The
// server puts HTTP and WebSocket in front of it; offline replay drives it directly.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { BehaviorSubject } from 'rxjs';
import { Sampler } from '../engine/sampler.ts';
import { inMemory, loadModel, WEIGHTS_FILE, type Model } from '../model/checkpoint.ts';
import type { Weights } from '../model/family.ts';
import { Store } from '../store/store.ts';
import { Adaptation, loadVersionWeights } from './adaptation.ts';
import { Answerer } from './answerer.ts';
import type { Settings } from './config.ts';
import { createMetrics, type Metrics } from './metrics.ts';
import { ProtocolError } from './protocol.ts';

export interface Pipeline {
  model: Model;
  store: Store;
  metrics: Metrics;
  answerer: Answerer;
  adaptation: Adaptation;
  /** The serving version, as it changes. */
  versions$: BehaviorSubject<number>;
  active(): { version: number; weights: Weights };
  /** Rollback / roll forward to a stored version (admin). */
  activate(version: number, by: string): Promise<void>;
  close(): Promise<void>;
}

export async function createPipeline(s: Settings, o: { versionsDir?: string; log?: (line: string) => void } = {}): Promise<Pipeline> {
  const log = o.log ?? (() => {});
  const model = await loadModel(s.model);
  const fingerprint = createHash('sha256').update(await readFile(join(s.model, WEIGHTS_FILE))).digest('hex').slice(0, 16);
  const store = Store.open(s.db);
  const cleanup: (() => Promise<unknown> | void)[] = [() => store.close()];
  try {
    const base = store.getMeta('base_model_sha256');
    if (base && base !== fingerprint)
      throw new Error(`${s.db} logs a different base model (weights ${base}, this one ${fingerprint}); use another --db or the model it was created with`);
    store.setMeta('base_model_sha256', fingerprint);
    const basePath = resolve(s.model, WEIGHTS_FILE);
    if (!store.versions().length) store.activate(store.addVersion({ parent: null, status: 'candidate', weightsPath: basePath, stats: { base: s.model } }));
    const stale = store.rejectStaleCandidates();
    if (stale) log(`marked ${stale} unfinished candidate version(s) as interrupted`);
    const baseWeights = await inMemory(model.weights);
    const weightsOf = async (version: number, path: string) => (version === 0 || path === basePath ? baseWeights : loadVersionWeights(path, model.config));
    const row = store.activeVersion()!;
    let active = { version: row.version, weights: await weightsOf(row.version, row.weights_path!) };

    const metrics = createMetrics();
    metrics.modelVersion.set(active.version);
    const sampler = await Sampler.create({ config: model.config, weights: active.weights, version: active.version, threads: s.threads, spin: !s.adapt });
    cleanup.unshift(() => sampler.close());
    const answerer = new Answerer(sampler, model.tokenizer, store, { batchQuestions: s.batchQuestions, batchWaitMs: s.batchWaitMs, queueLimit: s.queueLimit, temperature: s.temperature, seed: s.seed }, metrics);
    const versions$ = new BehaviorSubject(active.version);
    const serve = async (version: number, weights: Weights) => {
      await sampler.setWeights(weights, version);
      active = { version, weights };
      metrics.modelVersion.set(version);
      versions$.next(version);
    };
    const adaptation = new Adaptation(
      answerer,
      store,
      model.config,
      model.tokenizer,
      {
        updateEvery: s.updateEvery,
        updateIntervalS: s.updateIntervalS,
        lr: s.lr,
        gate: s.gate,
        trainSamples: s.trainSamples,
        questionsPerStep: s.questionsPerStep,
        kl: s.kl,
        entropyFloor: s.entropyFloor,
        probeQuestions: s.probeQuestions,
        anchors: s.anchors,
        anchorSlack: s.anchorSlack,
        temperature: s.temperature,
        seed: s.seed,
        trainThreads: s.trainThreads,
        trainNice: s.trainNice,
        versionsDir: o.versionsDir ?? join(dirname(resolve(s.db)), 'versions'),
        paused: !s.adapt,
        baseWeights,
      },
      metrics,
      serve,
      () => active,
    );
    cleanup.unshift(() => adaptation.close());
    if (s.adapt) await adaptation.start();
    let closing: Promise<void> | null = null;
    return {
      model,
      store,
      metrics,
      answerer,
      adaptation,
      versions$,
      active: () => active,
      async activate(version, by) {
        const row = store.version(version);
        if (!row) throw new ProtocolError('not_found', `no model version ${version}`);
        if (!row.weights_path) throw new ProtocolError('invalid_message', `version ${version} was ${row.status} and its weights were not kept`);
        const weights = await weightsOf(version, row.weights_path);
        await adaptation.resetTo(weights);
        store.activate(version);
        store.event('version_activated', { version, by });
        await serve(version, weights);
      },
      close: () =>
        (closing ??= (async () => {
          // Stop taking questions and answer what is being sampled, then stop updates and workers.
          await answerer.close();
          await adaptation.close();
          await sampler.close();
          versions$.complete();
          store.close();
        })()),
    };
  } catch (e) {
    for (const c of cleanup) await c();
    throw e;
  }
}
