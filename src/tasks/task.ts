// What a deployment asks its model: how a question becomes a prompt (the raw question, or
// the model's chat template with an optional system prompt), how an answer is read out of a
// completion, and how long a completion may run. Chosen per deployment with --task (a
// preset) and overridden part by part with --extractor, --chat-template, --system and
// --max-new-tokens.
import type { Tokenizer } from '../tokenizers/tokenizer.ts';
import { HFTokenizer } from '../tokenizers/hf-tokenizer.ts';
import { ChatTemplate, chatTemplateText, type ChatMessage } from './chat-template.ts';
import { extractor, type Extractor } from './extractors.ts';
import { normalizeAnswer } from './normalize.ts';

/** The TTRL paper's prompt for math (Zuo et al. 2025, after Qwen2.5-Math). */
export const BOXED_SYSTEM_PROMPT = 'Please reason step by step, and put your final answer within \\boxed{}.';

export interface TaskParts {
  extractor: string;
  /** Render the model's chat template (on), or give the model the raw question (off). */
  chatTemplate: boolean;
  /** The system message of the chat template; '' for none. */
  system: string;
  maxNewTokens: number;
}

export const TASK_PRESETS = {
  arithmetic: {
    help: "the shipped model's chains: raw prompt, the integer after '#'",
    extractor: 'arithmetic',
    chatTemplate: false,
    system: '',
    maxNewTokens: 72,
  },
  math: {
    help: 'competition math: chat template, step-by-step system prompt, the last \\boxed{}',
    extractor: 'boxed',
    chatTemplate: true,
    system: BOXED_SYSTEM_PROMPT,
    maxNewTokens: 1024,
  },
  gsm8k: {
    help: 'grade-school word problems: chat template, the number after "####" or the last number',
    extractor: 'number',
    chatTemplate: true,
    system: 'Solve the problem step by step. At the end, write the final answer as a single number after "####".',
    maxNewTokens: 512,
  },
  choice: {
    help: 'multiple choice (A-D): chat template, the stated letter',
    extractor: 'choice',
    chatTemplate: true,
    system: 'Answer the multiple-choice question. Reason briefly, then end with "The answer is (X)", where X is the letter of the correct option.',
    maxNewTokens: 512,
  },
} satisfies Record<string, TaskParts & { help: string }>;

export type TaskName = keyof typeof TASK_PRESETS;
export const TASK_NAMES = Object.keys(TASK_PRESETS) as TaskName[];

/** The task settings as the settings table holds them: a preset and the parts set explicitly. */
export interface TaskSettings {
  task: string;
  extractor?: string;
  chatTemplate?: boolean;
  system?: string;
  maxNewTokens?: number;
}

/**
 * The preset's parts with the explicit ones on top. With the chat template off the prompt
 * is the raw question, so a preset's system prompt is dropped, and an explicit --system is
 * an error rather than text silently not sent.
 */
export function resolveTaskParts(s: TaskSettings): TaskParts {
  const preset = (TASK_PRESETS as Record<string, TaskParts>)[s.task];
  if (!preset) throw new Error(`unknown task ${JSON.stringify(s.task)}; one of: ${TASK_NAMES.join(', ')}`);
  const chatTemplate = s.chatTemplate ?? preset.chatTemplate;
  if (!chatTemplate && s.system) throw new Error(`--system needs the chat template: with --chat-template off the model reads the raw question`);
  extractor(s.extractor ?? preset.extractor); // the name is checked here, before a model loads
  return {
    extractor: s.extractor ?? preset.extractor,
    chatTemplate,
    system: chatTemplate ? (s.system ?? preset.system) : '',
    maxNewTokens: s.maxNewTokens ?? preset.maxNewTokens,
  };
}

export class Task {
  readonly extractor: Extractor;
  readonly maxNewTokens: number;

  /** `template` is required when parts.chatTemplate is on. */
  constructor(
    readonly name: string,
    readonly parts: TaskParts,
    private readonly template?: ChatTemplate,
  ) {
    if (parts.chatTemplate && !template) throw new Error(`task ${name}: the chat template is on but no template was given`);
    this.extractor = extractor(parts.extractor);
    this.maxNewTokens = parts.maxNewTokens;
  }

  /** The text the model reads for a question. */
  promptText(question: string): string {
    if (!this.template) return question;
    const messages: ChatMessage[] = this.parts.system ? [{ role: 'system', content: this.parts.system }] : [];
    return this.template.render([...messages, { role: 'user', content: question }]);
  }

  /**
   * The prompt's token ids. A raw question is encoded as any text is (the tokenizer adds
   * its own BOS, as transformers' tokenizer(text) does); a rendered template is encoded
   * without the tokenizer's special tokens, as apply_chat_template does, because the
   * template writes its own (Llama 3's starts with <|begin_of_text|>: one BOS, not two).
   */
  encode(tok: Tokenizer, question: string): number[] {
    return this.template ? tok.encode(this.promptText(question), { specialTokens: false }) : tok.encode(question);
  }

  /** The canonical answer a completion states, or null. */
  answer(completion: string): string | null {
    return normalizeAnswer(this.extractor.extract(completion));
  }
}

/** Today's default: the shipped model's arithmetic chains, raw prompts. */
export const ARITHMETIC_TASK = new Task('arithmetic', resolveTaskParts({ task: 'arithmetic' }));

/**
 * The Task for a deployment's settings and the model it serves (`where`: the model's path,
 * for errors). The chat template comes from the tokenizer's tokenizer_config.json; a model
 * without one (the shipped model, stories260K) can only take raw prompts.
 */
export function taskFromSettings(s: TaskSettings, tokenizer: Tokenizer, where = 'the model'): Task {
  const parts = resolveTaskParts(s);
  if (!parts.chatTemplate) return new Task(s.task, parts);
  const config = tokenizer instanceof HFTokenizer ? tokenizer.config : undefined;
  const text = config ? chatTemplateText(config, `${where}: tokenizer_config.json`) : undefined;
  if (!config || text === undefined)
    throw new Error(
      `task ${s.task}: ${where} has no chat template (no chat_template in its tokenizer_config.json); use --chat-template off to give it the raw question`,
    );
  return new Task(s.task, parts, new ChatTemplate(text, config, `${where}: tokenizer_config.json`));
}
