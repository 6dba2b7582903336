// Prometheus metrics, recorded by the loop's stages and by the transports and served at
// GET /metrics (server/http.ts), on a registry of the pipeline's own so that several
// pipelines in one process (tests) do not collide.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export function createMetrics() {
  const registry = new Registry();
  // Node's own metrics under our prefix alone: ttrl_process_cpu_seconds_total, ttrl_nodejs_heap_size_used_bytes.
  collectDefaultMetrics({ register: registry, prefix: 'ttrl_' });
  const r = [registry];
  return {
    registry,
    questions: new Counter({ name: 'ttrl_questions_total', help: 'questions received (well-formed asks)', labelNames: ['transport'] as const, registers: r }),
    answered: new Counter({ name: 'ttrl_answers_total', help: 'questions answered', registers: r }),
    failed: new Counter({ name: 'ttrl_failed_total', help: 'questions that were accepted but failed', registers: r }),
    rejected: new Counter({ name: 'ttrl_rejected_total', help: 'messages refused with an error, by code', labelNames: ['code'] as const, registers: r }),
    latency: new Histogram({
      name: 'ttrl_answer_latency_seconds',
      help: 'time from receiving a question to answering it',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8],
      registers: r,
    }),
    batchSize: new Histogram({ name: 'ttrl_batch_questions', help: 'questions per sampling run', buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256], registers: r }),
    queueDepth: new Gauge({ name: 'ttrl_queue_depth', help: 'questions waiting to be sampled', registers: r }),
    labelled: new Counter({
      name: 'ttrl_labelled_answers_total',
      help: 'answers to questions asked with a label (their known answer, for measurement only), by whether the answer was right',
      labelNames: ['correct'] as const,
      registers: r,
    }),
    majorityRatio: new Histogram({
      name: 'ttrl_majority_ratio',
      help: 'share of votes for the majority answer',
      buckets: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1],
      registers: r,
    }),
    updates: new Counter({ name: 'ttrl_updates_total', help: 'TTRL updates by outcome', labelNames: ['outcome'] as const, registers: r }),
    updateSeconds: new Histogram({
      name: 'ttrl_update_seconds',
      help: 'duration of a TTRL update (training and guard)',
      buckets: [0.5, 1, 2, 4, 8, 16, 32, 64],
      registers: r,
    }),
    anchorShift: new Gauge({
      name: 'ttrl_anchor_shift_nats',
      help: "the last candidate's mean log-prob change on the anchors against the shipped model (the guard rejects below -anchorSlack)",
      registers: r,
    }),
    anchors: new Gauge({ name: 'ttrl_anchors', help: 'anchors the guard checks candidates on', registers: r }),
    modelVersion: new Gauge({ name: 'ttrl_model_version', help: 'the model version serving now', registers: r }),
    leader: new Gauge({
      name: 'ttrl_fleet_leader',
      help: 'whether this front-end leads the fleet (trains for it): 1 or 0; a single process leads itself',
      registers: r,
    }),
    versionsBehind: new Gauge({
      name: 'ttrl_fleet_versions_behind',
      help: "how many versions the one served here is behind the fleet's active version",
      registers: r,
    }),
    connections: new Gauge({ name: 'ttrl_ws_connections', help: 'open WebSocket connections', registers: r }),
    upstreamUp: new Gauge({
      name: 'ttrl_upstream_up',
      help: 'whether an upstream inference server takes traffic (1) or is out of rotation (0)',
      labelNames: ['upstream'] as const,
      registers: r,
    }),
    upstreamLatency: new Histogram({
      name: 'ttrl_upstream_request_seconds',
      help: "an upstream's sampling request, from sending it (waiting for a free slot included) to its answer",
      labelNames: ['upstream'] as const,
      buckets: [0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6],
      registers: r,
    }),
    upstreamErrors: new Counter({ name: 'ttrl_upstream_errors_total', help: "an upstream's failed requests", labelNames: ['upstream'] as const, registers: r }),
    upstreamOutstanding: new Gauge({
      name: 'ttrl_upstream_outstanding',
      help: 'requests in flight to or waiting for an upstream',
      labelNames: ['upstream'] as const,
      registers: r,
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
