#!/usr/bin/env python3
"""Generates schema.rs: python3 gen_schema.py schema.rs (needs k8s-pb 0.9 and k8s-openapi 0.29 in ~/.cargo/registry)."""
import os, re, glob, sys
PB = glob.glob(os.path.expanduser('~/.cargo/registry/src/*/k8s-pb-0.9.0/src'))[0]
OA = glob.glob(os.path.expanduser('~/.cargo/registry/src/*/k8s-openapi-0.29.0/src/v1_35'))[0]

# json names from k8s-openapi: rust snake -> json
names = {}
for p in sorted(glob.glob(OA + '/**/*.rs', recursive=True)):
    for m in re.finditer(r'"([^"]+)" => Field::Key_(\w+)', open(p).read()):
        names.setdefault(m.group(2), m.group(1))
names['port'] = 'port'
names.update({'non_resource_ur_ls': 'nonResourceURLs', 'u_id': 'uid', 'server_address_by_client_cid_rs': 'serverAddressByClientCIDRs',
  'pod_cid_rs': 'podCIDRs', 'target_ww_ns': 'targetWWNs', 'insecure_skip_tls_verify_backend': 'insecureSkipTLSVerifyBackend'})
names['schema'] = 'schema'
overrides = {
    ('apiextensions_apiserver.pkg.apis.apiextensions.v1.CustomResourceValidation', 'open_apiv3_schema'): 'openAPIV3Schema',
    ('apiextensions_apiserver.pkg.apis.apiextensions.v1beta1.CustomResourceValidation', 'open_apiv3_schema'): 'openAPIV3Schema',
    ('api.networking.v1.IngressClassParametersReference', 'a_pi_group'): 'apiGroup',
    ('api.networking.v1beta1.IngressClassParametersReference', 'a_pi_group'): 'apiGroup',
    ('api.core.v1.PodSpec', 'deprecated_service_account'): 'serviceAccount',
    ('api.core.v1.NodeSpec', 'pod_cid_rs'): 'podCIDRs',
    ('api.core.v1.FcVolumeSource', 'target_ww_ns'): 'targetWWNs',
    ('api.core.v1.PodLogOptions', 'insecure_skip_tls_verify_backend'): 'insecureSkipTLSVerifyBackend',
    ('api.core.v1.DaemonEndpoint', 'port'): 'Port',
    ('apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaProps', 'schema'): '$schema',
    ('apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaProps', 'ref'): '$ref',
    ('apiextensions_apiserver.pkg.apis.apiextensions.v1beta1.JsonSchemaProps', 'schema'): '$schema',
    ('apiextensions_apiserver.pkg.apis.apiextensions.v1beta1.JsonSchemaProps', 'ref'): '$ref',
}
def camel(s):
    p = s.split('_')
    return p[0] + ''.join(x[:1].upper() + x[1:] for x in p[1:])
missing = set()
def snake(n):
    return re.sub(r'(?<=[a-z0-9])([A-Z])', r'_\1', n).lower()
typekeys = {}
def type_keys(msg):
    if msg in typekeys: return typekeys[msg]
    parts = msg.split('.')
    p = OA + '/' + '/'.join(parts[:-1]) + '/' + snake(parts[-1]) + '.rs'
    keys = None
    if os.path.exists(p):
        keys = {}
        for m in re.finditer(r'"([^"]+)" => Field::Key_(\w+)', open(p).read()):
            keys[m.group(2).rstrip('_')] = m.group(1)
    typekeys[msg] = keys
    return keys
inlined = []
def json_name(msg, f, is_msg=False):
    if (msg, f) in overrides: return overrides[(msg, f)]
    if f in ('non_resource_ur_ls', 'u_id', 'server_address_by_client_cid_rs', 'pod_cid_rs', 'target_ww_ns'):
        return names[f]
    if is_msg and f in ('ingress_rule_value', 'local_object_reference', 'volume_source', 'persistent_volume_source', 'ephemeral_container_common'):
        return ''
    keys = type_keys(msg)
    if keys is not None:
        if f in keys: return keys[f]
        if is_msg and keys:
            inlined.append((msg, f))
            return ''
    for k in (f, f + '_'):
        if k in names: return names[k]
    missing.add(f)
    return camel(f)

GROUPS = {
 'admissionregistration':'admissionregistration.k8s.io','apiserverinternal':'internal.apiserver.k8s.io',
 'apps':'apps','authentication':'authentication.k8s.io','authorization':'authorization.k8s.io',
 'autoscaling':'autoscaling','batch':'batch','certificates':'certificates.k8s.io',
 'coordination':'coordination.k8s.io','core':'','discovery':'discovery.k8s.io','events':'events.k8s.io',
 'extensions':'extensions','flowcontrol':'flowcontrol.apiserver.k8s.io','imagepolicy':'imagepolicy.k8s.io',
 'networking':'networking.k8s.io','node':'node.k8s.io','policy':'policy','rbac':'rbac.authorization.k8s.io',
 'resource':'resource.k8s.io','scheduling':'scheduling.k8s.io','storage':'storage.k8s.io',
 'storagemigration':'storagemigration.k8s.io','apiextensions':'apiextensions.k8s.io',
 'apiregistration':'apiregistration.k8s.io',
}

msgs = {}  # fullname -> list of fields
order = []
attr_re = re.compile(r'#\[prost\(([^\]]*)\)\]')
for path in sorted(glob.glob(PB + '/**/mod.rs', recursive=True)):
    rel = os.path.relpath(os.path.dirname(path), PB)
    if rel == '.': continue
    mod = rel.split('/')
    text = open(path).read()
    for m in re.finditer(r'pub struct (\w+) \{(\}|.*?\n\})', text, re.S):
        sname, body = m.group(1), m.group(2)
        lines = [l.strip() for l in body.split('\n') if not l.strip().startswith('///')]
        body2 = ' '.join(lines)
        fields = []
        for fm in re.finditer(r'#\[prost\((.*?)\)\]\s*pub (?:r#)?(\w+):\s*(.*?),\s*(?=#\[prost|\}|$)', body2):
            attr, fname, ty = fm.groups()
            fields.append((attr, fname, ty))
        full = '.'.join(mod + [sname])
        msgs[full] = (mod, fields)
        order.append(full)

def resolve(mod, ty):
    ty = ty.strip().rstrip(',').strip()
    for wrap in ('::core::option::Option<', '::prost::alloc::vec::Vec<', '::prost::alloc::boxed::Box<'):
        while ty.startswith(wrap):
            ty = ty[len(wrap):-1].strip().rstrip(',').strip()
    if 'collections::BTreeMap<' in ty or 'collections::HashMap<' in ty:
        inner = ty[ty.index('<')+1:-1]
        k, v = inner.split(',', 1)
        return resolve(mod, v)
    parts = ty.split('::')
    cur = list(mod)
    while parts and parts[0] == 'super':
        cur.pop(); parts.pop(0)
    if parts and parts[0] == 'crate':
        cur = []; parts.pop(0)
    full = '.'.join(cur + parts)
    if full not in msgs:
        sys.exit('unresolved %s in %s' % (ty, mod))
    return full

index = {n: i for i, n in enumerate(order)}
SPECIAL = {
 'apimachinery.pkg.apis.meta.v1.Time': 'Time',
 'apimachinery.pkg.apis.meta.v1.MicroTime': 'MicroTime',
 'apimachinery.pkg.apis.meta.v1.Duration': 'Duration',
 'apimachinery.pkg.util.intstr.IntOrString': 'IntOrString',
 'apimachinery.pkg.api.resource.Quantity': 'Quantity',
 'apimachinery.pkg.runtime.RawExtension': 'Raw',
 'apimachinery.pkg.apis.meta.v1.FieldsV1': 'Raw',
 'apiextensions_apiserver.pkg.apis.apiextensions.v1.Json': 'Raw',
 'apiextensions_apiserver.pkg.apis.apiextensions.v1beta1.Json': 'Raw',
}
SCALARS = {'string':'String','bytes':'Bytes','bool':'Bool','int32':'Int32','int64':'Int64','uint32':'Uint32',
 'uint64':'Uint64','sint32':'Sint32','sint64':'Sint64','fixed32':'Fixed32','fixed64':'Fixed64',
 'sfixed32':'Sfixed32','sfixed64':'Sfixed64','double':'Double','float':'Float'}
out = []
out.append('// @generated by a script from the k8s-pb 0.9 message definitions (field tags) and')
out.append('// k8s-openapi 0.29 (JSON field names). Do not edit by hand.')
out.append('')
out.append('use super::{Field, Kind, Message, Scalar, Special, Ty};')
out.append('')
out.append('pub(super) static MESSAGES: &[Message] = &[')
for full in order:
    mod, fields = msgs[full]
    sp = SPECIAL.get(full, 'None')
    if sp == 'None' and len(fields) == 1 and fields[0][1] == 'items' and 'string, repeated' in fields[0][0] and full.split('.')[-1] != 'StatusCause':
        sp = 'Items'
    fl = []
    for attr, fname, ty in fields:
        tag = re.search(r'tag = "(\d+)"', attr).group(1)
        a0 = attr.split(",")[0].strip().split(" ")[0]
        mm = re.match(r'(btree_map|map|hash_map) = "(\w+), (\w+)"', attr)
        if mm:
            kt, vt = mm.group(2), mm.group(3)
            if vt == 'message':
                v = 'Ty::Message(%d)' % index[resolve(mod, ty)]
            else:
                v = 'Ty::Scalar(Scalar::%s)' % SCALARS[vt]
            t = 'Ty::Map(Scalar::%s, &%s)' % (SCALARS[kt], v)
            kind = 'Kind::Map'
        else:
            if a0 == 'message':
                t = 'Ty::Message(%d)' % index[resolve(mod, ty)]
            elif a0 in SCALARS:
                t = 'Ty::Scalar(Scalar::%s)' % SCALARS[a0]
            else:
                sys.exit('unknown attr %s' % attr)
            kind = 'Kind::Repeated' if 'repeated' in attr else 'Kind::Single'
        fl.append('Field { tag: %s, json: %s, ty: %s, kind: %s }' % (tag, '"%s"' % json_name(full, fname, 'message' in attr), t, kind))
    out.append('    // %d' % index[full])
    out.append('    Message {')
    out.append('        name: "%s",' % full.split('.')[-1])
    out.append('        special: Special::%s,' % sp)
    if fl:
        out.append('        fields: &[')
        for f in fl: out.append('            %s,' % f)
        out.append('        ],')
    else:
        out.append('        fields: &[],')
    out.append('    },')
out.append('];')
out.append('')
kinds = []
for full in order:
    mod, fields = msgs[full]
    name = full.split('.')[-1]
    if mod[0] in ('api', 'apiextensions_apiserver', 'kube_aggregator'):
        grp = mod[-2]; ver = mod[-1]
        if grp not in GROUPS: continue
        if not fields or fields[0][1] != 'metadata': continue
        g = GROUPS[grp]
        av = ver if g == '' else g + '/' + ver
        kinds.append((av, name, index[full]))
for name in ['DeleteOptions','CreateOptions','PatchOptions','UpdateOptions','GetOptions','ListOptions','Status','WatchEvent']:
    kinds.append(('meta.k8s.io/v1', name, index['apimachinery.pkg.apis.meta.v1.' + name]))
kinds.sort()
out.append('/// `(apiVersion, kind, index into MESSAGES)`, sorted for binary search.')
out.append('pub(super) static KINDS: &[(&str, &str, u16)] = &[')
for av, k, i in kinds:
    out.append('    ("%s", "%s", %d),' % (av, k, i))
out.append('];')
open(sys.argv[1], 'w').write('\n'.join(out) + '\n')
print('messages', len(order), 'kinds', len(kinds), file=sys.stderr)
print('missing names', sorted(missing), file=sys.stderr)
print('inlined', inlined, file=sys.stderr)
print('items specials', [o for o in order if 'Items' in ''], file=sys.stderr)
