// JSONL question files: one {"question": "...", "answer"?: "..."} per line. Blank lines are
// skipped; anything else that is not such an object is an error naming its line.
import { readFile } from 'node:fs/promises';

export interface QuestionRecord {
  question: string;
  answer?: string;
}

export function parseQuestions(text: string, source = 'questions'): QuestionRecord[] {
  const out: QuestionRecord[] = [];
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    const where = `${source}:${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new Error(`${where}: not JSON (${(e as Error).message})`);
    }
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error(`${where}: expected an object`);
    const { question, answer } = v as Record<string, unknown>;
    if (typeof question !== 'string' || !question) throw new Error(`${where}: "question" must be a non-empty string`);
    if (answer !== undefined && answer !== null && typeof answer !== 'string' && typeof answer !== 'number')
      throw new Error(`${where}: "answer" must be a string or a number`);
    out.push(answer === undefined || answer === null ? { question } : { question, answer: String(answer) });
  });
  return out;
}

export async function readQuestions(path: string): Promise<QuestionRecord[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  const qs = parseQuestions(text, path);
  if (!qs.length) throw new Error(`${path}: no questions`);
  return qs;
}
