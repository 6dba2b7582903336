// The WebSocket gateway at /v1/ws: strict JSON messages in, answers, votes, errors and model
// events out. A bad message gets an error and the connection stays usable; a message over
// the hard size limit, or a client that stops reading, loses its connection.
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, WebSocket, type RawData } from 'ws';
import type { Answerer } from '../loop/answerer.ts';
import { ProtocolError } from '../loop/errors.ts';
import type { Metrics } from '../loop/metrics.ts';
import { errorMessage, parseClientMessage, PROTOCOL_VERSION, type AskMessage, type Limits } from './protocol.ts';

export const WS_PATH = '/v1/ws';
/** A client this far behind in reading its answers is cut off rather than buffered for. */
const MAX_BUFFERED_BYTES = 8 << 20;
/**
 * At shutdown, connections close only once no message has come in for this long (or after
 * SHUTDOWN_GRACE_MS in all): an ask already on the wire when the close frame leaves could
 * never be answered (no data frame may follow a close frame), so the server first answers
 * every arrival with shutting_down and gives the clients, who stop asking on that code,
 * time to fall quiet.
 */
export const SHUTDOWN_QUIET_MS = 100;
export const SHUTDOWN_GRACE_MS = 500;

export class Gateway {
  private wss: WebSocketServer;
  private nextConnection = 1;
  private inflight = new Map<WebSocket, Set<string>>();
  private closing = false;
  private lastMessageAt = 0;

  constructor(
    private answerer: Answerer,
    private limits: Limits,
    private metrics: Metrics,
    private hello: () => Record<string, unknown>,
  ) {
    // Past 4x the soft limit the socket is closed by ws itself (code 1009): the hard limit.
    this.wss = new WebSocketServer({ noServer: true, maxPayload: 4 * limits.maxMessageBytes, clientTracking: true });
    this.wss.on('connection', (ws, req) => this.onConnection(ws, req));
  }

  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path !== WS_PATH) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\nWebSocket endpoint is ' + WS_PATH + '\n');
      return;
    }
    if (this.closing) {
      // A connection opened now would be closed before it could be answered: refuse it plainly.
      const body = JSON.stringify(errorMessage('shutting_down', 'the server is shutting down; no new connections are taken'));
      socket.end(`HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.wss.emit('connection', ws, req));
  }

  broadcast(msg: Record<string, unknown>): void {
    for (const ws of this.wss.clients) this.send(ws, msg);
  }

  private send(ws: WebSocket, msg: Record<string, unknown>): void {
    if (ws.readyState !== WebSocket.OPEN) return;
    if (ws.bufferedAmount > MAX_BUFFERED_BYTES) {
      ws.terminate();
      return;
    }
    ws.send(JSON.stringify(msg));
  }

  private onConnection(ws: WebSocket, _req: IncomingMessage): void {
    const connection = `c${this.nextConnection++}`;
    this.inflight.set(ws, new Set());
    this.metrics.connections.inc();
    ws.on('close', () => {
      this.inflight.delete(ws);
      this.metrics.connections.dec();
    });
    ws.on('error', () => ws.terminate());
    ws.on('message', (data: RawData, isBinary: boolean) => this.onMessage(ws, connection, data, isBinary));
    this.send(ws, { type: 'hello', protocol: PROTOCOL_VERSION, connection, ...this.hello() });
  }

  private onMessage(ws: WebSocket, connection: string, data: RawData, isBinary: boolean): void {
    this.lastMessageAt = Date.now();
    let msg;
    try {
      if (isBinary) throw new ProtocolError('invalid_message', 'messages must be text frames holding JSON');
      const text = Array.isArray(data) ? Buffer.concat(data).toString('utf8') : Buffer.from(data as ArrayBuffer).toString('utf8');
      msg = parseClientMessage(text, this.limits);
    } catch (e) {
      return this.sendError(ws, e);
    }
    if (msg.type === 'ping') return this.send(ws, msg.id === undefined ? { type: 'pong' } : { type: 'pong', id: msg.id });
    void this.onAsk(ws, connection, msg);
  }

  private async onAsk(ws: WebSocket, connection: string, msg: AskMessage): Promise<void> {
    const mine = this.inflight.get(ws);
    if (!mine) return;
    if (mine.has(msg.id)) return this.sendError(ws, new ProtocolError('duplicate_id', `question ${JSON.stringify(msg.id)} is still being answered on this connection`, msg.id));
    mine.add(msg.id);
    this.metrics.questions.inc({ transport: 'ws' });
    try {
      const a = await this.answerer.ask({
        question: msg.question,
        votes: msg.votes ?? this.limits.defaultVotes,
        clientId: msg.id,
        connection,
        onSamples: msg.stream
          ? (r) => r.samples.forEach((s, index) => this.send(ws, { type: 'vote', id: msg.id, index, answer: s.answer, text: s.text, tokens: s.tokens.length }))
          : undefined,
      });
      this.send(ws, { type: 'answer', id: msg.id, ...a });
    } catch (e) {
      this.sendError(ws, e, msg.id);
    } finally {
      mine.delete(msg.id);
    }
  }

  private sendError(ws: WebSocket, e: unknown, id?: string): void {
    const pe = e instanceof ProtocolError ? e : new ProtocolError('internal', (e as Error).message ?? String(e), id);
    if (pe.code !== 'overloaded') this.metrics.rejected.inc({ code: pe.code });
    this.send(ws, errorMessage(pe.code, pe.message, pe.id ?? id));
  }

  /** Refuses new connections from now on (503); open ones stay, and their asks get shutting_down from the answerer. */
  beginClose(): void {
    this.closing = true;
  }

  /**
   * Closes every connection (1001: going away), once the clients have fallen quiet (see
   * SHUTDOWN_QUIET_MS): call it after the answerer has closed, so that what arrives in the
   * meantime is answered with shutting_down.
   */
  async close(): Promise<void> {
    this.beginClose();
    const since = Date.now();
    this.lastMessageAt = Math.max(this.lastMessageAt, since);
    while (this.wss.clients.size && Date.now() - since < SHUTDOWN_GRACE_MS) {
      const wait = this.lastMessageAt + SHUTDOWN_QUIET_MS - Date.now();
      if (wait <= 0) break;
      await new Promise((r) => setTimeout(r, Math.min(wait, since + SHUTDOWN_GRACE_MS - Date.now())));
    }
    for (const ws of this.wss.clients) ws.close(1001, 'server shutting down');
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    for (const ws of this.wss.clients) ws.terminate();
  }
}
