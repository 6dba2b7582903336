// Questions in, majority-voted answers out. A bounded queue feeds a batch loop: whenever the
// sampler is free, the questions waiting (up to the batch cap, after a short wait for more)
// are sampled in one run, voted, written to SQLite in one transaction, and only then
// answered. Beyond the queue bound a question is refused at once with "overloaded". A
// question asked with a label (its known answer) has the label logged with it and its answer
// scored against it on a stream of its own (labelled$), for measurement only: experiences,
// what adaptation trains on, carry no label.
//
// The queue is fair: each client (its source: a connection, an address, an API key) waits in
// a lane of its own, and a batch takes the lanes' questions in turn, one from each lane per
// round, the lane that starts moving to the back. A client with 500 questions waiting then
// delays another's by one question per batch, not by 500.
//
// Raw completions (token ids in, samples out: another front-end sampling on this server, as
// on vLLM) wait in the same lanes, under the same bound, and are batched with raw completions
// sampled alike; they are not voted, logged or trained on: they are someone else's samples.
import { Subject } from 'rxjs';
import { UnknownAdapter } from '../engine/named-adapters.ts';
import type { Completion, Generator } from '../engine/sampler.ts';
import type { Health } from './health.ts';
import type { Answer } from '../protocol/messages.ts';
import { randomBytes } from 'node:crypto';
import { silentLogger, type Logger } from '../util/log.ts';
import { seedOf } from '../util/rng.ts';
import type { Tokenizer } from '../tokenizers/tokenizer.ts';
import type { Store } from '../store/store.ts';
import type { Task } from '../tasks/task.ts';
import { rolloutBatch, type Rollout } from '../sampling/rollout.ts';
import { isCorrect } from '../tasks/normalize.ts';
import { ProtocolError } from '../protocol/errors.ts';
import type { BatchingSettings, LimitSettings, SamplingSettings } from '../config/settings.ts';
import type { Metrics } from './metrics.ts';

/**
 * A request's own sampling (the OpenAI routes' temperature, top_p, max_tokens, stop, seed).
 * Questions sampled otherwise than the server samples are answered and logged but not
 * trained on: their log-probs and lengths are not those of the policy the update assumes.
 */
export interface SamplingOverrides {
  temperature?: number;
  topP?: number;
  maxNewTokens?: number;
  stop?: string[];
  /** The request's seed: its samples depend on it alone (and the question's position in no batch). */
  seed?: number;
  /** A named adapter set to sample with (an OpenAI `model` naming a loaded adapter): another policy's samples. */
  adapter?: string;
}

export type { Answer };

export interface AskRequest {
  /** Carried through batch, sample, store and answer in the logs: the answerer's own, unique (set on enqueue). */
  requestId?: string;
  /** The id the client gave its request (an HTTP X-Request-Id), logged beside ours; two requests may share one. */
  clientRequestId?: string;
  /** Fires when the client has gone away: the question, if still waiting, is dropped and logged as failed. */
  signal?: AbortSignal;
  question: string;
  votes: number;
  /**
   * The question's known answer, when the client sent one (a labelled replay): logged with the
   * question and scored against the answer for calibration (labelled$). Never part of an
   * experience: live adaptation trains on majority votes, without labels.
   */
  label?: string;
  sampling?: SamplingOverrides;
  clientId: string | null;
  connection: string | null;
  /** The queue's lane for fairness: lanes are served in turn (a connection; unset: one shared lane, e.g. an offline replay). */
  lane?: string | null;
  /** Who asks, for the update share: an update takes at most a set share of its questions from one source (unset: not capped). */
  source?: string | null;
  /** Called with the samples, before the answer, when the client asked for them. */
  onSamples?: (r: Rollout) => void;
}

/** How a raw completion is sampled: everything the sampler is told, decided by the transport. */
export interface RawSampling {
  temperature: number;
  topP?: number;
  maxNewTokens: number;
  /** The token ids that end a sample. */
  stopTokens: number[];
  /** The sampler's dice for this prompt (SampleOptions.seeds): its samples depend on it alone. */
  seed: number;
  adapter?: string;
}

/** A raw completion: a prompt of token ids as given (no task format), sampled `samples` times. */
export interface RawCompletionRequest extends Pick<AskRequest, 'requestId' | 'clientRequestId' | 'signal' | 'clientId' | 'connection' | 'lane'> {
  prompt: number[];
  samples: number;
  sampling: RawSampling;
}

export interface RawCompletion {
  prompt: number[];
  completions: Completion[];
  /** The serving version when they were drawn. */
  version: number;
}

/** A voted question, as the adaptation loop consumes it. */
export interface Experience {
  questionId: number;
  rollout: Rollout;
  at: number;
  source: string | null;
  /** Sampled as the server samples (no overrides): an update may train on it. */
  trainable: boolean;
  /** From arrival to answer, as stored with the question. */
  latencyMs: number;
  /** The front-end that answered it (a fleet's leader trains on every front-end's). */
  frontend?: string | null;
}

/**
 * A labelled question's answer scored against its label: what calibration is measured on.
 * A stream of its own, apart from the experiences, so that nothing adaptation reads can
 * carry a label.
 */
export interface LabelledAnswer {
  questionId: number;
  at: number;
  /** The majority's share of the votes, as the client was told. */
  confidence: number;
  /** Whether the answer is the label, both normalised (as replay reports score them). */
  correct: boolean;
}

interface Waiting<R, A> {
  req: R;
  receivedAt: number;
  t0: number;
  resolve: (a: A) => void;
  reject: (e: Error) => void;
}
type QuestionPending = Waiting<AskRequest, Answer> & { raw?: undefined };
type RawPending = Waiting<RawCompletionRequest, RawCompletion> & { raw: true };
/** What waits in a lane: a question, or a raw completion. */
type Pending = QuestionPending | RawPending;

/** The sampling and batching groups, the queue's bound, and the task: how questions become prompts and answers are read out of the samples. */
export type AnswererOptions = SamplingSettings &
  BatchingSettings &
  Pick<LimitSettings, 'queueLimit'> & {
    task: Task;
    /** This front-end's name in a shared log (unset: a single process). */
    frontend?: string | null;
  };

export class Answerer {
  readonly experiences$ = new Subject<Experience>();
  /** The answers to questions asked with a label, scored; for measurement only. */
  readonly labelled$ = new Subject<LabelledAnswer>();
  /** Waiting questions by source, in turn order (a Map keeps insertion order: the back is the end). */
  private lanes = new Map<string, Pending[]>();
  private waiting = 0;
  private running: Promise<void> | null = null;
  private closing = false;

  constructor(
    /** What to sample the next batch on: the local sampler (versions replaces one whose worker died), or the upstream fleet. */
    private sampler: () => Promise<Generator>,
    private tok: Tokenizer,
    private store: Store,
    private o: AnswererOptions,
    private metrics: Metrics,
    private health?: Health,
    private log: Logger = silentLogger,
  ) {}

  /** Request ids: this process's random prefix and a counter (unique across restarts in one log). */
  private idPrefix = randomBytes(3).toString('hex');
  private nextRequest = 1;
  private nextBatch = 1;

  get queueDepth(): number {
    return this.waiting;
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

  /** A raw completion, through the same queue as questions; its samples are neither voted, logged nor trained on. */
  complete(req: RawCompletionRequest): Promise<RawCompletion> {
    const p = this.enqueue(req, true);
    this.kick();
    return p;
  }

  private enqueue(req: AskRequest): Promise<Answer>;
  private enqueue(req: RawCompletionRequest, raw: true): Promise<RawCompletion>;
  private enqueue(req: AskRequest | RawCompletionRequest, raw?: true): Promise<Answer | RawCompletion> {
    if (this.closing) return Promise.reject(new ProtocolError('shutting_down', 'the server is shutting down; no new questions are taken'));
    if (this.waiting >= this.o.queueLimit && !this.makeRoomFor(req.lane ?? '')) {
      this.metrics.rejected.inc({ code: 'overloaded' });
      return Promise.reject(new ProtocolError('overloaded', `${this.waiting} questions are waiting (the limit is ${this.o.queueLimit}); retry later`));
    }
    if (req.signal?.aborted) return Promise.reject(new ProtocolError('internal', 'the client went away before its question was queued'));
    req.requestId = `${this.idPrefix}-${(this.nextRequest++).toString(36)}`;
    this.log.debug(
      {
        req_id: req.requestId,
        ...(req.clientRequestId ? { client_req_id: req.clientRequestId } : {}),
        connection: req.connection,
        client_id: req.clientId,
        ...('votes' in req ? { votes: req.votes } : { samples: req.samples, prompt_tokens: req.prompt.length }),
      },
      raw ? 'raw completion' : 'question',
    );
    return new Promise((resolve, reject) => {
      const key = req.lane ?? '';
      let lane = this.lanes.get(key);
      if (!lane) this.lanes.set(key, (lane = []));
      const waiting = { receivedAt: Date.now(), t0: performance.now(), resolve, reject };
      const pending: Pending = raw ? { ...waiting, req: req as RawCompletionRequest, raw } : { ...waiting, req: req as AskRequest };
      lane.push(pending);
      this.waiting++;
      this.metrics.queueDepth.set(this.waiting);
      req.signal?.addEventListener('abort', () => this.drop(key, pending, 'the client went away before its question was sampled'), { once: true });
    });
  }

  /** Drops one waiting question whose client went away (a question already in a batch runs on). */
  private drop(laneKey: string, p: Pending, reason: string): void {
    const lane = this.lanes.get(laneKey);
    const at = lane?.indexOf(p) ?? -1;
    if (!lane || at < 0) return;
    lane.splice(at, 1);
    if (!lane.length) this.lanes.delete(laneKey);
    this.giveUp([p], reason);
  }

  /** Questions taken out of the queue unanswered (their clients went away): logged as failed, their asks rejected. */
  private giveUp(taken: Pending[], reason: string): void {
    this.waiting -= taken.length;
    this.metrics.queueDepth.set(this.waiting);
    this.logFailed(taken, reason);
    for (const p of taken) p.reject(new ProtocolError('internal', reason));
  }

  /**
   * Admission is fair too: with the queue full, a question whose lane holds fewer than the
   * longest lane (by two or more) takes the place of that lane's newest question, which is
   * refused with overloaded. Whoever retries first no longer wins the freed places.
   */
  private makeRoomFor(laneKey: string): boolean {
    const mine = this.lanes.get(laneKey)?.length ?? 0;
    let longest: Pending[] | undefined;
    for (const lane of this.lanes.values()) if (!longest || lane.length > longest.length) longest = lane;
    if (!longest || longest.length < mine + 2) return false;
    const p = longest.pop()!;
    this.waiting--;
    this.metrics.rejected.inc({ code: 'overloaded' });
    p.reject(new ProtocolError('overloaded', `the queue is full (${this.o.queueLimit}) and this connection holds the most of it; retry later`));
    return true;
  }

  /**
   * Drops the waiting questions of a lane whose client went away (its connection closed): they
   * would hold sampling capacity for answers no one reads. They are logged as failed.
   */
  cancel(laneKey: string, reason: string): void {
    const lane = this.lanes.get(laneKey);
    if (!lane) return;
    this.lanes.delete(laneKey);
    this.giveUp(lane, reason);
  }

  private kick(): void {
    if (this.running) return;
    this.running = this.drain().finally(() => {
      this.running = null;
      if (this.waiting && !this.closing) this.kick();
    });
  }

  /** Runs batches until the queue is empty. */
  private async drain(): Promise<void> {
    while (this.waiting) {
      if (this.waiting < this.o.batchQuestions && this.o.batchWaitMs > 0) await new Promise((r) => setTimeout(r, this.o.batchWaitMs));
      if (!this.waiting) break; // close() or cancel() took them while we waited
      const batch = this.takeBatch();
      this.metrics.queueDepth.set(this.waiting);
      if (batch[0]!.raw) await this.runRawBatch(batch as RawPending[]);
      else await this.runBatch(batch as QuestionPending[], batch[0]!.req.votes);
    }
  }

  /**
   * The next batch: one run samples one vote count and one way (temperature, top_p, length,
   * stop strings, adapter), the first lane's first question's. Then round by round each lane
   * gives its next question sampled alike (its order kept) until the batch is full or the
   * lanes have none; the first lane moves to the back. Raw completions are batched the same
   * way, only with raw completions.
   */
  private takeBatch(): Pending[] {
    const keys = [...this.lanes.keys()];
    const head = this.lanes.get(keys[0]!)![0]!;
    const kind = runKind(head);
    const taken = new Set<Pending>();
    const cursor = keys.map(() => 0);
    for (let progress = true; progress && taken.size < this.o.batchQuestions;) {
      progress = false;
      keys.forEach((key, i) => {
        const lane = this.lanes.get(key)!;
        if (taken.size >= this.o.batchQuestions) return;
        while (cursor[i]! < lane.length && runKind(lane[cursor[i]!]!) !== kind) cursor[i]!++;
        if (cursor[i]! === lane.length) return;
        taken.add(lane[cursor[i]!++]!);
        progress = true;
      });
    }
    // The first lane to the back; a lane emptied leaves the rotation.
    const lanes = new Map<string, Pending[]>();
    for (const key of [...keys.slice(1), keys[0]!]) {
      const rest = this.lanes.get(key)!.filter((p) => !taken.has(p));
      if (rest.length) lanes.set(key, rest);
    }
    this.lanes = lanes;
    this.waiting -= taken.size;
    return [...taken];
  }

  private async runBatch(batch: QuestionPending[], votes: number): Promise<void> {
    this.metrics.batchSize.observe(batch.length);
    const log = this.log.child({ batch: this.nextBatch++ });
    const t0 = performance.now();
    log.debug({ req_ids: batch.map((p) => p.req.requestId), votes, waited_ms: Math.round(t0 - batch[0]!.t0) }, 'batch');
    let rollouts: Rollout[];
    try {
      // The k-th ask of a question draws seed (server seed, question, k), whatever batch it
      // lands in: the same stream served twice gets the same dice, so two runs differ only
      // where their model versions do, and a repeated question still gets fresh samples.
      let asked: Map<string, number>;
      try {
        asked = await this.store.askCounts(batch.map((p) => p.req.question));
      } catch (e) {
        this.health?.report('store', (e as Error).message);
        return this.fail(batch, `the store could not be read: ${(e as Error).message}`, log, 'store_unavailable');
      }
      const seeds = batch.map(({ req: { question, sampling } }) => {
        const k = asked.get(question)!;
        asked.set(question, k + 1);
        return sampling?.seed ?? seedOf(this.o.seed, question, k);
      });
      const sampling = batch[0]!.req.sampling ?? {};
      rollouts = await rolloutBatch(
        await this.sampler(),
        this.tok,
        batch.map((p) => p.req.question),
        {
          task: this.o.task,
          votes,
          temperature: sampling.temperature ?? this.o.temperature,
          topP: sampling.topP,
          maxNewTokens: sampling.maxNewTokens,
          stop: sampling.stop,
          adapter: sampling.adapter,
          seed: this.o.seed,
          seeds,
        },
      );
    } catch (e) {
      this.health?.report('sampler', (e as Error).message);
      // An upstream fleet that could not sample says so (upstream_unavailable, 503): the client may retry.
      const code = e instanceof ProtocolError && e.code === 'upstream_unavailable' ? e.code : 'internal';
      return this.fail(batch, `sampling failed: ${(e as Error).message}`, log, code);
    }
    this.health?.report('sampler');
    log.debug({ ms: Math.round(performance.now() - t0), model_version: rollouts[0]?.version }, 'sampled');
    const answeredAt = Date.now();
    const records = rollouts.map((r, i) => {
      const p = batch[i]!;
      return {
        clientId: p.req.clientId,
        connection: p.req.connection,
        question: p.req.question,
        label: p.req.label ?? null,
        votesRequested: votes,
        receivedAt: p.receivedAt,
        answeredAt,
        answer: r.vote.label,
        majorityRatio: r.vote.ratio,
        votes: r.vote.counts,
        modelVersion: r.version,
        latencyMs: performance.now() - p.t0,
        source: p.req.source ?? null,
        trainable: !isOverridden(p.req.sampling),
        promptIds: r.prompt,
        sampledOn: r.sampledBy?.upstream ?? null,
        sampledModel: r.sampledBy?.model ?? null,
        samples: r.samples.map((s) => ({
          text: s.text,
          answer: s.answer,
          tokens: s.tokens.length,
          logprobSum: s.logprobs.reduce((a, b) => a + b, 0),
          stopped: s.stopped,
          tokenIds: s.tokens,
          logprobs: s.logprobs,
        })),
      };
    });
    let ids: number[];
    try {
      ids = await this.store.recordAnswered(records, this.o.frontend ?? null);
    } catch (e) {
      // Not stored means not answered: the client hears of the failure instead.
      this.health?.report('store', (e as Error).message);
      return this.fail(batch, `could not store the answers: ${(e as Error).message}`, log, 'store_unavailable');
    }
    this.health?.report('store');
    log.debug({ question_ids: ids }, 'stored');
    rollouts.forEach((r, i) => {
      const p = batch[i]!;
      const rec = records[i]!;
      try {
        p.req.onSamples?.(r);
      } catch (e) {
        // A transport's failure to stream the samples must not keep the batch's other answers back.
        log.error({ req_id: p.req.requestId, err: (e as Error).message }, 'streaming the samples failed');
      }
      this.metrics.answered.inc();
      this.metrics.latency.observe(rec.latencyMs / 1000);
      this.metrics.majorityRatio.observe(r.vote.ratio);
      log.debug(
        { req_id: p.req.requestId, question_id: ids[i], answer: r.vote.label, confidence: r.vote.ratio, latency_ms: Math.round(rec.latencyMs) },
        'answered',
      );
      p.resolve({
        answer: r.vote.label,
        votes: r.vote.counts,
        confidence: r.vote.ratio,
        model_version: r.version,
        prompt_tokens: r.prompt.length,
        latency_ms: Math.round(rec.latencyMs),
      });
      this.experiences$.next({
        questionId: ids[i]!,
        rollout: r,
        at: answeredAt,
        source: p.req.source ?? null,
        trainable: rec.trainable,
        latencyMs: rec.latencyMs,
      });
      if (p.req.label !== undefined) {
        const correct = isCorrect(r.vote.label, p.req.label);
        this.metrics.labelled.inc({ correct: String(correct) });
        this.labelled$.next({ questionId: ids[i]!, at: answeredAt, confidence: r.vote.ratio, correct });
      }
    });
  }

  /**
   * One sampling run over raw completions sampled alike, each prompt on its own seed: a
   * prompt's samples are those of the same prompt sampled alone. Answered as soon as they are
   * drawn; nothing is stored.
   */
  private async runRawBatch(batch: RawPending[]): Promise<void> {
    const log = this.log.child({ batch: this.nextBatch++ });
    const { req: head } = batch[0]!;
    const s = head.sampling;
    log.debug(
      { req_ids: batch.map((p) => p.req.requestId), samples: head.samples, raw: true, waited_ms: Math.round(performance.now() - batch[0]!.t0) },
      'batch',
    );
    try {
      const seeds = batch.map((p) => p.req.sampling.seed);
      const sampler = await this.sampler();
      const r = await sampler.generate(
        batch.map((p) => p.req.prompt),
        {
          samplesPerPrompt: head.samples,
          maxNewTokens: s.maxNewTokens,
          // Each prompt draws on its own seed (seeds); `seed` is then unused.
          seed: seeds[0]!,
          seeds,
          temperature: s.temperature,
          topP: s.topP,
          stopTokens: s.stopTokens,
          padToken: this.tok.padId,
          ...(s.adapter === undefined ? {} : { adapter: s.adapter }),
        },
      );
      this.health?.report('sampler');
      log.debug({ model_version: r.version }, 'sampled');
      batch.forEach((p, i) => p.resolve({ prompt: p.req.prompt, completions: r.completions[i]!, version: r.version }));
    } catch (e) {
      // An adapter unloaded while its requests waited is theirs to hear of (404), not a sampler fault.
      if (e instanceof UnknownAdapter) return this.refuse(batch, new ProtocolError('not_found', (e as Error).message), log);
      this.health?.report('sampler', (e as Error).message);
      const code = e instanceof ProtocolError && e.code === 'upstream_unavailable' ? e.code : 'internal';
      this.refuse(batch, new ProtocolError(code, `sampling failed: ${(e as Error).message}`), log);
    }
  }

  /** Raw completions that could not be drawn: not questions, so neither logged nor counted as failed ones. */
  private refuse(batch: RawPending[], e: ProtocolError, log: Logger): void {
    log.error({ req_ids: batch.map((p) => p.req.requestId), error: e.message }, 'batch failed');
    for (const p of batch) p.reject(e);
  }

  private fail(batch: Pending[], error: string, log: Logger, code: 'internal' | 'store_unavailable' | 'upstream_unavailable' = 'internal'): void {
    log.error({ req_ids: batch.map((p) => p.req.requestId), error }, 'batch failed');
    this.logFailed(batch, error);
    this.metrics.failed.inc(batch.length);
    for (const p of batch) p.reject(new ProtocolError(code, error));
  }

  /** Records failed questions in the background (raw completions are not questions: never logged); where the store itself is failing, the clients still hear of it. */
  private logFailed(batch: Pending[], error: string): void {
    const questions = batch.filter((p): p is QuestionPending => !p.raw);
    if (!questions.length) return;
    this.store
      .recordFailed(
        questions.map((p) => ({
          clientId: p.req.clientId,
          connection: p.req.connection,
          question: p.req.question,
          label: p.req.label ?? null,
          votesRequested: p.req.votes,
          receivedAt: p.receivedAt,
          error,
        })),
        this.o.frontend ?? null,
      )
      .catch(() => undefined);
  }

  /** Refuses new questions, fails the waiting ones with shutting_down, and lets the running batch finish. */
  async close(): Promise<void> {
    this.closing = true;
    const waiting = [...this.lanes.values()].flat();
    this.lanes.clear();
    this.waiting = 0;
    this.logFailed(waiting, 'shutting_down');
    for (const p of waiting) p.reject(new ProtocolError('shutting_down', 'the server shut down before this question was sampled'));
    await this.running;
    this.experiences$.complete();
    this.labelled$.complete();
  }
}

/** What must be alike for requests to share a sampling run (questions with questions, raw completions with raw completions). */
function runKind(p: Pending): string {
  if (p.raw) {
    const s = p.req.sampling;
    return JSON.stringify(['raw', p.req.samples, s.temperature, s.topP ?? 1, s.maxNewTokens, s.stopTokens, s.adapter ?? null]);
  }
  const s = p.req.sampling;
  return JSON.stringify([p.req.votes, s?.temperature, s?.topP, s?.maxNewTokens, s?.stop, s?.adapter]);
}

function isOverridden(s: SamplingOverrides | undefined): boolean {
  // A seed picks the dice, not the distribution: such samples are still the policy's. An
  // adapter's are another policy's.
  return !!s && (s.temperature !== undefined || s.topP !== undefined || s.maxNewTokens !== undefined || !!s.stop?.length || s.adapter !== undefined);
}
