// How each kind of inference server is asked for samples and adapters: the request it takes
// and what its answer holds. One table per API, as each documents itself:
//
//   vllm      vLLM's OpenAI server (and ttrl-server's own /v1 routes, which spell it alike):
//             POST {base}/completions with the prompt as token ids, n, seed, logprobs: 0 and
//             return_token_ids; the answer's choices carry token_ids and logprobs.token_logprobs.
//             Adapters: POST {base}/load_lora_adapter {lora_name, lora_path} and
//             /unload_lora_adapter {lora_name} (vLLM needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).
//   sglang    SGLang's native POST {root}/generate: input_ids, sampling_params (one sample per
//             request: its docs discourage n > 1, so each vote is a request with its own
//             sampling_seed), return_logprob; the answer's meta_info.output_token_logprobs holds
//             [logprob, token id, text] per token. Adapters: POST {root}/load_lora_adapter and
//             /unload_lora_adapter; a request names one by lora_path.
//   llamacpp  llama.cpp's llama-server, POST {root}/completion: the prompt as token ids,
//             n_predict, seed, n_probs 1 and return_tokens (one sample per request: it takes no
//             n); the answer's tokens and completion_probabilities[].logprob. top_k and min_p are
//             switched off (its defaults are 40 and 0.05) so that it samples the policy we train.
//             It loads adapters only at start (--lora), so versions cannot be published to it.
//
// {base} is the URL given (…/v1); {root} is it without a trailing /v1.
import type { Completion } from '../engine/sampler.ts';

export type ApiName = 'vllm' | 'sglang' | 'llamacpp';

/** One prompt's draw: what every API is asked, in our terms. */
export interface Draw {
  prompt: number[];
  /** Samples wanted from this request. */
  n: number;
  seed: number;
  temperature: number;
  topP: number;
  maxTokens: number;
  stopTokens: number[];
  /** The base model's name, or an adapter's. */
  model: string;
  /** Whether `model` names an adapter (SGLang and llama.cpp select adapters otherwise than by model). */
  adapter: boolean;
}

export interface HttpCall {
  path: string;
  body: Record<string, unknown>;
}

export interface Dialect {
  name: ApiName;
  /** Takes n > 1 in one request; otherwise each vote is a request with its own seed. */
  takesN: boolean;
  /** Can load and unload LoRA adapters at run time (publishing versions needs it). */
  loadsAdapters: boolean;
  draw(d: Draw): HttpCall;
  /** The samples in an answer, in order; a sample's tokens are [] where the API gave no ids (then `text` is all there is). */
  samples(body: unknown, d: Draw): (Completion & { text: string })[];
  /** GET this for the models (and with vLLM the adapters) served: OpenAI's list. */
  modelsPath: string;
  loadAdapter(name: string, path: string): HttpCall;
  unloadAdapter(name: string): HttpCall;
}

/** A malformed answer from an upstream: a failure of that upstream, retried elsewhere. */
export class BadUpstreamAnswer extends Error {}

const obj = (v: unknown, what: string): Record<string, unknown> => {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new BadUpstreamAnswer(`${what} is not an object`);
  return v as Record<string, unknown>;
};
const arr = (v: unknown, what: string): unknown[] => {
  if (!Array.isArray(v)) throw new BadUpstreamAnswer(`${what} is not a list`);
  return v;
};
const ids = (v: unknown, what: string): number[] => arr(v, what).map((x) => (Number.isInteger(x) ? (x as number) : bad(`${what} holds a non-integer`)));
const nums = (v: unknown, what: string): number[] =>
  arr(v, what).map((x) => (typeof x === 'number' && Number.isFinite(x) ? x : x === null ? NaN : bad(`${what} holds a non-number`)));
function bad(why: string): never {
  throw new BadUpstreamAnswer(why);
}

/** Whether a sample ended on a stop token (else it ran out of tokens). */
const endsOnStop = (tokens: number[], stop: number[]) => tokens.length > 0 && stop.includes(tokens.at(-1)!);

const VLLM: Dialect = {
  name: 'vllm',
  takesN: true,
  loadsAdapters: true,
  modelsPath: '/models',
  draw: (d) => ({
    path: '/completions',
    body: {
      model: d.model,
      prompt: d.prompt,
      n: d.n,
      seed: d.seed,
      temperature: d.temperature,
      top_p: d.topP,
      max_tokens: d.maxTokens,
      stop_token_ids: d.stopTokens,
      logprobs: 0,
      return_token_ids: true,
    },
  }),
  samples(body, d) {
    const choices = arr(obj(body, 'the answer').choices, 'choices');
    if (choices.length !== d.n) bad(`${choices.length} choices for n = ${d.n}`);
    const out = choices.map((c) => {
      const choice = obj(c, 'a choice');
      const text = typeof choice.text === 'string' ? choice.text : bad('a choice has no text');
      const index = Number.isInteger(choice.index) ? (choice.index as number) : 0;
      const tokens = choice.token_ids === undefined || choice.token_ids === null ? [] : ids(choice.token_ids, 'token_ids');
      const lp = choice.logprobs ? nums(obj(choice.logprobs, 'logprobs').token_logprobs, 'token_logprobs') : [];
      if (tokens.length && lp.length && lp.length !== tokens.length) bad(`${lp.length} log-probs for ${tokens.length} tokens`);
      const stopped = tokens.length ? endsOnStop(tokens, d.stopTokens) : choice.finish_reason === 'stop';
      return { index, sample: { tokens, logprobs: lp, stopped, text } };
    });
    return out.sort((a, b) => a.index - b.index).map((c) => c.sample);
  },
  loadAdapter: (name, path) => ({ path: '/load_lora_adapter', body: { lora_name: name, lora_path: path } }),
  unloadAdapter: (name) => ({ path: '/unload_lora_adapter', body: { lora_name: name } }),
};

const SGLANG: Dialect = {
  name: 'sglang',
  takesN: false,
  loadsAdapters: true,
  modelsPath: '/models',
  draw: (d) => ({
    path: '@root/generate',
    body: {
      input_ids: d.prompt,
      sampling_params: {
        temperature: d.temperature,
        top_p: d.topP,
        top_k: -1,
        min_p: 0,
        max_new_tokens: d.maxTokens,
        stop_token_ids: d.stopTokens,
        sampling_seed: d.seed,
        skip_special_tokens: false,
      },
      return_logprob: true,
      ...(d.adapter ? { lora_path: d.model } : {}),
    },
  }),
  samples(body) {
    const b = obj(body, 'the answer');
    const meta = obj(b.meta_info, 'meta_info');
    const triples = arr(meta.output_token_logprobs, 'meta_info.output_token_logprobs').map((t) => arr(t, 'an output token log-prob'));
    const tokens =
      b.output_ids !== undefined ? ids(b.output_ids, 'output_ids') : triples.map((t) => (Number.isInteger(t[1]) ? (t[1] as number) : bad('a token id')));
    const logprobs = triples.map((t) => (typeof t[0] === 'number' ? t[0] : bad('a log-prob')));
    if (logprobs.length !== tokens.length) bad(`${logprobs.length} log-probs for ${tokens.length} tokens`);
    const finish = meta.finish_reason ? obj(meta.finish_reason, 'finish_reason').type : undefined;
    return [{ tokens, logprobs, stopped: finish === 'stop', text: typeof b.text === 'string' ? b.text : '' }];
  },
  loadAdapter: (name, path) => ({ path: '@root/load_lora_adapter', body: { lora_name: name, lora_path: path } }),
  unloadAdapter: (name) => ({ path: '@root/unload_lora_adapter', body: { lora_name: name } }),
};

function noRuntimeAdapters(): never {
  throw new Error("llama.cpp's server loads adapters only at start (--lora): versions cannot be published to it");
}

const LLAMACPP: Dialect = {
  name: 'llamacpp',
  takesN: false,
  loadsAdapters: false,
  modelsPath: '/models',
  draw: (d) => ({
    path: '@root/completion',
    body: {
      prompt: d.prompt,
      n_predict: d.maxTokens,
      temperature: d.temperature,
      top_p: d.topP,
      top_k: 0,
      min_p: 0,
      seed: d.seed,
      n_probs: 1,
      return_tokens: true,
      cache_prompt: true,
    },
  }),
  samples(body, d) {
    const b = obj(body, 'the answer');
    const tokens = ids(b.tokens, 'tokens');
    const probs = b.completion_probabilities === undefined ? [] : arr(b.completion_probabilities, 'completion_probabilities');
    const logprobs = probs.map((p) => {
      const lp = obj(p, 'a completion probability').logprob;
      return typeof lp === 'number' ? lp : bad('a completion probability has no logprob');
    });
    if (logprobs.length && logprobs.length !== tokens.length) bad(`${logprobs.length} log-probs for ${tokens.length} tokens`);
    const stopped = b.stop_type === 'eos' || endsOnStop(tokens, d.stopTokens);
    return [{ tokens, logprobs, stopped, text: typeof b.content === 'string' ? b.content : '' }];
  },
  loadAdapter: noRuntimeAdapters,
  unloadAdapter: noRuntimeAdapters,
};

export const DIALECTS: Record<ApiName, Dialect> = { vllm: VLLM, sglang: SGLANG, llamacpp: LLAMACPP };

/** The URL of a call: paths starting with @root/ are off the server's root (the base without /v1). */
export function urlOf(base: string, path: string): string {
  const b = base.replace(/\/+$/, '');
  if (!path.startsWith('@root/')) return b + path;
  return b.replace(/\/v1$/, '') + path.slice('@root'.length);
}

/** The ids of GET /models (OpenAI's list); vLLM lists loaded adapters there too, with their `root` path. */
export function modelIds(body: unknown): { id: string; root?: string }[] {
  const data = arr(obj(body, 'the model list').data, 'data');
  return data.map((m) => {
    const o = obj(m, 'a model');
    if (typeof o.id !== 'string') bad('a model has no id');
    return { id: o.id, ...(typeof o.root === 'string' ? { root: o.root } : {}) };
  });
}
