// The server: HTTP (express) and WebSocket (ws) in front of the serving loop (loop/pipeline.ts).
// startServer() is what `ttrl serve`, the tests and the benchmark call.
import { createServer, type Server } from 'node:http';
import { basename, resolve } from 'node:path';
import type { Settings } from './config.ts';
import { ApiKeys } from './auth.ts';
import { ConnectionLimiter } from './connections.ts';
import { Dashboard } from './dashboard.ts';
import { Gateway, WS_PATH } from './gateway.ts';
import { createApp } from './http.ts';
import { helloLimits } from './protocol.ts';
import { createPipeline, type Pipeline } from '../loop/pipeline.ts';
import { silentLogger, type Logger } from '../util/log.ts';
import type { Versions } from '../loop/versions.ts';

export interface RunningServer extends Pick<Pipeline, 'store' | 'adaptation' | 'versions'> {
  /** The serving version, as it changes. */
  versions$: Versions['versions$'];
  url: string;
  wsUrl: string;
  port: number;
  close(): Promise<void>;
}

export async function startServer(s: Settings, logger: Logger = silentLogger): Promise<RunningServer> {
  const p = await createPipeline({ ...s, maxClientShare: s.maxClientShare }, { logger });
  const { store, adaptation, answerer, metrics, versions } = p;
  try {
    const limits = { ...p.limits, maxMessageBytes: s.maxMessageBytes };
    let ready = false;
    let closing: Promise<void> | null = null;
    const admin = {
      versions: () => versions.list(),
      status: () => ({
        model_version: versions.active.version,
        adaptation: adaptation.status,
        pending_experiences: adaptation.pendingExperiences,
        last_update: adaptation.lastOutcome,
        queue_depth: answerer.queueDepth,
        stored: store.counts(),
        events: store.events(20),
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
    });
    const openai = { task: p.task, modelId: basename(resolve(s.model)), created: Math.floor(Date.now() / 1000), version: () => versions.active.version };
    const dashboard = new Dashboard({ experiences$: answerer.experiences$, updates$: adaptation.updates$, versions$: versions.versions$, store, adaptation, answerer, keys });
    const app = createApp({ answerer, limits, metrics, readiness, admin, adminToken: s.adminToken, keys, connections, openai, dashboard: dashboard.router() });
    const gateway = new Gateway(answerer, {
      limits,
      maxInFlight: s.maxInFlight,
      maxBufferedBytes: s.maxBufferedBytes,
      keys,
      connections,
      metrics,
      hello: () => ({ model_version: versions.active.version, limits: { ...helloLimits(limits), max_in_flight: s.maxInFlight } }),
    });
    const sub = versions.versions$.subscribe((v) => gateway.broadcast({ type: 'model', model_version: v }));
    const http: Server = createServer(app);
    connections.attach(http);
    http.on('upgrade', (req, socket, head) => gateway.handleUpgrade(req, socket, head));
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
