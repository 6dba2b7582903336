// The base model's identity: a fingerprint of the bytes of its weight files, whatever the
// format (our directory's model.safetensors, a Hugging Face directory's single file or
// shards, a GGUF file). A database logs one base model; its versions are that model's.
//
// Hashing a multi-GB checkpoint at every start would cost seconds to minutes, so the store
// remembers the files' paths, sizes and modification times beside the hash: while they are
// unchanged the remembered hash stands, and only a new or touched file is hashed again (once).
// A file rewritten in place with the same size and modification time would go unnoticed;
// that is the price of not reading every byte at every start.
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { WEIGHTS_FILE } from '../formats/checkpoint.ts';
import { INDEX_FILE } from '../formats/hf.ts';
import type { Store } from '../store/store.ts';

/** What the store remembers of a weight file. */
export interface FileStamp {
  path: string;
  size: number;
  mtimeMs: number;
}

export const FINGERPRINT_KEY = 'base_model_sha256';
export const STAMPS_KEY = 'base_model_files';

/** The files that hold a model's weights: the GGUF file itself, a directory's shards (by the index, in name order) or its model.safetensors. */
export async function weightFilesOf(model: string): Promise<string[]> {
  if ((await stat(model)).isFile()) return [resolve(model)];
  const index = join(model, INDEX_FILE);
  if (existsSync(index)) {
    const map = (JSON.parse(await readFile(index, 'utf8')) as { weight_map?: Record<string, string> }).weight_map;
    if (!map || typeof map !== 'object') throw new Error(`${index}: no weight_map object`);
    return [...new Set(Object.values(map))].sort().map((f) => resolve(model, f));
  }
  return [resolve(model, WEIGHTS_FILE)];
}

/**
 * sha256 (first 16 hex digits) of the files' bytes, one after the other. For one file it is
 * the hash of that file, which is what databases written before multi-file models hold.
 */
export async function contentFingerprint(files: string[]): Promise<string> {
  const h = createHash('sha256');
  for (const f of files) for await (const chunk of createReadStream(f, { highWaterMark: 1 << 22 })) h.update(chunk as Buffer);
  return h.digest('hex').slice(0, 16);
}

export async function stampsOf(files: string[]): Promise<FileStamp[]> {
  return Promise.all(
    files.map(async (path) => {
      const st = await stat(path);
      return { path, size: st.size, mtimeMs: st.mtimeMs };
    }),
  );
}

/**
 * Checks that `store` logs this model (or nothing yet) and records it; returns the
 * fingerprint and the weight files. Throws, naming the database and both fingerprints, for another model.
 */
export async function claimBaseModel(store: Store, model: string): Promise<{ fingerprint: string; files: string[] }> {
  const files = await weightFilesOf(model);
  const stamps = JSON.stringify(await stampsOf(files));
  const known = await store.getMeta(FINGERPRINT_KEY);
  const fingerprint = known && (await store.getMeta(STAMPS_KEY)) === stamps ? known : await contentFingerprint(files);
  // The first front-end to start claims the database; one that starts beside it with
  // another model finds the claim standing (set only if absent) and is refused.
  const claimed = await store.setMeta(FINGERPRINT_KEY, fingerprint, { onlyIfAbsent: true });
  if (claimed !== fingerprint)
    throw new Error(
      `${store.location} logs a different base model (weights ${claimed}, this one ${fingerprint}, from ${files.join(', ')}); use another --db or the model it was created with`,
    );
  await store.setMeta(STAMPS_KEY, stamps);
  return { fingerprint, files };
}
