//! NetworkPolicy enforcement for this node's pods, in the filter table (as
//! kube-router or Calico's iptables mode do).
//!
//! [`build_rules`] turns a snapshot of NetworkPolicies, Pods and Namespaces
//! into `iptables-restore` input (pure, unit tested); [`NetworkPolicies`]
//! follows them through informers, coalesces bursts for [`DEBOUNCE`] and
//! applies the whole set with one `iptables-restore --noflush` per sync.
//!
//! Layout (filter table): FORWARD (pod to pod, pod to outside, outside to
//! pod) and INPUT (pod to this node) jump to `KOBUNE-NETPOL`, which returns
//! established/related traffic at once, then sends traffic from each local
//! pod isolated for egress to its `KOBUNE-NPE-*` chain and traffic to each
//! local pod isolated for ingress to its `KOBUNE-NPI-*` chain. A pod chain
//! clears the "allowed" mark bit ([`ALLOW_MARK`]), sets it for every rule of
//! every policy that allows the packet (policies are additive), rejects the
//! packet when no rule did, and clears the bit again. ipBlocks with `except`
//! go through a `KOBUNE-NPB-*` chain that returns for excepted addresses
//! before setting the bit. OUTPUT is not hooked: traffic from the node
//! itself (kubelet probes, the host reaching its pods) is always allowed, as
//! common CNIs do. Denied packets are rejected with icmp-port-unreachable
//! (kube-router's choice) so clients fail at once instead of timing out.

use crate::iptables::{self, Dirty, Jump, Rules, Syncer};
use crate::proxy::chain;
use kobune_apimachinery::selectors::Selector;
use kobune_apiserver::cache::EventType;
use kobune_controllers::runtime::{builtin_resource, Informer, Source};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The chain FORWARD and INPUT jump to.
pub const NETPOL: &str = "KOBUNE-NETPOL";
/// Changes arriving within this window are applied together.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// Full resync (rules re-applied, jumps checked) this often.
pub const RESYNC: Duration = Duration::from_secs(30);
/// The packet mark bit meaning "a policy allowed this packet".
pub const ALLOW_MARK: &str = "0x10000";
const REJECT: &str = "REJECT --reject-with icmp-port-unreachable";

/// The table the policy rules live in.
const TABLES: [&str; 1] = ["filter"];

/// The jumps from the built-in chains: (table, chain, rule spec).
pub const JUMPS: &[Jump] = &[
    ("filter", "FORWARD", "-j KOBUNE-NETPOL"),
    ("filter", "INPUT", "-j KOBUNE-NETPOL"),
];

/// Whether a chain belongs to the policy controller.
pub fn is_our_chain(c: &str) -> bool {
    c.starts_with(NETPOL) || c.starts_with("KOBUNE-NP")
}

// ---------------------------------------------------------------------------
// Snapshot -> rules

fn meta<'v>(o: &'v Value, f: &str) -> &'v str {
    o.get("metadata")
        .and_then(|m| m.get(f))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn labels(o: &Value) -> Option<&serde_json::Map<String, Value>> {
    o.pointer("/metadata/labels").and_then(Value::as_object)
}

/// A pod's IPv4 address when it takes part in pod networking (has an IP,
/// is not on the host network, has not finished).
pub fn pod_ip(pod: &Value) -> Option<Ipv4Addr> {
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    if matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded") | Some("Failed")
    ) {
        return None;
    }
    pod.pointer("/status/podIP")
        .and_then(Value::as_str)
        .and_then(|ip| ip.parse().ok())
}

/// Parses an IPv4 CIDR (`10.0.0.0/8`, or a bare address as /32).
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, bits)) => (ip, bits.parse().ok()?),
        None => (s, 32),
    };
    if bits > 32 {
        return None;
    }
    Some((ip.parse().ok()?, bits))
}

fn cidr_contains(cidr: (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = if cidr.1 == 0 {
        0
    } else {
        u32::MAX << (32 - cidr.1)
    };
    (u32::from(cidr.0) & mask) == (u32::from(ip) & mask)
}

/// A label selector field of a policy; `None` when absent, and a selector
/// matching nothing when invalid.
fn selector_at(o: &Value, key: &str) -> Option<Option<Selector>> {
    let v = o.get(key)?;
    Some(match Selector::from_label_selector(v) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("network policy: ignoring invalid selector {v}: {e}");
            None
        }
    })
}

/// Whether a policy applies to ingress and egress (`policyTypes`, or when
/// omitted: Ingress, plus Egress if the policy has egress rules).
pub fn policy_types(policy: &Value) -> (bool, bool) {
    let spec = policy.get("spec").cloned().unwrap_or_default();
    match spec.get("policyTypes").and_then(Value::as_array) {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t.as_str() == Some("Ingress")),
            types.iter().any(|t| t.as_str() == Some("Egress")),
        ),
        _ => (
            true,
            spec.get("egress")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty()),
        ),
    }
}

/// Whether `policy` selects `pod` (same namespace, spec.podSelector).
pub fn selects(policy: &Value, pod: &Value) -> bool {
    if meta(policy, "namespace") != meta(pod, "namespace") {
        return false;
    }
    let spec = policy.get("spec").cloned().unwrap_or_default();
    match selector_at(&spec, "podSelector") {
        None => true, // absent podSelector is the empty selector
        Some(None) => false,
        Some(Some(s)) => s.matches_labels(labels(pod)),
    }
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PortSpec {
    /// All ports of a protocol.
    Any(String),
    Range(String, i64, i64),
    Named(String, String),
}

/// Resolved to iptables matches (protocol, optional port or range).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PortMatch(String, Option<(i64, i64)>);

impl PortMatch {
    fn spec(&self) -> String {
        let p = &self.0;
        match self.1 {
            None => format!("-p {p} "),
            Some((a, b)) if a == b => format!("-p {p} -m {p} --dport {a} "),
            Some((a, b)) => format!("-p {p} -m {p} --dport {a}:{b} "),
        }
    }
}

fn port_specs(rule: &Value) -> Option<Vec<PortSpec>> {
    let ports = rule.get("ports").and_then(Value::as_array)?;
    if ports.is_empty() {
        return None;
    }
    Some(
        ports
            .iter()
            .map(|p| {
                let proto = p
                    .get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP")
                    .to_lowercase();
                match p.get("port") {
                    Some(Value::Number(n)) => {
                        let a = n.as_i64().unwrap_or(0);
                        let b = p.get("endPort").and_then(Value::as_i64).unwrap_or(a);
                        PortSpec::Range(proto, a, b.max(a))
                    }
                    Some(Value::String(s)) => match s.parse::<i64>() {
                        Ok(a) => PortSpec::Range(proto, a, a),
                        Err(_) => PortSpec::Named(proto, s.clone()),
                    },
                    _ => PortSpec::Any(proto),
                }
            })
            .collect(),
    )
}

/// The container port called `name` with `proto` in a pod.
fn named_port(pod: &Value, name: &str, proto: &str) -> Option<i64> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find(|p| {
            p.get("name").and_then(Value::as_str) == Some(name)
                && p.get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP")
                    .eq_ignore_ascii_case(proto)
        })
        .and_then(|p| p.get("containerPort").and_then(Value::as_i64))
}

/// The port matches of `specs` against one pod (the target for ingress,
/// the destination for egress); named ports the pod lacks match nothing.
fn resolve(specs: &[PortSpec], pod: Option<&Value>) -> Vec<PortMatch> {
    let mut out = BTreeSet::new();
    for s in specs {
        match s {
            PortSpec::Any(p) => {
                out.insert(PortMatch(p.clone(), None));
            }
            PortSpec::Range(p, a, b) => {
                out.insert(PortMatch(p.clone(), Some((*a, *b))));
            }
            PortSpec::Named(p, name) => {
                if let Some(n) = pod.and_then(|pod| named_port(pod, name, p)) {
                    out.insert(PortMatch(p.clone(), Some((n, n))));
                }
            }
        }
    }
    out.into_iter().collect()
}

/// What a `from`/`to` peer stands for.
#[derive(Debug, Clone)]
enum Peer {
    Anywhere,
    Pods(Vec<Arc<Value>>),
    Block(String, Vec<String>),
}

/// The snapshot the rules are computed from.
pub struct Snapshot<'a> {
    pub policies: &'a [Arc<Value>],
    pub pods: &'a [Arc<Value>],
    pub namespaces: &'a [Arc<Value>],
    pub node_name: &'a str,
}

impl Snapshot<'_> {
    fn namespace_matches(&self, sel: &Selector, ns: &str) -> bool {
        let found = self.namespaces.iter().find(|n| meta(n, "name") == ns);
        let mut l = found.and_then(|n| labels(n)).cloned().unwrap_or_default();
        l.entry("kubernetes.io/metadata.name")
            .or_insert_with(|| Value::String(ns.to_string()));
        found.is_some() && sel.matches_labels(Some(&l))
    }

    fn peers(&self, policy_ns: &str, list: Option<&Value>) -> Vec<Peer> {
        let Some(list) = list.and_then(Value::as_array).filter(|l| !l.is_empty()) else {
            return vec![Peer::Anywhere];
        };
        list.iter()
            .filter_map(|peer| {
                if let Some(b) = peer.get("ipBlock") {
                    let cidr = b.get("cidr").and_then(Value::as_str)?;
                    parse_cidr(cidr)?;
                    let except = b
                        .get("except")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .filter(|e| parse_cidr(e).is_some())
                        .map(str::to_string)
                        .collect();
                    return Some(Peer::Block(cidr.to_string(), except));
                }
                let pod_sel = selector_at(peer, "podSelector");
                let ns_sel = selector_at(peer, "namespaceSelector");
                if pod_sel.is_none() && ns_sel.is_none() {
                    return None;
                }
                let pods = self
                    .pods
                    .iter()
                    .filter(|p| pod_ip(p).is_some())
                    .filter(|p| {
                        let ns = meta(p, "namespace");
                        let ns_ok = match &ns_sel {
                            None => ns == policy_ns,
                            Some(None) => false,
                            Some(Some(s)) => self.namespace_matches(s, ns),
                        };
                        let pod_ok = match &pod_sel {
                            None => true,
                            Some(None) => false,
                            Some(Some(s)) => s.matches_labels(labels(p)),
                        };
                        ns_ok && pod_ok
                    })
                    .cloned()
                    .collect();
                Some(Peer::Pods(pods))
            })
            .collect()
    }

    /// Pods with an address inside a block and outside its exceptions.
    fn pods_in_block(&self, cidr: &str, except: &[String]) -> Vec<Arc<Value>> {
        let Some(c) = parse_cidr(cidr) else {
            return vec![];
        };
        self.pods
            .iter()
            .filter(|p| {
                pod_ip(p).is_some_and(|ip| {
                    cidr_contains(c, ip)
                        && !except
                            .iter()
                            .filter_map(|e| parse_cidr(e))
                            .any(|e| cidr_contains(e, ip))
                })
            })
            .cloned()
            .collect()
    }
}

/// Rule text being built for one pod chain.
struct ChainBuilder<'r> {
    body: String,
    chains: &'r mut BTreeSet<(String, String)>,
    blocks: &'r mut BTreeMap<String, String>,
}

const SET: &str = "-j MARK --set-xmark 0x10000/0x10000";

impl ChainBuilder<'_> {
    /// One allowing match: `dir` is "-s" (ingress: the peer is the source)
    /// or "-d" (egress).
    fn allow(&mut self, chain: &str, dir: &str, addr: &str, ports: &PortMatch, comment: &str) {
        let _ = writeln!(
            self.body,
            "-A {chain} {dir} {addr} {}-m comment --comment \"{comment}\" {SET}",
            ports.spec()
        );
    }

    fn allow_any_port(&mut self, chain: &str, dir: &str, addr: &str, comment: &str) {
        let addr = if addr.is_empty() {
            String::new()
        } else {
            format!("{dir} {addr} ")
        };
        let _ = writeln!(
            self.body,
            "-A {chain} {addr}-m comment --comment \"{comment}\" {SET}"
        );
    }

    /// An ipBlock with exceptions: a chain returning for the exceptions,
    /// then allowing.
    fn block_chain(&mut self, dir: &str, cidr: &str, except: &[String]) -> String {
        let id = format!("{dir} {cidr} except {}", except.join(","));
        let name = chain("NPB", &id);
        if !self.blocks.contains_key(&name) {
            let mut b = String::new();
            for e in except {
                let _ = writeln!(b, "-A {name} {dir} {e} -j RETURN");
            }
            let _ = writeln!(b, "-A {name} {SET}");
            self.blocks.insert(name.clone(), b);
            self.chains.insert(("filter".into(), name.clone()));
        }
        name
    }

    fn allow_block(
        &mut self,
        chain: &str,
        dir: &str,
        cidr: &str,
        except: &[String],
        ports: Option<&[PortMatch]>,
        comment: &str,
    ) {
        let target = if except.is_empty() {
            SET.to_string()
        } else {
            format!("-j {}", self.block_chain(dir, cidr, except))
        };
        let port_specs: Vec<String> = match ports {
            None => vec![String::new()],
            Some(ps) => ps.iter().map(PortMatch::spec).collect(),
        };
        for ps in port_specs {
            let _ = writeln!(
                self.body,
                "-A {chain} {dir} {cidr} {ps}-m comment --comment \"{comment}\" {target}"
            );
        }
    }
}

/// The whole filter-table rule set for a snapshot.
pub fn build_rules(snap: &Snapshot) -> Rules {
    let mut chains: BTreeSet<(String, String)> = BTreeSet::new();
    chains.insert(("filter".into(), NETPOL.into()));
    let mut blocks: BTreeMap<String, String> = BTreeMap::new();
    let mut head = String::new();
    let mut egress_jumps = String::new();
    let mut ingress_jumps = String::new();
    let mut pod_chains = String::new();
    let _ = writeln!(
        head,
        "-A {NETPOL} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    );

    let mut policies: Vec<&Arc<Value>> = snap.policies.iter().collect();
    policies.sort_by(|a, b| {
        (meta(a, "namespace"), meta(a, "name")).cmp(&(meta(b, "namespace"), meta(b, "name")))
    });
    let mut local: Vec<(&Arc<Value>, Ipv4Addr)> = snap
        .pods
        .iter()
        .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(snap.node_name))
        .filter_map(|p| pod_ip(p).map(|ip| (p, ip)))
        .collect();
    local.sort_by(|a, b| {
        (meta(a.0, "namespace"), meta(a.0, "name"))
            .cmp(&(meta(b.0, "namespace"), meta(b.0, "name")))
    });

    for (pod, ip) in local {
        let (ns, name) = (meta(pod, "namespace"), meta(pod, "name"));
        let selecting: Vec<&&Arc<Value>> = policies.iter().filter(|p| selects(p, pod)).collect();
        for ingress in [true, false] {
            let applying: Vec<&&Arc<Value>> = selecting
                .iter()
                .copied()
                .filter(|p| {
                    let (i, e) = policy_types(p);
                    if ingress {
                        i
                    } else {
                        e
                    }
                })
                .collect();
            if applying.is_empty() {
                continue;
            }
            let (kind, dir, key) = if ingress {
                ("NPI", "-s", "ingress")
            } else {
                ("NPE", "-d", "egress")
            };
            let pchain = chain(kind, &format!("{ns}/{name}"));
            chains.insert(("filter".into(), pchain.clone()));
            let jumps = if ingress {
                &mut ingress_jumps
            } else {
                &mut egress_jumps
            };
            let _ = writeln!(
                jumps,
                "-A {NETPOL} {} {ip}/32 -m comment --comment \"{ns}/{name} {key}\" -j {pchain}",
                if ingress { "-d" } else { "-s" }
            );
            let mut cb = ChainBuilder {
                body: String::new(),
                chains: &mut chains,
                blocks: &mut blocks,
            };
            let _ = writeln!(cb.body, "-A {pchain} -j MARK --set-xmark 0x0/{ALLOW_MARK}");
            for policy in applying {
                let comment = format!("{}/{}", meta(policy, "namespace"), meta(policy, "name"));
                let rules = policy
                    .pointer(&format!("/spec/{key}"))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for rule in &rules {
                    let specs = port_specs(rule);
                    let peer_key = if ingress { "from" } else { "to" };
                    let peers = snap.peers(ns, rule.get(peer_key));
                    let named = specs
                        .as_ref()
                        .is_some_and(|s| s.iter().any(|p| matches!(p, PortSpec::Named(..))));
                    // Ports resolved against the target pod (ingress); for
                    // egress named ports depend on each destination pod.
                    let fixed: Option<Vec<PortMatch>> = specs.as_ref().map(|s| {
                        if ingress {
                            resolve(s, Some(pod))
                        } else {
                            resolve(s, None)
                        }
                    });
                    if fixed.as_ref().is_some_and(|f| f.is_empty()) && (ingress || !named) {
                        continue; // no port of this rule exists on the pod
                    }
                    for peer in peers {
                        match peer {
                            Peer::Anywhere => match &fixed {
                                None => cb.allow_any_port(&pchain, dir, "", &comment),
                                Some(ports) => {
                                    for pm in ports {
                                        let _ = writeln!(
                                            cb.body,
                                            "-A {pchain} {}-m comment --comment \"{comment}\" {SET}",
                                            pm.spec()
                                        );
                                    }
                                    if !ingress && named {
                                        for dst in snap.pods.iter() {
                                            egress_named(
                                                &mut cb,
                                                &pchain,
                                                dst,
                                                specs.as_deref(),
                                                &comment,
                                            );
                                        }
                                    }
                                }
                            },
                            Peer::Pods(pods) => {
                                for p in &pods {
                                    let Some(pip) = pod_ip(p) else { continue };
                                    let addr = format!("{pip}/32");
                                    match &fixed {
                                        None => cb.allow_any_port(&pchain, dir, &addr, &comment),
                                        Some(ports) => {
                                            let ports = if ingress {
                                                ports.clone()
                                            } else {
                                                resolve(
                                                    specs.as_deref().unwrap_or_default(),
                                                    Some(p),
                                                )
                                            };
                                            for pm in &ports {
                                                cb.allow(&pchain, dir, &addr, pm, &comment);
                                            }
                                        }
                                    }
                                }
                            }
                            Peer::Block(cidr, except) => {
                                cb.allow_block(
                                    &pchain,
                                    dir,
                                    &cidr,
                                    &except,
                                    fixed.as_deref(),
                                    &comment,
                                );
                                if !ingress && named {
                                    for dst in snap.pods_in_block(&cidr, &except) {
                                        egress_named(
                                            &mut cb,
                                            &pchain,
                                            &dst,
                                            specs.as_deref(),
                                            &comment,
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let _ = writeln!(
                cb.body,
                "-A {pchain} -m mark ! --mark {ALLOW_MARK}/{ALLOW_MARK} -m comment --comment \"{ns}/{name} {key} not allowed by network policy\" -j {REJECT}"
            );
            let _ = writeln!(cb.body, "-A {pchain} -j MARK --set-xmark 0x0/{ALLOW_MARK}");
            pod_chains.push_str(&cb.body);
        }
    }
    let mut filter = head;
    filter.push_str(&egress_jumps);
    filter.push_str(&ingress_jumps);
    filter.push_str(&pod_chains);
    for b in blocks.values() {
        filter.push_str(b);
    }
    Rules {
        nat: String::new(),
        filter,
        chains,
    }
}

/// Egress to a named port of one destination pod.
fn egress_named(
    cb: &mut ChainBuilder,
    pchain: &str,
    dst: &Value,
    specs: Option<&[PortSpec]>,
    comment: &str,
) {
    let Some(ip) = pod_ip(dst) else { return };
    let named: Vec<PortSpec> = specs
        .unwrap_or_default()
        .iter()
        .filter(|s| matches!(s, PortSpec::Named(..)))
        .cloned()
        .collect();
    for pm in resolve(&named, Some(dst)) {
        cb.allow(pchain, "-d", &format!("{ip}/32"), &pm, comment);
    }
}

// ---------------------------------------------------------------------------
// Applying

/// Restore input removing our chains and the jumps to them from an
/// `iptables-save -t filter` dump (None when there is nothing).
pub fn cleanup_input(dump: &str) -> Option<String> {
    iptables::cleanup_input(&[("filter", dump.to_string())], &is_our_chain)
}

/// Removes every policy chain and jump.
pub fn cleanup_rules() -> anyhow::Result<()> {
    iptables::cleanup_rules(&TABLES, &is_our_chain)
}

/// The fields of a pod the rules depend on.
fn pod_digest(p: &Value) -> String {
    format!(
        "{}|{}|{:?}|{:?}|{}|{}",
        meta(p, "namespace"),
        p.pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        pod_ip(p),
        labels(p),
        p.pointer("/spec/containers")
            .and_then(Value::as_array)
            .map(|cs| cs
                .iter()
                .map(|c| c.get("ports").cloned().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default(),
        meta(p, "name"),
    )
}

struct Inner {
    node_name: String,
    policies: Arc<Informer>,
    pods: Arc<Informer>,
    namespaces: Arc<Informer>,
    dirty: Dirty,
}

impl Inner {
    fn mark_dirty(&self) {
        self.dirty.mark();
    }

    fn rules(&self) -> Rules {
        let all =
            |i: &Informer| -> Vec<Arc<Value>> { i.list().into_iter().map(|(_, v)| v).collect() };
        let (policies, pods, namespaces) =
            (all(&self.policies), all(&self.pods), all(&self.namespaces));
        build_rules(&Snapshot {
            policies: &policies,
            pods: &pods,
            namespaces: &namespaces,
            node_name: &self.node_name,
        })
    }
}

/// The running NetworkPolicy controller of this node.
pub struct NetworkPolicies {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl NetworkPolicies {
    /// Starts following NetworkPolicies, Pods and Namespaces; the first
    /// sync replaces what an earlier run left in one transaction.
    pub async fn start(
        source: Arc<dyn Source>,
        node_name: String,
    ) -> anyhow::Result<NetworkPolicies> {
        let policies_res = builtin_resource("networking.k8s.io", "v1", "networkpolicies")?;
        let pods_res = builtin_resource("", "v1", "pods")?;
        let namespaces_res = builtin_resource("", "v1", "namespaces")?;
        let policies = Arc::new(Informer::new(policies_res.key_prefix()));
        let pods = Arc::new(Informer::new(pods_res.key_prefix()));
        let namespaces = Arc::new(Informer::new(namespaces_res.key_prefix()));
        let inner = Arc::new(Inner {
            node_name,
            policies: policies.clone(),
            pods: pods.clone(),
            namespaces: namespaces.clone(),
            dirty: Dirty::new(),
        });
        let i = inner.clone();
        (source.clone())
            .follow(
                &policies_res,
                &policies,
                Arc::new(move |_, _| i.mark_dirty()),
            )
            .await?;
        let i = inner.clone();
        (source.clone())
            .follow(
                &pods_res,
                &pods,
                Arc::new(move |_, ev| {
                    let before = ev.prev.as_deref().map(pod_digest);
                    let now = (ev.kind != EventType::Deleted).then(|| pod_digest(&ev.object));
                    if before != now {
                        i.mark_dirty();
                    }
                }),
            )
            .await?;
        let i = inner.clone();
        source
            .follow(
                &namespaces_res,
                &namespaces,
                Arc::new(move |_, ev| {
                    let before = ev.prev.as_deref().map(|n| format!("{:?}", labels(n)));
                    let now = (ev.kind != EventType::Deleted)
                        .then(|| format!("{:?}", labels(&ev.object)));
                    if before != now {
                        i.mark_dirty();
                    }
                }),
            )
            .await?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_loop(inner, stop_rx));
        Ok(NetworkPolicies { stop, task })
    }

    /// Stops following; the rules stay until the next start takes them
    /// over (or `kobune killall`).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut sync = Syncer::new(
        "network policy",
        &TABLES,
        JUMPS,
        is_our_chain,
        DEBOUNCE,
        RESYNC,
    );
    while let Some(pass) = sync.next(&inner.dirty, &mut stop).await {
        sync.apply(inner.rules(), &pass, &inner.dirty).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, ip: &str, node: &str, labels: Value) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": ip}
        }))
    }

    fn ns(name: &str, labels: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "labels": labels}}))
    }

    fn np(ns: &str, name: &str, spec: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
    }

    struct World {
        pods: Vec<Arc<Value>>,
        namespaces: Vec<Arc<Value>>,
    }

    fn world() -> World {
        World {
            pods: vec![
                pod("a", "server", "10.42.0.2", "n1", json!({"app": "server"})),
                pod("a", "client", "10.42.0.3", "n1", json!({"role": "client"})),
                pod("a", "other", "10.42.0.4", "n1", json!({})),
                pod("b", "client", "10.42.0.5", "n1", json!({"role": "client"})),
                pod("b", "remote", "10.42.1.6", "n2", json!({"role": "client"})),
            ],
            namespaces: vec![ns("a", json!({})), ns("b", json!({"team": "b"}))],
        }
    }

    fn rules(w: &World, policies: &[Arc<Value>]) -> Rules {
        build_rules(&Snapshot {
            policies,
            pods: &w.pods,
            namespaces: &w.namespaces,
            node_name: "n1",
        })
    }

    /// The rules of one pod's chain.
    fn chain_of(r: &Rules, kind: &str, pod: &str) -> Vec<String> {
        let c = chain(kind, pod);
        r.filter
            .lines()
            .filter(|l| l.starts_with(&format!("-A {c} ")))
            .map(str::to_string)
            .collect()
    }

    fn allows(lines: &[String]) -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.ends_with(SET) || l.contains("-j KOBUNE-NPB-"))
            .map(|l| {
                // Without chain name and comment.
                let l = l.split_once(' ').unwrap().1;
                let l = l.split_once(' ').unwrap().1;
                let (a, _) = l.split_once("-m comment").unwrap();
                a.trim().to_string()
            })
            .collect()
    }

    #[test]
    fn no_policy_means_no_pod_chains() {
        let w = world();
        let r = rules(&w, &[]);
        assert_eq!(r.chains.len(), 1);
        assert_eq!(
            r.filter,
            "-A KOBUNE-NETPOL -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n"
        );
    }

    #[test]
    fn default_deny_ingress_isolates_every_pod_of_the_namespace() {
        let w = world();
        let r = rules(
            &w,
            &[np(
                "a",
                "deny",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            )],
        );
        for p in ["a/server", "a/client", "a/other"] {
            let lines = chain_of(&r, "NPI", p);
            assert!(allows(&lines).is_empty(), "{lines:?}");
            assert!(lines.iter().any(|l| l.contains("REJECT")));
            assert!(chain_of(&r, "NPE", p).is_empty());
        }
        assert!(chain_of(&r, "NPI", "b/client").is_empty());
        assert!(r.filter.contains(
            "-A KOBUNE-NETPOL -d 10.42.0.2/32 -m comment --comment \"a/server ingress\""
        ));
        // Remote pods get no chains on this node.
        assert!(!r.filter.contains("-d 10.42.1.6/32"));
        // Established traffic first, egress jumps before ingress jumps.
        assert!(r.filter.starts_with(
            "-A KOBUNE-NETPOL -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n"
        ));
    }

    #[test]
    fn policy_types_default_and_explicit() {
        assert_eq!(
            policy_types(&np("a", "x", json!({"podSelector": {}}))),
            (true, false)
        );
        assert_eq!(
            policy_types(&np("a", "x", json!({"podSelector": {}, "egress": [{}]}))),
            (true, true)
        );
        assert_eq!(
            policy_types(&np(
                "a",
                "x",
                json!({"podSelector": {}, "policyTypes": ["Egress"]})
            )),
            (false, true)
        );
        let w = world();
        let r = rules(
            &w,
            &[np(
                "a",
                "x",
                json!({"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Egress"]}),
            )],
        );
        assert!(chain_of(&r, "NPI", "a/server").is_empty());
        assert!(!chain_of(&r, "NPE", "a/server").is_empty());
        assert!(chain_of(&r, "NPE", "a/client").is_empty());
    }

    #[test]
    fn pod_selector_namespace_selector_and_both() {
        let w = world();
        let server = json!({"matchLabels": {"app": "server"}});
        let p = np(
            "a",
            "allow",
            json!({"podSelector": server, "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]},
            ]}),
        );
        let r = rules(&w, &[p]);
        assert_eq!(
            allows(&chain_of(&r, "NPI", "a/server")),
            vec!["-s 10.42.0.3/32"]
        );
        assert!(chain_of(&r, "NPI", "a/client").is_empty());

        let p = np(
            "a",
            "allow",
            json!({"podSelector": server, "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]},
            ]}),
        );
        let r = rules(&w, &[p]);
        assert_eq!(
            allows(&chain_of(&r, "NPI", "a/server")),
            vec!["-s 10.42.0.5/32", "-s 10.42.1.6/32"]
        );

        // Both in one peer: pods with the label in matching namespaces;
        // kubernetes.io/metadata.name is always there.
        let p = np(
            "a",
            "allow",
            json!({"podSelector": server, "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "a"}},
                           "podSelector": {"matchExpressions": [{"key": "role", "operator": "Exists"}]}}]},
            ]}),
        );
        let r = rules(&w, &[p]);
        assert_eq!(
            allows(&chain_of(&r, "NPI", "a/server")),
            vec!["-s 10.42.0.3/32"]
        );

        // Empty namespaceSelector: every namespace.
        let p = np(
            "a",
            "allow",
            json!({"podSelector": server, "ingress": [
                {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}]},
            ]}),
        );
        let r = rules(&w, &[p]);
        assert_eq!(allows(&chain_of(&r, "NPI", "a/server")).len(), 3);
    }

    #[test]
    fn policies_are_additive_and_empty_rule_allows_all() {
        let w = world();
        let server = json!({"matchLabels": {"app": "server"}});
        let r = rules(
            &w,
            &[
                np(
                    "a",
                    "deny",
                    json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
                ),
                np(
                    "a",
                    "one",
                    json!({"podSelector": server, "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}),
                ),
                np(
                    "a",
                    "two",
                    json!({"podSelector": server, "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/16"}}]}]}),
                ),
            ],
        );
        assert_eq!(
            allows(&chain_of(&r, "NPI", "a/server")),
            vec!["-s 10.42.0.3/32", "-s 192.168.0.0/16"]
        );
        let r = rules(
            &w,
            &[np("a", "all", json!({"podSelector": {}, "ingress": [{}]}))],
        );
        assert_eq!(allows(&chain_of(&r, "NPI", "a/other")), vec![""]);
    }

    #[test]
    fn ports_numbers_named_ranges_and_protocols() {
        let w = world();
        let p = np(
            "a",
            "ports",
            json!({"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [
                {"ports": [{"port": 8080}, {"port": "http", "protocol": "TCP"}, {"port": "dns", "protocol": "UDP"},
                           {"port": 9000, "endPort": 9010}, {"protocol": "SCTP", "port": 7777}, {"protocol": "UDP"},
                           {"port": "missing"}],
                 "from": [{"podSelector": {"matchLabels": {"role": "client"}}}]},
            ]}),
        );
        let r = rules(&w, &[p]);
        assert_eq!(
            allows(&chain_of(&r, "NPI", "a/server")),
            vec![
                "-s 10.42.0.3/32 -p sctp -m sctp --dport 7777",
                "-s 10.42.0.3/32 -p tcp -m tcp --dport 8080",
                "-s 10.42.0.3/32 -p tcp -m tcp --dport 9000:9010",
                "-s 10.42.0.3/32 -p udp",
                "-s 10.42.0.3/32 -p udp -m udp --dport 53",
            ]
        );
        // A rule whose only port is a name the pod lacks allows nothing.
        let p = np(
            "a",
            "none",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "nope"}]}]}),
        );
        let r = rules(&w, &[p]);
        assert!(allows(&chain_of(&r, "NPI", "a/server")).is_empty());
    }

    #[test]
    fn ip_block_with_except_uses_a_returning_chain() {
        let w = world();
        let p = np(
            "a",
            "block",
            json!({"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [
                {"from": [{"ipBlock": {"cidr": "10.42.0.0/24", "except": ["10.42.0.3/32"]}}],
                 "ports": [{"port": 8080}]},
            ]}),
        );
        let r = rules(&w, &[p]);
        let b = chain("NPB", "-s 10.42.0.0/24 except 10.42.0.3/32");
        assert_eq!(
            allows(&chain_of(&r, "NPI", "a/server")),
            vec![format!("-s 10.42.0.0/24 -p tcp -m tcp --dport 8080")]
        );
        assert!(r.chains.contains(&("filter".to_string(), b.clone())));
        assert!(r
            .filter
            .contains(&format!("-A {b} -s 10.42.0.3/32 -j RETURN\n-A {b} {SET}\n")));
    }

    #[test]
    fn egress_rules_match_destinations_and_named_ports_per_destination() {
        let w = world();
        let p = np(
            "a",
            "egress",
            json!({"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"], "egress": [
                {"to": [{"podSelector": {"matchLabels": {"app": "server"}}}], "ports": [{"port": "http"}]},
                {"ports": [{"port": 53, "protocol": "UDP"}]},
            ]}),
        );
        let r = rules(&w, &[p]);
        assert_eq!(
            allows(&chain_of(&r, "NPE", "a/client")),
            vec![
                "-d 10.42.0.2/32 -p tcp -m tcp --dport 8080",
                "-p udp -m udp --dport 53"
            ]
        );
        assert!(r
            .filter
            .contains("-A KOBUNE-NETPOL -s 10.42.0.3/32 -m comment --comment \"a/client egress\""));
        // Egress deny-all.
        let r = rules(
            &w,
            &[np(
                "a",
                "deny",
                json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            )],
        );
        assert!(allows(&chain_of(&r, "NPE", "a/client")).is_empty());
        assert!(chain_of(&r, "NPE", "a/client")
            .iter()
            .any(|l| l.contains(REJECT)));
    }

    #[test]
    fn finished_and_host_network_pods_are_no_peers() {
        let mut w = world();
        let mut done = (*w.pods[1]).clone();
        done["status"]["phase"] = json!("Succeeded");
        w.pods[1] = Arc::new(done);
        let p = np(
            "a",
            "allow",
            json!({"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [
            {"from": [{"podSelector": {}}]}]}),
        );
        let r = rules(&w, &[p]);
        assert_eq!(
            allows(&chain_of(&r, "NPI", "a/server")),
            vec!["-s 10.42.0.2/32", "-s 10.42.0.4/32"]
        );
    }

    #[test]
    fn cleanup_removes_only_our_chains_and_jumps() {
        let dump = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:KOBUNE-NETPOL - [0:0]\n:KOBUNE-NPI-0123456789ABCDEF - [0:0]\n:KOBUNE-SERVICES - [0:0]\n-A INPUT -j KOBUNE-NETPOL\n-A FORWARD -j KOBUNE-NETPOL\n-A FORWARD -m conntrack --ctstate NEW -j KOBUNE-SERVICES\n-A KOBUNE-NETPOL -d 10.42.0.2/32 -j KOBUNE-NPI-0123456789ABCDEF\nCOMMIT\n";
        let out = cleanup_input(dump).unwrap();
        assert_eq!(
            out,
            "*filter\n-D INPUT -j KOBUNE-NETPOL\n-D FORWARD -j KOBUNE-NETPOL\n:KOBUNE-NETPOL - [0:0]\n:KOBUNE-NPI-0123456789ABCDEF - [0:0]\n-X KOBUNE-NETPOL\n-X KOBUNE-NPI-0123456789ABCDEF\nCOMMIT\n"
        );
        assert_eq!(
            cleanup_input("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"),
            None
        );
    }

    #[test]
    fn chain_names_fit_iptables() {
        assert!(chain("NPI", "some-namespace/some-pod-name").len() <= 28);
        assert!(chain("NPB", "x").len() <= 28);
    }
}
