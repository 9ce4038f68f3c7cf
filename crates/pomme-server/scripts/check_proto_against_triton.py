"""Checks proto/*.proto against the descriptors tritonclient ships: every
message, field number, type, label, oneof and RPC must match Triton's.
Run after a build (it reads the descriptor set build.rs writes):
    .venv/bin/python crates/pomme-server/scripts/check_proto_against_triton.py
"""
import sys, glob
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2, model_config_pb2
path = sorted(glob.glob('/work/main/target/debug/build/pomme-server-*/out/inference_descriptor.bin'), key=lambda p: __import__('os').path.getmtime(p))[-1]
mine = descriptor_pb2.FileDescriptorSet(); mine.ParseFromString(open(path,'rb').read())
def index(fd, out):
    def walk(prefix, msgs, enums):
        for m in msgs:
            full = prefix + '.' + m.name
            out[full] = m
            walk(full, m.nested_type, m.enum_type)
        for e in enums:
            out[prefix + '.' + e.name] = e
    walk('.' + fd.package, fd.message_type, fd.enum_type)
theirs = {}
for mod in (service_pb2, model_config_pb2):
    fd = descriptor_pb2.FileDescriptorProto(); mod.DESCRIPTOR.CopyToProto(fd); index(fd, theirs)
    if mod is service_pb2: their_svc = fd.service[0]
ours = {}
for fd in mine.file:
    index(fd, ours)
    if fd.service: our_svc = fd.service[0]
bad = 0; nfields = 0
for name, d in ours.items():
    t = theirs.get(name)
    if t is None: print('MISSING in triton', name); bad += 1; continue
    if isinstance(d, descriptor_pb2.EnumDescriptorProto):
        tv = {v.name: v.number for v in t.value}
        for v in d.value:
            if tv.get(v.name) != v.number: print('ENUM MISMATCH', name, v.name); bad += 1
        continue
    if d.options.map_entry != t.options.map_entry: print('MAPENTRY', name); bad+=1
    tf = {f.name: f for f in t.field}
    for f in d.field:
        nfields += 1
        g = tf.get(f.name)
        if g is None: print('NO FIELD', name, f.name); bad += 1; continue
        for attr in ('number', 'type', 'label', 'type_name'):
            if getattr(f, attr) != getattr(g, attr): print('DIFF', name, f.name, attr, getattr(f, attr), getattr(g, attr)); bad += 1
        fo = d.oneof_decl[f.oneof_index].name if f.HasField('oneof_index') else None
        go = t.oneof_decl[g.oneof_index].name if g.HasField('oneof_index') else None
        if fo != go: print('ONEOF', name, f.name, fo, go); bad += 1
tm = {m.name: m for m in their_svc.method}
for m in our_svc.method:
    g = tm[m.name]
    if (m.input_type, m.output_type, m.client_streaming, m.server_streaming) != (g.input_type, g.output_type, g.client_streaming, g.server_streaming): print('RPC', m.name); bad += 1
print(f"checked {len(ours)} types, {nfields} fields, {len(our_svc.method)} rpcs; {bad} mismatches")
sys.exit(1 if bad else 0)
