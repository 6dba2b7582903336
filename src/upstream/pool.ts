// The upstream fleet: sampling on OpenAI-compatible inference servers instead of in this
// process. To the answerer it is one Generator; inside, each prompt's draw goes to the
// upstream with the least outstanding work, a failed or slow draw is retried once on another,
// an upstream that keeps failing is taken out and probed back in, and one that comes back is
// brought to the serving adapter before it gets traffic.
//
// Versions are published as LoRA adapters under a new name each (ttrl-v7): never a name
// reloaded in place (vLLM has served a stale adapter after in-place reloads). Version 0 is
// the base model's own name. What serves is one (name, version) pair, switched only once the
// new adapter is loaded on every upstream that is up; a batch asks for the pair it started with.
import { existsSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Completion, Generator, SampledBy, SampleOptions, SampleResult } from '../engine/sampler.ts';
import type { ModelConfig } from '../model/families.ts';
import type { Weights } from '../model/family.ts';
import { writePeftAdapter, type LoraConfig } from '../model/lora.ts';
import { ProtocolError } from '../protocol/errors.ts';
import type { UpstreamSettings } from '../config/settings.ts';
import { BadUpstreamAnswer, DIALECTS, modelIds, type Dialect, type Draw } from './dialects.ts';
import { Upstream, UpstreamError, type UpstreamStatus } from './upstream.ts';
import type { Metrics } from '../loop/metrics.ts';

/** An upstream's OpenAI base URL: as given, without a trailing slash; a bare server address (no path) gets OpenAI's /v1. */
export function baseUrlOf(url: string): string {
  const u = new URL(url);
  const path = u.pathname.replace(/\/+$/, '');
  return `${u.origin}${path || '/v1'}`;
}

/** The name a version is published under (version 0: the base model's own). */
export const adapterName = (version: number) => `ttrl-v${version}`;
const candidateName = (version: number) => `ttrl-cand-v${version}`;

export interface PoolOptions extends Pick<
  UpstreamSettings,
  'upstreams' | 'upstreamApi' | 'upstreamApiKey' | 'upstreamTimeoutMs' | 'upstreamConcurrency' | 'upstreamFailures' | 'upstreamProbeMs'
> {
  config: ModelConfig;
  /** The base model's name on the upstreams. */
  baseModel: string;
  /** LoRA versions are published as PEFT adapters written here (unset: full fine-tuning, nothing published). */
  adapters?: { dir: string; lora: LoraConfig; fingerprint: string };
  /** Retired adapters kept loaded beside the serving one (older ones are unloaded). */
  keepLoaded: number;
  metrics: Metrics;
  log: (line: string) => void;
}

interface Serving {
  version: number;
  /** The model or adapter name asked for. */
  name: string;
}

export class UpstreamPool implements Generator {
  readonly config: ModelConfig;
  readonly dialect: Dialect;
  private upstreams: Upstream[];
  private serving: Serving;
  /** Published versions (adapters written and loaded), oldest first: which to keep loaded. */
  private published: number[] = [];
  private probeTimer: NodeJS.Timeout | null = null;
  private probing: Promise<void> | null = null;
  private turn = 0;
  private upWaiters: (() => void)[] = [];
  private closed = false;

  /** The serving version's adapters until start() writes them (the active version may predate this adapter folder). */
  private startAdapters: Weights | null;

  constructor(
    private o: PoolOptions,
    serving: { version: number; adapters?: Weights },
  ) {
    this.config = o.config;
    this.dialect = DIALECTS[o.upstreamApi];
    this.upstreams = o.upstreams.map((url) => new Upstream(baseUrlOf(url), { concurrency: o.upstreamConcurrency, apiKey: o.upstreamApiKey }));
    this.serving = { version: serving.version, name: this.nameOf(serving.version) };
    this.startAdapters = serving.version > 0 && o.adapters ? serving.adapters! : null;
  }

  /** What a version is asked for by: its adapter's name, or the base model's (version 0, or versions not published as adapters). */
  private nameOf(version: number): string {
    return version > 0 && this.o.adapters ? adapterName(version) : this.o.baseModel;
  }

  /** Probes every upstream (bringing each to the serving adapter), then keeps probing those that are not up. */
  async start(): Promise<void> {
    if (this.startAdapters) {
      await this.writeAdapter(this.serving.name, this.startAdapters);
      this.published.push(this.serving.version);
      this.startAdapters = null;
    }
    await this.probeAll();
    this.probeTimer = setInterval(() => void this.probeAll(), this.o.upstreamProbeMs);
    this.probeTimer.unref();
  }

  /** The model or adapter name asked for now, and its version. */
  get servingName(): Serving {
    return { ...this.serving };
  }

  status(): UpstreamStatus[] {
    return this.upstreams.map((u) => u.status());
  }

  /** Why no draw can be made now (no upstream is up), or null. */
  get down(): string | null {
    if (this.upstreams.some((u) => u.state === 'up')) return null;
    return `no upstream is up: ${this.upstreams.map((u) => `${u.url} (${u.reason})`).join('; ')}`;
  }

  /** Resolves once an upstream is up. */
  whenUp(): Promise<void> {
    if (!this.down) return Promise.resolve();
    return new Promise((resolve) => this.upWaiters.push(resolve));
  }

  // ---------- sampling ----------

  async generate(prompts: number[][], o: SampleOptions): Promise<SampleResult> {
    // The local sampler's named adapters (/v1/load_lora_adapter on this front-end) are not on the upstreams.
    if (o.adapter) throw new ProtocolError('not_found', `adapter ${o.adapter}: a front-end that samples on upstreams serves the fleet's version only`);
    return this.generateOn(prompts, o, this.serving, null);
  }

  /** Draws on the upstreams (or one pinned upstream) for a given model or adapter name. */
  private async generateOn(prompts: number[][], o: SampleOptions, serving: Serving, pinned: Upstream | null): Promise<SampleResult> {
    const t0 = performance.now();
    const drawn = await Promise.all(
      prompts.map((prompt, i) => {
        const seed = o.seeds?.[i] ?? (o.seed + Math.imul(i + 1, 0x2545f491)) >>> 0;
        const draw: Draw = {
          prompt,
          n: o.samplesPerPrompt,
          seed,
          temperature: o.temperature ?? 1,
          topP: o.topP ?? 1,
          maxTokens: o.maxNewTokens,
          stopTokens: o.stopTokens,
          model: serving.name,
          adapter: serving.name !== this.o.baseModel,
        };
        return this.drawAll(draw, pinned);
      }),
    );
    return {
      completions: drawn.map((d) => d.completions),
      version: serving.version,
      ms: performance.now() - t0,
      sampledBy: drawn.map((d): SampledBy => ({ upstream: [...new Set(d.upstreams)].join(','), model: serving.name })),
    };
  }

  /** One prompt's samples: one request where the API takes n, else one per vote, each with its own seed. */
  private async drawAll(d: Draw, pinned: Upstream | null): Promise<{ completions: Completion[]; upstreams: string[] }> {
    if (this.dialect.takesN || d.n === 1) {
      const r = await this.drawOnce(d, pinned);
      return { completions: r.samples, upstreams: [r.upstream] };
    }
    const votes = await Promise.all(
      Array.from({ length: d.n }, (_, k) => this.drawOnce({ ...d, n: 1, seed: (d.seed + Math.imul(k, 0x9e3779b1)) >>> 0 }, pinned)),
    );
    return { completions: votes.flatMap((v) => v.samples), upstreams: votes.map((v) => v.upstream) };
  }

  /** A request on the least-loaded upstream, retried once on another (the same one only when it is the only one up). */
  private async drawOnce(d: Draw, pinned: Upstream | null): Promise<{ samples: Completion[]; upstream: string }> {
    const errors: string[] = [];
    let tried: Upstream | null = null;
    for (let attempt = 0; attempt < 2; attempt++) {
      const before = tried as Upstream | null;
      const u = pinned ?? this.pick(before) ?? (before && before.state === 'up' ? before : null);
      if (!u) break;
      tried = u;
      const call = this.dialect.draw(d);
      const t0 = performance.now();
      const gauge = () => this.o.metrics.upstreamOutstanding.set({ upstream: u.url }, u.outstanding);
      try {
        const pending = u.call(call.path, call.body, this.o.upstreamTimeoutMs);
        gauge();
        const body = await pending.finally(gauge);
        const samples = this.dialect.samples(body, d);
        this.succeeded(u, performance.now() - t0);
        return { samples, upstream: u.url };
      } catch (e) {
        const err = e instanceof UpstreamError || e instanceof BadUpstreamAnswer ? e : new UpstreamError((e as Error).message, true);
        errors.push(`${u.url}: ${err.message}`);
        const retry = err instanceof BadUpstreamAnswer || err.retry;
        // Overloaded (429) is back-pressure, not a failing server: retried elsewhere, never taken out for it.
        const counts = retry && !(err instanceof UpstreamError && err.status === 429);
        const atOnce = err instanceof UpstreamError && (err.status === 404 || err.unreachable);
        this.failed(u, err.message, counts, atOnce);
        if (!retry) throw new ProtocolError('internal', `the upstream refused the request: ${u.url}: ${err.message}`);
      }
    }
    throw new ProtocolError('upstream_unavailable', errors.length ? `every upstream tried failed: ${errors.join('; ')}` : (this.down ?? 'no upstream is up'));
  }

  /** The up upstream with the least outstanding work (ties in turn), other than `not`. */
  private pick(not: Upstream | null): Upstream | null {
    const up = this.upstreams.filter((u) => u.state === 'up' && u !== not);
    if (!up.length) return null;
    const start = this.turn++ % up.length;
    let best = up[start]!;
    for (let k = 1; k < up.length; k++) {
      const u = up[(start + k) % up.length]!;
      if (u.outstanding < best.outstanding) best = u;
    }
    return best;
  }

  private succeeded(u: Upstream, ms: number): void {
    u.failuresInARow = 0;
    this.o.metrics.upstreamLatency.observe({ upstream: u.url }, ms / 1000);
  }

  /**
   * A failure counts toward taking the upstream out; one that says the server is gone (no
   * connection) or lost the adapter (404: it restarted) takes it out at once, to be probed
   * back in and re-synced.
   */
  private failed(u: Upstream, why: string, counts: boolean, atOnce: boolean): void {
    this.o.metrics.upstreamErrors.inc({ upstream: u.url });
    if (!counts) return;
    u.failuresInARow++;
    if (atOnce) this.takeOut(u, why);
    else if (u.failuresInARow >= this.o.upstreamFailures) this.takeOut(u, `${u.failuresInARow} failures in a row, the last: ${why}`);
  }

  private takeOut(u: Upstream, reason: string): void {
    if (u.state !== 'down') this.o.log(`upstream ${u.url} is taken out of rotation: ${reason}`);
    u.state = 'down';
    u.reason = reason;
    this.o.metrics.upstreamUp.set({ upstream: u.url }, 0);
  }

  private bringIn(u: Upstream): void {
    if (u.state !== 'up') this.o.log(`upstream ${u.url} is up, serving ${this.serving.name}`);
    u.state = 'up';
    u.reason = '';
    u.failuresInARow = 0;
    this.o.metrics.upstreamUp.set({ upstream: u.url }, 1);
    for (const w of this.upWaiters.splice(0)) w();
  }

  // ---------- probing and syncing ----------

  private probeAll(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return (this.probing ??= Promise.all(this.upstreams.filter((u) => u.state !== 'up').map((u) => this.probe(u)))
      .then(() => undefined)
      .finally(() => (this.probing = null)));
  }

  /** An upstream not in rotation: it must answer, serve the base model, and hold the serving adapter before it is brought in. */
  private async probe(u: Upstream): Promise<void> {
    try {
      await this.sync(u);
      this.bringIn(u);
    } catch (e) {
      this.takeOut(u, (e as Error).message);
    }
  }

  /** Loads the serving adapter where missing and unloads ours no longer kept. */
  private async sync(u: Upstream): Promise<void> {
    const listed = modelIds(await u.call(this.dialect.modelsPath, undefined, this.o.upstreamTimeoutMs));
    if (!listed.some((m) => m.id === this.o.baseModel))
      throw new Error(
        `it serves ${listed.map((m) => JSON.stringify(m.id)).join(', ') || 'no model'}, not ${JSON.stringify(this.o.baseModel)} (--upstream-model)`,
      );
    if (!this.o.adapters || !this.dialect.loadsAdapters) return;
    const keep = new Set(this.keptNames());
    const loaded = new Map(listed.map((m) => [m.id, m.root]));
    if (this.serving.name !== this.o.baseModel) await this.ensureLoaded(u, this.serving.name, loaded);
    for (const id of loaded.keys()) if (/^ttrl-(cand-)?v\d+$/.test(id) && !keep.has(id)) await this.unload(u, id);
  }

  /** Loads `name` unless the upstream lists it already, from our folder (a name is never reloaded in place). */
  private async ensureLoaded(u: Upstream, name: string, listed?: Map<string, string | undefined>): Promise<void> {
    const path = this.adapterPath(name);
    const root = listed?.get(name);
    if (listed?.has(name)) {
      if (root !== undefined && resolve(root) !== path)
        throw new Error(`it holds another adapter named ${name} (from ${root}, not ${path}); unload it there (names are never reloaded in place)`);
      return;
    }
    const call = this.dialect.loadAdapter(name, path);
    try {
      await u.call(call.path, call.body, this.o.upstreamTimeoutMs);
    } catch (e) {
      // Loaded already (a probe raced a publish): the same name is the same adapter.
      if (e instanceof UpstreamError && e.status === 400 && /already/i.test(e.message)) return;
      throw new Error(`could not load adapter ${name} from ${path}: ${(e as Error).message}`);
    }
  }

  private async unload(u: Upstream, name: string): Promise<void> {
    const call = this.dialect.unloadAdapter(name);
    await u.call(call.path, call.body, this.o.upstreamTimeoutMs).catch((e: Error) => this.o.log(`could not unload adapter ${name} on ${u.url}: ${e.message}`));
  }

  // ---------- publishing ----------

  private adapterPath(name: string): string {
    return resolve(join(this.o.adapters!.dir, name));
  }

  /** Writes an adapter folder in PEFT's layout, whole or not at all (a folder that exists is that name's, written before). */
  private async writeAdapter(name: string, adapters: Weights): Promise<string> {
    const a = this.o.adapters!;
    const path = this.adapterPath(name);
    if (existsSync(path)) return path;
    await mkdir(a.dir, { recursive: true });
    const tmp = `${path}.tmp-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    await writePeftAdapter(tmp, this.config, { lora: a.lora, baseModel: a.fingerprint, adapters });
    await rename(tmp, path);
    return path;
  }

  /**
   * Serves a version on the fleet: its adapter written and loaded on every upstream that is up
   * (one that fails is taken out, and synced when it comes back), then asked for by name.
   * Version 0 is the base model. Retired adapters beyond the kept ones are unloaded.
   */
  async serve(version: number, adapters?: Weights): Promise<void> {
    const name = this.nameOf(version);
    if (name === this.o.baseModel) {
      this.serving = { version, name };
      return;
    }
    await this.writeAdapter(name, adapters!);
    await Promise.all(
      this.upstreams
        .filter((u) => u.state === 'up')
        .map((u) =>
          this.ensureLoaded(u, name).catch((e: Error) => {
            this.takeOut(u, e.message);
            u.failuresInARow = 0;
          }),
        ),
    );
    this.serving = { version, name };
    this.published = [...this.published.filter((v) => v !== version), version];
    const keep = new Set(this.keptNames());
    const retired = this.published.filter((v) => !keep.has(adapterName(v)));
    this.published = this.published.filter((v) => !retired.includes(v));
    for (const v of retired) for (const u of this.upstreams.filter((x) => x.state === 'up')) await this.unload(u, adapterName(v));
  }

  /** The adapter names kept loaded: the serving one and the newest retired ones. */
  private keptNames(): string[] {
    const others = this.published.filter((v) => v !== this.serving.version).slice(-this.o.keepLoaded);
    return [...others, this.serving.version].filter((v) => v > 0).map(adapterName);
  }

  /**
   * Runs `fn` on one upstream with a candidate's adapters loaded under a candidate name (the
   * guard's probe of a version before it may serve); unloaded and deleted after.
   */
  async withCandidate<T>(version: number, adapters: Weights, fn: (g: Generator) => Promise<T>): Promise<T> {
    const u = this.pick(null);
    if (!u) throw new ProtocolError('upstream_unavailable', this.down ?? 'no upstream is up');
    const name = candidateName(version);
    await this.writeAdapter(name, adapters);
    try {
      await this.ensureLoaded(u, name);
      const pinned: Generator = { config: this.config, generate: (p, o) => this.generateOn(p, o, { version: -1, name }, u) };
      return await fn(pinned);
    } finally {
      await this.unload(u, name);
      await rm(this.adapterPath(name), { recursive: true, force: true });
    }
  }

  /** A Generator for the base model (version 0), whatever serves: the start-up check compares it with our own. */
  baseGenerator(): Generator {
    const base = { version: 0, name: this.o.baseModel };
    return { config: this.config, generate: (p, o) => this.generateOn(p, o, base, null) };
  }

  /** A Generator for the serving version (the guard's probe of the parent). */
  servingGenerator(): Generator {
    const serving = { ...this.serving };
    return { config: this.config, generate: (p, o) => this.generateOn(p, o, serving, null) };
  }

  close(): void {
    this.closed = true;
    if (this.probeTimer) clearInterval(this.probeTimer);
    for (const w of this.upWaiters.splice(0)) w();
  }
}
