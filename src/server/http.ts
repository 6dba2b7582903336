// HTTP routes (express): health, readiness, Prometheus metrics, POST /v1/ask for simple
// clients, and the token-protected admin routes. Errors use the WebSocket error shape.
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { checkAsk } from '../loop/admission.ts';
import type { Answerer, AskRequest } from '../loop/answerer.ts';
import type { Metrics } from '../loop/metrics.ts';
import { httpStatus, ProtocolError, schemaError, type ErrorCode } from '../protocol/errors.ts';
import { answerMessage, errorMessage, httpAskBody } from '../protocol/messages.ts';
import { openAiError } from '../protocol/openai.ts';
import { ApiKeys } from './auth.ts';
import type { ServerLimits } from './client-messages.ts';
import type { ConnectionLimiter } from './connections.ts';
import { httpAsker, requestIdHeaders } from './http-asker.ts';
import { jsonBody } from './json-body.ts';
import { ADAPTER_PATHS, OPENAI_PATHS, openAiRouter, type OpenAiOptions } from './openai.ts';
import { silentLogger, type Logger } from '../util/log.ts';

export interface Admin {
  versions(): Promise<unknown[]>;
  activate(version: number): Promise<unknown>;
  pause(): unknown;
  resume(): unknown;
  updateNow(): Promise<unknown>;
  status(): Promise<unknown>;
}

export interface AppOptions {
  answerer: Answerer;
  limits: ServerLimits;
  metrics: Metrics;
  /** Why the server cannot serve now (empty: ready), and the version serving. */
  readiness: () => Promise<{ reasons: string[]; version: number; fleet?: unknown }>;
  admin: Admin;
  adminToken?: string;
  keys: ApiKeys;
  connections: ConnectionLimiter;
  openai: Omit<OpenAiOptions, 'answerer' | 'limits' | 'metrics'>;
  /** GET /, its assets and its live stream (server/dashboard.ts). */
  dashboard?: Router;
  logger?: Logger;
}

/** Version numbers in a route are canonical decimal integers: not " 1", "0x1", "1e0" or "01". */
export function parseVersionNumber(raw: string): number {
  if (!/^(0|[1-9][0-9]{0,14})$/.test(raw))
    throw new ProtocolError('invalid_message', `not a version number: ${JSON.stringify(raw)} (a decimal integer: 0, 1, 2, ...)`);
  return Number(raw);
}

/** The bearer token of a request: `Authorization: Bearer TOKEN` (the scheme in any case), else undefined. */
export function bearerToken(req: Request): string | undefined {
  const auth = req.get('authorization');
  return auth === undefined ? undefined : (/^Bearer[ ]+(\S+)[ ]*$/i.exec(auth)?.[1] ?? '');
}

export function createApp(o: AppOptions) {
  const app = express();
  app.disable('x-powered-by');
  // The OpenAI routes answer in OpenAI's error shape, the others in ours.
  const log = o.logger ?? silentLogger;
  // The OpenAI routes answer in OpenAI's error shape, the others in ours. The URL is safe to
  // read: server.ts has parsed and normalised the target before express sees it.
  const fail = (res: Response, code: ErrorCode, message: string, id?: string, status?: number) => {
    if (code !== 'overloaded') o.metrics.rejected.inc({ code });
    const st = status ?? httpStatus(code);
    // A client that left gets nothing; a reply already begun (a stream) is cut off instead.
    if (res.headersSent || res.destroyed) return void res.socket?.destroy();
    // originalUrl, not path: inside a router mounted at /v1, path is relative to it.
    const openai = OPENAI_PATHS.includes(res.req.originalUrl.split('?')[0]!);
    res.status(st).json(openai ? openAiError(code, message, st) : errorMessage(code, message, id));
  };
  // A connection over the limits gets its answer on its first request, and is closed.
  app.use((req, res, next) => {
    const refusal = o.connections.refusal(req.socket);
    if (!refusal) return next();
    res.set('Connection', 'close');
    fail(res, 'too_many_connections', refusal.message, undefined, refusal.status);
  });

  // The admin token is checked as API keys are: hashed, compared in constant time whatever its length.
  const adminToken = new ApiKeys(o.adminToken ? [o.adminToken] : []);

  app.get('/healthz', (_req, res) => res.json({ status: 'ok' }));
  app.get('/readyz', async (_req, res) => {
    const r = await o.readiness();
    const ready = r.reasons.length === 0;
    res.status(ready ? 200 : 503).json({ ready, model_version: r.version, reasons: r.reasons, ...(r.fleet ? { fleet: r.fleet } : {}) });
  });
  app.get('/metrics', async (_req, res) => {
    res.set('Content-Type', o.metrics.registry.contentType).send(await o.metrics.registry.metrics());
  });
  if (o.dashboard) app.use(o.dashboard);

  // Loading an adapter changes what the server serves: with an admin token it is an admin's
  // act (the token, not an API key); without one, the API keys guard it as any /v1 route.
  app.use(ADAPTER_PATHS, (req, res, next) => {
    if (!adminToken.enabled) return next();
    if (!adminToken.check(bearerToken(req))) {
      res.set('WWW-Authenticate', 'Bearer');
      return fail(res, 'unauthorized', 'loading and unloading adapters needs the admin token: Authorization: Bearer TOKEN');
    }
    res.locals.admin = true;
    next();
  });
  // With API keys set, every /v1 route needs one (the WebSocket upgrade checks its own).
  app.use('/v1', (req, res, next) => {
    if (!o.keys.enabled || res.locals.admin) return next();
    const key = o.keys.check(ApiKeys.presented(req));
    if (!key) {
      res.set('WWW-Authenticate', 'Bearer');
      return fail(res, 'unauthorized', 'this route needs an API key: Authorization: Bearer KEY');
    }
    res.locals.key = key;
    next();
  });

  app.use('/v1', openAiRouter({ ...o.openai, answerer: o.answerer, limits: o.limits, metrics: o.metrics }));

  const json = jsonBody(o.limits.maxMessageBytes);
  app.post('/v1/ask', json, async (req: Request, res: Response) => {
    const parsed = httpAskBody.safeParse(req.body);
    const id = typeof req.body?.id === 'string' ? req.body.id : undefined;
    if (!parsed.success) {
      const pe = schemaError(parsed.error, 'body', id);
      return fail(res, pe.code, pe.message, id);
    }
    try {
      const { votes } = checkAsk(parsed.data, o.limits);
      o.metrics.questions.inc({ transport: 'http' });
      const ask: AskRequest = {
        ...httpAsker(req, res),
        question: parsed.data.question,
        votes,
        label: parsed.data.label,
        clientId: parsed.data.id ?? null,
        connection: 'http',
      };
      const pending = o.answerer.ask(ask);
      requestIdHeaders(res, ask);
      const a = await pending;
      if (res.destroyed) return;
      res.json(answerMessage(a, parsed.data.id));
    } catch (e) {
      const pe = e instanceof ProtocolError ? e : new ProtocolError('internal', (e as Error).message);
      fail(res, pe.code, pe.message, id);
    }
  });

  const admin = express.Router();
  admin.use((req, res, next) => {
    if (!adminToken.enabled) return fail(res, 'unauthorized', 'admin routes are off: start the server with --admin-token or TTRL_ADMIN_TOKEN');
    if (!adminToken.check(bearerToken(req))) {
      res.set('WWW-Authenticate', 'Bearer');
      return fail(res, 'unauthorized', 'missing or wrong admin token: Authorization: Bearer TOKEN');
    }
    next();
  });
  const route = (f: (req: Request) => unknown) => async (req: Request, res: Response) => {
    try {
      res.json(await f(req));
    } catch (e) {
      const pe = e instanceof ProtocolError ? e : new ProtocolError('invalid_message', (e as Error).message);
      fail(res, pe.code, pe.message);
    }
  };
  admin.get(
    '/status',
    route(() => o.admin.status()),
  );
  admin.get(
    '/versions',
    route(() => o.admin.versions()),
  );
  admin.post(
    '/versions/:version/activate',
    route((req) => o.admin.activate(parseVersionNumber(String(req.params.version)))),
  );
  admin.post(
    '/adaptation/pause',
    route(() => o.admin.pause()),
  );
  admin.post(
    '/adaptation/resume',
    route(() => o.admin.resume()),
  );
  admin.post(
    '/adaptation/update',
    route(() => o.admin.updateNow()),
  );
  app.use('/admin', admin);

  app.use((_req, res) => fail(res, 'not_found', 'no such route'));
  // Body-parser errors: bad JSON, too large, a body that does not decode. The reader marks
  // the client's faults with a 4xx status; those must not read as our failure (500 internal).
  app.use((err: { type?: string; status?: number; message?: string }, req: Request, res: Response, _next: NextFunction) => {
    // This handler is the last: if it threw, express's default handler would answer in HTML
    // with a stack. So it answers from a fixed message instead, whatever went wrong here.
    try {
      bodyError(err, req, res);
    } catch (e) {
      log.error({ where: 'http error handler', err: String(e) }, 'listener failed');
      if (res.headersSent || res.destroyed) return void res.socket?.destroy();
      res.status(500).json(errorMessage('internal', 'the server failed to answer this request'));
    }
  });
  // Body-parser errors: bad JSON, too large, a body that does not decode. The reader marks
  // the client's faults with a 4xx status; those must not read as our failure (500 internal).
  function bodyError(err: { type?: string; status?: number; message?: string }, req: Request, res: Response): void {
    if (err.type === 'entity.too.large') return fail(res, 'payload_too_large', `the body is larger than ${o.limits.maxMessageBytes} bytes`);
    if (err.type === 'entity.parse.failed') return fail(res, 'bad_json', `not JSON: ${err.message}`);
    if (err.type === 'encoding.unsupported' || err.type === 'charset.unsupported')
      return fail(res, 'unsupported_encoding', `${err.message}; the server reads identity, gzip, deflate and br bodies in utf-8`);
    const encoding = req.get('content-encoding') ?? 'identity';
    if (err.status !== undefined && err.status >= 400 && err.status < 500) {
      // zlib's errors (a gzip header that is not one, a truncated stream) come without a type.
      if (encoding.toLowerCase() !== 'identity') return fail(res, 'bad_encoding', `the body does not decode as ${encoding}: ${err.message}`);
      return fail(res, 'invalid_message', `the body could not be read: ${err.message}`);
    }
    log.error({ where: 'http route', err: err.message ?? String(err) }, 'route failed');
    fail(res, 'internal', 'the server failed to answer this request');
  }
  return app;
}
