// The server: HTTP (express) and WebSocket (ws) in front of the serving loop (loop/pipeline.ts).
// startServer() is what `ttrl serve`, the tests and the benchmark call.
import { createServer, type Server } from 'node:http';
import type { Settings } from './config.ts';
import { Gateway, WS_PATH } from './gateway.ts';
import { createApp } from './http.ts';
import { helloLimits } from './protocol.ts';
import { createPipeline, type Pipeline } from '../loop/pipeline.ts';
import type { Versions } from '../loop/versions.ts';

export interface RunningServer extends Pick<Pipeline, 'store' | 'adaptation'> {
  /** The serving version, as it changes. */
  versions$: Versions['versions$'];
  url: string;
  wsUrl: string;
  port: number;
  close(): Promise<void>;
}

export async function startServer(s: Settings, log: (line: string) => void = () => {}): Promise<RunningServer> {
  const p = await createPipeline(s, { log });
  const { store, adaptation, answerer, metrics, versions } = p;
  try {
    const limits = { ...p.limits, maxMessageBytes: s.maxMessageBytes };
    let ready = false;
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
    const app = createApp({ answerer, limits, metrics, ready: () => ({ ready, version: versions.active.version }), admin, adminToken: s.adminToken });
    const gateway = new Gateway(answerer, limits, metrics, () => ({
      model_version: versions.active.version,
      limits: helloLimits(limits),
    }));
    const sub = versions.versions$.subscribe((v) => gateway.broadcast({ type: 'model', model_version: v }));
    const http: Server = createServer(app);
    http.on('upgrade', (req, socket, head) => gateway.handleUpgrade(req, socket, head));
    await new Promise<void>((res, rej) => {
      http.once('error', rej);
      http.listen(s.port, s.host, () => res());
    });
    const port = (http.address() as { port: number }).port;
    ready = true;
    const host = s.host.includes(':') ? `[${s.host}]` : s.host;
    let closing: Promise<void> | null = null;
    return {
      url: `http://${host}:${port}`,
      wsUrl: `ws://${host}:${port}${WS_PATH}`,
      port,
      store,
      adaptation,
      versions$: versions.versions$,
      close: () =>
        (closing ??= (async () => {
          ready = false;
          sub.unsubscribe();
          // New questions get shutting_down (new WebSocket connections 503); the batch in flight
          // is answered, and the clients have fallen quiet, before sockets close.
          gateway.beginClose();
          await answerer.close();
          await gateway.close();
          await new Promise<void>((r) => http.close(() => r()));
          http.closeAllConnections();
          await p.close();
        })()),
    };
  } catch (e) {
    await p.close();
    throw e;
  }
}
