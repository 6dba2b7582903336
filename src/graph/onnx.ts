// Serialises a Graph to an ONNX ModelProto. We use protobufjs 7 with a minimal
// subset of onnx.proto (only the messages and fields we write) instead of the
// onnx-proto package: that package is generated from an old ONNX release and pins
// an old protobufjs, while a 60-line schema parsed at load time has no codegen step
// and every field number is visible here, checked against onnx.proto.
import protobuf from 'protobufjs';
import { type Attr, type ConstValue, type ExternalData, type Graph, type Shape, type Tensor } from './ir.ts';
import { ONNX_DTYPE } from './ops.ts';
import { QuantizedTensor } from './quantized.ts';

const SCHEMA = `
syntax = "proto3";
package onnx;
message AttributeProto {
  string name = 1; float f = 2; int64 i = 3; bytes s = 4; TensorProto t = 5; GraphProto g = 6;
  repeated float floats = 7; repeated int64 ints = 8; int32 type = 20;
}
message ValueInfoProto { string name = 1; TypeProto type = 2; }
message NodeProto {
  repeated string input = 1; repeated string output = 2; string name = 3; string op_type = 4;
  repeated AttributeProto attribute = 5; string domain = 7;
}
message ModelProto {
  int64 ir_version = 1; string producer_name = 2; string producer_version = 3;
  GraphProto graph = 7; repeated OperatorSetIdProto opset_import = 8;
}
message GraphProto {
  repeated NodeProto node = 1; string name = 2; repeated TensorProto initializer = 5;
  repeated ValueInfoProto input = 11; repeated ValueInfoProto output = 12;
}
message StringStringEntryProto { string key = 1; string value = 2; }
message TensorProto {
  repeated int64 dims = 1; int32 data_type = 2; string name = 8; bytes raw_data = 9;
  repeated StringStringEntryProto external_data = 13; int32 data_location = 14;
}
message TensorShapeProto {
  message Dimension { oneof value { int64 dim_value = 1; string dim_param = 2; } }
  repeated Dimension dim = 1;
}
message TypeProto {
  message Tensor { int32 elem_type = 1; TensorShapeProto shape = 2; }
  oneof value { Tensor tensor_type = 1; }
}
message OperatorSetIdProto { string domain = 1; int64 version = 2; }
`;

const root = protobuf.parse(SCHEMA, { keepCase: true }).root;
const ModelProto = root.lookupType('onnx.ModelProto');

export const OPSET = 20;
export const MS_DOMAIN = 'com.microsoft';
const IR_VERSION = 9; // the IR version that goes with opset 20

// AttributeProto.AttributeType
const ATTR_TYPE = { float: 1, int: 2, string: 3, tensor: 4, graph: 5, floats: 6, ints: 7 } as const;

function tensorProto(v: ConstValue, name = '') {
  const d = v.data;
  return {
    name,
    dims: v.shape,
    data_type: ONNX_DTYPE[v.dtype],
    raw_data: new Uint8Array(d.buffer, d.byteOffset, d.byteLength),
  };
}

type Message = Record<string, unknown>;

const EXTERNAL = 1; // TensorProto.DataLocation

function externalTensorProto(t: Tensor, d: ExternalData): Message {
  const entries = { location: d.location, offset: String(d.offset), length: String(d.length) };
  return {
    name: t.name,
    dims: t.shape,
    data_type: ONNX_DTYPE[t.dtype],
    data_location: EXTERNAL,
    external_data: Object.entries(entries).map(([key, value]) => ({ key, value })),
  };
}

function attributeProto(name: string, a: Attr): Message {
  const base = { name, type: ATTR_TYPE[a.type] };
  switch (a.type) {
    case 'int':
      return { ...base, i: a.value };
    case 'float':
      return { ...base, f: a.value };
    case 'ints':
      return { ...base, ints: a.value };
    case 'floats':
      return { ...base, floats: a.value };
    case 'string':
      return { ...base, s: new TextEncoder().encode(a.value) };
    case 'tensor':
      return { ...base, t: tensorProto(a.value) };
    case 'graph':
      return { ...base, g: graphProto(a.value) };
  }
}

function valueInfo(t: Tensor, withShape = true) {
  const shape = (s: Shape) => ({ dim: s.map((d) => (typeof d === 'number' ? { dim_value: d } : { dim_param: d })) });
  return {
    name: t.name,
    type: { tensor_type: { elem_type: ONNX_DTYPE[t.dtype], ...(withShape ? { shape: shape(t.shape) } : {}) } },
  };
}

function graphProto(g: Graph): Message {
  // Subgraph (Loop body) outputs carry no declared shape: ORT checks them strictly, and carried
  // values grow per iteration. Inputs keep theirs (symbolic where they grow); ORT needs them.
  const top = !g.parent;
  return {
    name: g.name,
    node: g.nodes.map((n, i): Message => ({
      name: `${g.name}/${n.op}_${i}`,
      op_type: n.op,
      domain: n.domain ?? '',
      input: n.inputs.map((t) => (t ? t.name : '')),
      output: n.outputs.map((t) => t.name),
      attribute: Object.entries(n.attrs).map(([k, a]): Message => attributeProto(k, a)),
    })),
    input: g.inputs.map((t) => valueInfo(t)),
    output: g.outputs.map((t) => valueInfo(t, top)),
    initializer: g.externals.map((e) => externalTensorProto(e.tensor, e.data)),
  };
}

/** The serialised ModelProto, ready for InferenceSession.create(bytes). */
export function toOnnx(g: Graph): Uint8Array {
  checkNames(g);
  const model = {
    ir_version: IR_VERSION,
    producer_name: 'ttrl-server',
    producer_version: '0.1.0',
    opset_import: [
      { domain: '', version: OPSET },
      { domain: MS_DOMAIN, version: 1 },
    ],
    graph: graphProto(g),
  };
  const err = ModelProto.verify(model);
  if (err) throw new Error(`invalid ModelProto: ${err}`);
  return ModelProto.encode(ModelProto.fromObject(model)).finish();
}

/** ONNX needs every value name to be unique; inputs and outputs are named by hand, so check (and that no op reads a quantized weight whole). */
function checkNames(g: Graph, seen = new Set<string>()): void {
  const claim = (name: string) => {
    if (seen.has(name)) throw new Error(`duplicate value name in graph: ${name}`);
    seen.add(name);
  };
  g.inputs.forEach((t) => claim(t.name));
  g.externals.forEach((e) => claim(e.tensor.name));
  for (const n of g.nodes) {
    // A quantized weight has no value of its own: only graph/quantized.ts's builders read its parts.
    const stored = n.inputs.find((t) => t instanceof QuantizedTensor);
    if (stored) throw new Error(`${n.op} cannot take the quantized weight ${stored.name}; multiply or gather it through graph/quantized.ts`);
    n.outputs.forEach((t) => claim(t.name));
    for (const a of Object.values(n.attrs)) if (a.type === 'graph') checkNames(a.value, seen);
  }
}
