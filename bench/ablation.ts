// Adaptation quality ablation (issue 23): offline TTRL (`ttrl adapt`'s function, in this
// process) on a public suite, one row per variant and seed, against the ground-truth-reward
// run of the same seed: pass@1 and maj@N before and after, the share of the ground-truth gain
// each variant reaches, the served confidence (the majority's share) and its expected
// calibration error after, and the wall time (what the variant costs). Variants are setting
// overrides of `ttrl adapt`'s defaults:
//
//   gt          reward ground-truth (the upper bound)
//   grpo        today's defaults (votes 16, 8 trained on, TTRL's majority reward)
//   v64t16      votes 64, 16 trained on (TTRL's own split)
//   asymmetric  --advantage asymmetric
//   restrain    --advantage restrain
//   refgate     --ref-gate 0.5
//   crise       --confidence-rise 0.05 (roll back when the model grows surer than the shipped model where it does not back the answer)
//   kl          --kl 0.05
//   entropy     --entropy-bonus 0.01
//   (any other: NAME:key=value,key=value, e.g. restrain-p1:advantage=restrain,restrainPenalty=1)
//
//   npm run bench:ablation -- [--suite 4-operand] [--n 256] [--question-seed 1] [--seeds 0,1,2]
//                             [--variants gt,grpo,asymmetric,restrain] [--out bench/ablation.jsonl]
// Each finished run is appended to --out as one JSON line (so an interrupted study keeps its
// rows), and the table is printed at the end.
import { appendFile } from 'node:fs/promises';
import { Command } from 'commander';
import { loadModel } from '../src/formats/checkpoint.ts';
import { adapt, ADAPT_DEFAULTS, type AdaptSettings } from '../src/ttrl/adapt.ts';
import { suite } from '../src/tasks/suites.ts';
import { DEFAULT_MODEL_DIR } from '../src/config/settings.ts';

const o = new Command()
  .option('--suite <name>', 'question suite', '4-operand')
  .option('--n <n>', 'questions', '256')
  .option('--question-seed <k>', "the suite's seed (bench/RESULTS.md's offline runs use 1)", '1')
  .option('--seeds <list>', 'adaptation seeds', '0,1,2')
  .option('--variants <list>', 'variants (see the top of this file)', 'gt,grpo,v64t16,asymmetric,restrain,refgate,kl,entropy')
  .option('--steps <n>', 'update steps (default: ttrl adapt default)')
  .option('--model <dir>', 'model', DEFAULT_MODEL_DIR)
  .option('--out <file>', 'JSONL file the rows are appended to', 'bench/ablation.jsonl')
  .parse()
  .opts<{ suite: string; n: string; questionSeed: string; seeds: string; variants: string; steps?: string; model: string; out: string }>();

const VARIANTS: Record<string, Partial<AdaptSettings>> = {
  gt: { reward: 'ground-truth' },
  grpo: {},
  v64t16: { votes: 64, trainSamples: 16 },
  asymmetric: { advantage: 'asymmetric' },
  restrain: { advantage: 'restrain' },
  refgate: { refGate: 0.5 },
  crise: { confidenceRise: 0.05 },
  kl: { kl: 0.05 },
  entropy: { entropyBonus: 0.01 },
};

function variant(spec: string): { name: string; over: Partial<AdaptSettings> } {
  if (VARIANTS[spec]) return { name: spec, over: VARIANTS[spec] };
  const [name, kvs] = spec.split(':');
  if (!kvs) throw new Error(`unknown variant ${spec}`);
  const over = Object.fromEntries(
    kvs.split(',').map((kv) => {
      const [k, v] = kv.split('=');
      return [k, Number.isNaN(Number(v)) ? v : Number(v)];
    }),
  );
  return { name: name!, over: over as Partial<AdaptSettings> };
}

const model = await loadModel(o.model);
const questions = suite(o.suite, Number(o.n), Number(o.questionSeed)).map((q) => ({ question: q.question, answer: q.answer }));
const seeds = o.seeds.split(',').map(Number);
const rows: Record<string, unknown>[] = [];
for (const seed of seeds)
  for (const spec of o.variants.split(',')) {
    const { name, over } = variant(spec);
    // Evaluated before and after only (evaluations use their own fixed dice: they do not change the run).
    const s: AdaptSettings = { ...ADAPT_DEFAULTS, ...over, seed, evalEvery: 0, ...(o.steps ? { steps: Number(o.steps) } : {}) };
    const r = await adapt(model, questions, s);
    const row = {
      suite: o.suite,
      variant: name,
      seed,
      pass_at_1_before: r.before!.pass_at_1,
      maj_before: r.before!.maj_at_n,
      confidence_before: r.before!.calibration.mean_confidence,
      ece_before: r.before!.calibration.ece,
      pass_at_1_after: r.after!.pass_at_1,
      maj_after: r.after!.maj_at_n,
      confidence_after: r.after!.calibration.mean_confidence,
      ece_after: r.after!.calibration.ece,
      rollbacks: r.rollbacks,
      wall_s: +r.wallS.toFixed(1),
      settings: over,
    };
    rows.push(row);
    await appendFile(o.out, JSON.stringify(row) + '\n');
    console.error(JSON.stringify(row));
  }

// The table: per variant, the mean over seeds, and the share of the ground-truth gain (per seed, then averaged).
const fmt = (x: number) => x.toFixed(3);
const byVariant = new Map<string, typeof rows>();
for (const r of rows) byVariant.set(r.variant as string, [...(byVariant.get(r.variant as string) ?? []), r]);
const gtOf = (seed: number) => rows.find((r) => r.variant === 'gt' && r.seed === seed);
console.log('| variant | seeds | pass@1 before | pass@1 after | share of GT gain | maj after | confidence after | ECE after | wall s |');
console.log('|---|---|---|---|---|---|---|---|---|');
for (const [name, rs] of byVariant) {
  const mean = (k: string) => rs.reduce((a, r) => a + (r[k] as number), 0) / rs.length;
  const shares = rs
    .map((r) => {
      const gt = gtOf(r.seed as number);
      if (!gt) return null;
      const gain = (gt.pass_at_1_after as number) - (r.pass_at_1_before as number);
      return ((r.pass_at_1_after as number) - (r.pass_at_1_before as number)) / gain;
    })
    .filter((x): x is number => x !== null);
  const share = shares.length ? `${fmt(shares.reduce((a, b) => a + b, 0) / shares.length)} (${shares.map(fmt).join(', ')})` : '–';
  console.log(
    `| ${name} | ${rs.map((r) => r.seed).join(',')} | ${fmt(mean('pass_at_1_before'))} | ${fmt(mean('pass_at_1_after'))} | ${share} | ${fmt(mean('maj_after'))} | ${fmt(mean('confidence_after'))} | ${fmt(mean('ece_after'))} | ${mean('wall_s').toFixed(0)} |`,
  );
}
