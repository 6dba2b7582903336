// Replaying a stream against a running server over WebSocket: N connections (one typed
// client each, src/client), inter-arrival times scaled by `speed` (or 'max': `window`
// questions in flight per connection, as fast as the server answers them). "overloaded" is
// retried with the client's jittered backoff (50 ms doubling to 2 s), as often as it takes.
// A server that goes away ends the replay with an error and what was answered so far (the
// clients do not reconnect); nothing waits forever (a question has a timeout). A question
// whose true answer is known is sent with it as its label, so that the server's dashboard
// measures its calibration while the replay runs.
import { TtrlClient, TtrlError, type AskOptions } from '../client/index.ts';
import { MAX_LABEL_CHARS } from '../protocol/messages.ts';
import type { ReplayItem } from './source.ts';
import type { Outcome } from './report.ts';

export interface LiveOptions {
  to: string;
  speed: number | 'max';
  clients: number;
  /** Questions in flight per connection at speed max. */
  window?: number;
  /** A question unanswered after this long counts as an error ("timeout"). */
  timeoutMs?: number;
  /** The server's API key, when it has keys. */
  apiKey?: string;
  onProgress?: (done: number) => void;
}

export interface LiveResult {
  outcomes: Outcome[];
  sent: number;
  wallS: number;
  /** Why the replay stopped early, if it did. */
  fatal?: string;
}

export async function replayLive(items: ReplayItem[], o: LiveOptions): Promise<LiveResult> {
  const outcomes: Outcome[] = items.map((it) => ({ question: it.question, truth: it.answer, error: 'not_sent' }));
  let sent = 0;
  let done = 0;
  let fatal: string | undefined;
  const window = o.window ?? 16;
  const clients = Array.from(
    { length: Math.max(1, o.clients) },
    () =>
      new TtrlClient(o.to, {
        apiKey: o.apiKey,
        timeoutMs: o.timeoutMs ?? 120_000,
        reconnect: false,
        retries: Infinity,
        backoff: { initialMs: 50, maxMs: 2000 },
        // Timed: every question at its arrival time (up to the server's max_in_flight).
        ...(o.speed === 'max' ? { maxInFlight: window } : {}),
      }),
  );
  const closeAll = () => Promise.all(clients.map((c) => c.close()));
  try {
    await Promise.all(clients.map((c) => c.connect()));
  } catch (e) {
    await closeAll();
    return { outcomes, sent, wallS: 0, fatal: `cannot connect to ${o.to}: ${(e as Error).message}` };
  }
  const t0 = performance.now();
  // Stopping: no more questions are sent, and waits for arrival times end at once.
  let stopped = false;
  const sleeping = new Set<{ timer: ReturnType<typeof setTimeout>; wake: () => void }>();
  const stop = (reason: string) => {
    fatal ??= reason;
    stopped = true;
    for (const s of sleeping) (clearTimeout(s.timer), s.wake());
    sleeping.clear();
  };
  const sleep = (ms: number) =>
    new Promise<void>((wake) => {
      const s = { timer: setTimeout(() => (sleeping.delete(s), wake()), ms), wake };
      sleeping.add(s);
    });
  for (const c of clients)
    c.on('disconnect', (d) =>
      stop(`the server closed the connection (code ${d.code}${d.reason ? `: ${d.reason}` : ''}) after ${done} of ${items.length} questions`),
    );
  const finish = (i: number, patch: Partial<Outcome>) => {
    outcomes[i] = { question: items[i]!.question, truth: items[i]!.answer, ...patch };
    done++;
    o.onProgress?.(done);
  };
  const ask = async (c: TtrlClient, i: number) => {
    if (stopped) return;
    const it = items[i]!;
    sent++;
    const at = performance.now();
    try {
      const a = await c.ask(it.question, askOptionsOf(it));
      finish(i, { answer: a.answer, version: a.model_version, confidence: a.confidence, latencyMs: performance.now() - at });
    } catch (e) {
      const code = e instanceof TtrlError ? e.code : 'error';
      finish(i, { error: code === 'connection_failed' || code === 'closed' ? 'connection_lost' : code });
    }
  };

  await Promise.all(
    clients.map(async (c, k) => {
      const mine = items.map((_, i) => i).filter((i) => i % clients.length === k);
      if (o.speed === 'max') {
        // `window` askers, each asking its next question once the last is answered.
        let next = 0;
        const asker = async () => {
          while (!stopped && next < mine.length) await ask(c, mine[next++]!);
        };
        await Promise.all(Array.from({ length: Math.min(window, mine.length) }, asker));
      } else {
        const speed = o.speed;
        await Promise.all(
          mine.map(async (i) => {
            const wait = t0 + items[i]!.at / speed - performance.now();
            if (wait > 0) await sleep(wait);
            await ask(c, i);
          }),
        );
      }
    }),
  );
  await closeAll();
  return { outcomes, sent, wallS: (performance.now() - t0) / 1000, fatal };
}

/**
 * How an item is asked: its original vote count, and its true answer as the label. A label
 * the protocol would refuse (empty, or longer than MAX_LABEL_CHARS) is not sent: the
 * question is still asked, and the report still scores its answer here.
 */
function askOptionsOf(it: ReplayItem): AskOptions {
  const labelled = it.answer !== undefined && it.answer.length >= 1 && it.answer.length <= MAX_LABEL_CHARS;
  return { ...(it.votes ? { votes: it.votes } : {}), ...(labelled ? { label: it.answer } : {}) };
}
