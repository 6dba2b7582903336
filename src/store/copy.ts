// `ttrl copy --from SRC --to DST`: one store's whole content into another, empty one, of
// either kind: the way up from one process on a SQLite file to several front-ends on one
// PostgreSQL database (and back down). It carries
//   - the meta rows: the base model's fingerprint and file stamps, the database id, the
//     guard's probe questions and completion anchors (loop/guard-sets.ts keeps both in meta),
//     and whatever else is kept there, but for the fleet's experience cursor (a position in
//     the source's own log: see META_NOT_COPIED);
//   - the version lineage, every row as it is (number, parent, status, times, stats, reason,
//     sha256), and the version weight files, byte for byte, into the destination's versions
//     folder (the rows' weights_path rewritten to point there);
//   - the log: every question with its samples, in the source's id order (the destination
//     gives new ids; each question's samples follow it), token ids and log-probs where kept,
//     where its samples were drawn (sampled_on, sampled_model) where an upstream drew them,
//     and its label (the known answer a labelled replay sent with it) where it had one;
//   - the events, in order, their times kept; then one `copied` event saying where from.
//
// The database id. Every version file carries the id of the database it was written for
// and its sha256 is recorded in its row; a load checks both (loop/version-files.ts). The
// destination keeps the source's id (its meta is overwritten with the source's, an id it
// may have made already included), so the files are copied unchanged and their recorded
// hashes still hold. The alternative, a new id written into every file, would change every
// file's bytes and hash: no longer a copy of what was verified. Two databases with one id
// are safe here because they hold one lineage: the copy continues the source, which should
// stop serving once copied (a server still writing to the source while it is copied would
// leave the copy behind it; stop it first).
//
// A destination that already holds questions or versions is refused, naming it. The copy
// is not one transaction (the log may be large): should it fail half-way, the destination
// holds part of it and the error says so; empty it (a new file, or DROP DATABASE) and copy
// again.
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { writeFileAtomic } from '../util/atomic-write.ts';
import { openStore, sqlitePath, storeKind } from './open.ts';
import { DATABASE_ID_KEY, type LoggedQuestion, type Store, type VersionRow } from './store.ts';

export interface CopyOptions {
  /** The destination's folder of version weight files (serve's --versions-dir for it). */
  versionsDir: string;
  /** Questions per transaction on the destination. */
  batch?: number;
  log?: (line: string) => void;
}

export interface CopiedFile {
  version: number;
  from: string;
  to: string;
  bytes: number;
  sha256: string;
}

export interface CopyResult {
  from: string;
  to: string;
  /** The database id the destination now has (the source's). */
  databaseId: string | null;
  questions: number;
  samples: number;
  versions: number;
  meta: number;
  events: number;
  versionsDir: string;
  files: CopiedFile[];
  /**
   * Version files that could not be read, or whose bytes are not those recorded: their rows
   * are copied as they are (a missing file keeps its old path), and a server serving the
   * copy marks such a version corrupt when it loads it, as it would have on the source.
   */
  problems: { version: number; path: string; problem: string }[];
}

/**
 * Meta rows that are positions in this very store, meaningless in another: the fleet leader's
 * experience cursor (loop/fleet.ts's CURSOR_KEY: a PostgreSQL transaction id and question id).
 * Carried over, it would make the copy's leader skip new answers or train on old ones again;
 * left out, the copy's first leader starts at the end of the copied log.
 */
export const META_NOT_COPIED: readonly string[] = ['fleet_experience_cursor'];

/** The hex sha256 of a file's bytes, read as a stream. */
async function hashFile(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 22 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Copies a file as a stream (temp file, fsync, rename: see util/atomic-write.ts); the sha256 and size of the bytes written. */
async function copyFileAtomic(from: string, to: string): Promise<{ sha256: string; bytes: number }> {
  const h = createHash('sha256');
  let bytes = 0;
  await writeFileAtomic(to, async (handle) => {
    for await (const chunk of createReadStream(from, { highWaterMark: 1 << 22 })) {
      const b = chunk as Buffer;
      h.update(b);
      bytes += b.length;
      for (let at = 0; at < b.length;) at += (await handle.write(b, at)).bytesWritten;
    }
  });
  return { sha256: h.digest('hex'), bytes };
}

/** Throws, naming the destination, unless it holds no questions and no versions. */
export async function checkEmpty(to: Store): Promise<void> {
  const c = await to.counts();
  const versions = (await to.versions()).length;
  if (c.answered + c.failed || versions)
    throw new Error(
      `${to.location} is not empty (${c.answered + c.failed} questions, ${versions} model versions): ttrl copy only fills an empty store; give another --to, or empty this one`,
    );
}

export async function copyStore(from: Store, to: Store, o: CopyOptions): Promise<CopyResult> {
  const log = o.log ?? (() => {});
  const batchSize = o.batch ?? 500;
  if (from.location === to.location) throw new Error(`--from and --to are the same store (${from.location})`);
  await checkEmpty(to);
  const versionsDir = resolve(o.versionsDir);

  // The version files first: nothing is written to the destination before every file is in
  // place (or known unreadable), and a file of another copy already in the way is refused.
  // Files are hashed and copied as streams: full weights of a large model do not fit in memory.
  const rows = await from.versions();
  const files: CopiedFile[] = [];
  const problems: CopyResult['problems'] = [];
  const planned: { row: VersionRow; target: string; sha256: string | null }[] = [];
  const targets = new Set<string>();
  for (const row of rows) {
    // Version 0's path is the base model itself (a file or a directory of the operator's), not a file of ours.
    if (row.version === 0 || !row.weights_path) {
      planned.push({ row, target: '', sha256: null });
      continue;
    }
    const target = join(versionsDir, basename(row.weights_path));
    if (targets.has(target))
      throw new Error(`versions ${row.version} and another both have a file named ${basename(row.weights_path)}; cannot put both in ${versionsDir}`);
    targets.add(target);
    let sha256: string | null = null;
    try {
      sha256 = await hashFile(row.weights_path);
    } catch (e) {
      problems.push({ version: row.version, path: row.weights_path, problem: `cannot be read: ${(e as Error).message}` });
    }
    if (sha256 && row.weights_sha256 && sha256 !== row.weights_sha256)
      problems.push({
        version: row.version,
        path: row.weights_path,
        problem: `its sha256 is ${sha256}, not the ${row.weights_sha256} recorded: copied as it is`,
      });
    if (sha256 && resolve(row.weights_path) !== target) {
      const existing = await hashFile(target).catch(() => null);
      if (existing && existing !== sha256)
        throw new Error(`${target} exists with other contents than version ${row.version}'s file ${row.weights_path}; give another --versions-dir`);
    }
    planned.push({ row, target, sha256 });
  }
  await mkdir(versionsDir, { recursive: true });
  for (const p of planned) {
    if (!p.sha256) continue;
    const path = p.row.weights_path!;
    let bytes = (await stat(path)).size;
    if (resolve(path) !== p.target) {
      const copied = await copyFileAtomic(path, p.target);
      if (copied.sha256 !== p.sha256) throw new Error(`${path} changed while it was copied (stop the server writing to --from first)`);
      bytes = copied.bytes;
    }
    files.push({ version: p.row.version, from: path, to: p.target, bytes, sha256: p.sha256 });
  }
  log(`copied ${files.length} version file(s) to ${versionsDir}`);

  try {
    // Meta: every row, the database id included (see above: the files name it).
    const meta = await from.exportMeta();
    for (const key of META_NOT_COPIED) meta.delete(key);
    for (const [key, value] of meta) await to.setMeta(key, value);

    // The lineage, rows as they are; a copied file's row points at its copy.
    await to.importVersions(planned.map((p) => (p.sha256 ? { ...p.row, weights_path: p.target } : p.row)));
    log(`copied ${rows.length} model version(s)`);

    // The log, in batches, in the source's order.
    let questions = 0;
    let samples = 0;
    let batch: LoggedQuestion[] = [];
    const flush = async () => {
      if (!batch.length) return;
      await to.importLog(batch);
      questions += batch.length;
      samples += batch.reduce((n, q) => n + q.samples.length, 0);
      batch = [];
    };
    for await (const q of from.exportLog()) {
      batch.push(q);
      if (batch.length >= batchSize) {
        await flush();
        if (questions % (batchSize * 20) === 0) log(`copied ${questions} questions`);
      }
    }
    await flush();
    log(`copied ${questions} questions, ${samples} samples`);

    let events = 0;
    let pending: Awaited<ReturnType<Store['events']>> = [];
    for await (const e of from.exportEvents()) {
      pending.push(e);
      if (pending.length >= 1000) {
        await to.importEvents(pending);
        events += pending.length;
        pending = [];
      }
    }
    await to.importEvents(pending);
    events += pending.length;
    await to.event('copied', { from: from.location, questions, samples, versions: rows.length, events, versionsDir });

    return {
      from: from.location,
      to: to.location,
      databaseId: meta.get(DATABASE_ID_KEY) ?? null,
      questions,
      samples,
      versions: rows.length,
      meta: meta.size,
      events,
      versionsDir,
      files,
      problems,
    };
  } catch (e) {
    throw new Error(
      `copying to ${to.location} failed: ${(e as Error).message}. It now holds part of the copy: empty it (a new file, or DROP DATABASE and CREATE DATABASE) before copying again`,
      { cause: e },
    );
  }
}

/** The destination's versions folder when none is given: serve's default for it (DST.versions beside a SQLite file); a PostgreSQL one has none. */
export function defaultVersionsDir(to: string): string {
  if (storeKind(to) === 'sqlite') return `${resolve(sqlitePath(to))}.versions`;
  throw new Error(
    '--versions-dir DIR is needed with a postgres:// --to: the folder every front-end reads the version files from (serve the copy with the same --versions-dir)',
  );
}

/** `ttrl copy`: opens both stores (a SQLite source must exist: opening would make an empty one), copies, closes them. */
export async function runCopy(o: { from: string; to: string; versionsDir?: string; log?: (line: string) => void }): Promise<CopyResult> {
  const versionsDir = o.versionsDir ?? defaultVersionsDir(o.to);
  if (storeKind(o.from) === 'sqlite' && !existsSync(sqlitePath(o.from))) throw new Error(`--from ${o.from}: no such file`);
  const from = await openStore(o.from);
  try {
    const to = await openStore(o.to);
    try {
      return await copyStore(from, to, { versionsDir, log: o.log });
    } finally {
      await to.close();
    }
  } finally {
    await from.close();
  }
}
