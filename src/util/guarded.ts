// Every listener the server registers (HTTP request, upgrade, client errors, WebSocket
// message, close and error events, event streams, timers) runs through one of these, so that
// no input, however malformed, and no bug behind it, can throw out of an event handler and
// stop the process. The failure is logged with where it happened; the caller decides what
// the client hears.
import type { Logger } from '../util/log.ts';

/** Runs f; a throw (or a rejected promise) is logged as an error of `where` and handed to onError. */
export function guarded<A extends unknown[]>(log: Logger, where: string, f: (...a: A) => unknown, onError?: (e: unknown, ...a: A) => void): (...a: A) => void {
  const failed = (e: unknown, a: A) => {
    log.error({ where, err: e instanceof Error ? { message: e.message, stack: e.stack } : String(e) }, 'listener failed');
    if (!onError) return;
    try {
      onError(e, ...a);
    } catch (e2) {
      log.error({ where, err: String(e2) }, 'listener failure handler failed');
    }
  };
  return (...a: A) => {
    try {
      const r = f(...a);
      if (r instanceof Promise) r.catch((e: unknown) => failed(e, a));
    } catch (e) {
      failed(e, a);
    }
  };
}
