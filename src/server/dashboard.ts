// The live dashboard over HTTP. GET / serves the static page (src/dashboard/page/, found by
// this module's URL: the build copies it to dist/ at the same depth) and uPlot from
// node_modules at /assets/uplot/; the page is fed by server-sent events at
// GET /dashboard/events (a snapshot on connect, then the state's changes as they come) and
// acts through the /admin routes with the token the user types. What it shows is kept by
// DashboardState (src/dashboard/state.ts); this side only streams it and checks access.
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DashboardState, type DashboardSources } from '../dashboard/state.ts';
import { ApiKeys } from './auth.ts';
import { errorMessage } from '../protocol/messages.ts';
import { guarded } from '../util/guarded.ts';
import { silentLogger } from '../util/log.ts';

/** The page, its script and stylesheet. */
export const DASHBOARD_DIR = fileURLToPath(new URL('../dashboard/page/', import.meta.url));
/** uPlot's built files (uPlot.iife.min.js, uPlot.min.css), served as they are installed. */
export const UPLOT_DIR = dirname(createRequire(import.meta.url).resolve('uplot'));

/** A client that leaves this much of the stream unread is dropped (its page reconnects). */
const MAX_UNREAD_BYTES = 1 << 20;
const HEARTBEAT_MS = 15_000;

export interface DashboardOptions extends DashboardSources {
  /** With API keys set, the stream and the snapshot need one. */
  keys: ApiKeys;
}

export class Dashboard {
  private readonly clients = new Set<Response>();
  private readonly state: DashboardState;
  private readonly heartbeat: NodeJS.Timeout;
  private closed = false;

  constructor(private readonly o: DashboardOptions) {
    this.state = new DashboardState(o, (event, data) => this.send(event, data));
    this.heartbeat = setInterval(
      guarded(o.logger ?? silentLogger, 'dashboard heartbeat', () => this.comment('keep-alive')),
      HEARTBEAT_MS,
    );
    this.heartbeat.unref();
  }

  private write(res: Response, chunk: string): void {
    if (res.destroyed || res.writableEnded) return void this.clients.delete(res);
    if (res.writableLength > MAX_UNREAD_BYTES) {
      this.clients.delete(res);
      res.end();
      return;
    }
    res.write(chunk);
  }

  private send(event: string, data: unknown): void {
    if (!this.clients.size) return;
    const chunk = `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    for (const res of this.clients) this.write(res, chunk);
  }

  private comment(text: string): void {
    for (const res of this.clients) this.write(res, `: ${text}\n\n`);
  }

  /** With API keys set, the stream and the snapshot need one: ?key=KEY (EventSource cannot set headers) or Authorization: Bearer KEY. */
  private access = (req: Request, res: Response, next: NextFunction) => {
    if (!this.o.keys.enabled) return next();
    const q = req.query.key;
    if (this.o.keys.check(typeof q === 'string' ? q : ApiKeys.presented(req))) return next();
    res.set('WWW-Authenticate', 'Bearer');
    res.status(401).json(errorMessage('unauthorized', 'the dashboard stream needs an API key: ?key=KEY or Authorization: Bearer KEY'));
  };

  router(): Router {
    const r = express.Router();
    const pageHeaders = (res: Response) =>
      res.set({
        'Content-Security-Policy': "default-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        'Referrer-Policy': 'no-referrer',
        'X-Content-Type-Options': 'nosniff',
      });
    r.get('/', (_req, res) => {
      pageHeaders(res);
      res.sendFile('index.html', { root: DASHBOARD_DIR });
    });
    r.use('/dashboard/static', express.static(DASHBOARD_DIR, { index: false, setHeaders: (res) => res.setHeader('X-Content-Type-Options', 'nosniff') }));
    r.use('/assets/uplot', express.static(UPLOT_DIR, { index: false }));
    r.get('/dashboard/state', this.access, (_req, res) => {
      res.set('Cache-Control', 'no-store').json(this.state.snapshot());
    });
    r.get('/dashboard/events', this.access, (req, res) => {
      if (this.closed) return res.status(503).json(errorMessage('shutting_down', 'the server is shutting down'));
      res
        .status(200)
        .set({ 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-store', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
      res.flushHeaders();
      req.socket.setNoDelay(true);
      res.write(`retry: 2000\nevent: snapshot\ndata: ${JSON.stringify(this.state.snapshot())}\n\n`);
      this.clients.add(res);
      const drop = () => this.clients.delete(res);
      req.on('close', drop);
      res.on('error', drop);
    });
    return r;
  }

  /** Stops listening and ends every stream (the HTTP server then closes without waiting on them). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.state.close();
    clearInterval(this.heartbeat);
    for (const res of this.clients) res.end();
    this.clients.clear();
  }
}
