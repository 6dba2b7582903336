// Replaying a stream against a running server over WebSocket: N connections, inter-arrival
// times scaled by `speed` (or 'max': as fast as the server takes them, backing off on
// "overloaded"). A server that goes away ends the replay with an error and what was
// answered so far; nothing waits forever (a question has a timeout).
import WebSocket from 'ws';
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
  const timeoutMs = o.timeoutMs ?? 120_000;
  const sockets: WebSocket[] = [];
  try {
    for (let c = 0; c < Math.max(1, o.clients); c++) sockets.push(await connect(o.to));
  } catch (e) {
    for (const ws of sockets) ws.terminate();
    return { outcomes, sent, wallS: 0, fatal: (e as Error).message };
  }
  const t0 = performance.now();
  const finish = (i: number, patch: Partial<Outcome>) => {
    outcomes[i] = { question: items[i]!.question, truth: items[i]!.answer, ...patch };
    done++;
    o.onProgress?.(done);
  };

  const perConnection = sockets.map((ws, c) => {
    const mine = items.map((_, i) => i).filter((i) => i % sockets.length === c);
    return new Promise<void>((resolveAll) => {
      const pending = new Map<string, { i: number; sentAt: number; timer: NodeJS.Timeout; tries: number }>();
      let nextIdx = 0;
      let stopped = false;
      const stop = (reason?: string) => {
        if (stopped) return;
        stopped = true;
        if (reason) fatal ??= reason;
        for (const p of pending.values()) {
          clearTimeout(p.timer);
          finish(p.i, { error: 'connection_lost' });
        }
        pending.clear();
        resolveAll();
      };
      const maybeDone = () => {
        if (nextIdx >= mine.length && pending.size === 0) {
          stopped = true;
          resolveAll();
        }
      };
      const send = (i: number, tries = 0) => {
        if (stopped) return;
        const id = `r${i}`;
        const timer = setTimeout(() => {
          pending.delete(id);
          finish(i, { error: 'timeout' });
          pump();
          maybeDone();
        }, timeoutMs);
        pending.set(id, { i, sentAt: performance.now(), timer, tries });
        if (tries === 0) sent++;
        const it = items[i]!;
        ws.send(JSON.stringify({ type: 'ask', id, question: it.question, ...(it.votes ? { votes: it.votes } : {}) }));
      };
      // Timed: each question at its scaled arrival time. Max: keep `window` in flight.
      const pump = () => {
        if (stopped) return;
        if (o.speed === 'max') {
          while (nextIdx < mine.length && pending.size < window) send(mine[nextIdx++]!);
        } else {
          while (nextIdx < mine.length) {
            const i = mine[nextIdx]!;
            const due = t0 + items[i]!.at / (o.speed as number);
            const wait = due - performance.now();
            if (wait > 0) {
              setTimeout(pump, wait);
              return;
            }
            nextIdx++;
            send(i);
          }
        }
      };
      ws.on('message', (d) => {
        let m: Record<string, unknown>;
        try {
          m = JSON.parse(String(d));
        } catch {
          return;
        }
        const p = typeof m.id === 'string' ? pending.get(m.id) : undefined;
        if (!p) return;
        clearTimeout(p.timer);
        pending.delete(m.id as string);
        if (m.type === 'answer') {
          finish(p.i, { answer: m.answer as string | null, version: m.model_version as number, confidence: m.confidence as number, latencyMs: performance.now() - p.sentAt });
        } else if (m.code === 'overloaded') {
          // Back off (50 ms doubling to 2 s, with jitter) and ask again.
          const delay = Math.min(2000, 50 * 2 ** p.tries) * (0.5 + Math.random());
          setTimeout(() => send(p.i, p.tries + 1), delay);
          return;
        } else finish(p.i, { error: String(m.code ?? 'error') });
        pump();
        maybeDone();
      });
      ws.on('close', (code) => stop(`the server closed the connection (code ${code}) after ${done} of ${items.length} questions`));
      ws.on('error', (e) => stop(`connection error: ${e.message}`));
      pump();
      maybeDone();
    });
  });
  await Promise.all(perConnection);
  for (const ws of sockets) if (ws.readyState === WebSocket.OPEN) ws.close();
  return { outcomes, sent, wallS: (performance.now() - t0) / 1000, fatal };
}

function connect(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { handshakeTimeout: 10_000 });
    ws.once('open', () => {
      ws.removeAllListeners('error');
      resolve(ws);
    });
    ws.once('error', (e) => reject(new Error(`cannot connect to ${url}: ${e.message}`)));
  });
}
