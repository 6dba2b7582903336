// Typed calls over a worker_thread. ORT's session.run() blocks its thread, so every session
// lives in a worker; the main thread only awaits. Each worker declares its calls in one
// interface (name -> (payload) => result) that types both ends: the WorkerClient that sends
// them and the handler table that serves them, so a wrong name, payload or result does not
// compile on either side. A worker that dies rejects every pending call with the reason, and
// later calls fail at once instead of hanging.
import { Worker, parentPort, type TransferListItem } from 'node:worker_threads';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';

/** A worker's calls: each takes at most one payload (structured-cloned) and returns a result. */
export type CallsOf<C> = { [K in keyof C]: (payload: never) => unknown };

/** Calls a worker that holds nothing until its `init` call has started it. */
export type StartedBy<C> = CallsOf<C> & { init: (init: never) => void };

/** The payload of call K (undefined for a call that takes none). */
export type PayloadOf<C, K extends keyof C> = C[K] extends () => unknown ? undefined : C[K] extends (payload: infer P) => unknown ? P : never;

/** What a caller passes for call K: its payload (left out for a call that takes none), then an optional transfer list. */
type ArgsOf<C, K extends keyof C> = C[K] extends () => unknown
  ? [payload?: undefined, transfer?: TransferListItem[]]
  : [payload: PayloadOf<C, K>, transfer?: TransferListItem[]];

export type ResultOf<C, K extends keyof C> = C[K] extends (...args: never[]) => infer R ? Awaited<R> : never;

/** A result to post with a transfer list: its ArrayBuffers move to the caller instead of being copied. */
export class Transferring<R> {
  constructor(
    readonly value: R,
    readonly transfer: TransferListItem[],
  ) {}
}

type Reply<R> = R | Transferring<R>;

/** Worker side: one handler per call, answering with the call's result (or a Transferring of it). */
export type Handlers<C> = { [K in keyof C]: (payload: PayloadOf<C, K>) => Reply<ResultOf<C, K>> | Promise<Reply<ResultOf<C, K>>> };

/** Every call but `init`: what a started worker serves. */
export type AfterInit<C> = Omit<C, 'init'>;

interface CallMessage {
  id: number;
  type: string;
  payload: unknown;
}

type ReplyMessage = { id: number; ok: true; value: unknown } | { id: number; ok: false; error: string };

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  /** Resolves when the call has been answered either way. */
  settled: Promise<void>;
}

/** Main-thread side of one worker: sends it the calls of C. */
export class WorkerClient<C extends CallsOf<C>> {
  private worker: Worker;
  private pending = new Map<number, Pending>();
  private nextId = 1;
  private dead: Error | null = null;

  /**
   * Starts the worker module `${name}.worker` beside this one and sends it `init`; a worker whose
   * init fails is ended before the error is thrown.
   */
  static async start<C extends StartedBy<C>>(name: string, init: PayloadOf<C, 'init'>): Promise<WorkerClient<C>> {
    const client = new WorkerClient<C>(new URL(`./${name}.worker${extname(fileURLToPath(import.meta.url))}`, import.meta.url), name);
    try {
      await client.send('init', init, []);
    } catch (e) {
      await client.close();
      throw e;
    }
    return client;
  }

  /** `entry` is a worker module; .ts modules run through tsx in the worker. */
  constructor(entry: URL, name: string) {
    const path = fileURLToPath(entry);
    const code =
      extname(path) === '.ts'
        ? `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((m) => { m.register(); return import(${JSON.stringify(entry.href)}); })`
        : `import(${JSON.stringify(entry.href)})`;
    this.worker = new Worker(code, { eval: true, name });
    this.worker.on('message', (m: ReplyMessage) => {
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

  /** Why the worker can take no more calls (it died, or was closed); null while it can. */
  get failure(): Error | null {
    return this.dead;
  }

  /** Sends call `name`; the buffers in `transfer` move to the worker instead of being copied. */
  call<K extends keyof C & string>(name: K, ...[payload, transfer = []]: ArgsOf<C, K>): Promise<ResultOf<C, K>> {
    return this.send(name, payload ?? {}, transfer) as Promise<ResultOf<C, K>>;
  }

  /** The untyped message underneath call(). */
  private send(type: string, payload: unknown, transfer: TransferListItem[]): Promise<unknown> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    let settle!: () => void;
    const settled = new Promise<void>((r) => (settle = r));
    return new Promise((resolve, reject) => {
      this.pending.set(id, {
        resolve: (v) => (settle(), resolve(v)),
        reject: (e) => (settle(), reject(e)),
        settled,
      });
      const message: CallMessage = { id, type, payload };
      this.worker.postMessage(message, transfer);
    });
  }

  /**
   * Refuses new calls, lets the ones already sent finish (terminating a worker inside an
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

/**
 * Worker side: `init` runs `start`, whose handlers serve every later call; whatever the worker
 * holds lives in what `start` builds, owned here. Calls are handled one at a time, in arrival
 * order, so none sees another half done.
 */
export function serveWorker<C extends StartedBy<C>>(start: (init: PayloadOf<C, 'init'>) => Promise<Handlers<AfterInit<C>>> | Handlers<AfterInit<C>>): void {
  type Handler = (payload: unknown) => unknown;
  let handlers: Record<string, Handler> | undefined;
  const handle = async (type: string, payload: unknown): Promise<unknown> => {
    if (type === 'init') {
      if (handlers) throw new Error('init: this worker has already started');
      handlers = (await start(payload as PayloadOf<C, 'init'>)) as Record<string, Handler>;
      return null;
    }
    if (!handlers || !Object.hasOwn(handlers, type)) throw new Error(handlers ? `unknown request ${type}` : `${type}: the worker has not started (init first)`);
    return handlers[type]!(payload);
  };
  let chain = Promise.resolve();
  parentPort!.on('message', (m: CallMessage) => {
    chain = chain.then(async () => {
      try {
        const reply = await handle(m.type, m.payload);
        const [value, transfer] = reply instanceof Transferring ? [reply.value, reply.transfer] : [reply, []];
        parentPort!.postMessage({ id: m.id, ok: true, value } satisfies ReplyMessage, transfer);
      } catch (e) {
        parentPort!.postMessage({ id: m.id, ok: false, error: (e as Error).message ?? String(e) } satisfies ReplyMessage);
      }
    });
  });
}
