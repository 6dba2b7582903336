import { test } from 'node:test';
import assert from 'node:assert/strict';
import { advantagesOf, groupAdvantages, rewards, selectForTraining, toGroups } from '../src/ttrl/grpo.ts';
import { majorityVote } from '../src/tasks/vote.ts';
import { CollapseGuard, GUARD_DEFAULTS } from '../src/ttrl/collapse-guard.ts';
import type { Rollout } from '../src/sampling/rollout.ts';
import { Rng } from '../src/util/rng.ts';

function fakeRollout(question: string, answers: (string | null)[]): Rollout {
  const samples = answers.map((answer, i) => ({
    tokens: [1, 2, 3].slice(0, 1 + (i % 3)),
    logprobs: [-0.1, -0.2, -0.3].slice(0, 1 + (i % 3)),
    stopped: answer !== null,
    text: '',
    answer,
  }));
  return { question, prompt: [4, 5], samples, vote: majorityVote(answers), version: 0 };
}

test('rewards: 1 for agreeing with the label, 0 otherwise; no answer never agrees', () => {
  assert.deepEqual(rewards(['3', '4', null, '3'], '3'), [1, 0, 0, 1]);
});

test('advantages are normalised within the group; equal rewards carry no signal', () => {
  const a = groupAdvantages([1, 0, 0, 1])!;
  assert.deepEqual(
    a.map((x) => +x.toFixed(5)),
    [1, -1, -1, 1],
  );
  const b = groupAdvantages([1, 0, 0, 0])!;
  assert.ok(Math.abs(b.reduce((s, x) => s + x, 0)) < 1e-9);
  assert.ok(Math.abs(Math.sqrt(b.reduce((s, x) => s + x * x, 0) / 4) - 1) < 1e-5);
  assert.equal(groupAdvantages([1, 1, 1]), null);
  assert.equal(groupAdvantages([0, 0]), null);
  assert.equal(groupAdvantages([]), null);
});

test('selection labels by majority, gates on the majority ratio, skips no-signal and no-label groups', () => {
  const rollouts = [
    fakeRollout('a', ['3', '3', '3', '4']), // ratio .75: trained
    fakeRollout('b', ['5', '6', '7', null]), // ratio .25: gated
    fakeRollout('c', ['8', '8', '8', '8']), // all agree: no signal
    fakeRollout('d', [null, null, null, null]), // no label
  ];
  const truths = ['4', '5', '8', undefined];
  const { selected, stats } = selectForTraining(rollouts, truths, { reward: 'majority', trainSamples: 2, gate: 0.5 }, new Rng(1));
  assert.deepEqual([stats.trained, stats.gated, stats.noSignal, stats.noLabel], [1, 1, 1, 1]);
  assert.equal(selected[0]!.label, '3');
  assert.equal(selected[0]!.picks.length, 2);
  for (const p of selected[0]!.picks) assert.equal(Math.sign(p.advantage), ['3', '3', '3', '4'][p.index] === '3' ? 1 : -1);
  // label accuracy over the three questions with answers: a wrong (3 vs 4), b wrong (5 vs 5? majority tie 5/6/7 -> '5'), c right
  assert.equal(stats.labelAccuracy, 2 / 3);
  // reward accuracy: a: est [1,1,1,0] vs true [0,0,0,1] -> 0 of 4; b: est for '5' [1,0,0,0] vs true [1,0,0,0] -> 4; c: 4 of 4
  assert.equal(stats.rewardAccuracy, 8 / 12);

  const gt = selectForTraining(rollouts.slice(0, 3), truths.slice(0, 3), { reward: 'ground-truth', trainSamples: 4, gate: 0.5 }, new Rng(1));
  assert.equal(gt.stats.trained, 2); // a (label 4) and b (label 5, not gated in ground-truth mode); c has no signal
  assert.equal(gt.selected[0]!.label, '4');
  assert.throws(
    () => selectForTraining(rollouts, truths, { reward: 'ground-truth', trainSamples: 2, gate: 0 }, new Rng(1)),
    /ground-truth rewards need an answer/,
  );

  const groups = toGroups(selected);
  assert.deepEqual(groups[0]!.prompt, [4, 5]);
  for (const c of groups[0]!.completions) assert.equal(c.oldLogprobs!.length, c.tokens.length);
});

test('the guard trips on runaway length, lost answers and a falling majority, and resets', () => {
  const base = { meanLength: 30, parsable: 0.95, majorityRatio: 0.6 };
  const g = new CollapseGuard({ ...GUARD_DEFAULTS, smoothing: 1 }, base);
  assert.equal(g.observe({ ...base, meanLength: 33 }), null);
  assert.match(g.observe({ ...base, meanLength: 60 })!, /runaway length/);
  g.reset();
  assert.match(g.observe({ ...base, parsable: 0.5 })!, /parsable answers fell/);
  g.reset();
  assert.match(g.observe({ ...base, majorityRatio: 0.3 })!, /majority ratio fell/);
  const smooth = new CollapseGuard(GUARD_DEFAULTS, base);
  assert.equal(smooth.observe({ ...base, meanLength: 45 }), null, 'one bad step is smoothed over');
  assert.match(smooth.observe({ ...base, meanLength: 45 })!, /runaway length/, 'two are not');
});

test('anchors are the confident questions; agreement counts the ones that kept their answer', async () => {
  const { pickAnchors, anchorAgreement } = await import('../src/ttrl/collapse-guard.ts');
  const initial = [
    { question: 'a', vote: { label: '1', ratio: 0.95 } },
    { question: 'b', vote: { label: '2', ratio: 0.5 } },
    { question: 'c', vote: { label: null, ratio: 0 } },
    { question: 'd', vote: { label: '4', ratio: 1 } },
  ];
  const anchors = pickAnchors(initial, { ...GUARD_DEFAULTS, anchorRatio: 0.9 });
  assert.deepEqual(anchors, [
    { question: 'a', label: '1' },
    { question: 'd', label: '4' },
  ]);
  assert.equal(pickAnchors(initial, { ...GUARD_DEFAULTS, anchorMax: 1 }).length, 1);
  assert.equal(anchorAgreement(anchors, [{ vote: { label: '1' } }, { vote: { label: '4' } }]), 1);
  assert.equal(anchorAgreement(anchors, [{ vote: { label: '1' } }, { vote: { label: '5' } }]), 0.5);
  assert.equal(anchorAgreement(anchors, [{ vote: { label: null } }, { vote: { label: '5' } }]), 0);
  assert.equal(anchorAgreement([], []), 1);
});

test('asymmetric advantages: only the samples against the vote are pushed down, by the GRPO amounts', () => {
  const answers = ['3', '3', '3', '4', null, '3', '3', '3'];
  const label = '3';
  const counts = majorityVote(answers).counts;
  const grpo = advantagesOf('grpo', answers, label, counts, 8, 6 / 8)!;
  const asym = advantagesOf('asymmetric', answers, label, counts, 8, 6 / 8)!;
  asym.forEach((a, j) => assert.equal(a, Math.min(0, grpo[j]!)));
  assert.ok(asym[3]! < 0 && asym[4]! < 0 && asym[0] === 0);
  assert.equal(advantagesOf('asymmetric', ['3', '3'], '3', { '3': 2 }, 2, 1), null, 'no disagreement: no signal');
});

test('restrain advantages: rewards by vote share, weighted by agreement; questions under the gate have every sample pushed down', () => {
  // Shares: '3' 4/8, '4' 3/8, null 0: a runner-up is rewarded too, less than the majority.
  const answers = ['3', '3', '4', '3', '4', '3', null, '4'];
  const counts = majorityVote(answers).counts;
  const adv = advantagesOf('restrain', answers, '3', counts, 8, 0.5)!;
  const expected = groupAdvantages(answers.map((a) => (a === '3' ? 0.5 : a === '4' ? 0.375 : 0)))!.map((x) => x * 0.5);
  adv.forEach((a, j) => assert.ok(Math.abs(a - expected[j]!) < 1e-12));
  assert.ok(adv[0]! > adv[2]! && adv[2]! > adv[6]!, 'majority above runner-up above no answer');
  // Through selection: a question under the gate is penalised whole (restrain) or skipped (grpo).
  const low = fakeRollout('low', ['1', '2', '3', '4', '1', '2', '3', '5']);
  const high = fakeRollout('high', ['7', '7', '7', '7', '7', '7', '8', '9']);
  const s = { reward: 'majority' as const, trainSamples: 4, gate: 0.5, restrainPenalty: 0.25 };
  const r = selectForTraining([low, high], [], { ...s, advantage: 'restrain' }, new Rng(1));
  assert.equal(r.stats.penalized, 1);
  assert.equal(r.stats.trained, 1);
  assert.deepEqual(
    r.selected.find((x) => x.rollout.question === 'low')!.picks.map((p) => p.advantage),
    [-0.25, -0.25, -0.25, -0.25],
  );
  const g = selectForTraining([low, high], [], { ...s, advantage: 'grpo' }, new Rng(1));
  assert.equal(g.stats.gated, 1);
  assert.deepEqual(
    g.selected.map((x) => x.rollout.question),
    ['high'],
  );
  // Ground truth always rewards by the label (the upper bound stays the same experiment).
  const t = selectForTraining([high], ['8'], { ...s, reward: 'ground-truth', advantage: 'restrain' }, new Rng(1));
  assert.equal(t.selected[0]!.label, '8');
});

test('the reference gate skips questions whose support is under it, whatever their majority ratio; it needs the support', () => {
  const a = fakeRollout('a', ['3', '3', '3', '4']);
  const b = fakeRollout('b', ['5', '5', '5', '6']);
  const s = { reward: 'majority' as const, trainSamples: 2, gate: 0.5, refGate: 0.4 };
  const r = selectForTraining([a, b], [], s, new Rng(1), [0.7, 0.2]);
  assert.deepEqual(
    r.selected.map((x) => x.rollout.question),
    ['a'],
  );
  assert.equal(r.stats.refGated, 1);
  assert.ok(Math.abs(r.stats.refSupport! - 0.45) < 1e-12);
  assert.throws(() => selectForTraining([a, b], [], s, new Rng(1)), /needs the reference support/);
});
