// Writes a file so that a crash leaves either the old file or the new one, never a torn
// one: temp file in the same directory, fsync, rename, then fsync the directory.
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** `data`: the whole content, or a function that writes it through the temp file's handle. */
export async function writeFileAtomic(path: string, data: Uint8Array | string | ((handle: FileHandle) => Promise<void>)): Promise<void> {
  const dir = dirname(path);
  const temp = join(dir, `.${basename(path)}.${process.pid}.${Date.now()}.${Math.random().toString(36).slice(2)}.tmp`);
  try {
    const handle = await open(temp, 'wx');
    try {
      if (typeof data === 'function') await data(handle);
      else await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw err;
  }
  await syncDirectory(dir);
}

// Persists the rename itself. Not every platform can fsync a directory; that only weakens
// durability, so it is not an error.
async function syncDirectory(dir: string): Promise<void> {
  try {
    const handle = await open(dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    // best effort
  }
}
