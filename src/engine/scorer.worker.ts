// Scorer worker: the score-graph session and the weights it scores with (mapped from a file, or
// fed as inputs when in memory).
import { buildScore } from './graphs.ts';
import { createSession, type ort } from './ort.ts';
import { niceThisThread, serveRequests } from './worker-host.ts';
import { checkWeights, type ParamSpec } from '../model/family.ts';
import { paramSpecsOf } from '../model/families.ts';
import { checkWeightFile, isWeightFile, type WeightSource } from '../model/weight-file.ts';
import type { PackedBatch } from './batch.ts';
import { scoreBatch, weightFeedsOf } from './scoring.ts';
import type { ScorerInit } from './scorer.ts';

let init: ScorerInit;
let specs: ParamSpec[];
let active: { session: ort.InferenceSession; weightFeeds: Record<string, ort.Tensor> } | undefined;

async function setWeights(w: WeightSource): Promise<void> {
  const o = { threads: init.threads ?? 1, spin: init.spin, memPattern: false, prepack: false };
  let next: NonNullable<typeof active>;
  if (isWeightFile(w)) {
    checkWeightFile(specs, w);
    next = { session: await createSession(buildScore(init.config, 'float32', w), { ...o, externalDir: w.dir }), weightFeeds: {} };
  } else {
    checkWeights(specs, w);
    const reuse = active && Object.keys(active.weightFeeds).length ? active.session : await createSession(buildScore(init.config), o);
    next = { session: reuse, weightFeeds: weightFeedsOf(specs, w) };
  }
  const previous = active?.session;
  active = next;
  if (previous && previous !== next.session) await previous.release();
}

serveRequests({
  async init(p: ScorerInit) {
    if (p.nice) niceThisThread(p.nice);
    init = p;
    specs = paramSpecsOf(p.config);
    await setWeights(p.weights);
    return { value: null };
  },
  async setWeights(p: { weights: WeightSource }) {
    await setWeights(p.weights);
    return { value: null };
  },
  async score(p: { batch: PackedBatch }) {
    return { value: await scoreBatch(active!.session, active!.weightFeeds, p.batch) };
  },
});
