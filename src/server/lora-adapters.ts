// LoRA adapters loaded at run time (vLLM's POST /v1/load_lora_adapter and
// /v1/unload_lora_adapter): which are loaded, under which names and from where, and whether an
// adapter directory may be served here at all. The tensors go to the serving sampler
// (Sampler.loadAdapter), which keeps them across a restart of its worker; an OpenAI request
// whose `model` names one samples with it.
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Weights } from '../model/family.ts';
import type { ModelConfig } from '../model/families.ts';
import { PEFT_CONFIG, readPeftAdapter, type AdapterFile, type LoraConfig } from '../model/lora.ts';
import { ProtocolError } from '../protocol/errors.ts';

/** vLLM accepts any name; ours go into logs, URLs and metric labels, so they are kept plain. */
const ADAPTER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** Our base models' fingerprints (loop/base-model.ts): the first 16 hex digits of a sha256, as adapters we write name their base. */
const FINGERPRINT = /^[0-9a-f]{16}$/;

/** Where the tensors go: the serving sampler. */
export interface AdapterSampler {
  loadAdapter(name: string, adapters: Weights): Promise<void>;
  unloadAdapter(name: string): Promise<boolean>;
}

export interface LoadedAdaptersOptions {
  /** The served model's id: no adapter may take it. */
  modelId: string;
  config: ModelConfig;
  /** The server's LoRA shape (--lora-rank, --lora-alpha, --lora-targets); unset: it samples full weights, and takes no adapter. */
  lora?: LoraConfig;
  /** The base model's fingerprint: an adapter that names one of ours as its base must name this one. */
  fingerprint: string;
  /** Adapters loaded at once at most (--max-loaded-adapters). */
  maxLoaded: number;
  /** The sampler as it is now (a restart replaces it; the named adapters carry over). */
  sampler: () => AdapterSampler;
}

export interface LoadedAdapter {
  name: string;
  /** As the client gave it (GET /v1/models lists it as the adapter's `root`, as vLLM does). */
  path: string;
  /** When it was loaded (epoch s). */
  created: number;
}

export class LoadedAdapters {
  private loaded = new Map<string, LoadedAdapter>();
  /** Names being read or sent: taken already, so that two loads of one name cannot both succeed. */
  private loading = new Set<string>();

  constructor(private o: LoadedAdaptersOptions) {}

  /** In load order. */
  get list(): LoadedAdapter[] {
    return [...this.loaded.values()];
  }

  has(name: string): boolean {
    return this.loaded.has(name);
  }

  async load(name: string, path: string): Promise<LoadedAdapter> {
    this.checkLoadable(name);
    this.loading.add(name);
    try {
      const file = await this.read(path);
      await this.o.sampler().loadAdapter(name, file.adapters);
      const a = { name, path, created: Math.floor(Date.now() / 1000) };
      this.loaded.set(name, a);
      return a;
    } finally {
      this.loading.delete(name);
    }
  }

  async unload(name: string): Promise<LoadedAdapter> {
    const a = this.loaded.get(name);
    if (!a) throw new ProtocolError('not_found', `no adapter named ${JSON.stringify(name)} is loaded`);
    this.loaded.delete(name);
    await this.o.sampler().unloadAdapter(name);
    return a;
  }

  private checkLoadable(name: string): void {
    const { lora, modelId, maxLoaded } = this.o;
    if (!lora)
      throw new ProtocolError(
        'invalid_message',
        'this server samples full weights (--lora-rank 0), so it loads no LoRA adapters: start it with --lora-rank R (and the --lora-alpha and --lora-targets of the adapters)',
      );
    if (!ADAPTER_NAME.test(name))
      throw new ProtocolError(
        'invalid_message',
        `lora_name ${JSON.stringify(name)}: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
      );
    if (name === modelId)
      throw new ProtocolError('invalid_message', `lora_name ${JSON.stringify(name)} is the served model's id; give the adapter another name`);
    if (this.loaded.has(name) || this.loading.has(name))
      throw new ProtocolError(
        'invalid_message',
        `an adapter named ${JSON.stringify(name)} is already loaded; a name is never reloaded in place: unload it first, or load under another name`,
      );
    if (this.loaded.size + this.loading.size >= maxLoaded)
      throw new ProtocolError('invalid_message', `${maxLoaded} adapters are loaded, as many as --max-loaded-adapters allows; unload one first`);
  }

  /** The PEFT directory's adapters, refused unless they are of this server's shape and, where they name one of our base models, of this one. */
  private async read(path: string): Promise<AdapterFile> {
    const { config, lora, fingerprint } = this.o;
    const dir = resolve(path);
    if (!existsSync(join(dir, PEFT_CONFIG))) throw new ProtocolError('not_found', `no PEFT adapter at ${path}: it holds no ${PEFT_CONFIG}`);
    let file: AdapterFile;
    try {
      file = await readPeftAdapter(dir, config, lora);
    } catch (e) {
      throw new ProtocolError('invalid_message', `the adapter at ${path} cannot be served here: ${(e as Error).message}`);
    }
    if (FINGERPRINT.test(file.baseModel) && file.baseModel !== fingerprint)
      throw new ProtocolError(
        'invalid_message',
        `the adapter at ${path} was trained on base model ${file.baseModel}, not on the one served here (${fingerprint})`,
      );
    return file;
  }
}
