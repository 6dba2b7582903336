// A candidate's life as an update lives it: its number reserved when the update begins
// (Versions.reserve), then promoted or rejected under that number.
import type { Promotion, Rejection, Versions } from '../../src/loop/versions.ts';

export async function promote(versions: Versions, c: Omit<Promotion, 'version'>): Promise<number> {
  return versions.promote({ ...c, version: await versions.reserve(c.parent, c.stats) });
}

export async function rejectCandidate(versions: Versions, c: Omit<Rejection, 'version'>): Promise<number> {
  return versions.reject({ ...c, version: await versions.reserve(c.parent, c.stats) });
}
