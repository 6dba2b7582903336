// The live guard's two lists, kept in the store's meta table so that they survive restarts:
// the probe questions (the first distinct questions served) and the completion anchors (the
// shipped model's surest served answers, ttrl/candidate-checks.ts). Each fills from served
// rollouts until it is full and is written only when it grows.
import type { Store } from '../store/store.ts';
import { completionAnchorOf, type CompletionAnchor } from '../ttrl/candidate-checks.ts';
import type { Rollout } from '../sampling/rollout.ts';

/** A JSON list in the store's meta table: read once, written whole when it changes. */
class MetaList<T> {
  private list: T[] | null = null;
  constructor(
    private store: Store,
    private key: string,
  ) {}
  items(): T[] {
    return (this.list ??= JSON.parse(this.store.getMeta(this.key) ?? '[]') as T[]);
  }
  save(): void {
    this.store.setMeta(this.key, JSON.stringify(this.items()));
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

  /** Called for every answered question: cheap once the set is full. */
  remember(question: string): void {
    const set = this.list.items();
    if (set.length >= this.max || set.includes(question)) return;
    set.push(question);
    this.list.save();
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

  /** A rollout the shipped model answered near-unanimously becomes an anchor (one per question). */
  remember(r: Rollout): void {
    const set = this.list.items();
    if (set.length >= this.max) return;
    const anchor = completionAnchorOf(r);
    if (!anchor || set.some((a) => a.question === anchor.question)) return;
    set.push(anchor);
    this.list.save();
  }

  /** The anchors now (a copy of the list, the anchors themselves: the scorer fills in their ref). */
  items(): CompletionAnchor[] {
    return [...this.list.items()];
  }

  /** After anchors' reference log-probs were filled in. */
  save(): void {
    this.list.save();
  }
}
