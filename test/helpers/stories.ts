// Serving stories260K in tests: a WebSocket client that asks with streamed votes, and the
// model with an end token at its first period, so a continuation is one sentence to vote on.
import { copyFile, mkdir, readdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import WebSocket from 'ws';
import { loadModel } from '../../src/formats/checkpoint.ts';
import { scratch } from './scratch.ts';

export const STORIES = fileURLToPath(new URL('../fixtures/stories260K/hf/', import.meta.url));

export type Message = Record<string, unknown>;

/** Opens a WebSocket, returns its hello and a function that asks one question (with streamed votes). */
export async function connect(
  url: string,
): Promise<{ hello: Message; ask: (id: string, question: string) => Promise<{ reply: Message; votes: Message[] }>; close: () => void }> {
  const ws = new WebSocket(url);
  const inbox: Message[] = [];
  let wake: (() => void) | null = null;
  ws.on('message', (d) => {
    inbox.push(JSON.parse(String(d)));
    wake?.();
  });
  await new Promise((res, rej) => (ws.once('open', res), ws.once('error', rej)));
  const take = async (match: (m: Message) => boolean): Promise<Message> => {
    for (;;) {
      const i = inbox.findIndex(match);
      if (i >= 0) return inbox.splice(i, 1)[0]!;
      await new Promise<void>((r) => (wake = r));
    }
  };
  const hello = await take((m) => m.type === 'hello');
  const ask = async (id: string, question: string) => {
    ws.send(JSON.stringify({ type: 'ask', id, question, stream: true }));
    const reply = await take((m) => m.id === id && (m.type === 'answer' || m.type === 'error'));
    const votes: Message[] = [];
    for (let i = inbox.findIndex((m) => m.id === id && m.type === 'vote'); i >= 0; i = inbox.findIndex((m) => m.id === id && m.type === 'vote'))
      votes.push(inbox.splice(i, 1)[0]!);
    return { reply, votes: votes.sort((a, b) => (a.index as number) - (b.index as number)) };
  };
  return { hello, ask, close: () => ws.close() };
}

/**
 * stories260K whose sentences end at their first period: generation_config.json lists it
 * beside </s>, as a deployment does to give a model an end token of its own.
 */
export async function storiesOneSentence(): Promise<string> {
  const dir = join(await scratch('ttrl-stories-'), 'stories');
  await mkdir(dir);
  for (const f of await readdir(STORIES)) await copyFile(join(STORIES, f), join(dir, f));
  const period = (await loadModel(STORIES)).tokenizer.encode('Lily.').at(-1)!;
  await writeFile(join(dir, 'generation_config.json'), JSON.stringify({ bos_token_id: 1, eos_token_id: [2, period], max_length: 512 }));
  return dir;
}

/** The first word of a continuation: the vote of the stories tests. */
export const FIRST_WORD = '^\\W*([A-Za-z]+)';
export const STORY_PROMPTS = [
  'One day, Tom saw a',
  'Tim and Sue went to the',
  'The little girl was very',
  'Once upon a time, there was a',
  'Lily wanted to',
  'The dog ran to the',
  'Mom gave Ben a',
  'The sun was',
  'Sam found a big',
  'The bird sang a',
];

/**
 * LoRA adaptation on stories260K in tests: votes on the first word, updates only when asked
 * (updateEvery out of reach), every question trained on (no gate), no probe or anchors (a story
 * has no right answer to check), rank 4 at a learning rate that moves it in one update.
 */
export const STORIES_LORA = {
  votes: 8,
  extractor: `regex:${FIRST_WORD}`,
  maxNewTokens: 48,
  updateEvery: 1000,
  loraRank: 4,
  gate: 0,
  probeQuestions: 0,
  anchors: 0,
  lr: 3e-3,
};
