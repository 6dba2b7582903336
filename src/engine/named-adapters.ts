// Named LoRA adapter sets that a sampling run may use instead of the serving version's (an
// OpenAI request whose `model` names a loaded adapter). They are kept here, on the main
// thread, rather than only in a sampler's worker: a worker that dies is replaced by a fresh
// sampler (loop/serving-sampler.ts) that shares this set, and each sampler sends a name's
// tensors to its own worker the first time a run uses them.
import type { Weights } from '../model/family.ts';

export interface NamedAdapter {
  adapters: Weights;
  /** Distinct for every load: a name unloaded and loaded again is another adapter, never the old tensors. */
  load: number;
}

/** A run asked for an adapter name that is not loaded (it may have been unloaded while the run waited). */
export class UnknownAdapter extends Error {}

export class NamedAdapters {
  private byName = new Map<string, NamedAdapter>();
  private loads = 0;

  get(name: string): NamedAdapter | undefined {
    return this.byName.get(name);
  }

  /** Throws if the name is taken: a name is never reloaded in place. */
  add(name: string, adapters: Weights): NamedAdapter {
    if (this.byName.has(name)) throw new Error(`an adapter named ${JSON.stringify(name)} is already loaded`);
    const entry = { adapters, load: ++this.loads };
    this.byName.set(name, entry);
    return entry;
  }

  /** Whether the name was loaded. */
  delete(name: string): boolean {
    return this.byName.delete(name);
  }
}
