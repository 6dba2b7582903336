// Wires the server together: model + store + sampler + answerer + adaptation + HTTP/WS.
// startServer() is what `ttrl serve`, the tests and the benchmark call.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { BehaviorSubject } from 'rxjs';
import { Sampler } from '../engine/sampler.ts';
import { loadModel, WEIGHTS_FILE } from '../model/checkpoint.ts';
import type { Weights } from '../model/gpt.ts';
import { Store } from '../store/store.ts';
import { Adaptation, loadVersionWeights } from './adaptation.ts';
import { Answerer } from './answerer.ts';
import type { Settings } from './config.ts';
import { Gateway, WS_PATH } from './gateway.ts';
import { createApp } from './http.ts';
import { createMetrics } from './metrics.ts';
import { ProtocolError } from './protocol.ts';

export interface RunningServer {
  url: string;
  wsUrl: string;
  port: number;
  store: Store;
  adaptation: Adaptation;
  /** The serving version, as it changes. */
  versions$: BehaviorSubject<number>;
  close(): Promise<void>;
}

export async function startServer(s: Settings, log: (line: string) => void = () => {}): Promise<RunningServer> {
  const model = await loadModel(s.model);
  const fingerprint = createHash('sha256').update(await readFile(join(s.model, WEIGHTS_FILE))).digest('hex').slice(0, 16);
  const store = Store.open(s.db);
  const cleanup: (() => Promise<unknown> | void)[] = [() => store.close()];
  try {
    const base = store.getMeta('base_model_sha256');
    if (base && base !== fingerprint)
      throw new Error(`${s.db} logs a different base model (weights ${base}, this one ${fingerprint}); use another --db or the model it was created with`);
    store.setMeta('base_model_sha256', fingerprint);
    if (!store.versions().length) store.activate(store.addVersion({ parent: null, status: 'candidate', weightsPath: resolve(s.model, WEIGHTS_FILE), stats: { base: s.model } }));
    const stale = store.rejectStaleCandidates();
    if (stale) log(`marked ${stale} unfinished candidate version(s) as interrupted`);
    const activeRow = store.activeVersion()!;
    let active = { version: activeRow.version, weights: activeRow.version === 0 || activeRow.weights_path === resolve(s.model, WEIGHTS_FILE) ? model.weights : await loadVersionWeights(activeRow.weights_path!, model.config) };

    const metrics = createMetrics();
    metrics.modelVersion.set(active.version);
    const sampler = await Sampler.create({ config: model.config, weights: active.weights, version: active.version, threads: s.threads });
    cleanup.unshift(() => sampler.close());
    const answerer = new Answerer(sampler, model.tokenizer, store, { batchQuestions: s.batchQuestions, batchWaitMs: s.batchWaitMs, queueLimit: s.queueLimit, temperature: s.temperature, seed: s.seed }, metrics);
    const versions$ = new BehaviorSubject(active.version);
    const limits = {
      maxMessageBytes: s.maxMessageBytes,
      maxQuestionLength: Math.min(s.maxQuestionLength, model.config.contextLength - 8),
      maxVotes: s.maxVotes,
      defaultVotes: s.votes,
      canRead: (t: string) => model.tokenizer.canEncode(t),
    };
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
        probeVotes: s.probeVotes,
        temperature: s.temperature,
        seed: s.seed,
        trainThreads: s.trainThreads,
        trainNice: s.trainNice,
        versionsDir: join(dirname(resolve(s.db)), 'versions'),
        paused: !s.adapt,
      },
      metrics,
      serve,
      () => active,
    );
    cleanup.unshift(() => adaptation.close());

    let ready = false;
    const admin = {
      versions: () => store.versions().map((v) => ({ ...v, serving: v.version === active.version })),
      status: () => ({
        model_version: active.version,
        adaptation: adaptation.status,
        pending_experiences: adaptation.pendingExperiences,
        last_update: adaptation.lastOutcome,
        queue_depth: answerer.queueDepth,
        stored: store.counts(),
        events: store.events(20),
      }),
      activate: async (version: number) => {
        const row = store.version(version);
        if (!row) throw new ProtocolError('not_found', `no model version ${version}`);
        if (!row.weights_path) throw new ProtocolError('invalid_message', `version ${version} was ${row.status} and its weights were not kept`);
        const weights = version === 0 ? model.weights : await loadVersionWeights(row.weights_path, model.config);
        await adaptation.resetTo(weights);
        store.activate(version);
        store.event('version_activated', { version, by: 'admin' });
        await serve(version, weights);
        return { model_version: version };
      },
      pause: () => {
        adaptation.paused = true;
        store.event('adaptation_paused', { by: 'admin' });
        return { adaptation: adaptation.status };
      },
      resume: () => {
        adaptation.paused = false;
        store.event('adaptation_resumed', { by: 'admin' });
        return { adaptation: adaptation.status };
      },
      updateNow: () => adaptation.updateNow('admin'),
    };
    const app = createApp({ answerer, limits, metrics, ready: () => ({ ready, version: active.version }), admin, adminToken: s.adminToken });
    const gateway = new Gateway(answerer, limits, metrics, () => ({ model_version: active.version, limits: { max_message_bytes: limits.maxMessageBytes, max_question_length: limits.maxQuestionLength, max_votes: limits.maxVotes, default_votes: limits.defaultVotes } }));
    const sub = versions$.subscribe((v) => gateway.broadcast({ type: 'model', model_version: v }));
    const http: Server = createServer(app);
    http.on('upgrade', (req, socket, head) => gateway.handleUpgrade(req, socket, head));
    await new Promise<void>((res, rej) => {
      http.once('error', rej);
      http.listen(s.port, s.host, () => res());
    });
    const port = (http.address() as { port: number }).port;
    ready = true;
    const hostForUrl = s.host.includes(':') ? `[${s.host}]` : s.host;
    let closing: Promise<void> | null = null;
    return {
      url: `http://${hostForUrl}:${port}`,
      wsUrl: `ws://${hostForUrl}:${port}${WS_PATH}`,
      port,
      store,
      adaptation,
      versions$,
      close: () =>
        (closing ??= (async () => {
          ready = false;
          sub.unsubscribe();
          // Stop taking questions; answer what is being sampled; then close sockets and workers.
          await answerer.close();
          await adaptation.close();
          await gateway.close();
          await new Promise<void>((r) => http.close(() => r()));
          http.closeAllConnections();
          await sampler.close();
          store.close();
        })()),
    };
  } catch (e) {
    for (const c of cleanup) await c();
    throw e;
  }
}
