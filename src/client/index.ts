// The typed client of the WebSocket protocol (README, "Typed client"): import from
// 'ttrl-server/client'. One connection, questions matched to replies by id, at most the
// server's max_in_flight in flight (the rest wait here, in order), overload replies retried
// with jittered exponential backoff, a dropped connection re-established with backoff and
// the questions it held asked again. Runs in Node (the `ws` package, imported on first
// connect) and in browsers (the global WebSocket): nothing here imports Node modules.
// Every server message is decoded with the protocol's own schemas (protocol/messages.ts),
// read tolerantly: a field this client does not know is dropped, so a newer server may add one.
import type { z } from 'zod';
import { PROTOCOL_VERSION, tolerantServerMessages, type ClientMessage } from '../protocol/messages.ts';
import { RETRIED_CODES, TtrlError, type TtrlErrorCode } from './errors.ts';
import { openSocket, type Socket, type WebSocketConstructor } from './transport.ts';
import type { Answer, AnswerEvent, Hello, StreamEvent, VoteEvent } from './types.ts';

export { TtrlError, RETRIED_CODES } from './errors.ts';
export type { ClientErrorCode, TtrlErrorCode } from './errors.ts';
export type { Answer, AnswerEvent, Hello, Limits, StreamEvent, VoteEvent } from './types.ts';
export type { WebSocketConstructor, WebSocketLike } from './transport.ts';

export const CLIENT_PROTOCOL = PROTOCOL_VERSION;
/** In flight per connection when the server's hello does not state max_in_flight (the server's default). */
export const DEFAULT_MAX_IN_FLIGHT = 64;

export interface Backoff {
  /** The first delay (before jitter). */
  initialMs?: number;
  /** The longest delay (before jitter). */
  maxMs?: number;
  /** Each delay is the last times this. */
  factor?: number;
}

export interface TtrlClientOptions {
  /** Sent as `Authorization: Bearer KEY` (Node), or as the subprotocol `ttrl.key.KEY` beside `ttrl.v1` (browsers). */
  apiKey?: string;
  /** How long one sending of a question waits for its reply (default 60 s); a retry waits anew. */
  timeoutMs?: number;
  /** How long opening a connection may take, hello included (default 10 s). */
  connectTimeoutMs?: number;
  /** Most times one question is asked again: after overloaded, too_many_in_flight or shutting_down, or a dropped connection (default 5). */
  retries?: number;
  /** Delays between those retries: initialMs 100, doubling to maxMs 5000, each times a random factor in [0.5, 1.5). */
  backoff?: Backoff;
  /**
   * Re-establish a dropped connection (default on: 10 attempts, 100 ms doubling to 5 s, jittered).
   * Off: questions in flight or waiting fail with connection_lost when the connection drops.
   */
  reconnect?: boolean | (Backoff & { attempts?: number });
  /** Most questions in flight at once; the server's hello.limits.max_in_flight caps it (default: the server's, else 64). */
  maxInFlight?: number;
  /** With no message for this long a ping is sent (default 30 s; 0: never). */
  pingIntervalMs?: number;
  /** A connection silent this long after that ping is dropped and re-established (default 10 s). */
  pingTimeoutMs?: number;
  /** A browser-style WebSocket constructor to use instead of `ws` (Node) or the global WebSocket (browsers). */
  WebSocket?: WebSocketConstructor;
  /** Prefix of the ids this client gives its questions (default "q"). */
  idPrefix?: string;
}

export interface AskOptions {
  /** Samples to vote over (default: the server's default_votes). */
  votes?: number;
  /**
   * The question's known answer, when you have one (a labelled stream): the server scores its
   * answer against it for the dashboard's calibration and logs it; it is never trained on.
   */
  label?: string;
  /** Aborts the question: it fails with code aborted (a question already sent is still answered by the server, unread). */
  signal?: AbortSignal;
  /** This question's timeoutMs. */
  timeoutMs?: number;
}

export interface DisconnectInfo {
  code: number;
  reason: string;
  /** Whether the client is re-establishing the connection. */
  reconnecting: boolean;
}

export interface RetryInfo {
  id: string;
  code: TtrlErrorCode;
  /** 1 for the first retry. */
  attempt: number;
  delayMs: number;
}

export interface TtrlClientEvents {
  /** Every connection's hello, the first and each after a reconnect. */
  hello: (hello: Hello) => void;
  /** The serving version changed (a model broadcast, or a hello after a reconnect that names another version). */
  model: (version: number, previous: number | undefined) => void;
  /** The connection dropped (not emitted for close()). */
  disconnect: (info: DisconnectInfo) => void;
  /** A question is asked again after this delay (code connection_lost: on the next connection, once there is one). */
  retry: (info: RetryInfo) => void;
  /** An error that belongs to no question: a reconnect that gave up, a server error without an id, an unreadable message. */
  error: (e: TtrlError) => void;
}

interface Conn {
  socket: Socket;
  hello?: Hello;
  /** The server said shutting_down: nothing more is sent on this connection. */
  draining: boolean;
  lastMessageAt: number;
  pingSentAt?: number;
  heartbeat?: ReturnType<typeof setInterval>;
  /** Resolves when the socket has closed. */
  closed: Promise<void>;
  markClosed: () => void;
}

interface Req {
  id: string;
  question: string;
  votes?: number;
  label?: string;
  onVote?: (v: VoteEvent) => void;
  votesSeen: number;
  /** Times asked again so far. */
  retries: number;
  sends: number;
  timeoutMs: number;
  timer?: ReturnType<typeof setTimeout>;
  done: boolean;
  resolve(a: Answer): void;
  reject(e: TtrlError): void;
  detach(): void;
}

type Resolved = {
  apiKey?: string;
  timeoutMs: number;
  connectTimeoutMs: number;
  retries: number;
  backoff: Required<Backoff>;
  reconnect: (Required<Backoff> & { attempts: number }) | null;
  maxInFlight?: number;
  pingIntervalMs: number;
  pingTimeoutMs: number;
  WebSocket?: WebSocketConstructor;
  idPrefix: string;
};

const now = () => (typeof performance === 'object' ? performance.now() : Date.now());
const sendMessage = (socket: Socket, m: ClientMessage) => socket.send(JSON.stringify(m));
/** A field of a parsed JSON value, when the value is an object that has it. */
const fieldOf = (v: unknown, name: 'type' | 'id' | 'protocol'): unknown =>
  typeof v === 'object' && v !== null && name in v ? Reflect.get(v, name) : undefined;
/** A server message decoded with its schema, or undefined when it is not as the protocol says. */
function decode<T>(schema: z.ZodType<T>, v: unknown): T | undefined {
  const r = schema.safeParse(v);
  return r.success ? r.data : undefined;
}
const jittered = (b: Required<Backoff>, n: number) => Math.min(b.maxMs, b.initialMs * b.factor ** n) * (0.5 + Math.random());
const unref = (t: unknown) => (t as { unref?: () => void }).unref?.();

/** ws://HOST:PORT/v1/ws as given; http(s)://HOST:PORT[/] becomes ws(s)://HOST:PORT/v1/ws. */
export function websocketUrl(url: string): string {
  const u = new URL(url);
  if (u.protocol === 'http:' || u.protocol === 'https:') {
    u.protocol = u.protocol === 'http:' ? 'ws:' : 'wss:';
    if (u.pathname === '/' || u.pathname === '') u.pathname = '/v1/ws';
  }
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new TypeError(`not a WebSocket or HTTP URL: ${url}`);
  return u.toString();
}

export class TtrlClient {
  readonly url: string;
  /** The current (or last) connection's hello. */
  hello: Hello | undefined;
  /** The serving version, as last heard (hello and model broadcasts). */
  modelVersion: number | undefined;

  private o: Resolved;
  private state: 'idle' | 'connecting' | 'open' | 'closed' = 'idle';
  private conn: Conn | undefined;
  private connecting: Promise<Hello> | undefined;
  private waiting: Req[] = [];
  private inflight = new Map<string, Req>();
  private backingOff = new Set<Req>();
  private pings = new Map<string, { resolve: (ms: number) => void; reject: (e: TtrlError) => void; t0: number; timer: ReturnType<typeof setTimeout> }>();
  private sleeping: { timer: ReturnType<typeof setTimeout>; wake: () => void } | undefined;
  private abortConnecting: (() => void) | undefined;
  private nextId = 0;
  private listeners = new Map<keyof TtrlClientEvents, Set<(...args: never[]) => void>>();

  constructor(url: string, options: TtrlClientOptions = {}) {
    this.url = websocketUrl(url);
    const b = { initialMs: 100, maxMs: 5000, factor: 2, ...options.backoff };
    const r = options.reconnect ?? true;
    this.o = {
      apiKey: options.apiKey,
      timeoutMs: options.timeoutMs ?? 60_000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      retries: options.retries ?? 5,
      backoff: b,
      reconnect: r === false ? null : { attempts: 10, initialMs: 100, maxMs: 5000, factor: 2, ...(r === true ? {} : r) },
      maxInFlight: options.maxInFlight,
      pingIntervalMs: options.pingIntervalMs ?? 30_000,
      pingTimeoutMs: options.pingTimeoutMs ?? 10_000,
      WebSocket: options.WebSocket,
      idPrefix: options.idPrefix ?? 'q',
    };
    if (this.o.maxInFlight !== undefined && !(this.o.maxInFlight >= 1)) throw new RangeError('maxInFlight must be at least 1');
  }

  private get isClosed(): boolean {
    return this.state === 'closed';
  }

  /** Whether a connection is open now. */
  get connected(): boolean {
    return this.state === 'open';
  }
  /** Questions sent and not yet replied to. */
  get inFlight(): number {
    return this.inflight.size;
  }
  /** Questions waiting here to be sent (for a free slot, a connection, or a retry's delay). */
  get queued(): number {
    return this.waiting.length + this.backingOff.size;
  }
  /** The most questions this client keeps in flight: maxInFlight, capped by the server's max_in_flight. */
  get maxInFlight(): number {
    const server = this.hello?.limits.max_in_flight;
    const mine = this.o.maxInFlight;
    if (server === undefined) return mine ?? DEFAULT_MAX_IN_FLIGHT;
    return Math.max(1, Math.min(server, mine ?? Infinity));
  }

  on<K extends keyof TtrlClientEvents>(event: K, fn: TtrlClientEvents[K]): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }
  off<K extends keyof TtrlClientEvents>(event: K, fn: TtrlClientEvents[K]): void {
    this.listeners.get(event)?.delete(fn);
  }
  private emit<K extends keyof TtrlClientEvents>(event: K, ...args: Parameters<TtrlClientEvents[K]>): void {
    for (const fn of [...(this.listeners.get(event) ?? [])]) {
      try {
        (fn as unknown as (...a: Parameters<TtrlClientEvents[K]>) => void)(...args);
      } catch (e) {
        // A listener's bug must not leave the client half-updated: it surfaces on its own.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  /**
   * Opens the connection (one attempt) and resolves with the server's hello. Not required:
   * ask() and stream() connect when needed. Fails with a TtrlError: unauthorized (401),
   * connection_failed, timeout, protocol_error, closed.
   */
  connect(): Promise<Hello> {
    if (this.state === 'closed') return Promise.reject(new TtrlError('closed', 'the client is closed'));
    if (this.state === 'open') return Promise.resolve(this.conn!.hello!);
    if (this.state === 'connecting') return this.connecting!;
    return this.startConnect();
  }

  /** Asks one question; resolves with the voted answer, or rejects with a TtrlError. */
  ask(question: string, opts: AskOptions = {}): Promise<Answer> {
    return this.submit(question, opts).promise;
  }

  /**
   * Asks one question with its samples streamed: yields each vote, then the answer, and
   * ends. The question is sent when iteration starts; breaking off leaves its answer unread.
   * A question whose votes had begun to arrive is not asked again after a dropped connection:
   * it fails with connection_lost.
   */
  async *stream(question: string, opts: AskOptions = {}): AsyncGenerator<StreamEvent, void, undefined> {
    const events: StreamEvent[] = [];
    let failure: TtrlError | undefined;
    let finished = false;
    let wake: (() => void) | undefined;
    const push = () => {
      wake?.();
      wake = undefined;
    };
    const { promise, cancel } = this.submit(question, opts, (v) => {
      events.push(v);
      push();
    });
    promise.then(
      (a) => {
        events.push({ type: 'answer', ...a } satisfies AnswerEvent);
        finished = true;
        push();
      },
      (e: TtrlError) => {
        failure = e;
        finished = true;
        push();
      },
    );
    try {
      for (;;) {
        if (events.length) {
          yield events.shift()!;
          continue;
        }
        if (finished) {
          if (failure) throw failure;
          return;
        }
        await new Promise<void>((r) => (wake = r));
      }
    } finally {
      if (!finished) cancel(new TtrlError('aborted', 'the stream was left before its answer'));
    }
  }

  /** Round trip to the server, in milliseconds. */
  ping(): Promise<number> {
    return this.connect().then(
      () =>
        new Promise<number>((resolve, reject) => {
          const id = `${this.o.idPrefix}ping${++this.nextId}`;
          const timer = setTimeout(() => {
            this.pings.delete(id);
            reject(new TtrlError('timeout', `no pong within ${this.o.timeoutMs} ms`, { id }));
          }, this.o.timeoutMs);
          this.pings.set(id, { resolve, reject, t0: now(), timer });
          if (this.conn) sendMessage(this.conn.socket, { type: 'ping', id });
        }),
    );
  }

  /** Closes the connection (resolves once it has closed, 1 s at most); every question not yet answered fails with code closed. */
  async close(): Promise<void> {
    if (this.state === 'closed') return;
    this.state = 'closed';
    if (this.sleeping) {
      clearTimeout(this.sleeping.timer);
      this.sleeping.wake();
    }
    this.abortConnecting?.();
    const closed = new TtrlError('closed', 'the client was closed before the answer');
    this.failAll(closed);
    const conn = this.conn;
    this.conn = undefined;
    if (conn) {
      this.stopHeartbeat(conn);
      conn.socket.close(1000, 'client closing');
      // The closing handshake is the polite way; a peer that does not answer it is cut off.
      let t: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([conn.closed, new Promise<void>((r) => (t = setTimeout(() => (conn.socket.kill(), r()), 1000)))]);
      clearTimeout(t);
    }
  }

  // --- questions -------------------------------------------------------------------------

  private submit(question: string, opts: AskOptions, onVote?: (v: VoteEvent) => void): { promise: Promise<Answer>; cancel: (e: TtrlError) => void } {
    let req!: Req;
    const promise = new Promise<Answer>((resolve, reject) => {
      req = {
        id: `${this.o.idPrefix}${++this.nextId}`,
        question,
        votes: opts.votes,
        label: opts.label,
        onVote,
        votesSeen: 0,
        retries: 0,
        sends: 0,
        timeoutMs: opts.timeoutMs ?? this.o.timeoutMs,
        done: false,
        resolve,
        reject,
        detach: () => {},
      };
    });
    const cancel = (e: TtrlError) => this.settle(req, e);
    if (typeof question !== 'string') cancel(new TtrlError('invalid_message', 'question must be a string'));
    else if (this.state === 'closed') cancel(new TtrlError('closed', 'the client is closed'));
    else if (opts.signal?.aborted) cancel(new TtrlError('aborted', 'aborted before it was asked', { cause: opts.signal.reason }));
    else {
      if (opts.signal) {
        const signal = opts.signal;
        const onAbort = () => cancel(new TtrlError('aborted', 'aborted before the answer', { id: req.id, cause: signal.reason }));
        signal.addEventListener('abort', onAbort, { once: true });
        req.detach = () => signal.removeEventListener('abort', onAbort);
      }
      this.waiting.push(req);
      this.pump();
    }
    return { promise, cancel };
  }

  /** Ends a question, wherever it is (waiting, in flight, in a retry's delay). */
  private settle(req: Req, result: Answer | TtrlError): void {
    if (req.done) return;
    req.done = true;
    req.detach();
    if (req.timer !== undefined) clearTimeout(req.timer);
    if (this.inflight.get(req.id) === req) this.inflight.delete(req.id);
    this.backingOff.delete(req);
    const w = this.waiting.indexOf(req);
    if (w >= 0) this.waiting.splice(w, 1);
    if (result instanceof TtrlError) req.reject(result);
    else req.resolve(result);
    this.pump();
  }

  private pump(): void {
    if (this.state === 'closed') return;
    if (this.state === 'idle') {
      if (this.waiting.length) this.startConnect().catch(() => {});
      return;
    }
    const conn = this.conn;
    if (this.state !== 'open' || !conn || conn.draining) return;
    while (this.waiting.length && this.inflight.size < this.maxInFlight) this.send(conn, this.waiting.shift()!);
  }

  private send(conn: Conn, req: Req): void {
    const msg: ClientMessage = {
      type: 'ask',
      id: req.id,
      question: req.question,
      ...(req.votes === undefined ? {} : { votes: req.votes }),
      ...(req.label === undefined ? {} : { label: req.label }),
      ...(req.onVote ? { stream: true } : {}),
    };
    const text = JSON.stringify(msg);
    const max = conn.hello?.limits.max_message_bytes;
    if (max !== undefined) {
      // The server answers an oversized frame without the question's id: refuse it here instead.
      const bytes = new TextEncoder().encode(text).length;
      if (bytes > max)
        return this.settle(
          req,
          new TtrlError('payload_too_large', `the question's message has ${bytes} bytes; the server accepts at most ${max}`, { id: req.id }),
        );
    }
    req.sends++;
    this.inflight.set(req.id, req);
    req.timer = setTimeout(() => {
      // The server may still answer; its reply is then dropped. The slot is freed now (a
      // server that counts it still gets too_many_in_flight retried).
      this.settle(req, new TtrlError('timeout', `no answer within ${req.timeoutMs} ms`, { id: req.id, attempts: req.sends }));
    }, req.timeoutMs);
    conn.socket.send(text);
  }

  private retryable(code: string): boolean {
    return RETRIED_CODES.has(code) && (code !== 'shutting_down' || this.o.reconnect !== null);
  }

  private retry(req: Req, code: TtrlErrorCode, message: string): void {
    this.inflight.delete(req.id);
    if (req.timer !== undefined) clearTimeout(req.timer);
    if (!this.retryable(code) || req.retries >= this.o.retries) {
      const tail = req.retries ? ` (after ${req.retries} ${req.retries === 1 ? 'retry' : 'retries'})` : '';
      return this.settle(req, new TtrlError(code, message + tail, { id: req.id, attempts: req.sends }));
    }
    const delayMs = jittered(this.o.backoff, req.retries);
    req.retries++;
    this.backingOff.add(req);
    this.emit('retry', { id: req.id, code, attempt: req.retries, delayMs });
    req.timer = setTimeout(() => {
      req.timer = undefined;
      if (!this.backingOff.delete(req)) return;
      this.waiting.unshift(req);
      this.pump();
    }, delayMs);
    this.pump();
  }

  private failAll(e: TtrlError, which: 'all' | 'waiting' = 'all'): void {
    const reqs = which === 'all' ? [...this.inflight.values(), ...this.waiting, ...this.backingOff] : [...this.waiting];
    for (const r of reqs)
      if (!r.done) {
        r.done = true;
        r.detach();
        if (r.timer !== undefined) clearTimeout(r.timer);
        r.reject(new TtrlError(e.code, e.message, { id: r.id, status: e.status, attempts: r.sends, cause: e.cause }));
      }
    if (which === 'all') {
      this.inflight.clear();
      this.backingOff.clear();
      for (const p of this.pings.values()) {
        clearTimeout(p.timer);
        p.reject(e);
      }
      this.pings.clear();
    }
    this.waiting = [];
  }

  // --- connections -----------------------------------------------------------------------

  private startConnect(): Promise<Hello> {
    this.state = 'connecting';
    const p = this.openConnection().catch((e: TtrlError) => {
      if (this.state !== 'closed') {
        this.state = 'idle';
        // What waited for this connection fails with its reason; retries in their delay try again later.
        this.failAll(e, 'waiting');
      }
      throw e;
    });
    this.connecting = p;
    return p;
  }

  /** One attempt: open the socket, read hello; on success the connection is the client's. */
  private openConnection(): Promise<Hello> {
    return new Promise<Hello>((resolve, reject) => {
      let settled = false;
      let socket: Socket | undefined;
      let markClosed!: () => void;
      const closed = new Promise<void>((r) => (markClosed = r));
      const conn: Conn = { socket: undefined as unknown as Socket, draining: false, lastMessageAt: now(), closed, markClosed };
      const fail = (e: TtrlError) => {
        if (settled) return;
        settled = true;
        this.abortConnecting = undefined;
        clearTimeout(timer);
        socket?.kill();
        reject(e);
      };
      const timer = setTimeout(() => fail(new TtrlError('timeout', `no hello from ${this.url} within ${this.o.connectTimeoutMs} ms`)), this.o.connectTimeoutMs);
      this.abortConnecting = () => fail(new TtrlError('closed', 'the client was closed while connecting'));
      const onHello = (text: string | null) => {
        let v: unknown;
        try {
          v = JSON.parse(text ?? '');
        } catch {
          return fail(new TtrlError('protocol_error', `the server's first message is not JSON: ${String(text).slice(0, 200)}`));
        }
        if (fieldOf(v, 'type') !== 'hello')
          return fail(new TtrlError('protocol_error', `the server's first message is not a hello: ${String(text).slice(0, 200)}`));
        // Checked before the schema (which has this client's version), to say which the server speaks.
        const protocol = fieldOf(v, 'protocol');
        if (protocol !== CLIENT_PROTOCOL)
          return fail(new TtrlError('protocol_error', `the server speaks protocol ${JSON.stringify(protocol)}; this client speaks ${CLIENT_PROTOCOL}`));
        const m = decode(tolerantServerMessages.hello, v);
        if (!m) return fail(new TtrlError('protocol_error', `a malformed hello: ${String(text).slice(0, 200)}`));
        if (settled || this.state === 'closed') return fail(new TtrlError('closed', 'the client was closed while connecting'));
        settled = true;
        this.abortConnecting = undefined;
        clearTimeout(timer);
        const hello: Hello = { protocol: m.protocol, connection: m.connection, model_version: m.model_version, limits: m.limits };
        conn.hello = hello;
        this.conn = conn;
        this.state = 'open';
        this.hello = hello;
        const previous = this.modelVersion;
        this.modelVersion = hello.model_version;
        this.startHeartbeat(conn);
        resolve(hello);
        this.emit('hello', hello);
        if (previous !== undefined && previous !== hello.model_version) this.emit('model', hello.model_version, previous);
        this.pump();
      };
      openSocket(
        this.url,
        { apiKey: this.o.apiKey, WebSocket: this.o.WebSocket },
        {
          open: () => {},
          message: (text) => {
            // A connection already given up (a missed pong) says nothing more.
            if (conn.hello && this.conn !== conn) return;
            conn.lastMessageAt = now();
            conn.pingSentAt = undefined;
            if (!conn.hello) onHello(text);
            else this.onMessage(conn, text);
          },
          fail,
          close: (code, reason) => {
            markClosed();
            if (!conn.hello)
              return fail(
                new TtrlError('connection_failed', `${this.url} closed the connection before its hello (code ${code}${reason ? `: ${reason}` : ''})`),
              );
            this.onDrop(conn, code, reason);
          },
        },
      ).then(
        (s) => {
          socket = s;
          conn.socket = s;
          if (settled && !conn.hello) s.kill();
        },
        (e) => fail(e instanceof TtrlError ? e : new TtrlError('connection_failed', String((e as Error)?.message ?? e), { cause: e })),
      );
    });
  }

  private startHeartbeat(conn: Conn): void {
    const every = this.o.pingIntervalMs;
    if (!(every > 0)) return;
    const timeout = this.o.pingTimeoutMs;
    conn.heartbeat = setInterval(
      () => {
        const t = now();
        if (conn.pingSentAt !== undefined && t - conn.pingSentAt >= timeout) {
          conn.socket.kill();
          return this.onDrop(conn, 1006, `no reply to a ping within ${timeout} ms`);
        }
        if (conn.pingSentAt === undefined && t - conn.lastMessageAt >= every) {
          conn.pingSentAt = t;
          sendMessage(conn.socket, { type: 'ping' });
        }
      },
      Math.max(20, Math.min(every, timeout) / 4),
    );
    unref(conn.heartbeat);
  }

  private stopHeartbeat(conn: Conn): void {
    if (conn.heartbeat !== undefined) clearInterval(conn.heartbeat);
    conn.heartbeat = undefined;
  }

  private onMessage(conn: Conn, text: string | null): void {
    let v: unknown;
    try {
      v = JSON.parse(text ?? '');
      if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    } catch {
      return this.emit('error', new TtrlError('protocol_error', `the server sent a message that is not a JSON object: ${String(text).slice(0, 200)}`));
    }
    const type = fieldOf(v, 'type');
    const rawId = fieldOf(v, 'id');
    const id = typeof rawId === 'string' ? rawId : undefined;
    const req = id === undefined ? undefined : this.inflight.get(id);
    // A message of a known type that breaks its schema fails its question, or is reported when it has none.
    const malformed = () => {
      const e = new TtrlError('protocol_error', `a malformed ${String(type)}: ${String(text).slice(0, 200)}`, { id });
      if (req) this.settle(req, e);
      else this.emit('error', e);
    };
    switch (type) {
      case 'answer': {
        if (!req) return;
        const m = decode(tolerantServerMessages.answer, v);
        if (!m) return malformed();
        const { type: _type, id: _id, ...answer } = m;
        return this.settle(req, { id: req.id, ...answer });
      }
      case 'vote': {
        if (!req?.onVote) return;
        const m = decode(tolerantServerMessages.vote, v);
        if (!m) return malformed();
        req.votesSeen++;
        req.onVote(m);
        return;
      }
      case 'error': {
        const m = decode(tolerantServerMessages.error, v);
        if (!m) return malformed();
        if (m.code === 'shutting_down') conn.draining = true;
        if (req) return this.retry(req, m.code, m.message);
        if (id === undefined) this.emit('error', new TtrlError(m.code, `the server sent an error for no question: ${m.message}`));
        return;
      }
      case 'model': {
        const m = decode(tolerantServerMessages.model, v);
        if (!m) return malformed();
        const previous = this.modelVersion;
        this.modelVersion = m.model_version;
        if (conn.hello) conn.hello.model_version = m.model_version;
        if (previous !== m.model_version) this.emit('model', m.model_version, previous);
        return;
      }
      case 'pong': {
        const m = decode(tolerantServerMessages.pong, v);
        if (!m) return malformed();
        const p = m.id === undefined ? undefined : this.pings.get(m.id);
        if (!p) return;
        this.pings.delete(m.id!);
        clearTimeout(p.timer);
        p.resolve(now() - p.t0);
        return;
      }
      default:
        // A message type this client does not know (a newer server): not for it.
        return;
    }
  }

  private onDrop(conn: Conn, code: number, reason: string): void {
    if (this.conn !== conn || this.state === 'closed') return;
    this.conn = undefined;
    this.stopHeartbeat(conn);
    const reconnecting = this.o.reconnect !== null;
    const lost = `the connection to ${this.url} closed (code ${code}${reason ? `: ${reason}` : ''})`;
    // Questions in flight: asked again on the next connection (a retry), unless their votes had begun to arrive.
    const again: Req[] = [];
    for (const req of this.inflight.values()) {
      if (req.timer !== undefined) clearTimeout(req.timer);
      req.timer = undefined;
      if (reconnecting && req.votesSeen === 0 && req.retries < this.o.retries) {
        req.retries++;
        again.push(req);
      } else {
        req.done = true;
        req.detach();
        req.reject(new TtrlError('connection_lost', `${lost} before the answer`, { id: req.id, attempts: req.sends }));
      }
    }
    this.inflight.clear();
    this.waiting.unshift(...again);
    for (const req of again) this.emit('retry', { id: req.id, code: 'connection_lost', attempt: req.retries, delayMs: 0 });
    for (const p of this.pings.values()) {
      clearTimeout(p.timer);
      p.reject(new TtrlError('connection_lost', `${lost} before the pong`));
    }
    this.pings.clear();
    if (!reconnecting) {
      this.state = 'idle';
      this.failAll(new TtrlError('connection_lost', `${lost} before the answer`));
      this.emit('disconnect', { code, reason, reconnecting });
      return;
    }
    this.state = 'connecting';
    this.emit('disconnect', { code, reason, reconnecting });
    this.connecting = this.reconnectLoop(lost);
    this.connecting.catch((e: TtrlError) => {
      if (this.state === 'closed') return;
      this.state = 'idle';
      this.failAll(e);
      this.emit('error', e);
    });
  }

  private async reconnectLoop(lost: string): Promise<Hello> {
    const r = this.o.reconnect!;
    let last: TtrlError | undefined;
    for (let attempt = 0; attempt < r.attempts; attempt++) {
      await new Promise<void>((wake) => {
        const timer = setTimeout(wake, jittered(r, attempt));
        this.sleeping = { timer, wake };
      });
      this.sleeping = undefined;
      if (this.state === 'closed') throw new TtrlError('closed', 'the client was closed');
      try {
        return await this.openConnection();
      } catch (e) {
        last = e as TtrlError;
        // A wrong key, a wrong path or another protocol will not pass by waiting.
        if (this.isClosed || ['unauthorized', 'not_found', 'protocol_error', 'closed'].includes(last.code)) break;
      }
    }
    if (last && ['unauthorized', 'not_found', 'protocol_error', 'closed'].includes(last.code)) throw last;
    throw new TtrlError('connection_lost', `${lost}, and ${r.attempts} reconnect attempts failed${last ? `: ${last.message}` : ''}`, { cause: last });
  }
}
