// One upstream inference server, as the pool sees it: whether it takes traffic, how much it
// has in flight (at most its concurrency limit; more wait their turn), how it has done
// (latencies, errors, failures in a row), and the HTTP call itself with its timeout.
import { urlOf } from './dialects.ts';

/** starting: not yet probed; up: takes traffic; down: failed, probed back in by the pool. */
export type UpstreamState = 'starting' | 'up' | 'down';

/** A failed call. `retry`: another upstream may well succeed (the network, a timeout, a 5xx, a garbled answer); else the request itself was refused. */
export class UpstreamError extends Error {
  constructor(
    message: string,
    readonly retry: boolean,
    readonly status?: number,
    /** No connection (refused, reset, no route): the server is not there, so it is taken out at once. */
    readonly unreachable = false,
  ) {
    super(message);
  }
}

/** What /metrics and the dashboard show of an upstream. */
export interface UpstreamStatus {
  url: string;
  state: UpstreamState;
  /** Why it is not up (empty when up). */
  reason: string;
  outstanding: number;
  requests: number;
  errors: number;
  p50_ms: number | null;
  p99_ms: number | null;
}

/** Latencies kept for the percentiles. */
const LATENCY_WINDOW = 512;

export class Upstream {
  state: UpstreamState = 'starting';
  reason = 'not probed yet';
  /** Failed calls in a row (a success resets it). */
  failuresInARow = 0;
  requests = 0;
  errors = 0;
  private inFlight = 0;
  private queue: (() => void)[] = [];
  private latencies: number[] = [];

  constructor(
    readonly url: string,
    private o: { concurrency: number; apiKey?: string },
  ) {}

  /** Requests in flight and waiting for a slot: the load the pool balances. */
  get outstanding(): number {
    return this.inFlight + this.queue.length;
  }

  /**
   * One call (GET without a body), within `timeoutMs` from the moment it holds a slot. Throws
   * UpstreamError: retry for the network, timeouts, 5xx, 404 (a model or adapter it lost) and
   * 429 (overloaded); not for the other 4xx (the request is refused as such).
   */
  async call(path: string, body: unknown, timeoutMs: number, signal?: AbortSignal): Promise<unknown> {
    await this.slot();
    const t0 = performance.now();
    this.requests++;
    try {
      const timeout = AbortSignal.timeout(timeoutMs);
      const res = await fetch(urlOf(this.url, path), {
        method: body === undefined ? 'GET' : 'POST',
        headers: {
          ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
          ...(this.o.apiKey ? { Authorization: `Bearer ${this.o.apiKey}` } : {}),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: signal ? AbortSignal.any([timeout, signal]) : timeout,
      }).catch((e: Error) => {
        if (e.name === 'TimeoutError') throw new UpstreamError(`no answer within ${timeoutMs} ms`, true);
        const cause = (e.cause as Error | undefined)?.message;
        throw new UpstreamError(`${e.message}${cause ? ` (${cause})` : ''}`, true, undefined, true);
      });
      const text = await res.text().catch((e: Error) => {
        throw new UpstreamError(`the answer was cut off: ${e.message}`, true);
      });
      if (!res.ok) {
        const retry = res.status >= 500 || res.status === 404 || res.status === 408 || res.status === 429;
        throw new UpstreamError(`HTTP ${res.status}: ${messageOf(text)}`, retry, res.status);
      }
      try {
        return text.length ? JSON.parse(text) : null;
      } catch {
        // vLLM answers a LoRA load with plain text; a sampling answer must be JSON (the caller checks).
        return text;
      }
    } catch (e) {
      this.errors++;
      throw e;
    } finally {
      this.latency(performance.now() - t0);
      this.release();
    }
  }

  status(): UpstreamStatus {
    const sorted = [...this.latencies].sort((a, b) => a - b);
    const at = (q: number) => (sorted.length ? Math.round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!) : null);
    return {
      url: this.url,
      state: this.state,
      reason: this.state === 'up' ? '' : this.reason,
      outstanding: this.outstanding,
      requests: this.requests,
      errors: this.errors,
      p50_ms: at(0.5),
      p99_ms: at(0.99),
    };
  }

  private latency(ms: number): void {
    this.latencies.push(ms);
    if (this.latencies.length > LATENCY_WINDOW) this.latencies.shift();
  }

  private slot(): Promise<void> {
    if (this.inFlight < this.o.concurrency) {
      this.inFlight++;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.queue.push(resolve));
  }

  private release(): void {
    const next = this.queue.shift();
    if (next) next();
    else this.inFlight--;
  }
}

/** The message of an error answer: OpenAI's {error: {message}}, FastAPI's {detail}, or the text itself (cut short). */
function messageOf(text: string): string {
  try {
    const j = JSON.parse(text) as { error?: { message?: string } | string; detail?: unknown; message?: string };
    const m = typeof j.error === 'string' ? j.error : (j.error?.message ?? j.message ?? (j.detail !== undefined ? JSON.stringify(j.detail) : undefined));
    if (m) return m.slice(0, 500);
  } catch {
    // not JSON
  }
  return text.slice(0, 500) || '(no body)';
}
