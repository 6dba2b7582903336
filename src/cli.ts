// One CLI for everything: `ttrl <subcommand>`. With --json a subcommand prints exactly one
// JSON object as the last line of stdout; progress and logs go to stderr.
import { Command, InvalidArgumentError } from 'commander';
import { loadModel, saveModel } from './model/checkpoint.ts';
import { initWeights, paramCount, type GPTConfig } from './model/gpt.ts';
import { ARITHMETIC_CHARS, CharTokenizer } from './model/tokenizer.ts';
import { Sampler } from './engine/sampler.ts';
import { Rng } from './engine/rng.ts';

export function int(name: string, min = 0) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
    return n;
  };
}
export function num(name: string, check: (n: number) => boolean, what: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || !check(n)) throw new InvalidArgumentError(`${name} must be ${what}`);
    return n;
  };
}

const program = new Command('ttrl').description('Test-time reinforcement learning server and tools').showHelpAfterError();

program
  .command('init')
  .description('write a model directory with random weights (config.json, tokenizer.json, model.safetensors)')
  .requiredOption('--out <dir>', 'model directory to write')
  .option('--d-model <n>', 'embedding width', int('--d-model', 1), 128)
  .option('--layers <n>', 'transformer blocks', int('--layers', 1), 4)
  .option('--heads <n>', 'attention heads', int('--heads', 1), 4)
  .option('--context <n>', 'context length', int('--context', 2), 96)
  .option('--tied-head', 'share the embedding matrix with the output head', false)
  .option('--seed <n>', 'random seed', int('--seed'), 0)
  .option('--json', 'print a JSON summary line')
  .action(async (o) => {
    const tokenizer = new CharTokenizer(ARITHMETIC_CHARS);
    const config: GPTConfig = {
      vocabSize: tokenizer.vocabSize,
      contextLength: o.context,
      dModel: o.dModel,
      nLayers: o.layers,
      nHeads: o.heads,
      tiedHead: o.tiedHead,
      padTokenId: tokenizer.padId,
    };
    if (config.dModel % config.nHeads) throw new InvalidArgumentError('--d-model must be divisible by --heads');
    await saveModel(o.out, { config, tokenizer, weights: initWeights(config, new Rng(o.seed)), metadata: { init_seed: String(o.seed) } });
    const summary = { out: o.out, params: paramCount(config), config };
    console.error(`wrote ${o.out}: ${summary.params} parameters`);
    if (o.json) console.log(JSON.stringify(summary));
  });

program
  .command('info')
  .description('describe a model directory')
  .requiredOption('--model <dir>', 'model directory')
  .option('--json', 'print JSON')
  .action(async (o) => {
    const m = await loadModel(o.model);
    const info = { model: o.model, params: paramCount(m.config), config: m.config, metadata: m.metadata };
    console.log(o.json ? JSON.stringify(info) : JSON.stringify(info, null, 2));
  });

program
  .command('sample')
  .description('sample completions of a prompt')
  .requiredOption('--model <dir>', 'model directory')
  .requiredOption('--prompt <text>', 'the prompt, e.g. 12+34-56+7=')
  .option('--samples <n>', 'completions to draw', int('--samples', 1), 4)
  .option('--max-new-tokens <n>', 'tokens per completion at most', int('--max-new-tokens', 1), 64)
  .option('--temperature <t>', 'sampling temperature', num('--temperature', (n) => n > 0, 'a number > 0'), 1)
  .option('--top-p <p>', 'nucleus sampling mass', num('--top-p', (n) => n > 0 && n <= 1, 'in (0, 1]'), 1)
  .option('--seed <n>', 'random seed', int('--seed'), 0)
  .option('--threads <n>', 'compute threads', int('--threads', 1), 2)
  .option('--json', 'print one JSON line')
  .action(async (o) => {
    const m = await loadModel(o.model);
    const prompt = m.tokenizer.encode(o.prompt);
    const maxNew = Math.min(o.maxNewTokens, m.config.contextLength - prompt.length);
    if (maxNew < 1) throw new InvalidArgumentError(`the prompt fills the context length ${m.config.contextLength}`);
    const sampler = await Sampler.create({ config: m.config, weights: m.weights, threads: o.threads });
    try {
      const r = await sampler.generate([prompt], {
        samplesPerPrompt: o.samples,
        maxNewTokens: maxNew,
        temperature: o.temperature,
        topP: o.topP,
        seed: o.seed,
        stopToken: m.tokenizer.eosId,
        padToken: m.tokenizer.padId,
      });
      const completions = r.completions[0]!.map((c) => ({
        text: m.tokenizer.decode(c.tokens),
        tokens: c.tokens.length,
        logprob: +c.logprobs.reduce((a, b) => a + b, 0).toFixed(4),
        stopped: c.stopped,
      }));
      if (o.json) console.log(JSON.stringify({ prompt: o.prompt, completions, ms: Math.round(r.ms) }));
      else for (const c of completions) console.log(`${o.prompt}${c.text}${c.stopped ? '' : ' …'}   (logprob ${c.logprob})`);
    } finally {
      await sampler.close();
    }
  });

program.parseAsync().catch((e: Error) => {
  console.error(`ttrl: ${e.message}`);
  process.exitCode = 1;
});
