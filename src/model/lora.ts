// LoRA adapters for any family: which modules get them, their tensors and PEFT's init, the
// merge into full weights, and their files (our adapter file, and PEFT's layout so Hugging
// Face and vLLM tools load them). The forward pass itself is lora-linear.ts.
//
// Names are PEFT's without the `base_model.model.` prefix: `${module}.lora_A.weight` [r, in]
// and `${module}.lora_B.weight` [out, r] whatever the family's weight layout; the update is
// W + (alpha / r) * B @ A in [out, in] terms (for GPT's [in, out] weights, its transpose:
// PEFT's fan_in_fan_out).
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/atomic-write.ts';
import type { Rng } from '../util/rng.ts';
import { initWeights, type ParamSpec, type Weights } from './family.ts';
import { familyOf, paramSpecsOf, type ModelConfig } from './families.ts';
import { widenToFloat32 } from '../formats/float16.ts';
import { loraA, loraB } from './lora-linear.ts';
import { encodeSafetensors, readSafetensors, writeSafetensors, type NamedTensor, type SafetensorsContents } from '../formats/safetensors.ts';

export { loraA, loraB };

export interface LoraConfig {
  rank: number;
  alpha: number;
  /** Module names (or suffixes of them: `q_proj` targets every layer's self_attn.q_proj). */
  targets: string[];
}

/** One adapted module: its full name and the sizes of its weight. */
export interface LoraModule {
  module: string;
  in: number;
  out: number;
}

export const loraScale = (l: LoraConfig) => l.alpha / l.rank;

/** A complete config from what a user gives: alpha defaults to 2 * rank (PEFT's examples), targets to the family's projections. */
export function loraConfigFor(c: ModelConfig, o: { rank: number; alpha?: number; targets?: string[] }): LoraConfig {
  const l = { rank: o.rank, alpha: o.alpha ?? 2 * o.rank, targets: o.targets ?? familyOf(c).loraTargets };
  loraModules(c, l);
  return l;
}

/** Every module the config adapts, in parameter order; throws on a bad rank or alpha, or a target that adapts nothing. */
export function loraModules(c: ModelConfig, l: LoraConfig): LoraModule[] {
  if (!Number.isInteger(l.rank) || l.rank < 1) throw new Error(`lora: rank must be an integer >= 1, got ${l.rank}`);
  if (!(Number.isFinite(l.alpha) && l.alpha > 0)) throw new Error(`lora: alpha must be a number > 0, got ${l.alpha}`);
  if (!Array.isArray(l.targets) || !l.targets.length || !l.targets.every((t) => typeof t === 'string' && t))
    throw new Error('lora: targets must be a non-empty list of module names');
  const family = familyOf(c);
  const matches = (module: string, t: string) => module === t || module.endsWith(`.${t}`);
  const linear = (module: string) => family.linearModules.some((m) => matches(module, m));
  const out: LoraModule[] = [];
  const used = new Set<string>();
  for (const s of paramSpecsOf(c)) {
    if (!s.name.endsWith('.weight') || s.shape.length !== 2) continue;
    const module = s.name.slice(0, -'.weight'.length);
    const hit = l.targets.filter((t) => matches(module, t));
    if (!hit.length || !linear(module)) continue;
    hit.forEach((t) => used.add(t));
    const [a, b] = s.shape as [number, number];
    out.push(family.weightLayout === 'out-in' ? { module, in: b, out: a } : { module, in: a, out: b });
  }
  const unused = l.targets.filter((t) => !used.has(t));
  if (unused.length)
    throw new Error(
      `lora: target ${unused.map((t) => JSON.stringify(t)).join(', ')} matches no linear module of this ${c.family} model (adaptable: ${family.linearModules.join(', ')})`,
    );
  return out;
}

/**
 * The adapter tensors as parameters, PEFT's init: A kaiming-uniform with a = sqrt(5), which
 * is uniform(+-1/sqrt(in)); B zeros, so a fresh adapter changes nothing.
 */
export function loraSpecs(c: ModelConfig, l: LoraConfig): ParamSpec[] {
  return loraModules(c, l).flatMap((m) => [
    { name: loraA(m.module), shape: [l.rank, m.in], decay: true, init: 'uniform', bound: 1 / Math.sqrt(m.in) } satisfies ParamSpec,
    { name: loraB(m.module), shape: [m.out, l.rank], decay: true, init: 'zeros' } satisfies ParamSpec,
  ]);
}

export function initAdapters(c: ModelConfig, l: LoraConfig, rng: Rng): Weights {
  return initWeights(loraSpecs(c, l), rng);
}

const sizeOf = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** Throws unless `a` holds exactly the config's adapters at their sizes (`where` names the source in the message). */
export function checkAdapters(c: ModelConfig, l: LoraConfig, a: Weights, where = 'adapters'): void {
  const specs = loraSpecs(c, l);
  for (const s of specs) {
    const t = a.get(s.name);
    if (!t) throw new Error(`${where}: missing tensor ${s.name}`);
    if (t.length !== sizeOf(s.shape)) throw new Error(`${where}: tensor ${s.name} has ${t.length} values, expected [${s.shape}] (rank ${l.rank})`);
  }
  const known = new Set(specs.map((s) => s.name));
  for (const name of a.keys()) if (!known.has(name)) throw new Error(`${where}: unexpected tensor ${name} (not an adapter of targets ${l.targets.join(', ')})`);
}

/**
 * Full weights with the adapters folded in: W' = W + scale * B @ A (transposed for [in, out]
 * layouts). Modules without adapters share the base arrays; adapted ones are new arrays.
 */
export function mergeAdapters(c: ModelConfig, l: LoraConfig, base: Weights, adapters: Weights): Weights {
  checkAdapters(c, l, adapters);
  const outIn = familyOf(c).weightLayout === 'out-in';
  const scale = loraScale(l);
  const r = l.rank;
  const merged: Weights = new Map(base);
  for (const m of loraModules(c, l)) {
    const name = `${m.module}.weight`;
    const W = base.get(name);
    if (!W || W.length !== m.in * m.out) throw new Error(`lora merge: base weight ${name} missing or of the wrong size`);
    const A = adapters.get(loraA(m.module))!; // [r, in]
    const B = adapters.get(loraB(m.module))!; // [out, r]
    const Wm = Float32Array.from(W);
    if (outIn)
      for (let o = 0; o < m.out; o++)
        for (let k = 0; k < r; k++) {
          const b = scale * B[o * r + k]!;
          if (b === 0) continue;
          const row = o * m.in;
          for (let i = 0; i < m.in; i++) Wm[row + i]! += b * A[k * m.in + i]!;
        }
    else {
      // [in, out]: W[i][o] += scale * sum_k A[k][i] B[o][k]; B transposed once so the inner loop is contiguous.
      const Bt = new Float32Array(r * m.out);
      for (let o = 0; o < m.out; o++) for (let k = 0; k < r; k++) Bt[k * m.out + o] = B[o * r + k]!;
      for (let i = 0; i < m.in; i++)
        for (let k = 0; k < r; k++) {
          const a = scale * A[k * m.in + i]!;
          if (a === 0) continue;
          const row = i * m.out;
          for (let o = 0; o < m.out; o++) Wm[row + o]! += a * Bt[k * m.out + o]!;
        }
    }
    merged.set(name, Wm);
  }
  return merged;
}

// ---------- files ----------

/** What an adapter file holds besides its tensors. */
export interface AdapterFile {
  lora: LoraConfig;
  /** The caller's identity string of the base model (e.g. its path and hash): adapters only mean something on it. */
  baseModel: string;
  adapters: Weights;
}

/** The metadata format of our adapter files (a version's adapters). */
export const ADAPTER_FORMAT = 'ttrl-lora/1';

function tensorsOf(c: ModelConfig, l: LoraConfig, a: Weights, prefix = ''): Map<string, NamedTensor> {
  checkAdapters(c, l, a);
  return new Map(loraSpecs(c, l).map((s) => [prefix + s.name, { dtype: 'F32', shape: s.shape, data: a.get(s.name)! }]));
}

/** Our adapter file: a safetensors file of the adapters, the config and the base identity in its metadata (plus `extra` metadata). */
export function encodeAdapterFile(c: ModelConfig, f: AdapterFile, extra: Record<string, string> = {}): Buffer {
  const meta = {
    format: ADAPTER_FORMAT,
    rank: String(f.lora.rank),
    alpha: String(f.lora.alpha),
    targets: JSON.stringify(f.lora.targets),
    base_model: f.baseModel,
  };
  return encodeSafetensors(tensorsOf(c, f.lora, f.adapters), { ...meta, ...extra });
}

export async function writeAdapterFile(path: string, c: ModelConfig, f: AdapterFile): Promise<void> {
  await writeFileAtomic(path, encodeAdapterFile(c, f));
}

/** Reads an adapter file for model `c`; `expect` (when given) must match its rank, alpha and targets. */
export async function readAdapterFile(path: string, c: ModelConfig, expect?: LoraConfig): Promise<AdapterFile> {
  const contents = await readSafetensors(path).catch((e) => {
    throw new Error(`adapter file ${path}: ${(e as Error).message}`);
  });
  return adapterFileOf(path, contents, c, expect);
}

/** An adapter file's contents already read (e.g. bytes verified by their hash); `path` names it in errors. */
export function adapterFileOf(path: string, { tensors, metadata: m }: SafetensorsContents, c: ModelConfig, expect?: LoraConfig): AdapterFile {
  if (m.format !== ADAPTER_FORMAT) throw new Error(`adapter file ${path}: metadata format is ${JSON.stringify(m.format)}, expected "${ADAPTER_FORMAT}"`);
  let targets: unknown;
  try {
    targets = JSON.parse(m.targets ?? '');
  } catch {
    throw new Error(`adapter file ${path}: metadata targets is not a JSON list`);
  }
  const lora = { rank: Number(m.rank), alpha: Number(m.alpha), targets: targets as string[] };
  return { lora, baseModel: m.base_model ?? '', adapters: adaptersFrom(path, c, lora, tensors, '', expect) };
}

function adaptersFrom(path: string, c: ModelConfig, lora: LoraConfig, tensors: Map<string, NamedTensor>, prefix: string, expect?: LoraConfig): Weights {
  try {
    loraModules(c, lora);
  } catch (e) {
    throw new Error(`adapter file ${path}: ${(e as Error).message}`);
  }
  if (expect) {
    if (expect.rank !== lora.rank) throw new Error(`adapter file ${path}: rank mismatch: the file has rank ${lora.rank}, expected ${expect.rank}`);
    if (expect.alpha !== lora.alpha) throw new Error(`adapter file ${path}: alpha mismatch: the file has ${lora.alpha}, expected ${expect.alpha}`);
    if ([...expect.targets].sort().join() !== [...lora.targets].sort().join())
      throw new Error(`adapter file ${path}: targets [${lora.targets}] differ from the expected [${expect.targets}]`);
  }
  const out: Weights = new Map();
  const specs = loraSpecs(c, lora);
  for (const s of specs) {
    const t = tensors.get(prefix + s.name);
    if (!t) throw new Error(`adapter file ${path}: missing tensor ${prefix + s.name}`);
    if (t.shape.join() !== s.shape.join())
      throw new Error(`adapter file ${path}: tensor ${prefix + s.name} has shape [${t.shape}], expected [${s.shape}] (rank ${lora.rank})`);
    if (t.dtype === 'F32') out.set(s.name, t.data as Float32Array);
    else if (t.dtype === 'F16' || t.dtype === 'BF16') out.set(s.name, widenToFloat32(t.data as Uint16Array, t.dtype));
    else throw new Error(`adapter file ${path}: tensor ${prefix + s.name} is ${t.dtype}; adapters are F32, F16 or BF16`);
  }
  const known = new Set(specs.map((s) => prefix + s.name));
  for (const name of tensors.keys()) if (!known.has(name)) throw new Error(`adapter file ${path}: unexpected tensor ${name}`);
  return out;
}

// ---------- PEFT's layout ----------

export const PEFT_CONFIG = 'adapter_config.json';
export const PEFT_WEIGHTS = 'adapter_model.safetensors';
const PEFT_PREFIX = 'base_model.model.';

/** adapter_config.json and adapter_model.safetensors in `dir`, as PEFT's save_pretrained writes them. */
export async function writePeftAdapter(dir: string, c: ModelConfig, f: AdapterFile): Promise<void> {
  await mkdir(dir, { recursive: true });
  const config = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: f.baseModel,
    r: f.lora.rank,
    lora_alpha: f.lora.alpha,
    target_modules: f.lora.targets,
    lora_dropout: 0,
    bias: 'none',
    fan_in_fan_out: familyOf(c).weightLayout === 'in-out',
    use_rslora: false,
    use_dora: false,
    init_lora_weights: true,
    inference_mode: true,
    modules_to_save: null,
    rank_pattern: {},
    alpha_pattern: {},
  };
  await writeSafetensors(join(dir, PEFT_WEIGHTS), tensorsOf(c, f.lora, f.adapters, PEFT_PREFIX), { format: 'pt' });
  await writeFileAtomic(join(dir, PEFT_CONFIG), JSON.stringify(config, null, 2) + '\n');
}

/** A PEFT LoRA adapter directory for model `c` (ours or a user's); what we cannot apply exactly is refused. */
export async function readPeftAdapter(dir: string, c: ModelConfig, expect?: LoraConfig): Promise<AdapterFile> {
  const cfgPath = join(dir, PEFT_CONFIG);
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(await readFile(cfgPath, 'utf8'));
  } catch (e) {
    throw new Error(`${cfgPath}: ${(e as Error).message}`);
  }
  const bad = (field: string, why: string) => new Error(`${cfgPath}: ${field} ${JSON.stringify(raw[field])} ${why}`);
  if (raw.peft_type !== 'LORA') throw bad('peft_type', 'is not supported (LORA only)');
  if (typeof raw.r !== 'number') throw bad('r', 'must be a number');
  if (typeof raw.lora_alpha !== 'number') throw bad('lora_alpha', 'must be a number');
  let targets = raw.target_modules;
  if (typeof targets === 'string') throw bad('target_modules', 'is a regular expression; give a list of module names');
  if (!Array.isArray(targets)) throw bad('target_modules', 'must be a list of module names');
  targets = [...targets].sort();
  if ((raw.bias ?? 'none') !== 'none') throw bad('bias', 'is not supported (none only)');
  if (raw.use_rslora) throw bad('use_rslora', 'is not supported');
  if (raw.use_dora) throw bad('use_dora', 'is not supported');
  for (const f of ['rank_pattern', 'alpha_pattern'])
    if (raw[f] && Object.keys(raw[f] as object).length) throw bad(f, 'is not supported (one rank and alpha for every module)');
  if (raw.modules_to_save && (raw.modules_to_save as unknown[]).length) throw bad('modules_to_save', 'is not supported (adapters only)');
  if (raw.layers_to_transform !== undefined && raw.layers_to_transform !== null) throw bad('layers_to_transform', 'is not supported');
  const fanInFanOut = familyOf(c).weightLayout === 'in-out';
  if ((raw.fan_in_fan_out ?? false) !== fanInFanOut)
    throw bad('fan_in_fan_out', `does not match this ${c.family} model's weight layout (expected ${fanInFanOut})`);
  const lora: LoraConfig = { rank: raw.r, alpha: raw.lora_alpha, targets: targets as string[] };
  const weightsPath = join(dir, PEFT_WEIGHTS);
  const { tensors } = await readSafetensors(weightsPath).catch((e) => {
    throw new Error(`${weightsPath}: ${(e as Error).message}`);
  });
  const base = typeof raw.base_model_name_or_path === 'string' ? raw.base_model_name_or_path : '';
  return { lora, baseModel: base, adapters: adaptersFrom(weightsPath, c, lora, tensors, PEFT_PREFIX, expect) };
}
