// Readiness: whether the server can answer well right now, and if not, why. The answerer
// reports each batch's sampling and storing; a part that failed stays failed until it works
// again, and /readyz re-probes it (at most once per PROBE_INTERVAL_MS) so that a server no
// traffic reaches any more (a load balancer took it out) still recovers by itself.

export type Part = 'store' | 'sampler';

/** Least time between two probes of a failed part. */
const PROBE_INTERVAL_MS = 1000;

export interface Probes {
  /** A small real write to the database; throws while writes fail. */
  store: () => void;
  /** A one-token sampling run on the live sampler (restarting a dead one); rejects while sampling fails. */
  sampler: () => Promise<void>;
}

export class Health {
  private failing = new Map<Part, string>();
  private probedAt = new Map<Part, number>();
  private probing = new Map<Part, Promise<void>>();

  constructor(private probes: Probes) {}

  /** What the latest use of a part showed: an error message, or none (it worked). */
  report(part: Part, error?: string): void {
    if (error === undefined) this.failing.delete(part);
    else this.failing.set(part, error);
  }

  /** Why the server is not ready (empty: it is), after re-probing the failed parts. */
  async reasons(): Promise<string[]> {
    await Promise.all([...this.failing.keys()].map((part) => this.probe(part)));
    return [...this.failing].map(([part, error]) => (part === 'store' ? `database writes fail: ${error}` : `sampling fails: ${error}`));
  }

  private probe(part: Part): Promise<void> {
    const running = this.probing.get(part);
    if (running) return running;
    if (Date.now() - (this.probedAt.get(part) ?? 0) < PROBE_INTERVAL_MS) return Promise.resolve();
    this.probedAt.set(part, Date.now());
    const p = (async () => {
      try {
        await this.probes[part]();
        this.report(part);
      } catch (e) {
        this.report(part, (e as Error).message);
      }
    })().finally(() => this.probing.delete(part));
    this.probing.set(part, p);
    return p;
  }
}
