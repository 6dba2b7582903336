// The tensor-graph IR: typed, shaped values produced by nodes of standard ONNX ops.
// A Graph is built by calling op builders (ops.ts); autodiff.ts walks it backwards;
// onnx.ts serialises it. Subgraphs (Loop bodies) are Graphs with a parent.

export type DType = 'float32' | 'float64' | 'int64' | 'int32' | 'uint8' | 'bool';
/** A dimension: a known size, or a symbolic name ("batch", "sequence"). */
export type Dim = number | string;
export type Shape = Dim[];

export type TypedArray = Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array;

/** A constant tensor value, embedded in the graph. */
export interface ConstValue {
  dtype: DType;
  shape: number[];
  data: TypedArray;
}

export type Attr =
  | { type: 'int'; value: number }
  | { type: 'float'; value: number }
  | { type: 'ints'; value: number[] }
  | { type: 'floats'; value: number[] }
  | { type: 'string'; value: string }
  | { type: 'tensor'; value: ConstValue }
  | { type: 'graph'; value: Graph };

export const attr = {
  int: (value: number): Attr => ({ type: 'int', value }),
  float: (value: number): Attr => ({ type: 'float', value }),
  ints: (value: number[]): Attr => ({ type: 'ints', value }),
  floats: (value: number[]): Attr => ({ type: 'floats', value }),
  string: (value: string): Attr => ({ type: 'string', value }),
  tensor: (value: ConstValue): Attr => ({ type: 'tensor', value }),
  graph: (value: Graph): Attr => ({ type: 'graph', value }),
};

let nextId = 0;

export class Tensor {
  readonly id = nextId++;
  /** The name it gets when none is given (a value no one has named). */
  readonly autoName = `t${this.id}`;
  /** The node that produced this value; undefined for graph inputs. */
  producer?: Node;
  name: string;
  constructor(
    readonly graph: Graph,
    readonly dtype: DType,
    readonly shape: Shape,
    name?: string,
  ) {
    this.name = name ?? this.autoName;
  }
  get rank(): number {
    return this.shape.length;
  }
  /** The constant value, when this tensor comes straight from a Constant node. */
  get constant(): ConstValue | undefined {
    const p = this.producer;
    return p && p.op === 'Constant' ? (p.attrs.value!.value as ConstValue) : undefined;
  }
}

export interface Node {
  op: string;
  /** Operator set: '' is standard ONNX; 'com.microsoft' is onnxruntime's fused CPU kernels (inference graphs only). */
  domain?: string;
  /** null stands for an omitted optional input. */
  inputs: (Tensor | null)[];
  outputs: Tensor[];
  attrs: Record<string, Attr>;
}

/** Where an initializer's bytes live: a file in the session's external-data folder, mapped by ORT. */
export interface ExternalData {
  location: string;
  offset: number;
  length: number;
}

export class Graph {
  readonly nodes: Node[] = [];
  readonly inputs: Tensor[] = [];
  readonly outputs: Tensor[] = [];
  /** Initializers whose data stays in a file (ONNX external data): weights shared through the page cache. */
  readonly externals: { tensor: Tensor; data: ExternalData }[] = [];
  readonly depth: number;
  constructor(
    readonly name = 'graph',
    readonly parent?: Graph,
  ) {
    this.depth = parent ? parent.depth + 1 : 0;
  }

  input(name: string, dtype: DType, shape: Shape): Tensor {
    const t = new Tensor(this, dtype, shape, name);
    this.inputs.push(t);
    return t;
  }

  /** A value read from a file when the session is created, instead of fed at every run. */
  external(name: string, dtype: DType, shape: number[], data: ExternalData): Tensor {
    const t = new Tensor(this, dtype, shape, name);
    this.externals.push({ tensor: t, data });
    return t;
  }

  /** Declares a graph output under `name` (through an Identity, so any value can be named). */
  output(name: string, t: Tensor): Tensor {
    // A value this graph computes, not yet named by anyone, simply takes the name: an Identity
    // is a real copy inside a Loop body (the whole KV cache, every step).
    const renamable = t.graph === this && t.producer && t.name === t.autoName && !this.outputs.includes(t);
    const out = renamable ? t : this.node('Identity', [t], {}, [{ dtype: t.dtype, shape: t.shape }])[0]!;
    out.name = name;
    this.outputs.push(out);
    return out;
  }

  node(op: string, inputs: (Tensor | null)[], attrs: Record<string, Attr>, outs: { dtype: DType; shape: Shape }[], domain?: string): Tensor[] {
    const outputs = outs.map((o) => new Tensor(this, o.dtype, o.shape));
    const node: Node = { op, inputs, outputs, attrs, ...(domain ? { domain } : {}) };
    for (const t of outputs) t.producer = node;
    this.nodes.push(node);
    return outputs;
  }

  constant(value: ConstValue): Tensor {
    return this.node('Constant', [], { value: attr.tensor(value) }, [{ dtype: value.dtype, shape: value.shape }])[0]!;
  }
}

export function isFloat(d: DType): boolean {
  return d === 'float32' || d === 'float64';
}

/** The graph a new node belongs in: the deepest graph among its inputs (outer values are captured by name). */
export function graphOf(...ts: (Tensor | number | null | undefined)[]): Graph {
  let g: Graph | undefined;
  for (const t of ts) if (t instanceof Tensor && (!g || t.graph.depth > g.depth)) g = t.graph;
  if (!g) throw new Error('an op needs at least one tensor input to know its graph');
  return g;
}

export function makeArray(dtype: DType, values: ArrayLike<number> | number[]): TypedArray {
  switch (dtype) {
    case 'float32':
      return Float32Array.from(values);
    case 'float64':
      return Float64Array.from(values);
    case 'int64':
      return BigInt64Array.from(Array.from(values, (v) => BigInt(Math.trunc(v))));
    case 'int32':
      return Int32Array.from(values, (v) => Math.trunc(v));
    case 'uint8':
      return Uint8Array.from(values, (v) => Math.trunc(v));
    case 'bool':
      return Uint8Array.from(values, (v) => (v ? 1 : 0));
  }
}

/** Numpy-style broadcast of two shapes. Symbolic dims are assumed to match the other side. */
export function broadcastShapes(a: Shape, b: Shape): Shape {
  const n = Math.max(a.length, b.length);
  const out: Shape = [];
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    if (da === db || db === 1) out.push(da);
    else if (da === 1) out.push(db);
    else if (typeof da === 'number' && typeof db === 'number') throw new Error(`cannot broadcast [${a}] with [${b}]`);
    else out.push(typeof da === 'number' ? da : db);
  }
  return out;
}
