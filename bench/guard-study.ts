// Which label-free signal tells a healthy live version from a harmful one? Evaluates the
// versions a serving run kept (BENCH_KEEP=1 npm run bench:serve -- --seeds 1 --streams
// recurring --modes on,on3x --no-peer prints the kept directories) on the recurring stream's
// pool, with the suite's answers, next to the signals the guard could use:
//   - greedy agreement with the shipped model on its surest questions (majority ratio >= 0.9)
//   - the anchor log-prob shift: how much likelier (nats) the version finds the shipped
//     model's own completions of those answers, and the share of anchors that rose
//
//   npx tsx bench/guard-study.ts DIR VERSION... [--seed 0]
import { Command } from 'commander';
import { Sampler } from '../src/engine/sampler.ts';
import { Scorer } from '../src/engine/scorer.ts';
import { loadModel } from '../src/formats/checkpoint.ts';
import type { WeightSource } from '../src/formats/weight-file.ts';
import { DEFAULT_MODEL_DIR } from '../src/config/settings.ts';
import { loadVersionWeights } from '../src/loop/version-files.ts';
import { ANCHOR_RATIO } from '../src/ttrl/candidate-checks.ts';
import { suite } from '../src/tasks/suites.ts';
import { GREEDY_TOP_P, rollout, type Rollout } from '../src/sampling/rollout.ts';
import { completionLogprobs, sum } from '../src/ttrl/updater.ts';

const cmd = new Command().argument('<dir>').argument('<versions...>').option('--seed <n>', "the run's seed (its pool)", '0').parse();
const [dir, versions] = cmd.processedArgs as [string, string[]];
const m = await loadModel(DEFAULT_MODEL_DIR);
const pool = suite('4-operand', 256, 10_000 + Number(cmd.opts().seed)); // the bench's recurring pool
const questions = pool.map((q) => q.question);
const sampler = await Sampler.create({ config: m.config, weights: m.weights, threads: 2 });
const scorer = await Scorer.create({ config: m.config, weights: m.weights, threads: 2 });
const sample = (votes: number, topP?: number) => rollout(sampler, m.tokenizer, questions, { votes, temperature: 1, topP, seed: 7 });

const reference = await sample(32);
const anchors = reference.flatMap((r, i) => (r.vote.ratio >= ANCHOR_RATIO && r.vote.label !== null ? [{ i, r }] : []));
const seqs = anchors.map(({ r }) => ({ tokens: [...r.prompt, ...r.samples.find((s) => s.answer === r.vote.label)!.tokens], promptLength: r.prompt.length }));
const anchorLogprobs = async (w: WeightSource) => {
  await scorer.setWeights(w);
  return (await completionLogprobs(scorer, seqs, m.tokenizer.padId, m.config.contextLength)).map(sum);
};
const base = await anchorLogprobs(m.weights);
const accuracy = (rs: Rollout[]) => rs.filter((r, i) => r.vote.label === pool[i]!.answer).length / rs.length;

console.log(`${anchors.length} anchors of ${questions.length} pool questions`);
console.log('| version | maj@16 | pass@1 | greedy agreement on anchors | anchor log-prob shift (nats) | anchors that rose |');
console.log('|---|---|---|---|---|---|');
for (const v of versions.map(Number)) {
  const w = v === 0 ? m.weights : await loadVersionWeights(`${dir}/versions/v${v}.safetensors`, m.config);
  await sampler.setWeights(w, v);
  const voted = await sample(16);
  const greedy = await sample(1, GREEDY_TOP_P);
  const pass1 = voted.reduce((a, r, i) => a + r.samples.filter((s) => s.answer === pool[i]!.answer).length / r.samples.length, 0) / voted.length;
  const kept = anchors.filter(({ i, r }) => greedy[i]!.vote.label === r.vote.label).length / anchors.length;
  const shifts = (await anchorLogprobs(w)).map((x, k) => x - base[k]!);
  const mean = sum(shifts) / shifts.length;
  console.log(
    `| v${v} | ${accuracy(voted).toFixed(3)} | ${pass1.toFixed(3)} | ${kept.toFixed(3)} | ${mean >= 0 ? '+' : ''}${mean.toFixed(3)} | ${(shifts.filter((d) => d > 0).length / shifts.length).toFixed(2)} |`,
  );
}
await Promise.all([sampler.close(), scorer.close()]);
