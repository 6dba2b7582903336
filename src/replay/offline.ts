// Offline re-adaptation: a logged stream through the serving pipeline in-process, with no
// socket and no clock in the loop. Questions enter in order, batch by batch; an update that
// a batch triggers finishes before the next batch is sampled. With a fixed seed the same
// inputs and settings give the same versions and answers, run to run. True answers go in as
// labels, as a live replay sends them: logged with their questions, never trained on.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkAsk } from '../loop/admission.ts';
import { createPipeline, type PipelineSettings } from '../loop/pipeline.ts';
import type { VersionRow } from '../store/store.ts';
import type { Outcome } from './report.ts';
import type { ReplayItem } from './source.ts';

export interface OfflineResult {
  outcomes: Outcome[];
  sent: number;
  wallS: number;
  versions: VersionRow[];
}

/**
 * What makes an offline replay repeatable: no timers in the loop (updates triggered by counts
 * only), and one training thread (onnxruntime's multi-threaded training kernels do not add
 * in a fixed order, and the last bits would make two runs drift apart). `ttrl replay
 * --offline` applies these unless its flags say otherwise.
 */
export const REPLAY_EXACT = { updateIntervalS: 0, trainThreads: 1 } as const;

export async function replayOffline(
  items: ReplayItem[],
  s: PipelineSettings,
  o: { keepDb?: boolean; onProgress?: (done: number) => void } = {},
): Promise<OfflineResult> {
  const scratch = await mkdtemp(join(tmpdir(), 'ttrl-replay-'));
  // The settings as given: for two runs to agree, pass REPLAY_EXACT's (the CLI does unless told otherwise).
  const settings: PipelineSettings = { ...s, queueLimit: Math.max(s.queueLimit, s.batchQuestions), db: o.keepDb ? s.db : join(scratch, 'replay.sqlite') };
  const t0 = performance.now();
  const p = await createPipeline(settings, { versionsDir: join(o.keepDb ? join(s.db, '..') : scratch, 'versions') });
  const outcomes: Outcome[] = [];
  try {
    for (let i = 0; i < items.length; i += settings.batchQuestions) {
      const chunk = items.slice(i, i + settings.batchQuestions);
      // The checks the server makes at its door, so that a bad line fails alone; the good
      // ones are enqueued together so that the batches depend on the order alone.
      const checked = chunk.map((it): { votes: number } | { error: unknown } => {
        try {
          return { votes: checkAsk({ question: it.question, votes: it.votes }, p.limits).votes };
        } catch (e) {
          return { error: e };
        }
      });
      const answers = p.answerer.askAll(
        checked.flatMap((c, j) =>
          'votes' in c ? [{ question: chunk[j]!.question, votes: c.votes, label: chunk[j]!.answer, clientId: null, connection: 'replay' }] : [],
        ),
      );
      let k = 0;
      const asks = checked.map((c) => ('votes' in c ? answers[k++]! : Promise.reject(c.error)));
      const results = await Promise.allSettled(asks);
      results.forEach((r, j) => {
        const it = chunk[j]!;
        outcomes.push(
          r.status === 'fulfilled'
            ? {
                question: it.question,
                truth: it.answer,
                answer: r.value.answer,
                version: r.value.model_version,
                confidence: r.value.confidence,
                latencyMs: r.value.latency_ms,
              }
            : { question: it.question, truth: it.answer, error: (r.reason as { code?: string }).code ?? 'internal' },
        );
      });
      await p.adaptation.idle();
      o.onProgress?.(outcomes.length);
    }
    const versions = await p.store.versions();
    return { outcomes, sent: items.length, wallS: (performance.now() - t0) / 1000, versions };
  } finally {
    await p.close();
    await rm(scratch, { recursive: true, force: true });
  }
}
