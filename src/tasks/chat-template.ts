// A model's chat template (tokenizer_config.json's `chat_template`), rendered with
// @huggingface/jinja the way transformers' apply_chat_template renders it: trim_blocks and
// lstrip_blocks on, the messages, add_generation_prompt, and the special tokens as strings
// (bos_token, eos_token, unk_token, pad_token; a token that is null is left undefined, as
// transformers leaves it out). Templates that call strftime_now get today's date, as
// they do in transformers.
import { Template } from '@huggingface/jinja';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

type JsonObject = Record<string, unknown>;

/** A special token of tokenizer_config.json: a string, or an AddedToken object with `content`. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as JsonObject).content === 'string') return (v as JsonObject).content as string;
  return undefined;
}

/**
 * The template text of a tokenizer_config.json: `chat_template` as a string, or from a list
 * of {name, template} the one named "default" (what transformers uses without a name).
 * Undefined when the model has none; throws, naming `where`, when the field is malformed.
 */
export function chatTemplateText(config: JsonObject, where: string): string | undefined {
  const t = config.chat_template;
  if (t === undefined || t === null) return undefined;
  if (typeof t === 'string') return t;
  if (Array.isArray(t)) {
    const named = t.filter(
      (x): x is { name: string; template: string } => !!x && typeof x === 'object' && typeof x.name === 'string' && typeof x.template === 'string',
    );
    if (named.length !== t.length) throw new Error(`${where}: chat_template is a list whose entries are not all {"name": ..., "template": ...}`);
    const d = named.find((x) => x.name === 'default');
    if (!d) throw new Error(`${where}: chat_template lists templates ${named.map((x) => JSON.stringify(x.name)).join(', ')} but none named "default"`);
    return d.template;
  }
  throw new Error(`${where}: chat_template must be a string or a list of {"name", "template"}, not ${typeof t}`);
}

export class ChatTemplate {
  private readonly template: Template;
  private readonly specialTokens: Record<string, string>;

  /** `config` is the tokenizer_config.json the template came from (its special tokens); `where` names it in errors. */
  constructor(
    readonly text: string,
    config: JsonObject,
    private readonly where: string,
  ) {
    try {
      this.template = new Template(text);
    } catch (e) {
      throw new Error(`${where}: chat_template cannot be parsed: ${(e as Error).message}`);
    }
    this.specialTokens = {};
    for (const k of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) {
      const v = tokenText(config[k]);
      if (v !== undefined) this.specialTokens[k] = v;
    }
  }

  /** The text a model reads for these messages; with the generation prompt it ends where the assistant's answer begins. */
  render(messages: ChatMessage[], addGenerationPrompt = true): string {
    try {
      return this.template.render({ messages, add_generation_prompt: addGenerationPrompt, ...this.specialTokens });
    } catch (e) {
      throw new Error(`${this.where}: chat_template failed to render: ${(e as Error).message}`);
    }
  }
}
