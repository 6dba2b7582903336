// The server: HTTP (express) and WebSocket (ws) in front of the serving loop (loop/pipeline.ts).
// startServer() is what `ttrl serve`, the tests and the benchmark call.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Settings } from '../config/settings.ts';
import { ApiKeys } from './auth.ts';
import { ConnectionLimiter } from './connections.ts';
import { Dashboard } from './dashboard.ts';
import { Gateway, WS_PATH } from './gateway.ts';
import { LoadedAdapters } from './lora-adapters.ts';
import { createApp } from './http.ts';
import { errorMessage, modelMessage } from '../protocol/messages.ts';
import { helloLimits } from './client-messages.ts';
import { guarded } from '../util/guarded.ts';
import { rawErrorReply } from './raw-reply.ts';
import { parseTarget } from './target.ts';
import { createPipeline, type Pipeline } from '../loop/pipeline.ts';
import { silentLogger, type Logger } from '../util/log.ts';
import type { Versions } from '../loop/versions.ts';

export interface RunningServer extends Pick<Pipeline, 'store' | 'adaptation' | 'versions'> {
  /** The serving loop behind the transports (tests and benchmarks reach the answerer and the upstreams through it). */
  pipeline: Pipeline;
  /** The serving version, as it changes. */
  versions$: Versions['versions$'];
  url: string;
  wsUrl: string;
  port: number;
  close(): Promise<void>;
}

export async function startServer(s: Settings, logger: Logger = silentLogger): Promise<RunningServer> {
  const p = await createPipeline(s, { logger, address: `${s.host}:${s.port}` });
  const { store, adaptation, answerer, metrics, versions } = p;
  try {
    const limits = { ...p.limits, maxMessageBytes: s.maxMessageBytes };
    let ready = false;
    let closing: Promise<void> | null = null;
    const admin = {
      versions: () => versions.list(),
      status: async () => ({
        model_version: versions.active.version,
        adaptation: adaptation.status,
        pending_experiences: adaptation.pendingExperiences,
        why_no_update_yet: adaptation.whyNotYet(),
        last_update: adaptation.lastOutcome,
        queue_depth: answerer.queueDepth,
        frontend: p.frontend,
        ...(p.fleet ? { fleet: p.fleet.status() } : {}),
        ...(p.upstreams ? { upstreams: p.upstreams.status(), serving_on_upstreams: p.upstreams.servingName.name } : {}),
        stored: await store.counts(),
        events: await store.events(20),
      }),
      activate: async (version: number) => {
        await p.activate(version, 'admin');
        return { model_version: version };
      },
      pause: () => {
        adaptation.pause('admin');
        return { adaptation: adaptation.status };
      },
      resume: () => {
        adaptation.resume('admin');
        return { adaptation: adaptation.status };
      },
      updateNow: () => adaptation.updateNow('admin'),
    };
    const keys = new ApiKeys(s.apiKeys);
    const connections = new ConnectionLimiter(s);
    const readiness = async () => ({
      reasons: closing ? ['shutting down'] : !ready ? ['starting'] : await p.notReady(),
      version: versions.active.version,
      ...(p.fleet ? { fleet: p.fleet.status() } : {}),
      ...(p.upstreams ? { upstreams: p.upstreams.status() } : {}),
    });
    const { modelId } = p;
    const openai = {
      task: p.task,
      tokenizer: p.model.tokenizer,
      modelId,
      created: Math.floor(Date.now() / 1000),
      version: () => versions.active.version,
      serverSampling: { temperature: s.temperature },
      maxPromptTokens: s.maxPromptTokens,
      adapters: new LoadedAdapters({
        modelId,
        config: p.model.config,
        lora: versions.lora,
        fingerprint: versions.fingerprint,
        maxLoaded: s.maxLoadedAdapters,
        // The sampler as it is now: one that replaces a dead worker keeps the adapters loaded.
        sampler: () => versions.sampler,
      }),
    };
    const dashboard = new Dashboard({
      experiences$: answerer.experiences$,
      labelled$: answerer.labelled$,
      updates$: adaptation.updates$,
      versions$: versions.versions$,
      store,
      adaptation,
      fleet: p.fleet,
      upstreams: p.upstreams,
      answerer,
      keys,
      logger,
    });
    const app = createApp({
      answerer,
      limits,
      metrics,
      readiness,
      admin,
      adminToken: s.adminToken,
      keys,
      connections,
      openai,
      dashboard: dashboard.router(),
      logger,
    });
    const gateway = new Gateway(answerer, {
      limits,
      maxInFlight: s.maxInFlight,
      maxBufferedBytes: s.maxBufferedBytes,
      keys,
      connections,
      metrics,
      hello: () => ({ model_version: versions.active.version, limits: { ...helloLimits(limits), max_in_flight: s.maxInFlight } }),
      logger,
      frontend: p.frontend,
    });
    const sub = versions.versions$.subscribe(guarded(logger, 'version broadcast', (v: number) => gateway.broadcast(modelMessage(v))));
    // The request-target is parsed once, here, before express or ws sees it: one that does not
    // parse is answered 400 (JSON) and the routes only ever see a normalised origin-form URL.
    const onRequest = (req: IncomingMessage, res: ServerResponse) => {
      const target = parseTarget(req.url);
      if (!target.ok) return jsonReply(res, 400, errorMessage('invalid_message', target.message), true);
      // RFC 9112 3.2: an HTTP/1.1 request without exactly one Host is answered 400 (Node would answer it bare).
      const hosts = req.rawHeaders.filter((_, i) => i % 2 === 0 && req.rawHeaders[i]!.toLowerCase() === 'host').length;
      if (hosts > 1 || (hosts === 0 && req.httpVersion === '1.1'))
        return jsonReply(res, 400, errorMessage('invalid_message', `an HTTP/1.1 request has exactly one Host header (this one has ${hosts})`), true);
      req.url = target.path + target.search;
      app(req, res);
    };
    const http: Server = createServer(
      { requireHostHeader: false },
      guarded(logger, 'http request', onRequest, (_e, _req, res) =>
        jsonReply(res, 500, errorMessage('internal', 'the server failed to answer this request'), true),
      ),
    );
    connections.attach(http);
    const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      socket.on('error', () => socket.destroy());
      const target = parseTarget(req.url);
      if (!target.ok) return rawErrorReply(socket, 400, 'invalid_message', target.message);
      req.url = target.path + target.search;
      gateway.handleUpgrade(req, socket, head);
    };
    http.on(
      'upgrade',
      guarded(logger, 'http upgrade', onUpgrade, (_e, _req, socket) => rawErrorReply(socket, 500, 'internal', 'the server failed to take this upgrade')),
    );
    // CONNECT (a proxy tunnel) is not something this server does.
    http.on(
      'connect',
      guarded(
        logger,
        'http connect',
        (_req: IncomingMessage, socket: Duplex) => rawErrorReply(socket, 405, 'invalid_message', 'CONNECT is not taken here: this server is not a proxy'),
        (_e, _req, socket) => socket.destroy(),
      ),
    );
    // A request Node's parser refuses (a request line or headers that are not HTTP, headers
    // over the size limit, a bad Content-Length, a chunked body cut short) is answered in our
    // JSON shape, never Node's bare 400, and the socket closed.
    http.on(
      'clientError',
      guarded(
        logger,
        'http client error',
        (err: NodeJS.ErrnoException, socket: Duplex) => onClientError(err, socket),
        (_e, _err, socket) => socket.destroy(),
      ),
    );
    await new Promise<void>((res, rej) => {
      http.once('error', rej);
      http.listen(s.port, s.host, () => res());
    });
    const port = (http.address() as { port: number }).port;
    ready = true;
    const host = s.host.includes(':') ? `[${s.host}]` : s.host;
    return {
      url: `http://${host}:${port}`,
      wsUrl: `ws://${host}:${port}${WS_PATH}`,
      port,
      pipeline: p,
      store,
      adaptation,
      versions,
      versions$: versions.versions$,
      close: () =>
        (closing ??= (async () => {
          ready = false;
          sub.unsubscribe();
          // Its streams end, so that the HTTP server does not wait on them.
          dashboard.close();
          // New questions get shutting_down (new WebSocket connections 503); the batch in flight
          // is answered, and the clients have fallen quiet, before sockets close.
          gateway.beginClose();
          await answerer.close();
          await gateway.close();
          // Stop listening, then end every connection left (idle keep-alives, and a dashboard
          // stream a browser reopened meanwhile): close() alone would wait for them for ever.
          const stopped = new Promise<void>((r) => http.close(() => r()));
          http.closeAllConnections();
          await stopped;
          await p.close();
        })()),
    };
  } catch (e) {
    await p.close();
    throw e;
  }
}

/** A JSON reply on a response that may already be half-written or gone: then the socket is closed instead. */
function jsonReply(res: ServerResponse, status: number, body: unknown, close = false): void {
  if (res.headersSent || res.destroyed) return void res.socket?.destroy();
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    ...(close ? { Connection: 'close' } : {}),
  });
  res.end(text);
}

const CLIENT_ERROR_STATUS: Record<string, [number, string]> = {
  HPE_HEADER_OVERFLOW: [431, "the request's headers are larger than the server takes"],
  ERR_HTTP_REQUEST_TIMEOUT: [408, 'the request did not arrive in time'],
  HPE_CHUNK_EXTENSIONS_OVERFLOW: [413, 'the chunk extensions are larger than the server takes'],
};

function onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  // A reply already under way on this keep-alive socket cannot be followed by ours.
  const inProgress = (socket as Duplex & { _httpMessage?: { headersSent?: boolean; writableFinished?: boolean } })._httpMessage;
  if (err.code === 'ECONNRESET' || !socket.writable || (inProgress && !inProgress.writableFinished)) return void socket.destroy();
  const [status, message] = CLIENT_ERROR_STATUS[err.code ?? ''] ?? [400, `the request is not well-formed HTTP/1.1 (${err.code ?? 'parse error'})`];
  rawErrorReply(socket, status, status === 431 || status === 413 ? 'payload_too_large' : 'invalid_message', message);
}
