// The dashboard end to end: a live server on the shipped model, the page in headless
// Chromium (the system's /usr/bin/chromium driven by playwright-core; CI installs it). The
// page loads with no console error, shows each answered question as it comes, and shows the
// serving version change when its own buttons update the model and roll it back. Questions
// asked with labels (their known answers) give the snapshot a calibration equal to the one
// computed here from the answers the client got, and the page a calibration panel it does
// not show without them.
// TTRL_DASHBOARD_SCREENSHOT=DIR saves what the page looked like at the end of each test.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import type { RunningServer } from '../src/server/server.ts';
import type { UpdateOutcome } from '../src/loop/adaptation.ts';
import { TtrlClient } from '../src/client/index.ts';
import { CALIBRATION_ANSWERS, type DashboardSnapshot } from '../src/dashboard/state.ts';
import { calibration, type Judged } from '../src/sampling/calibration.ts';
import { suite } from '../src/tasks/suites.ts';
import { assertJudged, startTestServer, type SettingOverrides } from './helpers/server.ts';

// What the functions run in the page see (this project compiles without the DOM library).
declare const document: {
  getElementById(id: string): { textContent: string | null } | null;
  querySelector(selector: string): { textContent: string | null } | null;
};
declare const sessionStorage: { getItem(key: string): string | null };

const CHROMIUM = '/usr/bin/chromium';
const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing: install it (apt-get install -y chromium) to run the dashboard tests`;
const TOKEN = 'dashboard-admin-token';
const KEY = 'dashboard-test-key-0123456789';

// Adaptation on (the resolved default) unless a test says otherwise.
const start = (over: SettingOverrides = {}): Promise<RunningServer> =>
  startTestServer({ adapt: true, votes: 8, maxClientShare: 1, adminToken: TOKEN, ...over }, { prefix: 'ttrl-dashboard-' });

async function browse(t: TestContext): Promise<{ browser: Browser; page: Page; errors: string[] }> {
  const browser = await chromium.launch({ executablePath: CHROMIUM });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => errors.push(`page: ${e.message}`));
  page.on('requestfailed', (r) => {
    // The stream is cut when the browser closes at the end; anything else is a fault.
    if (!r.url().includes('/dashboard/events')) errors.push(`request: ${r.url()} ${r.failure()?.errorText}`);
  });
  return { browser, page, errors };
}

/** With TTRL_DASHBOARD_SCREENSHOT=DIR, a full-page screenshot per test in DIR. */
const shoot = async (page: Page, name: string) => {
  const dir = process.env.TTRL_DASHBOARD_SCREENSHOT;
  if (dir) await page.screenshot({ path: join(dir, `dashboard-${name}.png`), fullPage: true });
};
const text = (page: Page, id: string) => page.locator(`#${id}`).textContent();
const waitText = (page: Page, id: string, want: string, timeout = 30_000) =>
  page.waitForFunction(([i, w]) => document.getElementById(i!)?.textContent === w, [id, want] as const, { timeout });

const ask = async (s: RunningServer, question: string, headers: Record<string, string> = {}) => {
  const r = await fetch(`${s.url}/v1/ask`, { method: 'POST', body: JSON.stringify({ question }), headers });
  assert.equal(r.status, 200, await r.clone().text());
  return (await r.json()) as { answer: string | null; model_version: number };
};

test('the dashboard shows answers as they come and a version change made from its buttons', { skip, timeout: 300_000 }, async (t) => {
  // No update by count (1000): the page's button starts it. lr 0 changes nothing, so the
  // candidate passes the guard and is promoted (its anchor shift is exactly 0).
  const s = await start({ adapt: true, updateEvery: 1000, questionsPerStep: 16, probeQuestions: 8, lr: 0 });
  t.after(() => s.close());
  const { browser, page, errors } = await browse(t);

  // The page is open to all; its assets come from this server, none from elsewhere.
  const requested: string[] = [];
  page.on('request', (r) => requested.push(r.url()));
  await page.goto(`${s.url}/`);
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: 30_000 });
  assert.ok(
    requested.every((u) => u.startsWith(s.url) || u.startsWith('data:')),
    requested.join('\n'),
  );
  assert.ok(requested.some((u) => u.endsWith('/assets/uplot/uPlot.iife.min.js')));
  assert.equal(await text(page, 'serving-version'), '0');
  assert.equal(await page.locator('#questions li').count(), 0);
  assert.equal(await page.locator('#chart-qps canvas').count(), 1, 'uPlot drew the questions/s chart');

  // One question, answered over HTTP: it appears in the list with its vote bar.
  const q = suite('4-operand', 1, 5)[0]!.question;
  const a = await ask(s, q);
  await page.locator('#questions li').first().waitFor({ timeout: 10_000 });
  const first = page.locator('#questions li').first();
  assert.ok((await first.locator('.q-text').textContent())!.startsWith(q));
  assert.equal(await first.locator('.q-answer').textContent(), a.answer === null ? '(no answer)' : `→ ${a.answer === '' ? '∅' : a.answer}`);
  const bar = await first.locator('.votes span').evaluateAll((spans) => spans.map((e) => e.getAttribute('title')));
  assert.ok(bar.length >= 1 && bar.every((b) => / of 8 votes$/.test(b!)), bar.join(', '));
  await waitText(page, 'answered', '1');
  // Within a tick: a rate, a latency, the confidence of one answer.
  await page.waitForFunction(() => document.getElementById('qps')!.textContent !== '0.0' && document.getElementById('p50')!.textContent!.endsWith('ms'), null, {
    timeout: 5_000,
  });
  assert.equal(await text(page, 'confidence-n'), 'last 1 answers');

  // More questions, concurrently: the list keeps the newest first.
  const qs = [...suite('in-distribution', 12, 11), ...suite('4-operand', 12, 12)].map((x) => x.question);
  await Promise.all(qs.map((x) => ask(s, x)));
  await waitText(page, 'answered', String(1 + qs.length));
  // The count comes with each second's stats, the list within 200 ms of its answers: wait for both.
  for (let i = 0; i < 50 && (await page.locator('#questions li').count()) !== 1 + qs.length; i++) await new Promise((r) => setTimeout(r, 100));
  assert.equal(await page.locator('#questions li').count(), 1 + qs.length);

  // Admin buttons stay disabled until a token is typed; with it, "Update now" makes v1.
  assert.equal(await page.locator('#btn-update').isDisabled(), true);
  await page.locator('#admin-token').fill(TOKEN);
  await page.locator('#token-save').click();
  await page.waitForFunction(() => /^token check: adaptation /.test(document.getElementById('admin-result')!.textContent!), null, { timeout: 10_000 });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('ttrl.adminToken')), TOKEN);
  assert.equal(await page.locator('#btn-update').isDisabled(), false);
  const ended = new Promise<UpdateOutcome>((resolve) => s.adaptation.updates$.subscribe((u) => u.phase === 'end' && resolve(u.outcome)));
  await page.locator('#btn-update').click();
  assertJudged(await ended, ['promoted']);
  await waitText(page, 'serving-version', '1', 180_000);
  assert.equal(s.versions$.value, 1);
  await page.locator('#updates tr[data-outcome="promoted"]').first().waitFor({ timeout: 10_000 });
  assert.equal(await page.locator('#updates tr[data-outcome="promoted"] td').nth(2).textContent(), 'v1');
  await page.waitForFunction(() => /^update: promoted \(v1\)/.test(document.getElementById('admin-result')!.textContent!), null, { timeout: 10_000 });
  // The in-distribution questions are near-unanimous: they make anchors, so the guard measured a shift.
  const shift = ((await s.store.version(1))!.stats as Record<string, unknown>).anchor_shift;
  assert.equal(typeof shift, 'number', `no anchor shift measured: ${JSON.stringify((await s.store.version(1))!.stats)}`);
  await waitText(page, 'anchor-shift', ((shift as number) >= 0 ? '+' : '') + (shift as number).toFixed(3));

  // A question after the update is answered by v1, and shown so.
  await ask(s, qs[0]!);
  await page.waitForFunction(() => / · v1 · /.test(document.querySelector('#questions li .q-meta')!.textContent!), null, { timeout: 10_000 });

  // Roll back: the parent of the serving version.
  assert.equal(await text(page, 'btn-rollback'), 'Roll back to v0');
  await page.locator('#btn-rollback').click();
  await waitText(page, 'serving-version', '0', 60_000);
  assert.equal(s.versions$.value, 0);
  await page.waitForFunction(() => document.getElementById('admin-result')!.textContent === 'roll back to v0: serving v0', null, { timeout: 10_000 });
  // And forward again from the list: v1 was retired, it can serve again.
  await page.locator('#version-select').selectOption('1');
  await page.locator('#btn-activate').click();
  await waitText(page, 'serving-version', '1', 60_000);

  // Pause and resume reach the adaptation loop, and the page says so.
  await page.locator('#btn-pause').click();
  await page.waitForFunction(() => document.getElementById('adaptation')!.textContent === 'adaptation: paused', null, { timeout: 10_000 });
  await page.locator('#btn-resume').click();
  await page.waitForFunction(() => document.getElementById('adaptation')!.textContent === 'adaptation: idle', null, { timeout: 10_000 });

  // A fresh page gets it all from the snapshot: the updates and the questions so far.
  const again = await browser.newPage();
  await again.goto(`${s.url}/`);
  await again.locator('#conn[data-state="live"]').waitFor({ timeout: 30_000 });
  assert.equal(await text(again, 'serving-version'), '1');
  assert.equal(await again.locator('#updates tr[data-outcome="promoted"]').count(), 1);
  assert.equal(await again.locator('#questions li').count(), 26);
  await again.close();

  await shoot(page, 'promoted');
  assert.deepEqual(errors, []);
});

test('with API keys the stream needs one (?key=), the page asks for it; a rejected update is shown with its reason', { skip, timeout: 180_000 }, async (t) => {
  // An entropy floor no policy reaches: the update that 16 questions trigger is rejected.
  // --gate 0: any split vote is a learning signal, so the update trains and is judged, not skipped.
  const s = await start({ apiKeys: [KEY], updateEvery: 16, questionsPerStep: 16, entropyFloor: 9, probeQuestions: 0, gate: 0 });
  t.after(() => s.close());
  // The page itself is open; the stream and the snapshot are not.
  assert.equal((await fetch(`${s.url}/`)).status, 200);
  assert.equal((await fetch(`${s.url}/dashboard/events`)).status, 401);
  assert.equal((await fetch(`${s.url}/dashboard/state?key=wrong-key-0123456789`)).status, 401);
  assert.equal((await fetch(`${s.url}/dashboard/state?key=${KEY}`)).status, 200);
  assert.equal((await fetch(`${s.url}/dashboard/state`, { headers: { authorization: `Bearer ${KEY}` } })).status, 200);

  const { page, errors } = await browse(t);
  await page.goto(`${s.url}/`);
  await page.locator('#key-panel:not([hidden])').waitFor({ timeout: 30_000 });
  assert.equal(await text(page, 'conn'), 'API key needed');
  await page.locator('#api-key').fill(KEY);
  await page.locator('#key-form button').click();
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: 30_000 });
  assert.equal(await page.locator('#key-panel').isHidden(), true);
  await ask(s, '1+2=', { authorization: `Bearer ${KEY}` });
  await waitText(page, 'answered', '1', 10_000);

  const ended = new Promise<UpdateOutcome>((resolve) => s.adaptation.updates$.subscribe((u) => u.phase === 'end' && resolve(u.outcome)));
  await Promise.all(suite('4-operand', 15, 21).map((q) => ask(s, q.question, { authorization: `Bearer ${KEY}` })));
  const outcome = await ended;
  assertJudged(outcome, ['rejected']);
  assert.match(outcome.reason!, /entropy collapsed/);
  const row = page.locator('#updates tr[data-outcome="rejected"]');
  await row.waitFor({ timeout: 10_000 });
  assert.equal(await row.locator('.badge').textContent(), 'rejected');
  assert.equal(await row.locator('td.reason').textContent(), outcome.reason);
  assert.equal(await text(page, 'serving-version'), '0');
  // The one error: the first snapshot's 401, before the key was typed.
  await shoot(page, 'rejected');
  assert.equal(errors.length, 1, errors.join('\n'));
  assert.match(errors[0]!, /401/);
});

test(
  'labelled asks: the calibration of the answers given, in the snapshot, on /metrics and in a panel the page shows only then',
  { skip, timeout: 180_000 },
  async (t) => {
    const s = await start({ adapt: false });
    t.after(() => s.close());
    const { page, errors } = await browse(t);
    await page.goto(`${s.url}/`);
    await page.locator('#conn[data-state="live"]').waitFor({ timeout: 30_000 });
    const snapshot = async () => (await (await fetch(`${s.url}/dashboard/state`)).json()) as DashboardSnapshot;

    // Questions without labels: nothing to measure, nothing shown.
    await ask(s, '1+2=');
    await waitText(page, 'answered', '1');
    const before = await snapshot();
    assert.equal(before.calibration, null);
    assert.equal(before.windows.calibration_answers, CALIBRATION_ANSWERS);
    assert.equal(await page.locator('#calibration').isHidden(), true);

    // Labelled questions, one at a time (so that the server sees them in this order): the true
    // answer in another form ("-5.0" for -5: right when the model is, once normalised), or,
    // every fourth, a wrong one. Through the typed client, the last one over HTTP.
    const client = new TtrlClient(s.wsUrl);
    t.after(() => client.close());
    const items = [...suite('in-distribution', 10, 31), ...suite('4-operand', 10, 32)];
    const judged: Judged[] = [];
    for (const [i, q] of items.entries()) {
      const wrong = i % 4 === 3;
      const label = wrong ? String(Number(q.answer) + 1000) : `${q.answer}.0`;
      let a: { answer: string | null; confidence: number };
      if (i < items.length - 1) a = await client.ask(q.question, { votes: 8, label });
      else {
        const r = await fetch(`${s.url}/v1/ask`, { method: 'POST', body: JSON.stringify({ question: q.question, votes: 8, label }) });
        assert.equal(r.status, 200, await r.clone().text());
        a = (await r.json()) as typeof a;
      }
      judged.push({ confidence: a.confidence, correct: !wrong && a.answer === q.answer });
    }
    const right = judged.filter((j) => j.correct).length;
    assert.ok(right > 0 && right < judged.length, `${right} of ${judged.length} right: the test needs both`);
    const expected = calibration(judged);
    assert.deepEqual((await snapshot()).calibration, expected);
    assert.equal(expected.answers, items.length);

    // Counted on /metrics by outcome.
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    const counted = (correct: boolean) => Number(new RegExp(`^ttrl_labelled_answers_total\\{correct="${correct}"\\} (\\d+)$`, 'm').exec(metrics)?.[1]);
    assert.deepEqual([counted(true), counted(false)], [right, judged.length - right]);

    // The page: the panel appears with the next tick, with the numbers and the reliability chart.
    await page.locator('#calibration:not([hidden])').waitFor({ timeout: 10_000 });
    await waitText(page, 'calibration-ece', expected.ece!.toFixed(3), 10_000);
    assert.equal(await text(page, 'calibration-n'), `${items.length} labelled answers`);
    assert.equal(await text(page, 'calibration-accuracy'), `${Math.round(expected.accuracy! * 100)}%`);
    assert.equal(await text(page, 'calibration-confidence'), `${Math.round(expected.mean_confidence! * 100)}%`);
    assert.equal(await page.locator('#chart-calibration canvas').count(), 1, 'uPlot drew the reliability chart');
    // A fresh page gets it from the snapshot.
    await page.reload();
    await page.locator('#conn[data-state="live"]').waitFor({ timeout: 30_000 });
    assert.equal(await page.locator('#calibration').isHidden(), false);
    assert.equal(await text(page, 'calibration-ece'), expected.ece!.toFixed(3));

    await shoot(page, 'calibration');
    assert.deepEqual(errors, []);
  },
);
