// Request/response over a worker_thread. ORT's session.run() blocks its thread, so every
// session lives in a worker; the main thread only awaits. A worker that dies rejects every
// pending request with the reason, and later requests fail at once instead of hanging.
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { Worker, parentPort, type TransferListItem } from 'node:worker_threads';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  /** Resolves when the request has been answered either way. */
  settled: Promise<void>;
}

export class WorkerClient {
  private worker: Worker;
  private pending = new Map<number, Pending>();
  private nextId = 1;
  private dead: Error | null = null;

  /** `entry` is a worker module next to the caller; .ts modules run through tsx in the worker. */
  constructor(entry: URL, name: string) {
    const path = fileURLToPath(entry);
    const code =
      extname(path) === '.ts'
        ? `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((m) => { m.register(); return import(${JSON.stringify(entry.href)}); })`
        : `import(${JSON.stringify(entry.href)})`;
    this.worker = new Worker(code, { eval: true, name });
    this.worker.on('message', (m: { id: number; ok: boolean; value?: unknown; error?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      m.ok ? p.resolve(m.value) : p.reject(new Error(m.error));
    });
    const die = (e: Error) => {
      this.dead ??= e;
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    };
    this.worker.on('error', (e) => die(new Error(`${name} worker crashed: ${e.message}`)));
    this.worker.on('exit', (code) => die(new Error(`${name} worker exited (code ${code})`)));
  }

  /** Why the worker can take no more requests (it died, or was closed); null while it can. */
  get failure(): Error | null {
    return this.dead;
  }

  request<T>(type: string, payload: object = {}, transfer: TransferListItem[] = []): Promise<T> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    let settle!: () => void;
    const settled = new Promise<void>((r) => (settle = r));
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, {
        resolve: (v) => (settle(), resolve(v as T)),
        reject: (e) => (settle(), reject(e)),
        settled,
      });
      this.worker.postMessage({ id, type, payload }, transfer);
    });
  }

  /**
   * Refuses new requests, lets the ones already sent finish (terminating a worker inside an
   * ORT run aborts the process), then ends the worker; after `graceMs` it is ended anyway.
   */
  async close(graceMs = 60_000): Promise<void> {
    this.dead ??= new Error('worker closed');
    const inFlight = [...this.pending.values()].map((p) => p.settled);
    if (inFlight.length) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.allSettled(inFlight), new Promise((r) => (timer = setTimeout(r, graceMs)))]);
      clearTimeout(timer);
    }
    await this.worker.terminate();
  }
}

export type Handler = (payload: any) => Promise<{ value: unknown; transfer?: TransferListItem[] }> | { value: unknown; transfer?: TransferListItem[] };

/** Worker side: handle one request at a time, in arrival order. */
export function serveRequests(handlers: Record<string, Handler>): void {
  let chain = Promise.resolve();
  parentPort!.on('message', (m: { id: number; type: string; payload: unknown }) => {
    chain = chain.then(async () => {
      try {
        const h = handlers[m.type];
        if (!h) throw new Error(`unknown request ${m.type}`);
        const { value, transfer } = await h(m.payload);
        parentPort!.postMessage({ id: m.id, ok: true, value }, transfer ?? []);
      } catch (e) {
        parentPort!.postMessage({ id: m.id, ok: false, error: (e as Error).message ?? String(e) });
      }
    });
  });
}

/**
 * Lowers the CPU priority of the calling thread (Linux: a thread's nice value; threads it
 * creates afterwards, such as ORT's pool, inherit it). Background work such as training
 * then yields the cores to serving. Elsewhere it is a no-op that returns false.
 */
export function niceThisThread(nice: number): boolean {
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    if (!Number.isInteger(tid)) return false;
    setPriority(tid, nice);
    return true;
  } catch {
    return false;
  }
}
