// The serving loop without any transport, wired: question -> batch -> sample -> vote ->
// store (answerer) -> adapt -> judge (adaptation, judge) -> swap (versions). The server puts
// HTTP and WebSocket in front of it; offline replay drives it directly.
import { hostname } from 'node:os';
import { basename, resolve } from 'node:path';
import { Subject } from 'rxjs';
import { Fleet } from './fleet.ts';
import type { Experience } from './answerer.ts';
import { loadModel, type Model } from '../formats/checkpoint.ts';
import type { Store } from '../store/store.ts';
import { openStore, storeKind } from '../store/open.ts';
import { taskFromSettings, type Task } from '../tasks/task.ts';
import { askLimits, type AskLimits } from './admission.ts';
import { Adaptation } from './adaptation.ts';
import type {
  BatchingSettings,
  FleetSettings,
  UpstreamSettings,
  ModelSettings,
  GuardSettings,
  ConfidenceSettings,
  LimitSettings,
  SamplingSettings,
  ScheduleSettings,
  StorageSettings,
  TaskGroupSettings,
  TrainSettings,
} from '../config/settings.ts';
import { loraConfigFor } from '../model/lora.ts';
import { Answerer } from './answerer.ts';
import { CandidateJudge } from './judge.ts';
import { createMetrics, type Metrics } from './metrics.ts';
import { Health } from './health.ts';
import { lineLog, silentLogger, type Logger } from '../util/log.ts';
import { Versions } from './versions.ts';
import { UpstreamPool } from '../upstream/pool.ts';
import { checkUpstreamMatch } from '../upstream/check.ts';

/** The setting groups the serving loop runs on (config/settings.ts): everything but the transport's. */
export type PipelineSettings = ModelSettings &
  StorageSettings &
  FleetSettings &
  UpstreamSettings &
  BatchingSettings &
  TaskGroupSettings &
  SamplingSettings &
  Pick<LimitSettings, 'maxVotes' | 'queueLimit'> &
  ScheduleSettings &
  TrainSettings &
  GuardSettings &
  ConfidenceSettings;

export interface Pipeline {
  model: Model;
  /** The name clients (and upstreams) know the base model by: the --model folder's or file's name. */
  modelId: string;
  /** What is asked of the model: prompts, answers, new tokens (one for the pipeline's life). */
  task: Task;
  store: Store;
  metrics: Metrics;
  /** What a question must be to be asked of this model (the transports check it at their door). */
  limits: AskLimits;
  answerer: Answerer;
  adaptation: Adaptation;
  versions: Versions;
  /** With a shared (PostgreSQL) store: the fleet this front-end is part of; null for a single process. */
  fleet: Fleet | null;
  /** This front-end's name in the log. */
  frontend: string;
  /** With --upstream: the inference servers questions are sampled on; null: sampled in this process. */
  upstreams: UpstreamPool | null;
  /** Why the pipeline cannot answer well now (database writes or sampling fail; empty: ready), re-probed. */
  notReady(): Promise<string[]>;
  /** Rollback / roll forward to a stored version (admin), between updates. */
  activate(version: number, by: string): Promise<void>;
  close(): Promise<void>;
}

export async function createPipeline(
  s: PipelineSettings,
  o: { versionsDir?: string; logger?: Logger; /** How others reach this front-end (the fleet's list shows it). */ address?: string } = {},
): Promise<Pipeline> {
  const logger = o.logger ?? silentLogger;
  const model = await loadModel(s.model, { quantize: s.quantize });
  const modelId = basename(resolve(s.model));
  // The task and its limits before anything is opened: a template the model lacks, or new
  // tokens that fill its context, stop start-up here.
  const task = taskFromSettings(s, model.tokenizer, s.model);
  const limits = askLimits(task, model.tokenizer, model.config.contextLength, s, s.model);
  const lora = s.loraRank > 0 ? loraConfigFor(model.config, { rank: s.loraRank, alpha: s.loraAlpha, targets: s.loraTargets }) : undefined;
  // A PostgreSQL log is shared: its version files must be where every front-end reads them.
  if (storeKind(s.db) === 'postgres' && !s.versionsDir && !o.versionsDir)
    throw new Error('--db postgres://... needs --versions-dir DIR: version weight files go to storage every front-end can read');
  if (s.upstreams.length && s.adapt && !lora)
    throw new Error(
      '--upstream with full fine-tuning: publishing full weights to the upstreams is not supported yet; add --lora-rank R (versions are published to them as LoRA adapters), or --no-adapt to serve without adapting',
    );
  if (s.upstreams.length && lora && storeKind(s.db) === 'postgres' && !s.adapterDir)
    throw new Error('--upstream with --db postgres://... needs --adapter-dir DIR: adapters go to storage every upstream (and front-end) can read');
  const store = await openStore(s.db);
  const cleanup: (() => Promise<unknown> | void)[] = [() => store.close()];
  try {
    const metrics = createMetrics();
    const versions = await Versions.open({
      store,
      model,
      modelPath: s.model,
      // A folder per database (beside it, named after it): two databases in one folder never
      // share a version file. Older databases' rows keep the paths they were written to.
      versionsDir: o.versionsDir ?? s.versionsDir ?? `${resolve(s.db)}.versions`,
      metrics,
      // Idle compute threads spin only when no trainer shares the cores.
      sampler: { threads: s.threads, spin: !s.adapt },
      lora,
      keepVersions: s.keepVersions,
      // In a fleet, candidates left unjudged are the leader's to settle (on taking the lead).
      rejectStale: !store.fleet,
      log: lineLog(logger),
    });
    cleanup.unshift(() => versions.close());
    const upstreams = s.upstreams.length
      ? new UpstreamPool(
          {
            ...s,
            config: model.config,
            baseModel: s.upstreamModel ?? modelId,
            adapters: lora ? { dir: resolve(s.adapterDir ?? `${resolve(s.db)}.adapters`), lora, fingerprint: versions.fingerprint } : undefined,
            keepLoaded: s.keepVersions || 1,
            metrics,
            log: lineLog(logger),
          },
          versions.active,
        )
      : null;
    if (upstreams) {
      cleanup.unshift(() => upstreams.close());
      versions.publishTo(upstreams);
      await upstreams.start();
    }
    const health = new Health({
      store: () => store.probeWrite(),
      // One token from any prompt: the sampler (restarted if its worker died) runs end to end;
      // on upstreams, one must be up (the pool probes those that are not).
      sampler: async () => {
        if (upstreams) {
          if (upstreams.down) throw new Error(upstreams.down);
          return;
        }
        await (await versions.live()).generate([[0]], { samplesPerPrompt: 1, maxNewTokens: 1, seed: 0, stopTokens: [], padToken: 0 });
      },
    });
    // host:port names a front-end for good; a server on a port picked at random (0) goes by its process.
    const port = o.address?.split(':').at(-1);
    const frontend = s.frontendId ?? (port && port !== '0' ? `${hostname()}:${port}` : `${hostname()}:pid${process.pid}`);
    const answerer = new Answerer(
      () => (upstreams ? Promise.resolve(upstreams) : versions.live()),
      model.tokenizer,
      store,
      { ...s, task, frontend },
      metrics,
      health,
      logger,
    );
    const judge = new CandidateJudge(store, model.config, model.tokenizer, versions.base, { ...s, task }, metrics, lora);
    await judge.load();
    if (upstreams && lora) judge.probeOn(upstreams);
    // One process trains on its own answers as they come; a fleet's leader on the whole
    // fleet's, read back from the shared log (fleet.ts).
    const fleetExperiences = store.fleet ? new Subject<Experience>() : null;
    const adaptation = new Adaptation(
      fleetExperiences ?? answerer.experiences$,
      versions,
      judge,
      store,
      model.config,
      model.tokenizer,
      { ...s, lora },
      metrics,
      logger,
    );
    cleanup.unshift(() => adaptation.close());
    let fleet: Fleet | null = null;
    if (store.fleet) {
      fleet = new Fleet(store, versions, adaptation, { ...s, frontend, address: o.address ?? frontend }, metrics, logger);
      fleet.experiences$.subscribe(fleetExperiences!);
      fleet.start();
      cleanup.unshift(() => fleet!.close());
    } else {
      metrics.leader.set(1);
      if (s.adapt) await adaptation.start();
    }
    if (upstreams && s.adapt) {
      // Training takes the upstreams' samples as this model's: refused until checked (upstream/check.ts).
      const refuse = (why: string) => {
        adaptation.refused = why;
        logger.warn({ upstreams: s.upstreams }, `adaptation is refused: ${why}`);
        void store.event('adaptation_refused', { reason: why }).catch(() => undefined);
      };
      if (!upstreams.dialect.loadsAdapters)
        refuse(`${upstreams.dialect.name} upstreams cannot load LoRA adapters at run time, so versions cannot be published to them; serving only`);
      else {
        adaptation.refused = 'waiting for an upstream to check that it serves the model loaded here';
        const checked = (async () => {
          await upstreams.whenUp();
          const r = await checkUpstreamMatch(upstreams, {
            config: model.config,
            reference: await judge.referenceScorer(),
            tok: model.tokenizer,
            task,
            tolerance: s.upstreamLogprobTolerance,
            localModel: s.model,
          });
          if (r.refused) return refuse(r.refused);
          adaptation.refused = null;
          logger.info(
            { gap_nats_per_token: r.gap, tokens: r.tokens },
            `the upstreams serve the model loaded here (mean log-prob gap ${r.gap!.toFixed(5)} nats per token); adaptation may run`,
          );
        })().catch((e: Error) => refuse(`the check that the upstreams serve our model failed: ${e.message}`));
        // At start when an upstream is up; else once one is (serving waits for none of it).
        if (!upstreams.down) await checked;
      }
    }
    let closing: Promise<void> | null = null;
    return {
      model,
      modelId,
      task,
      store,
      metrics,
      limits,
      answerer,
      adaptation,
      versions,
      fleet,
      frontend,
      upstreams,
      notReady: async () => {
        const down = upstreams ? null : versions.samplerDown;
        if (down) health.report('sampler', `the sampler worker is down (${down})`);
        if (upstreams?.down) health.report('sampler', upstreams.down);
        return health.reasons();
      },
      activate: (version, by) => adaptation.betweenUpdates(() => versions.activate(version, by)),
      close: () =>
        (closing ??= (async () => {
          // Stop taking questions and answer what is being sampled, then stop updates and workers.
          await answerer.close();
          await fleet?.close();
          await adaptation.close();
          await versions.close();
          await store.close();
        })()),
    };
  } catch (e) {
    for (const c of cleanup) await c();
    throw e;
  }
}
