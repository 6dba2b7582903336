// Request/response over a worker_thread. ORT's session.run() blocks its thread, so every
// session lives in a worker; the main thread only awaits. A worker that dies rejects every
// pending request with the reason, and later requests fail at once instead of hanging.
import { Worker, parentPort, type TransferListItem } from 'node:worker_threads';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
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

  request<T>(type: string, payload: object = {}, transfer: TransferListItem[] = []): Promise<T> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.worker.postMessage({ id, type, payload }, transfer);
    });
  }

  async close(): Promise<void> {
    this.dead ??= new Error('worker closed');
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
