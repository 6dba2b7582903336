// HTTP routes (express): health, readiness, Prometheus metrics, POST /v1/ask for simple
// clients, and the token-protected admin routes. Errors use the WebSocket error shape.
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { checkAsk } from '../loop/admission.ts';
import type { Answerer, AskRequest } from '../loop/answerer.ts';
import { ProtocolError, type ErrorCode } from '../loop/errors.ts';
import type { Metrics } from '../loop/metrics.ts';
import { ApiKeys } from './auth.ts';
import type { ConnectionLimiter } from './connections.ts';
import { httpAsker } from './http-asker.ts';
import { OPENAI_PATHS, openAiError, openAiRouter, type OpenAiOptions } from './openai.ts';
import { errorMessage, httpStatus, schemaError, type Limits } from './protocol.ts';

export interface Admin {
  versions(): unknown[];
  activate(version: number): Promise<unknown>;
  pause(): unknown;
  resume(): unknown;
  updateNow(): Promise<unknown>;
  status(): unknown;
}

const httpAsk = z.strictObject({ id: z.string().min(1).max(128).optional(), question: z.string(), votes: z.number().int().optional() });

export interface AppOptions {
  answerer: Answerer;
  limits: Limits;
  metrics: Metrics;
  /** Why the server cannot serve now (empty: ready), and the version serving. */
  readiness: () => Promise<{ reasons: string[]; version: number }>;
  admin: Admin;
  adminToken?: string;
  keys: ApiKeys;
  connections: ConnectionLimiter;
  openai: Omit<OpenAiOptions, 'answerer' | 'limits' | 'metrics'>;
  /** GET /, its assets and its live stream (server/dashboard.ts). */
  dashboard?: Router;
}

export function createApp(o: AppOptions) {
  const app = express();
  app.disable('x-powered-by');
  // The OpenAI routes answer in OpenAI's error shape, the others in ours.
  const fail = (res: Response, code: ErrorCode, message: string, id?: string, status?: number) => {
    if (code !== 'overloaded') o.metrics.rejected.inc({ code });
    const st = status ?? httpStatus(code);
    const openai = OPENAI_PATHS.includes(new URL(res.req.originalUrl, 'http://x').pathname);
    res.status(st).json(openai ? openAiError(code, message, st) : errorMessage(code, message, id));
  };

  // A connection over the limits gets its answer on its first request, and is closed.
  app.use((req, res, next) => {
    const refusal = o.connections.refusal(req.socket);
    if (!refusal) return next();
    res.set('Connection', 'close');
    fail(res, 'too_many_connections', refusal.message, undefined, refusal.status);
  });

  app.get('/healthz', (_req, res) => res.json({ status: 'ok' }));
  app.get('/readyz', async (_req, res) => {
    const r = await o.readiness();
    const ready = r.reasons.length === 0;
    res.status(ready ? 200 : 503).json({ ready, model_version: r.version, reasons: r.reasons });
  });
  app.get('/metrics', async (_req, res) => {
    res.set('Content-Type', o.metrics.registry.contentType).send(await o.metrics.registry.metrics());
  });
  if (o.dashboard) app.use(o.dashboard);

  // With API keys set, every /v1 route needs one (the WebSocket upgrade checks its own).
  app.use('/v1', (req, res, next) => {
    if (!o.keys.enabled) return next();
    const key = o.keys.check(ApiKeys.presented(req));
    if (!key) {
      res.set('WWW-Authenticate', 'Bearer');
      return fail(res, 'unauthorized', 'this route needs an API key: Authorization: Bearer KEY');
    }
    res.locals.key = key;
    next();
  });

  app.use('/v1', openAiRouter({ ...o.openai, answerer: o.answerer, limits: o.limits, metrics: o.metrics }));

  const json = express.json({ limit: o.limits.maxMessageBytes, strict: true, type: () => true });
  app.post('/v1/ask', json, async (req: Request, res: Response) => {
    const parsed = httpAsk.safeParse(req.body);
    const id = typeof req.body?.id === 'string' ? req.body.id : undefined;
    if (!parsed.success) {
      const pe = schemaError(parsed.error, 'body', id);
      return fail(res, pe.code, pe.message, id);
    }
    try {
      const { votes } = checkAsk(parsed.data, o.limits);
      o.metrics.questions.inc({ transport: 'http' });
      const ask: AskRequest = { ...httpAsker(req, res), question: parsed.data.question, votes, clientId: parsed.data.id ?? null, connection: 'http' };
      const pending = o.answerer.ask(ask);
      res.set('X-Request-Id', ask.requestId);
      const a = await pending;
      res.json({ type: 'answer', ...(parsed.data.id ? { id: parsed.data.id } : {}), ...a });
    } catch (e) {
      const pe = e instanceof ProtocolError ? e : new ProtocolError('internal', (e as Error).message);
      fail(res, pe.code, pe.message, id);
    }
  });

  const admin = express.Router();
  admin.use((req, res, next) => {
    if (!o.adminToken) return fail(res, 'unauthorized', 'admin routes are off: start the server with --admin-token or TTRL_ADMIN_TOKEN');
    const got = Buffer.from(req.get('authorization')?.replace(/^Bearer /, '') ?? '');
    const want = Buffer.from(o.adminToken);
    if (got.length !== want.length || !timingSafeEqual(got, want)) return fail(res, 'unauthorized', 'missing or wrong bearer token');
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
  admin.get('/status', route(() => o.admin.status()));
  admin.get('/versions', route(() => o.admin.versions()));
  admin.post('/versions/:version/activate', route((req) => {
    const v = Number(req.params.version);
    if (!Number.isInteger(v) || v < 0) throw new ProtocolError('invalid_message', `not a version number: ${JSON.stringify(req.params.version)}`);
    return o.admin.activate(v);
  }));
  admin.post('/adaptation/pause', route(() => o.admin.pause()));
  admin.post('/adaptation/resume', route(() => o.admin.resume()));
  admin.post('/adaptation/update', route(() => o.admin.updateNow()));
  app.use('/admin', admin);

  app.use((_req, res) => fail(res, 'not_found', 'no such route'));
  // Body-parser errors: bad JSON, too large, a body that does not decode. The reader marks
  // the client's faults with a 4xx status; those must not read as our failure (500 internal).
  app.use((err: { type?: string; status?: number; message?: string }, req: Request, res: Response, _next: NextFunction) => {
    if (err.type === 'entity.too.large') return fail(res, 'payload_too_large', `the body is larger than ${o.limits.maxMessageBytes} bytes`);
    if (err.type === 'entity.parse.failed') return fail(res, 'bad_json', `not JSON: ${err.message}`);
    if (err.type === 'encoding.unsupported' || err.type === 'charset.unsupported') return fail(res, 'unsupported_encoding', `${err.message}; the server reads identity, gzip, deflate and br bodies in utf-8`);
    const encoding = req.get('content-encoding') ?? 'identity';
    if (err.status !== undefined && err.status >= 400 && err.status < 500) {
      // zlib's errors (a gzip header that is not one, a truncated stream) come without a type.
      if (encoding.toLowerCase() !== 'identity') return fail(res, 'bad_encoding', `the body does not decode as ${encoding}: ${err.message}`);
      return fail(res, 'invalid_message', `the body could not be read: ${err.message}`);
    }
    fail(res, 'internal', err.message ?? 'internal error');
  });
  return app;
}
