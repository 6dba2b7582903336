// Opening one WebSocket, in Node or in a browser. Node: the `ws` package, imported only when
// used, with the API key as an `Authorization: Bearer` header, and a refused upgrade read for
// its status and JSON body (401 unauthorized). Browsers cannot set headers: the key goes as a
// second offered subprotocol (`ttrl.v1`, `ttrl.key.KEY`; the server selects `ttrl.v1`), and a
// refused upgrade shows only as a failed connection. Without a key no subprotocol is offered.
import { tolerantServerMessages } from '../protocol/messages.ts';
import { TtrlError, type TtrlErrorCode } from './errors.ts';

/** What the client needs of a WebSocket: the browser's API (ws's WebSocket has it too). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export const SUBPROTOCOL = 'ttrl.v1';
export const KEY_SUBPROTOCOL_PREFIX = 'ttrl.key.';

export interface SocketHandlers {
  /** The upgrade succeeded. */
  open(): void;
  /** A text frame (binary frames are passed as null). */
  message(text: string | null): void;
  /** The connection failed before it opened. Called at most once, and never after open. */
  fail(e: TtrlError): void;
  /** An open connection closed. */
  close(code: number, reason: string): void;
}

export interface Socket {
  send(text: string): void;
  /** A closing handshake. */
  close(code?: number, reason?: string): void;
  /** Drops the connection at once (Node: the TCP socket; browsers: close()). */
  kill(): void;
}

const isNode = typeof process === 'object' && process !== null && typeof process.versions?.node === 'string';

/**
 * Opens a socket to `url`: a browser-style constructor when given (or in a browser, the global
 * WebSocket), else the `ws` package.
 */
export async function openSocket(url: string, o: { apiKey?: string; WebSocket?: WebSocketConstructor }, h: SocketHandlers): Promise<Socket> {
  const Ctor = o.WebSocket ?? (isNode ? undefined : (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket);
  if (Ctor) return openBrowserStyle(Ctor, url, o.apiKey, h);
  if (!isNode) throw new TtrlError('connection_failed', 'no WebSocket implementation here: pass one as the WebSocket option');
  return openNode(url, o.apiKey, h);
}

function once(h: SocketHandlers): SocketHandlers {
  let opened = false;
  let failed = false;
  let closed = false;
  return {
    open: () => {
      if (opened || failed) return;
      opened = true;
      h.open();
    },
    message: (t) => opened && !closed && h.message(t),
    fail: (e) => {
      if (opened || failed) return;
      failed = true;
      h.fail(e);
    },
    close: (code, reason) => {
      if (!opened) return;
      if (closed) return;
      closed = true;
      h.close(code, reason);
    },
  };
}

function openBrowserStyle(Ctor: WebSocketConstructor, url: string, apiKey: string | undefined, handlers: SocketHandlers): Socket {
  const h = once(handlers);
  let ws: WebSocketLike;
  try {
    ws = apiKey ? new Ctor(url, [SUBPROTOCOL, KEY_SUBPROTOCOL_PREFIX + apiKey]) : new Ctor(url);
  } catch (e) {
    throw new TtrlError('connection_failed', `cannot open a WebSocket to ${url}: ${(e as Error).message}`, { cause: e });
  }
  let opened = false;
  ws.onopen = () => {
    opened = true;
    h.open();
  };
  ws.onmessage = (ev) => h.message(typeof ev.data === 'string' ? ev.data : null);
  const failed = (detail: string) =>
    h.fail(
      new TtrlError('connection_failed', `cannot connect to ${url}: ${detail}${apiKey ? ' (a browser does not say why; a wrong API key looks the same)' : ''}`),
    );
  ws.onerror = (ev) => {
    if (!opened) failed((ev as { message?: string })?.message || 'the WebSocket failed to open');
  };
  ws.onclose = (ev) => {
    if (!opened) failed(`closed before it opened (code ${ev.code})`);
    else h.close(ev.code, ev.reason);
  };
  return {
    send: (t) => ws.send(t),
    close: (code, reason) => ws.close(code, reason),
    kill: () => {
      const t = ws as WebSocketLike & { terminate?: () => void };
      if (typeof t.terminate === 'function') t.terminate();
      else ws.close();
    },
  };
}

async function openNode(url: string, apiKey: string | undefined, handlers: SocketHandlers): Promise<Socket> {
  const h = once(handlers);
  const { WebSocket: WS } = await import('ws');
  let ws: InstanceType<typeof WS>;
  try {
    ws = new WS(url, apiKey ? { headers: { Authorization: `Bearer ${apiKey}` } } : {});
  } catch (e) {
    throw new TtrlError('connection_failed', `cannot open a WebSocket to ${url}: ${(e as Error).message}`, { cause: e });
  }
  ws.on('unexpected-response', (_req, res) => {
    // A refused upgrade: the server's JSON error body says why (401 unauthorized, 503 shutting_down, ...).
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => {
      const status = res.statusCode ?? 0;
      const text = Buffer.concat(chunks).toString('utf8');
      let code: TtrlErrorCode = status === 401 ? 'unauthorized' : 'connection_failed';
      let message = text.trim() || res.statusMessage || '';
      try {
        const body = tolerantServerMessages.error.safeParse(JSON.parse(text));
        if (body.success) ({ code, message } = body.data);
      } catch {
        // not JSON: the text itself is the message
      }
      h.fail(new TtrlError(code, `the server refused the WebSocket upgrade at ${url} with HTTP ${status}${message ? `: ${message}` : ''}`, { status }));
      ws.terminate();
    };
    res.on('data', (c: Buffer) => {
      if (size < 65536) chunks.push(c);
      size += c.length;
    });
    res.on('end', done);
    res.on('error', done);
  });
  ws.on('open', () => h.open());
  ws.on('message', (data, isBinary) => h.message(isBinary ? null : String(data)));
  ws.on('error', (e) => h.fail(new TtrlError('connection_failed', `cannot connect to ${url}: ${e.message}`, { cause: e })));
  ws.on('close', (code, reason) => {
    h.fail(new TtrlError('connection_failed', `cannot connect to ${url}: closed before it opened (code ${code})`));
    h.close(code, reason.toString('utf8'));
  });
  return {
    send: (t) => ws.send(t),
    close: (code, reason) => ws.close(code, reason),
    kill: () => ws.terminate(),
  };
}
