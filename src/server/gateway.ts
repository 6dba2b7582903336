// The WebSocket gateway at /v1/ws: strict JSON messages in, answers, votes, errors and model
// events out. A bad message gets an error and the connection stays usable; a message over
// the hard size limit, or a client that stops reading, loses its connection.
//
// Limits: a connection has at most maxInFlight questions in flight, counted from the ask
// until its answer has left for the socket (not merely been queued in memory), so a client
// that stops reading soon stops being served; one whose unsent output passes
// maxBufferedBytes is cut off, and its questions still waiting are dropped (and logged).
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, WebSocket, type RawData } from 'ws';
import type { Answerer } from '../loop/answerer.ts';
import type { Metrics } from '../loop/metrics.ts';
import { ProtocolError } from '../protocol/errors.ts';
import {
  answerMessage,
  errorMessage,
  helloMessage,
  pongMessage,
  voteMessage,
  type AskMessage,
  type ErrorMessage,
  type HelloMessage,
  type ServerMessage,
} from '../protocol/messages.ts';
import { ApiKeys, WS_SUBPROTOCOL } from './auth.ts';
import { parseClientMessage, type ServerLimits } from './client-messages.ts';
import type { ConnectionLimiter } from './connections.ts';
import { guarded } from '../util/guarded.ts';
import { rawErrorReply as refuseUpgrade } from './raw-reply.ts';
import { silentLogger, type Logger } from '../util/log.ts';

export const WS_PATH = '/v1/ws';

export interface GatewayOptions {
  limits: ServerLimits;
  maxInFlight: number;
  /** A client this far behind in reading its output is cut off rather than buffered for. */
  maxBufferedBytes: number;
  keys: ApiKeys;
  connections: ConnectionLimiter;
  metrics: Metrics;
  /** What each connection's hello states besides the protocol and the connection's name. */
  hello: () => Pick<HelloMessage, 'model_version' | 'limits'>;
  /** This front-end's name: a connection is a client of its own across a fleet (the update share counts by it). */
  frontend?: string;
  logger?: Logger;
}

/** A connection's state: its questions not yet answered, and answers not yet handed to the socket. */
interface Client {
  connection: string;
  /** Who asks, for the update share: its API key, else the connection. */
  source: string;
  asking: Set<string>;
  unsent: number;
}
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
  private clients = new Map<WebSocket, Client>();
  private closing = false;
  private lastMessageAt = 0;

  constructor(
    private answerer: Answerer,
    private o: GatewayOptions,
  ) {
    // Past 4x the soft limit the socket is closed by ws itself (code 1009): the hard limit.
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: 4 * o.limits.maxMessageBytes,
      clientTracking: true,
      // A browser that offered subprotocols (its key among them) fails the handshake unless one is selected.
      handleProtocols: (offered) => (offered.has(WS_SUBPROTOCOL) ? WS_SUBPROTOCOL : ([...offered][0] ?? false)),
    });
    this.log = o.logger ?? silentLogger;
    this.wss.on(
      'connection',
      guarded(
        this.log,
        'ws connection',
        (ws: WebSocket, req: IncomingMessage & { source?: string }) => this.onConnection(ws, req.source),
        (_e, ws) => ws.terminate(),
      ),
    );
    this.wss.on(
      'error',
      guarded(this.log, 'ws server error', () => undefined),
    );
    // The handshake faults ws finds itself (Upgrade, Sec-WebSocket-Key, Sec-WebSocket-Protocol): 400 in our shape.
    this.wss.on(
      'wsClientError',
      guarded(
        this.log,
        'ws handshake',
        (err: Error, socket: Duplex) => refuseUpgrade(socket, 400, 'invalid_message', `not a valid WebSocket handshake: ${err.message}`),
        (_e, _err, socket) => socket.destroy(),
      ),
    );
  }

  private log: Logger;

  /** Takes an upgrade whose target the server has parsed and normalised (server.ts): req.url is origin-form. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== WS_PATH) return refuseUpgrade(socket, 404, 'not_found', `the WebSocket endpoint is ${WS_PATH}`);
    const refusal = this.o.connections.refusal(req.socket);
    if (refusal) return refuseUpgrade(socket, refusal.status, 'too_many_connections', refusal.message);
    // A connection opened now would be closed before it could be answered: refuse it plainly.
    if (this.closing) return refuseUpgrade(socket, 503, 'shutting_down', 'the server is shutting down; no new connections are taken');
    let key: string | null = null;
    if (this.o.keys.enabled) {
      key = this.o.keys.check(ApiKeys.presented(req));
      if (!key) {
        this.o.metrics.rejected.inc({ code: 'unauthorized' });
        return refuseUpgrade(
          socket,
          401,
          'unauthorized',
          `${WS_PATH} needs an API key: Authorization: Bearer KEY, or the subprotocol ttrl.key.KEY beside ${WS_SUBPROTOCOL}`,
          'WWW-Authenticate: Bearer\r\n',
        );
      }
    }
    // The handshake's own faults, answered in our JSON shape (ws would answer text/plain).
    if (req.method !== 'GET') return refuseUpgrade(socket, 405, 'invalid_message', `a WebSocket handshake is a GET, not ${req.method}`, 'Allow: GET\r\n');
    const version = req.headers['sec-websocket-version'];
    if (version !== '13')
      return refuseUpgrade(
        socket,
        426,
        'invalid_message',
        `Sec-WebSocket-Version must be 13 (got ${version === undefined ? 'none' : JSON.stringify(version)})`,
        'Sec-WebSocket-Version: 13\r\n',
      );
    this.wss.handleUpgrade(req, socket, head, (ws) => this.wss.emit('connection', ws, Object.assign(req, { source: key ?? undefined })));
  }

  broadcast(msg: ServerMessage): void {
    for (const ws of this.wss.clients) this.send(ws, msg);
  }

  /** Sends a message; `sent` runs once it has been handed to the socket (or can never be). */
  private send(ws: WebSocket, msg: ServerMessage, sent?: () => void): void {
    if (ws.readyState !== WebSocket.OPEN) return sent?.();
    if (ws.bufferedAmount > this.o.maxBufferedBytes) {
      ws.terminate();
      return sent?.();
    }
    ws.send(JSON.stringify(msg), sent && (() => sent()));
  }

  private onConnection(ws: WebSocket, key: string | undefined): void {
    const connection = `c${this.nextConnection++}`;
    const client: Client = { connection, source: key ?? `ws:${this.o.frontend ? `${this.o.frontend}/` : ''}${connection}`, asking: new Set(), unsent: 0 };
    this.clients.set(ws, client);
    this.o.metrics.connections.inc();
    ws.on(
      'close',
      guarded(this.log, 'ws close', () => {
        this.clients.delete(ws);
        this.o.metrics.connections.dec();
        // Its questions still waiting would take sampling for answers no one reads.
        this.answerer.cancel(connection, 'the client disconnected before its question was sampled');
      }),
    );
    ws.on(
      'error',
      guarded(this.log, 'ws error', () => ws.terminate()),
    );
    ws.on(
      'message',
      guarded(
        this.log,
        'ws message',
        (data: RawData, isBinary: boolean) => this.onMessage(ws, client, data, isBinary),
        () => this.send(ws, errorMessage('internal', 'the server failed to handle this message')),
      ),
    );
    this.send(ws, helloMessage(connection, this.o.hello()));
  }

  private onMessage(ws: WebSocket, client: Client, data: RawData, isBinary: boolean): void {
    this.lastMessageAt = Date.now();
    let msg;
    try {
      if (isBinary) throw new ProtocolError('invalid_message', 'messages must be text frames holding JSON');
      const text = Array.isArray(data) ? Buffer.concat(data).toString('utf8') : Buffer.from(data as ArrayBuffer).toString('utf8');
      msg = parseClientMessage(text, this.o.limits);
    } catch (e) {
      return this.sendError(ws, e);
    }
    if (msg.type === 'ping') return this.send(ws, pongMessage(msg.id));
    void this.onAsk(ws, client, msg);
  }

  private async onAsk(ws: WebSocket, client: Client, msg: AskMessage): Promise<void> {
    const { asking } = client;
    if (asking.has(msg.id))
      return this.sendError(ws, new ProtocolError('duplicate_id', `question ${JSON.stringify(msg.id)} is still being answered on this connection`, msg.id));
    if (asking.size + client.unsent >= this.o.maxInFlight)
      return this.sendError(
        ws,
        new ProtocolError(
          'too_many_in_flight',
          `this connection has ${asking.size + client.unsent} questions in flight (unanswered, or answered and not yet read), the limit (max_in_flight ${this.o.maxInFlight}); wait for an answer`,
          msg.id,
        ),
      );
    asking.add(msg.id);
    this.o.metrics.questions.inc({ transport: 'ws' });
    let reply: ServerMessage;
    try {
      const a = await this.answerer.ask({
        question: msg.question,
        votes: msg.votes ?? this.o.limits.defaultVotes,
        label: msg.label,
        clientId: msg.id,
        connection: client.connection,
        lane: client.connection,
        source: client.source,
        onSamples: msg.stream
          ? (r) => r.samples.forEach((s, index) => this.send(ws, voteMessage(msg.id, index, { answer: s.answer, text: s.text, tokens: s.tokens.length })))
          : undefined,
      });
      reply = answerMessage(a, msg.id);
    } catch (e) {
      reply = this.errorReply(e, msg.id);
    }
    // In flight until the reply has left for the socket.
    asking.delete(msg.id);
    client.unsent++;
    this.send(ws, reply, () => client.unsent--);
  }

  private errorReply(e: unknown, id?: string): ErrorMessage {
    const pe = e instanceof ProtocolError ? e : new ProtocolError('internal', (e as Error).message ?? String(e), id);
    if (pe.code !== 'overloaded') this.o.metrics.rejected.inc({ code: pe.code });
    return errorMessage(pe.code, pe.message, pe.id ?? id);
  }

  private sendError(ws: WebSocket, e: unknown, id?: string): void {
    this.send(ws, this.errorReply(e, id));
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
