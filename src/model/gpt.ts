// A GPT-style decoder (nanoGPT shape): learned position embeddings, pre-LayerNorm blocks,
// causal self-attention, GELU MLP, tied or untied head. Weight names and [in, out] layouts
// follow GPT-2. Our own format (config.json with architecture "gpt"); the shipped model is one.
import type { Tensor } from '../graph/ir.ts';
import * as op from '../graph/ops.ts';
import { attend, splitHeads } from './attention.ts';
import { loraLinear } from './lora-linear.ts';
import { gatherWeightRows, timesWeight } from '../graph/quantized.ts';
import type { ForwardInput, KV, ModelFamily, ParamSpec, Params } from './family.ts';

export interface GPTConfig {
  family: 'gpt';
  vocabSize: number;
  contextLength: number;
  dModel: number;
  nLayers: number;
  nHeads: number;
  tiedHead: boolean;
  /** A token the model never predicts (padding): its logit is masked in every graph. */
  padTokenId?: number;
}

function paramSpecs(c: GPTConfig): ParamSpec[] {
  const d = c.dModel;
  const w = (name: string, shape: number[], std = 0.02): ParamSpec => ({ name, shape, decay: true, init: 'normal', std });
  const b = (name: string, n: number): ParamSpec => ({ name, shape: [n], decay: false, init: 'zeros' });
  const ln = (name: string): ParamSpec[] => [{ name: `${name}.weight`, shape: [d], decay: false, init: 'ones' }, b(`${name}.bias`, d)];
  const projStd = 0.02 / Math.sqrt(2 * c.nLayers); // GPT-2: residual projections scaled by depth
  const specs: ParamSpec[] = [
    { ...w('wte', [c.vocabSize, d]), decay: false },
    { ...w('wpe', [c.contextLength, d], 0.01), decay: false },
  ];
  for (let i = 0; i < c.nLayers; i++) {
    const h = `h.${i}`;
    specs.push(
      ...ln(`${h}.ln_1`),
      w(`${h}.attn.c_attn.weight`, [d, 3 * d]),
      b(`${h}.attn.c_attn.bias`, 3 * d),
      w(`${h}.attn.c_proj.weight`, [d, d], projStd),
      b(`${h}.attn.c_proj.bias`, d),
      ...ln(`${h}.ln_2`),
      w(`${h}.mlp.c_fc.weight`, [d, 4 * d]),
      b(`${h}.mlp.c_fc.bias`, 4 * d),
      w(`${h}.mlp.c_proj.weight`, [4 * d, d], projStd),
      b(`${h}.mlp.c_proj.bias`, d),
    );
  }
  specs.push(...ln('ln_f'));
  if (!c.tiedHead) specs.push(w('lm_head.weight', [d, c.vocabSize]));
  return specs;
}

function forward(c: GPTConfig, p: Params, x: ForwardInput): { hidden: Tensor; present: KV[] } {
  const [d, H] = [c.dModel, c.nHeads];
  const dh = d / H;
  const heads = (t: Tensor) => splitHeads(t, x.ids, H, dh);
  const linear = (t: Tensor, name: string) => loraLinear(p, t, name, timesWeight(t, p[`${name}.weight`]!, false, p[`${name}.bias`]!), x.loraScale);
  const norm = (t: Tensor, name: string) => op.layerNorm(t, p[`${name}.weight`]!, p[`${name}.bias`]!);

  let h = op.reshape(op.add(gatherWeightRows(p.wte!, x.ids), op.gather(p.wpe!, x.positions)), [-1, d]);
  const present: KV[] = [];
  for (let i = 0; i < c.nLayers; i++) {
    const L = `h.${i}`;
    const [qs, ks, vs] = op.split(linear(norm(h, `${L}.ln_1`), `${L}.attn.c_attn`), [d, d, d], 1);
    let k = heads(ks!);
    if (x.keysTransposed) k = op.transpose(k, [0, 1, 3, 2]);
    let v = heads(vs!);
    const past = x.past?.[i];
    if (past) {
      k = op.concat([past.k, k], x.keysTransposed ? 3 : 2);
      v = op.concat([past.v, v], 2);
    }
    present.push({ k, v });
    const att = attend(heads(op.mul(qs!, 1 / Math.sqrt(dh))), k, v, x.bias, { heads: H, kvHeads: H, headDim: dh }, x.keysTransposed);
    h = op.add(h, linear(att, `${L}.attn.c_proj`));
    h = op.add(h, linear(op.gelu(linear(norm(h, `${L}.ln_2`), `${L}.mlp.c_fc`)), `${L}.mlp.c_proj`));
  }
  return { hidden: norm(h, 'ln_f'), present };
}

function head(c: GPTConfig, p: Params, hidden: Tensor): Tensor {
  return c.tiedHead ? timesWeight(hidden, p.wte!, true) : timesWeight(hidden, p['lm_head.weight']!, false);
}

export const gpt: ModelFamily<GPTConfig> = {
  dims: (c) => ({
    vocabSize: c.vocabSize,
    contextLength: c.contextLength,
    hiddenSize: c.dModel,
    layers: c.nLayers,
    kvHeads: c.nHeads,
    headDim: c.dModel / c.nHeads,
    neverPredict: c.padTokenId,
  }),
  paramSpecs,
  forward,
  head,
  fusable: false,
  weightLayout: 'in-out',
  linearModules: ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'],
  loraTargets: ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'],
  // The token embedding [V, d] (gathered, and the tied head) as it is; the Conv1D weights and
  // an untied head [in, out] transposed. Position embeddings are gathered by position and stay float.
  quantizable: (c) =>
    new Map(
      paramSpecs(c).flatMap((s): [string, 'out-in' | 'in-out'][] =>
        s.name === 'wte' ? [[s.name, 'out-in']] : s.shape.length === 2 && s.name !== 'wpe' ? [[s.name, 'in-out']] : [],
      ),
    ),
};
