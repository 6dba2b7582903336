// What a replay replays: questions in arrival order with their timing, from a server's
// SQLite log or from a JSONL question file ({"question", "answer"?, "at"?: ms from start}).
// A log's true answers are the labels its questions were asked with (a labelled replay's).
import { openSync, readSync, closeSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { openStore, storeKind } from '../store/open.ts';
import type { QuestionRow } from '../store/store.ts';
import { parseQuestions } from '../tasks/question-file.ts';

export interface ReplayItem {
  question: string;
  /** True answer, when the source carries one (a question file's answer, a logged question's label). */
  answer?: string;
  /** Milliseconds after the first question of the stream. */
  at: number;
  /** Absolute arrival time (epoch ms), when the source is a log. */
  receivedAt?: number;
  /** What was served originally, when the source is a log. */
  served?: { answer: string | null; version: number | null };
  /** Votes asked for originally. */
  votes?: number;
}

/** ISO date-time or epoch milliseconds. */
export function parseTime(t: string, flag: string): number {
  const n = Number(t);
  const ms = Number.isFinite(n) && /^\d+$/.test(t.trim()) ? n : Date.parse(t);
  if (!Number.isFinite(ms))
    throw new Error(`${flag}: not a time: ${JSON.stringify(t)} (use an ISO date-time such as 2026-11-25T12:00:00Z, or epoch milliseconds)`);
  return ms;
}

function isSqlite(path: string): boolean {
  const fd = openSync(path, 'r');
  try {
    const head = Buffer.alloc(16);
    readSync(fd, head, 0, 16, 0);
    return head.toString('latin1') === 'SQLite format 3\0';
  } finally {
    closeSync(fd);
  }
}

export async function readSource(path: string, o: { since?: number; until?: number } = {}): Promise<{ kind: 'db' | 'jsonl'; items: ReplayItem[] }> {
  // A server's log: a SQLite file, or a fleet's PostgreSQL database.
  let database: boolean;
  try {
    database = storeKind(path) === 'postgres' || isSqlite(path);
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  if (database) {
    const store = await openStore(path);
    try {
      const rows: QuestionRow[] = [];
      for await (const r of store.questions({ since: o.since, until: o.until })) rows.push(r);
      const t0 = rows[0]?.received_at ?? 0;
      return {
        kind: 'db',
        items: rows.map((r) => ({
          question: r.question,
          ...(r.label === null ? {} : { answer: r.label }),
          at: r.received_at - t0,
          receivedAt: r.received_at,
          served: { answer: r.answer, version: r.model_version },
          votes: r.votes_requested,
        })),
      };
    } finally {
      await store.close();
    }
  }
  const text = await readFile(path, 'utf8');
  const items: ReplayItem[] = [];
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    const q = parseQuestions(line, `${path}:${i + 1}`)[0]!;
    const at = (JSON.parse(line) as { at?: unknown }).at;
    if (at !== undefined && (typeof at !== 'number' || !Number.isFinite(at) || at < 0)) throw new Error(`${path}:${i + 1}: "at" must be milliseconds >= 0`);
    items.push({ ...q, at: (at as number | undefined) ?? 0 });
  });
  const inRange = items.filter((x) => x.at >= (o.since ?? -Infinity) && x.at < (o.until ?? Infinity));
  inRange.sort((a, b) => a.at - b.at); // stable: file order among equal times
  return { kind: 'jsonl', items: inRange };
}
