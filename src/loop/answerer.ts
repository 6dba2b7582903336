// Questions in, majority-voted answers out. A bounded queue feeds a batch loop: whenever the
// sampler is free, the questions waiting (up to the batch cap, after a short wait for more)
// are sampled in one run, voted, written to SQLite in one transaction, and only then
// answered. Beyond the queue bound a question is refused at once with "overloaded".
import { Subject } from 'rxjs';
import type { Sampler } from '../engine/sampler.ts';
import { seedOf } from '../util/rng.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import type { Store } from '../store/store.ts';
import type { Task } from '../tasks/task.ts';
import { rolloutBatch, type Rollout } from '../ttrl/rollout.ts';
import { ProtocolError } from './errors.ts';
import type { Metrics } from './metrics.ts';

export interface AskRequest {
  question: string;
  votes: number;
  clientId: string | null;
  connection: string | null;
  /** Called with the samples, before the answer, when the client asked for them. */
  onSamples?: (r: Rollout) => void;
}

export interface Answer {
  answer: string | null;
  votes: Record<string, number>;
  confidence: number;
  model_version: number;
  /** Tokens of the prompt the model read (the question in the task's template), as OpenAI's usage.prompt_tokens. */
  prompt_tokens: number;
  latency_ms: number;
}

/** A voted question, as the adaptation loop consumes it. */
export interface Experience {
  questionId: number;
  rollout: Rollout;
  at: number;
}

interface Pending {
  req: AskRequest;
  receivedAt: number;
  t0: number;
  resolve: (a: Answer) => void;
  reject: (e: Error) => void;
}

export interface AnswererOptions {
  /** How questions become prompts and answers are read out of the samples. */
  task: Task;
  batchQuestions: number;
  batchWaitMs: number;
  queueLimit: number;
  temperature: number;
  seed: number;
}

export class Answerer {
  readonly experiences$ = new Subject<Experience>();
  private queue: Pending[] = [];
  private running: Promise<void> | null = null;
  private closing = false;

  constructor(
    private sampler: Sampler,
    private tok: Tokenizer,
    private store: Store,
    private o: AnswererOptions,
    private metrics: Metrics,
  ) {}

  get queueDepth(): number {
    return this.queue.length;
  }

  ask(req: AskRequest): Promise<Answer> {
    const p = this.enqueue(req);
    this.kick();
    return p;
  }

  /** Enqueues all before any batch forms: the batches are then a function of the order alone (offline replay). */
  askAll(reqs: AskRequest[]): Promise<Answer>[] {
    const ps = reqs.map((r) => this.enqueue(r));
    this.kick();
    return ps;
  }

  private enqueue(req: AskRequest): Promise<Answer> {
    if (this.closing) return Promise.reject(new ProtocolError('shutting_down', 'the server is shutting down; no new questions are taken'));
    if (this.queue.length >= this.o.queueLimit) {
      this.metrics.rejected.inc({ code: 'overloaded' });
      return Promise.reject(new ProtocolError('overloaded', `${this.queue.length} questions are waiting (the limit is ${this.o.queueLimit}); retry later`));
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ req, receivedAt: Date.now(), t0: performance.now(), resolve, reject });
      this.metrics.queueDepth.set(this.queue.length);
    });
  }

  private kick(): void {
    if (this.running) return;
    this.running = this.drain().finally(() => {
      this.running = null;
      if (this.queue.length && !this.closing) this.kick();
    });
  }

  /** Runs batches until the queue is empty. */
  private async drain(): Promise<void> {
    while (this.queue.length) {
      if (this.queue.length < this.o.batchQuestions && this.o.batchWaitMs > 0) await new Promise((r) => setTimeout(r, this.o.batchWaitMs));
      if (!this.queue.length) break; // close() took them while we waited
      // One run samples one vote count: take the head's, and every waiting question with the same.
      const votes = this.queue[0]!.req.votes;
      const batch: Pending[] = [];
      this.queue = this.queue.filter((p) => (batch.length < this.o.batchQuestions && p.req.votes === votes ? (batch.push(p), false) : true));
      this.metrics.queueDepth.set(this.queue.length);
      await this.runBatch(batch, votes);
    }
  }

  private async runBatch(batch: Pending[], votes: number): Promise<void> {
    this.metrics.batchSize.observe(batch.length);
    let rollouts: Rollout[];
    try {
      // The k-th ask of a question draws seed (server seed, question, k), whatever batch it
      // lands in: the same stream served twice gets the same dice, so two runs differ only
      // where their model versions do, and a repeated question still gets fresh samples.
      const asked = this.store.askCounts(batch.map((p) => p.req.question));
      const seeds = batch.map(({ req: { question } }) => {
        const k = asked.get(question)!;
        asked.set(question, k + 1);
        return seedOf(this.o.seed, question, k);
      });
      rollouts = await rolloutBatch(this.sampler, this.tok, batch.map((p) => p.req.question), { task: this.o.task, votes, temperature: this.o.temperature, seed: this.o.seed, seeds });
    } catch (e) {
      return this.fail(batch, `sampling failed: ${(e as Error).message}`);
    }
    const answeredAt = Date.now();
    const records = rollouts.map((r, i) => {
      const p = batch[i]!;
      return {
        clientId: p.req.clientId,
        connection: p.req.connection,
        question: p.req.question,
        votesRequested: votes,
        receivedAt: p.receivedAt,
        answeredAt,
        answer: r.vote.label,
        majorityRatio: r.vote.ratio,
        votes: r.vote.counts,
        modelVersion: r.version,
        latencyMs: performance.now() - p.t0,
        samples: r.samples.map((s) => ({ text: s.text, answer: s.answer, tokens: s.tokens.length, logprobSum: s.logprobs.reduce((a, b) => a + b, 0), stopped: s.stopped })),
      };
    });
    let ids: number[];
    try {
      ids = this.store.recordAnswered(records);
    } catch (e) {
      // Not stored means not answered: the client hears of the failure instead.
      return this.fail(batch, `could not store the answers: ${(e as Error).message}`);
    }
    rollouts.forEach((r, i) => {
      const p = batch[i]!;
      const rec = records[i]!;
      p.req.onSamples?.(r);
      this.metrics.answered.inc();
      this.metrics.latency.observe(rec.latencyMs / 1000);
      this.metrics.majorityRatio.observe(r.vote.ratio);
      p.resolve({ answer: r.vote.label, votes: r.vote.counts, confidence: r.vote.ratio, model_version: r.version, prompt_tokens: r.prompt.length, latency_ms: Math.round(rec.latencyMs) });
      this.experiences$.next({ questionId: ids[i]!, rollout: r, at: answeredAt });
    });
  }

  private fail(batch: Pending[], error: string): void {
    this.logFailed(batch, error);
    this.metrics.failed.inc(batch.length);
    for (const p of batch) p.reject(new ProtocolError('internal', error));
  }

  private logFailed(batch: Pending[], error: string): void {
    try {
      this.store.recordFailed(batch.map((p) => ({ clientId: p.req.clientId, connection: p.req.connection, question: p.req.question, votesRequested: p.req.votes, receivedAt: p.receivedAt, error })));
    } catch {
      // The database itself is failing; the clients still hear of it.
    }
  }

  /** Refuses new questions, fails the waiting ones with shutting_down, and lets the running batch finish. */
  async close(): Promise<void> {
    this.closing = true;
    const waiting = this.queue.splice(0);
    this.logFailed(waiting, 'shutting_down');
    for (const p of waiting) p.reject(new ProtocolError('shutting_down', 'the server shut down before this question was sampled'));
    await this.running;
    this.experiences$.complete();
  }
}
