// The live guard's two lists, kept in the store's meta table so that they survive restarts:
// the probe questions (the first distinct questions served) and the completion anchors (the
// shipped model's surest served answers, ttrl/candidate-checks.ts). Each fills from served
// rollouts until it is full and is written only when it grows.
import type { Store } from '../store/store.ts';
import { completionAnchorOf, type CompletionAnchor } from '../ttrl/candidate-checks.ts';
import type { Rollout } from '../sampling/rollout.ts';

/**
 * A JSON list in the store's meta table: loaded once (load(), before use), written whole when
 * it changes. Writes go one after another in the background; one that fails is retried with
 * the next change (the list in memory is the truth; the store keeps it across restarts and
 * hands it to the next leader).
 */
class MetaList<T> {
  private list: T[] = [];
  private writing: Promise<void> = Promise.resolve();
  constructor(
    private store: Store,
    private key: string,
  ) {}
  async load(): Promise<void> {
    this.list = JSON.parse((await this.store.getMeta(this.key)) ?? '[]') as T[];
  }
  items(): T[] {
    return this.list;
  }
  save(): Promise<void> {
    const text = JSON.stringify(this.list);
    this.writing = this.writing.then(() => this.store.setMeta(this.key, text).then(() => undefined)).catch(() => undefined);
    return this.writing;
  }
}

export class ProbeQuestions {
  private list: MetaList<string>;
  constructor(
    store: Store,
    private max: number,
  ) {
    this.list = new MetaList(store, 'probe_questions');
  }

  load(): Promise<void> {
    return this.list.load();
  }

  /** Called for every answered question: cheap once the set is full. */
  remember(question: string): void {
    const set = this.list.items();
    if (set.length >= this.max || set.includes(question)) return;
    set.push(question);
    void this.list.save();
  }

  /** The set now (a copy: it grows by remember() only). */
  items(): string[] {
    return [...this.list.items()];
  }
}

export class CompletionAnchors {
  private list: MetaList<CompletionAnchor>;
  constructor(
    store: Store,
    private max: number,
  ) {
    this.list = new MetaList(store, 'anchors');
  }

  load(): Promise<void> {
    return this.list.load();
  }

  /** A rollout the shipped model answered near-unanimously becomes an anchor (one per question). */
  remember(r: Rollout): void {
    const set = this.list.items();
    if (set.length >= this.max) return;
    const anchor = completionAnchorOf(r);
    if (!anchor || set.some((a) => a.question === anchor.question)) return;
    set.push(anchor);
    void this.list.save();
  }

  /** The anchors now (a copy of the list, the anchors themselves: the scorer fills in their ref). */
  items(): CompletionAnchor[] {
    return [...this.list.items()];
  }

  /** After anchors' reference log-probs were filled in. */
  save(): Promise<void> {
    return this.list.save();
  }
}
