// Adaptation on a quantized base (issue 24, point 4, at test size): stories260K served from
// int8 blocks with LoRA adapters trained on the blocks' float32 dequantization. An update
// trains, is judged, promoted and served like one on the float32 base; the first step's
// |log p_trainer - log p_sampler| (what GRPO's importance ratios see before anything is
// trained) is ~0 on float32 and small but not zero on int8 (the kernels quantize activations).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { createPipeline } from '../src/loop/pipeline.ts';
import { resolveSettings } from '../src/config/settings.ts';
import { checkAsk } from '../src/loop/admission.ts';
import { isWeightFile } from '../src/formats/weight-file.ts';
import { scratch } from './helpers/scratch.ts';
import { STORIES_LORA, STORY_PROMPTS, storiesOneSentence } from './helpers/stories.ts';

test('LoRA adaptation on an int8-quantized base: trained, promoted and served as on float32; the sampler-trainer log-prob gap measured', async (t) => {
  const dir = await scratch('ttrl-qadapt-');
  process.env.TTRL_CACHE_DIR = dir; // the int8 conversion stays in the scratch folder
  const model = await storiesOneSentence();
  const gaps: Record<string, number> = {};
  try {
    for (const quantize of ['float32', 'int8'] as const) {
      const settings = resolveSettings(
        {
          model,
          db: join(dir, `${quantize}.sqlite`),
          quantize,
          threads: 1,
          trainThreads: 1,
          trainNice: 0,
          ...STORIES_LORA,
        },
        {},
      );
      const p = await createPipeline(settings);
      try {
        const base = p.versions.base;
        assert.ok(isWeightFile(base));
        assert.equal(Boolean(base.quantized && Object.keys(base.quantized).length), quantize === 'int8', `${quantize}: quantized blocks served`);
        for (const question of STORY_PROMPTS) {
          const { votes } = checkAsk({ question }, p.limits);
          await p.answerer.ask({ question, votes, clientId: null, connection: null });
        }
        const u = await p.adaptation.updateNow('admin');
        assert.equal(u.outcome, 'promoted', `${quantize}: ${u.reason ?? ''}`);
        const stats = u.stats as Record<string, number>;
        assert.ok(Number.isFinite(stats.first_step_abs_logratio), `${quantize}: first_step_abs_logratio ${stats.first_step_abs_logratio}`);
        assert.ok(stats.clipped_share >= 0 && stats.clipped_share <= 1);
        gaps[quantize] = stats.first_step_abs_logratio;
        // The promoted adapters serve the next answers.
        const a = await p.answerer.ask({ question: STORY_PROMPTS[0]!, votes: 8, clientId: null, connection: null });
        assert.equal(a.model_version, u.version);
      } finally {
        await p.close();
      }
    }
    t.diagnostic(`first-step |log-ratio| per token: float32 ${gaps.float32}, int8 ${gaps.int8}`);
    // float32 sampler and float32 trainer: the same function up to summation order.
    assert.ok(gaps.float32! < 1e-4, `float32 gap ${gaps.float32}`);
    // int8 blocks with int8 activations against their float32 dequantization: a small gap,
    // far inside the clip (|log 1.2| = 0.18), so GRPO's ratios start near 1.
    assert.ok(gaps.int8! > gaps.float32! && gaps.int8! < 0.05, `int8 gap ${gaps.int8}`);
  } finally {
    delete process.env.TTRL_CACHE_DIR;
  }
});
