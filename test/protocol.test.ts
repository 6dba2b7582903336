// The wire protocol's schemas (src/protocol/) against what is documented and what is sent:
// the examples of docs/protocol.md decode with them, a field the protocol does not name fails
// the server's (strict) schemas, and every kind of message a real server sends (hello,
// answer, vote, error, pong, model over the WebSocket; answers and errors over HTTP, refused
// upgrades and requests refused before routing included) decodes with the server-message
// schema. An ask's label (its known answer) is accepted where the protocol names it, logged,
// refused where malformed, and kept from what adaptation reads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';
import { ERROR_CODES } from '../src/protocol/errors.ts';
import type { Experience } from '../src/loop/answerer.ts';
import { chatBody, completionBody } from '../src/protocol/openai.ts';
import {
  MAX_LABEL_CHARS,
  answerMessage,
  clientMessages,
  errorMessage,
  helloMessage,
  httpAskBody,
  modelMessage,
  pongMessage,
  serverMessage,
  serverMessages,
  tolerantServerMessages,
  voteMessage,
  type ServerMessage,
} from '../src/protocol/messages.ts';
import { collect } from './helpers/collect.ts';
import { rawExchange } from './helpers/raw-http.ts';
import { startTestServer } from './helpers/server.ts';

/** A server message as text, decoded strictly; fails naming the message and what is wrong with it. */
function decoded(text: string): ServerMessage {
  const r = serverMessage.safeParse(JSON.parse(text));
  assert.ok(r.success, `the server sent ${text}, which the protocol's schema refuses: ${r.error?.message}`);
  return r.data;
}

/** The code of an error message, else undefined. */
const codeOf = (m: ServerMessage) => (m.type === 'error' ? m.code : undefined);

/** The WebSocket examples of docs/protocol.md: the lines of the JSON block after "Client messages:", and after "Server messages:". */
function documentedExamples(): { client: string[]; server: string[] } {
  const doc = readFileSync(new URL('../docs/protocol.md', import.meta.url), 'utf8');
  const start = doc.indexOf('\n## WebSocket\n');
  assert.ok(start >= 0, 'docs/protocol.md has a WebSocket section');
  const section = doc.slice(start, doc.indexOf('\n## ', start + 1));
  const block = (after: string) => {
    assert.ok(section.includes(after), `docs/protocol.md's WebSocket section has "${after}"`);
    const from = section.indexOf('```json\n', section.indexOf(after)) + '```json\n'.length;
    return section.slice(from, section.indexOf('```', from)).trim().split('\n');
  };
  return { client: block('Client messages:'), server: block('Server messages:') };
}

test("docs/protocol.md's examples are messages the schemas accept, one of every server message", () => {
  const { client, server } = documentedExamples();
  for (const line of client) {
    const m = JSON.parse(line) as { type: string };
    const schema = m.type === 'ask' ? clientMessages.ask : clientMessages.ping;
    assert.ok(schema.safeParse(m).success, `the documented client message ${line}`);
  }
  const types = server.map((line) => decoded(line).type);
  assert.deepEqual(new Set(types), new Set(Object.keys(serverMessages)), 'docs/protocol.md shows every server message the protocol has');
});

test('the server schemas are strict; the client reads them tolerantly, every known field still checked', () => {
  const answer = { type: 'answer', id: 'q1', answer: '3', votes: { '3': 2 }, confidence: 1, model_version: 0, prompt_tokens: 4, latency_ms: 5 };
  assert.ok(serverMessage.safeParse(answer).success);
  const extra = { ...answer, colour: 'red' };
  assert.equal(serverMessage.safeParse(extra).success, false, 'a field the protocol does not name');
  assert.deepEqual(tolerantServerMessages.answer.parse(extra), answer, 'the client drops it');
  assert.equal(tolerantServerMessages.answer.safeParse({ ...answer, confidence: '1' }).success, false, 'a known field of the wrong type');
  assert.equal(serverMessage.safeParse({ type: 'error', code: 'no_such_code', message: 'm' }).success, false, 'an error code not in ERROR_CODES');
  assert.equal(
    serverMessage.safeParse({ type: 'hello', protocol: 2, connection: 'c1', model_version: 0, limits: {} }).success,
    false,
    'another protocol version',
  );
  assert.equal(serverMessage.safeParse({ type: 'whisper' }).success, false, 'an unknown type');
  // The POST /v1/ask body: an ask without type, id optional.
  assert.ok(httpAskBody.safeParse({ question: '1+2=' }).success);
  assert.equal(httpAskBody.safeParse({ type: 'ask', question: '1+2=' }).success, false);
});

test('the constructors make messages the strict schema accepts, fields in wire order', () => {
  const limits = {
    max_message_bytes: 8192,
    max_prompt_tokens: 24,
    max_new_tokens: 72,
    context_length: 96,
    max_votes: 64,
    default_votes: 16,
    max_in_flight: 64,
  };
  const a = { answer: '-3', votes: { '-3': 3, '': 1 }, confidence: 0.75, model_version: 4, prompt_tokens: 11, latency_ms: 83 };
  const made: ServerMessage[] = [
    helloMessage('c1', { model_version: 4, limits }),
    answerMessage(a, 'q1'),
    answerMessage(a),
    voteMessage('q1', 0, { answer: null, text: 'x', tokens: 3 }),
    errorMessage('overloaded', 'retry later', 'q1'),
    errorMessage('bad_json', 'not JSON'),
    pongMessage('p1'),
    pongMessage(),
    modelMessage(5),
  ];
  for (const m of made) assert.deepEqual(decoded(JSON.stringify(m)), m);
  assert.equal(
    JSON.stringify(answerMessage(a, 'q1')),
    '{"type":"answer","id":"q1","answer":"-3","votes":{"-3":3,"":1},"confidence":0.75,"model_version":4,"prompt_tokens":11,"latency_ms":83}',
  );
  assert.equal(JSON.stringify(errorMessage('overloaded', 'm', 'q1')), '{"type":"error","id":"q1","code":"overloaded","message":"m"}');
  assert.equal(JSON.stringify(helloMessage('c1', { model_version: 4, limits })).slice(0, 52), '{"type":"hello","protocol":1,"connection":"c1","mode');
});

/** A WebSocket that decodes every frame it gets, strictly, as it arrives. */
class Socket {
  private received: ServerMessage[] = [];
  private waiters: { match: (m: ServerMessage) => boolean; resolve: (m: ServerMessage) => void }[] = [];
  readonly failures: string[] = [];
  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      let m: ServerMessage;
      try {
        m = decoded(String(data));
      } catch (e) {
        this.failures.push((e as Error).message);
        return;
      }
      const w = this.waiters.find((x) => x.match(m));
      if (!w) return void this.received.push(m);
      this.waiters.splice(this.waiters.indexOf(w), 1);
      w.resolve(m);
    });
  }
  static async open(url: string): Promise<Socket> {
    const s = new Socket(new WebSocket(url));
    await new Promise((resolve, reject) => (s.ws.once('open', resolve), s.ws.once('error', reject)));
    return s;
  }
  /** The next message that matches (one already received, else the next to come). */
  next<T extends ServerMessage['type']>(type: T, id?: string): Promise<Extract<ServerMessage, { type: T }>> {
    const match = (m: ServerMessage): m is Extract<ServerMessage, { type: T }> => m.type === type && (id === undefined || ('id' in m && m.id === id));
    const seen = this.received.find(match);
    if (seen) {
      this.received.splice(this.received.indexOf(seen), 1);
      return Promise.resolve(seen);
    }
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no ${type} message${id ? ` for ${id}` : ''} within 30 s`)), 30_000);
      this.waiters.push({ match, resolve: (m) => (clearTimeout(t), resolve(m as Extract<ServerMessage, { type: T }>)) });
    });
  }
  send(m: unknown): void {
    this.ws.send(typeof m === 'string' ? m : JSON.stringify(m));
  }
}

test('every message a real server sends decodes with the server-message schema', async () => {
  const token = 'protocol-test-admin-token';
  const s = await startTestServer({ adminToken: token }, { prefix: 'ttrl-protocol-' });
  const socket = await Socket.open(s.wsUrl);
  try {
    // WebSocket: hello first.
    const hello = await socket.next('hello');
    assert.equal(hello.protocol, 1);
    assert.equal(hello.limits.max_in_flight, 64);

    // pong, with the ping's id and without one.
    socket.send({ type: 'ping', id: 'p1' });
    assert.deepEqual(await socket.next('pong', 'p1'), { type: 'pong', id: 'p1' });
    socket.send({ type: 'ping' });
    assert.deepEqual(await socket.next('pong'), { type: 'pong' });

    // answer; votes before the answer when streamed.
    socket.send({ type: 'ask', id: 'q1', question: '1+2=', votes: 2 });
    const a = await socket.next('answer', 'q1');
    assert.equal(
      Object.values(a.votes).reduce((x, y) => x + y, 0),
      2,
    );
    socket.send({ type: 'ask', id: 'q2', question: '3+4=', votes: 3, stream: true });
    const votes = [await socket.next('vote', 'q2'), await socket.next('vote', 'q2'), await socket.next('vote', 'q2')];
    assert.deepEqual(votes.map((v) => v.index).sort(), [0, 1, 2]);
    await socket.next('answer', 'q2');

    // errors: with the message's id when it had one, without when it had none.
    socket.send('{not json');
    assert.equal((await socket.next('error')).code, 'bad_json');
    socket.send({ type: 'shout', id: 'e1' });
    assert.equal((await socket.next('error', 'e1')).code, 'unknown_type');
    socket.send({ type: 'ask', id: 'e2', question: '1+2=', votes: 0 });
    assert.equal((await socket.next('error', 'e2')).code, 'bad_votes');
    socket.send({ type: 'ask', id: 'e3', question: '1+2=', colour: 'red' });
    assert.equal((await socket.next('error', 'e3')).code, 'unknown_field');

    // model: an admin activation is broadcast to every connection.
    const activated = await fetch(`${s.url}/admin/versions/0/activate`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
    assert.equal(activated.status, 200);
    assert.deepEqual(await socket.next('model'), { type: 'model', model_version: 0 });

    // HTTP: POST /v1/ask's answers and errors, and the errors of any route.
    const http = async (path: string, init: RequestInit, status: number): Promise<ServerMessage> => {
      const r = await fetch(`${s.url}${path}`, init);
      assert.equal(r.status, status, `${init.method ?? 'GET'} ${path}`);
      return decoded(await r.text());
    };
    const post = (body: string) => ({ method: 'POST', headers: { 'content-type': 'application/json' }, body });
    const withId = await http('/v1/ask', post('{"id":"h1","question":"1+2=","votes":2}'), 200);
    assert.equal(withId.type === 'answer' && withId.id, 'h1');
    const withoutId = await http('/v1/ask', post('{"question":"1+2=","votes":2}'), 200);
    assert.ok(withoutId.type === 'answer' && !('id' in withoutId), 'an HTTP answer has an id only when the request gave one');
    assert.deepEqual(await http('/v1/ask', post('{"id":"h2","question":"1+2=","votes":0}'), 400), {
      type: 'error',
      id: 'h2',
      code: 'bad_votes',
      message: 'votes must be between 1 and 64, got 0',
    });
    assert.equal(codeOf(await http('/v1/ask', post('{"question":"1+2=","colour":"red"}'), 400)), 'unknown_field');
    assert.equal(codeOf(await http('/v1/ask', post('{not json'), 400)), 'bad_json');
    assert.equal(codeOf(await http('/v1/nothing', { method: 'GET' }, 404)), 'not_found');
    assert.equal(codeOf(await http('/admin/status', { method: 'GET' }, 401)), 'unauthorized');

    // Replies written before any route: a refused WebSocket upgrade, a request-target that does not parse.
    const upgrade = await rawExchange(
      s.port,
      'GET /v1/elsewhere HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    );
    assert.equal(upgrade.status, 404);
    assert.equal(codeOf(decoded(upgrade.body)), 'not_found');
    const target = await rawExchange(s.port, 'GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal(target.status, 400);
    assert.equal(codeOf(decoded(target.body)), 'invalid_message');

    assert.deepEqual(socket.failures, [], 'every WebSocket message decoded');
  } finally {
    socket.ws.close();
    await s.close();
  }
});

test('every error code is one the error message schema accepts', () => {
  for (const code of Object.keys(ERROR_CODES)) assert.ok(serverMessage.safeParse({ type: 'error', code, message: 'm' }).success, code);
});

test('a label rides on an ask (WebSocket and POST /v1/ask) into the log and not into experiences; malformed, it is invalid_message; the OpenAI routes refuse it', async () => {
  // The schemas: a string of 1 to MAX_LABEL_CHARS characters, optional; nothing else changes.
  const ask = { type: 'ask', id: 'q1', question: '1+2=' };
  assert.ok(clientMessages.ask.safeParse({ ...ask, label: '3' }).success);
  assert.ok(clientMessages.ask.safeParse({ ...ask, label: 'x'.repeat(MAX_LABEL_CHARS) }).success);
  for (const label of [3, '', 'x'.repeat(MAX_LABEL_CHARS + 1), null, ['3']]) {
    assert.equal(clientMessages.ask.safeParse({ ...ask, label }).success, false, JSON.stringify(label));
    assert.equal(httpAskBody.safeParse({ question: '1+2=', label }).success, false, JSON.stringify(label));
  }
  assert.ok(httpAskBody.safeParse({ question: '1+2=', label: '3' }).success);
  assert.equal(completionBody.safeParse({ model: 'm', prompt: '1+2=', label: '3' }).success, false, 'not an OpenAI field');
  assert.equal(chatBody.safeParse({ model: 'm', messages: [{ role: 'user', content: '1+2=' }], label: '3' }).success, false, 'not an OpenAI field');

  const s = await startTestServer({}, { prefix: 'ttrl-protocol-' });
  // What adaptation subscribes to: every experience the answerer hands on.
  const experiences: Experience[] = [];
  const sub = s.pipeline.answerer.experiences$.subscribe((e) => experiences.push(e));
  const socket = await Socket.open(s.wsUrl);
  try {
    await socket.next('hello');
    // Accepted (the label is not normalised on the way: '+3.00' is logged as sent).
    socket.send({ ...ask, id: 'l1', label: '+3.00', votes: 2 });
    await socket.next('answer', 'l1');
    socket.send({ ...ask, id: 'l2', votes: 2 });
    await socket.next('answer', 'l2');
    // Malformed: invalid_message naming the field, with the question's id; the connection goes on.
    for (const [id, label] of [
      ['b1', 3],
      ['b2', ''],
      ['b3', 'x'.repeat(MAX_LABEL_CHARS + 1)],
    ] as const) {
      socket.send({ ...ask, id, label });
      const e = await socket.next('error', id);
      assert.equal(e.code, 'invalid_message', JSON.stringify(e));
      assert.match(e.message, /^label: /);
    }
    // Unknown fields are still refused.
    socket.send({ ...ask, id: 'b4', labels: '3' });
    assert.equal((await socket.next('error', 'b4')).code, 'unknown_field');

    const post = async (path: string, body: unknown, status: number) => {
      const r = await fetch(`${s.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      assert.equal(r.status, status, `${path} ${JSON.stringify(body).slice(0, 80)}`);
      return decoded(await r.text());
    };
    assert.equal((await post('/v1/ask', { question: '2+2=', votes: 2, label: '4' }, 200)).type, 'answer');
    const bad = await post('/v1/ask', { id: 'h1', question: '2+2=', label: 4 }, 400);
    assert.deepEqual(bad.type === 'error' && [bad.id, bad.code], ['h1', 'invalid_message']);
    assert.equal(codeOf(await post('/v1/ask', { question: '2+2=', label: 'x'.repeat(MAX_LABEL_CHARS + 1) }, 400)), 'invalid_message');
    // The OpenAI routes answer in OpenAI's error shape.
    const openAiCode = async (path: string, body: unknown) => {
      const r = await fetch(`${s.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      assert.equal(r.status, 400, path);
      return ((await r.json()) as { error: { code: string } }).error.code;
    };
    assert.equal(await openAiCode('/v1/completions', { model: 'arith-tiny', prompt: '1+2=', label: '3' }), 'unknown_field');
    assert.equal(await openAiCode('/v1/chat/completions', { model: 'arith-tiny', messages: [{ role: 'user', content: '1+2=' }], label: '3' }), 'unknown_field');

    // The log keeps each answered question's label as sent (null: none); refused asks are not logged.
    assert.deepEqual(
      (await collect(s.store.questions())).map((q) => [q.client_id, q.question, q.label]),
      [
        ['l1', '1+2=', '+3.00'],
        ['l2', '1+2=', null],
        [null, '2+2=', '4'],
      ],
    );
    // Adaptation's experiences: the three answered questions, none with its label.
    assert.equal(experiences.length, 3);
    for (const e of experiences) {
      assert.ok(!('label' in e), 'an experience has a label field');
      assert.ok(!JSON.stringify(e).includes('+3.00'), "an experience carries the label's text");
    }
    // Counted on /metrics, right or wrong.
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    const counted = [...metrics.matchAll(/^ttrl_labelled_answers_total\{correct="(?:true|false)"\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
    assert.equal(
      counted,
      2,
      metrics
        .split('\n')
        .filter((l) => l.includes('labelled'))
        .join('\n'),
    );
    assert.deepEqual(socket.failures, [], 'every WebSocket message decoded');
  } finally {
    sub.unsubscribe();
    socket.ws.close();
    await s.close();
  }
});
