// Scorer worker: the score-graph session and the weights it scores with (mapped from a file, or
// fed as inputs when in memory), plus LoRA adapters as inputs when it was started with a lora
// config (the base then fixed; a swap hands adapters only).
import { buildScore } from './graphs.ts';
import { createSession, type ort } from './ort.ts';
import { niceThisThread, serveRequests } from './worker-host.ts';
import { checkWeights, type ParamSpec, type Weights } from '../model/family.ts';
import { paramSpecsOf } from '../model/families.ts';
import { checkAdapters, initAdapters, loraSpecs } from '../model/lora.ts';
import { checkWeightFile, isWeightFile, type WeightSource } from '../formats/weight-file.ts';
import { Rng } from '../util/rng.ts';
import type { PackedBatch } from './batch.ts';
import { scoreBatch, weightFeedsOf } from './scoring.ts';
import type { ScorerInit } from './scorer.ts';

let init: ScorerInit;
let specs: ParamSpec[];
let active: { session: ort.InferenceSession; weightFeeds: Record<string, ort.Tensor> } | undefined;
/** LoRA: the base's feeds (empty when mapped) beside the adapters'. */
let baseFeeds: Record<string, ort.Tensor> = {};

async function setWeights(w: WeightSource): Promise<void> {
  const o = { threads: init.threads ?? 1, spin: init.spin, memPattern: false, prepack: false };
  const lora = init.lora;
  let next: NonNullable<typeof active>;
  if (isWeightFile(w)) {
    checkWeightFile(specs, w);
    next = { session: await createSession(buildScore(init.config, 'float32', { weights: w, lora }), { ...o, externalDir: w.dir }), weightFeeds: {} };
  } else {
    checkWeights(specs, w);
    const reuse = active && Object.keys(active.weightFeeds).length ? active.session : await createSession(buildScore(init.config, 'float32', { lora }), o);
    next = { session: reuse, weightFeeds: weightFeedsOf(specs, w) };
  }
  const previous = active?.session;
  active = next;
  if (previous && previous !== next.session) await previous.release();
}

function setAdapters(a: Weights): void {
  checkAdapters(init.config, init.lora!, a);
  active = { session: active!.session, weightFeeds: { ...baseFeeds, ...weightFeedsOf(loraSpecs(init.config, init.lora!), a) } };
}

serveRequests({
  async init(p: ScorerInit) {
    if (p.nice) niceThisThread(p.nice);
    init = p;
    specs = paramSpecsOf(p.config);
    await setWeights(p.weights);
    if (p.lora) {
      baseFeeds = active!.weightFeeds;
      setAdapters(p.adapters ?? initAdapters(p.config, p.lora, new Rng(0)));
    } else if (p.adapters) throw new Error('scorer: adapters given without a lora config');
    return { value: null };
  },
  async setWeights(p: { weights: WeightSource }) {
    if (init.lora) throw new Error('scorer: with LoRA the base is fixed at start; use setAdapters()');
    await setWeights(p.weights);
    return { value: null };
  },
  setAdapters(p: { adapters: Weights }) {
    if (!init.lora) throw new Error('scorer: started without a lora config, so it takes full weights (setWeights)');
    setAdapters(p.adapters);
    return { value: null };
  },
  async score(p: { batch: PackedBatch }) {
    return { value: await scoreBatch(active!.session, active!.weightFeeds, p.batch) };
  },
});
