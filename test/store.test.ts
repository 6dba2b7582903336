// The experience store and its migrations, on real SQLite files; settings validation.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { loadMigrations, migrate } from '../src/store/migrate.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { PROJECT_ROOT, resolveSettings, settingsTable } from '../src/config/settings.ts';
import { parseClientMessage } from '../src/server/client-messages.ts';
import type { ProtocolError } from '../src/protocol/errors.ts';
import { askLimits } from '../src/loop/admission.ts';
import { ARITHMETIC_CHARS, CharTokenizer } from '../src/tokenizers/tokenizer.ts';
import { ARITHMETIC_TASK } from '../src/tasks/task.ts';
import { judgeAnchors, judgeProbe } from '../src/ttrl/candidate-checks.ts';
import { scratch } from './helpers/scratch.ts';
import { collect } from './helpers/collect.ts';

test('migrations apply once, in order, and a newer schema is refused', async () => {
  const dir = await scratch();
  const file = join(dir, 'm.sqlite');
  const db = new Database(file);
  assert.deepEqual(
    migrate(db),
    loadMigrations().map((m) => m.version),
  );
  assert.deepEqual(migrate(db), []);
  db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, ?, 0)').run('future');
  db.close();
  assert.throws(() => SqliteStore.open(file), /schema is at version 99, newer than this ttrl-server knows/);

  const mdir = join(dir, 'migrations');
  await mkdir(mdir);
  await writeFile(join(mdir, '001_a.sql'), 'CREATE TABLE a (x INTEGER);');
  await writeFile(join(mdir, '003_c.sql'), 'CREATE TABLE c (x INTEGER);');
  assert.throws(() => loadMigrations(mdir), /expected version 2, found 3/);
  await writeFile(join(mdir, '002_b.sql'), 'CREATE TABLE b (x INTEGER); CREATE TABLE b (y INTEGER);');
  const db2 = new Database(':memory:');
  assert.throws(() => migrate(db2, loadMigrations(mdir)), /already exists/);
  // The failed migration left nothing half-done: 001 is recorded, 002 is not, table b is absent.
  assert.deepEqual(db2.prepare('SELECT version FROM schema_migrations').all(), [{ version: 1 }]);
  assert.equal((db2.prepare(`SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'b'`).get() as { n: number }).n, 0);
});

test('answered and failed questions are stored with samples; versions keep one active', async () => {
  const dir = await scratch();
  const store = SqliteStore.open(join(dir, 'sub', 's.sqlite'));
  const v0 = await store.addVersion({ parent: null, status: 'candidate', weightsPath: '/w0' });
  await store.activate(v0);
  const v1 = await store.addVersion({ parent: v0, status: 'candidate', weightsPath: (v) => `/w${v}`, stats: { loss: 1 } });
  assert.equal((await store.version(v1))!.weights_path, '/w1');
  await store.activate(v1);
  assert.deepEqual(
    (await store.versions()).map((v) => v.status),
    ['retired', 'active'],
  );
  await store.reject(await store.addVersion({ parent: v1, status: 'candidate', weightsPath: null }), 'entropy collapsed');
  assert.equal((await store.versions())[2]!.reason, 'entropy collapsed');
  const ids = await store.recordAnswered([
    {
      clientId: 'q1',
      connection: 'c1',
      question: '1+2=',
      votesRequested: 2,
      receivedAt: 1000,
      answeredAt: 1010,
      answer: '3',
      majorityRatio: 0.5,
      votes: { '3': 1, '': 1 },
      modelVersion: v1,
      latencyMs: 10,
      source: null,
      trainable: false,
      promptIds: [],
      samples: [
        { text: '1+2=3#3', answer: '3', tokens: 8, logprobSum: -0.5, stopped: true, tokenIds: [], logprobs: [] },
        { text: '1+2=', answer: null, tokens: 4, logprobSum: -3, stopped: false, tokenIds: [], logprobs: [] },
      ],
    },
  ]);
  await store.recordFailed([{ clientId: 'q2', connection: 'c1', question: '5-1=', votesRequested: 2, receivedAt: 1020, error: 'sampling failed' }]);
  const rows = await collect(store.questions());
  assert.deepEqual(
    rows.map((r) => [r.question, r.status, r.model_version]),
    [
      ['1+2=', 'answered', 1],
      ['5-1=', 'failed', null],
    ],
  );
  assert.deepEqual(rows[0]!.votes, { '3': 1, '': 1 });
  assert.equal((await store.samplesOf(ids[0]!)).length, 2);
  assert.deepEqual(await store.counts(), { answered: 1, failed: 1, samples: 2 });
  assert.deepEqual(
    (await collect(store.questions({ since: 1015 }))).map((r) => r.question),
    ['5-1='],
  );
  await assert.rejects(store.activate(42), /no model version 42/);
  await store.close();
});

test('settings: defaults, environment, flags, and a clear message for bad values', () => {
  const s = resolveSettings({}, {});
  assert.equal(s.votes, 16);
  assert.equal(s.host, '127.0.0.1');
  assert.equal(resolveSettings({}, { TTRL_VOTES: '8', TTRL_ADAPT: 'false' }).votes, 8);
  assert.equal(resolveSettings({}, { TTRL_ADAPT: 'off' }).adapt, false);
  assert.equal(resolveSettings({ votes: '4' }, { TTRL_VOTES: '8' }).votes, 4);
  assert.throws(() => resolveSettings({}, { TTRL_VOTES: 'many' }), /TTRL_VOTES: .*expected number/);
  assert.throws(() => resolveSettings({ port: 70000 }, {}), /--port: Too big/);
  assert.throws(() => resolveSettings({ lr: -1 }, {}), /--lr: Too small/);
  assert.throws(() => resolveSettings({ votes: 100, maxVotes: 50 }, {}), /votes \(100\) cannot exceed maxVotes \(50\)/);
  assert.throws(() => resolveSettings({ adminToken: 'short' }, {}), /--admin-token: must be at least 8 characters/);
  assert.throws(() => resolveSettings({ colour: 'red' } as never, {}), /unknown setting colour/);
  // The character limit is gone; setting it must not pass unnoticed.
  assert.throws(
    () => resolveSettings({}, { TTRL_MAX_QUESTION_LENGTH: '48' }),
    /TTRL_MAX_QUESTION_LENGTH is no longer read: question limits are in tokens now: --max-prompt-tokens/,
  );
  assert.throws(() => resolveSettings({ maxQuestionLength: 48 } as never, {}), /unknown setting maxQuestionLength: question limits are in tokens now/);
  assert.equal(resolveSettings({}, { TTRL_MAX_PROMPT_TOKENS: '20' }).maxPromptTokens, 20);
  assert.throws(() => resolveSettings({ maxPromptTokens: 0 }, {}), /--max-prompt-tokens: Too small/);
});

test('protocol: each malformed message maps to its code', () => {
  // The shipped model's tokenizer and task, in a context of 82 tokens: the task's 72 new
  // tokens leave prompts 10; the operator allows 8.
  const tok = new CharTokenizer(ARITHMETIC_CHARS);
  const limits = { maxMessageBytes: 100, ...askLimits(ARITHMETIC_TASK, tok, 82, { maxPromptTokens: 8, maxVotes: 8, votes: 4 }) };
  const roomOnly = { maxMessageBytes: 100, ...askLimits(ARITHMETIC_TASK, tok, 82, { maxVotes: 8, votes: 4 }) };
  assert.equal(limits.maxPromptTokens, 8);
  assert.equal(roomOnly.maxPromptTokens, 10, 'unset: the room the context leaves');
  assert.equal(askLimits(ARITHMETIC_TASK, tok, 82, { maxPromptTokens: 50, maxVotes: 8, votes: 4 }).maxPromptTokens, 10, 'never more than the room');
  assert.throws(
    () => askLimits(ARITHMETIC_TASK, tok, 72, { maxVotes: 8, votes: 4 }, 'models/x'),
    /answers of up to 72 new tokens leave no room for a prompt in the context of models\/x \(72 tokens\); set --max-new-tokens below 72/,
  );
  const code = (raw: string, l = limits) => {
    try {
      parseClientMessage(raw, l);
      return 'ok';
    } catch (e) {
      return (e as ProtocolError).code;
    }
  };
  assert.equal(code('{"type":"ask","id":"a","question":"1+2="}'), 'ok');
  assert.equal(code('nope'), 'bad_json');
  assert.equal(code('null'), 'invalid_message');
  assert.equal(code('{"id":"a"}'), 'invalid_message');
  assert.equal(code('{"type":"tell"}'), 'unknown_type');
  assert.equal(code('{"type":"ask","id":"a","question":"1+2=","x":1}'), 'unknown_field');
  assert.equal(code('{"type":"ask","id":"","question":"1+2="}'), 'invalid_message');
  assert.equal(code('{"type":"ask","id":"a","question":""}'), 'invalid_message');
  assert.equal(code('{"type":"ask","id":"a","question":"12+34-5="}'), 'ok', '8 tokens: at the limit');
  assert.equal(code('{"type":"ask","id":"a","question":"12+34-56="}'), 'question_too_long');
  assert.equal(code('{"type":"ask","id":"a","question":"12+34-56="}', roomOnly), 'ok');
  assert.equal(code('{"type":"ask","id":"a","question":"1+2+3+4+5+6="}', roomOnly), 'context_length_exceeded');
  assert.equal(code('{"type":"ask","id":"a","question":"x="}'), 'unreadable_question');
  assert.throws(
    () => parseClientMessage('{"type":"ask","id":"a","question":"1+2+3+4+5+6="}', roomOnly),
    /the prompt has 12 tokens and answers may take 72 more: 84 do not fit in the model's context of 82 tokens \(at most 10 prompt tokens\)/,
  );
  assert.throws(() => parseClientMessage('{"type":"ask","id":"a","question":"1*2="}', limits), /the model's tokenizer cannot encode the question: .*"\*"/);
  assert.equal(code('{"type":"ask","id":"a","question":"1=","votes":9}'), 'bad_votes');
  assert.equal(code('{"type":"ask","id":"a","question":"1=","votes":1.5}'), 'invalid_message');
  assert.equal(code(JSON.stringify({ type: 'ask', id: 'a', question: '1=', pad: 'x'.repeat(100) })), 'payload_too_large');
});

test('docs/configuration.md holds the settings tables', async () => {
  const doc = await readFile(join(PROJECT_ROOT, 'docs', 'configuration.md'), 'utf8');
  assert.ok(doc.includes(settingsTable()), 'docs/configuration.md is stale: regenerate its tables from settingsTable() in src/config/settings.ts');
});

test("the anchor judge rejects a candidate less sure of the shipped model's surest answers, within the slack", () => {
  assert.equal(judgeAnchors({ anchors: 20, mean: 0.01, up: 0.8 }, 0), null);
  assert.equal(judgeAnchors({ anchors: 20, mean: 0, up: 0.5 }, 0), null);
  assert.match(judgeAnchors({ anchors: 20, mean: -0.02, up: 0.3 }, 0)!, /their log-prob fell by 0\.0200 nats on average over 20 anchors \(70% fell; slack 0\)/);
  assert.equal(judgeAnchors({ anchors: 20, mean: -0.02, up: 0.3 }, 0.05), null);
});

test('the probe judge rejects collapsed, unparsable or runaway candidates', () => {
  const parent = { questions: 32, distinct: 0.8, parsable: 0.98, meanLength: 33 };
  assert.equal(judgeProbe(parent, { ...parent, distinct: 0.7 }), null);
  assert.match(
    judgeProbe(parent, { ...parent, distinct: 0.1 })!,
    /probe answers collapsed: 3 distinct majority answers on 32 probe questions, against 26 before/,
  );
  assert.match(judgeProbe(parent, { ...parent, parsable: 0.5 })!, /stopped parsing/);
  assert.match(judgeProbe(parent, { ...parent, meanLength: 60 })!, /ran long/);
});
