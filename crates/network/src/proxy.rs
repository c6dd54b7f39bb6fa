//! The service proxy, as kube-proxy's iptables mode: Services and their
//! EndpointSlices become NAT rules in the kernel, so a connection to a
//! ClusterIP, a NodePort or a LoadBalancer address reaches a ready pod.
//!
//! [`build_rules`] turns a snapshot into `iptables-restore` input (pure, unit
//! tested); [`Proxy`] watches the objects through informers, applies a
//! change at once when idle (coalescing only changes that follow a sync
//! within [`DEBOUNCE`]), and applies the rule set with
//! one `iptables-restore --noflush` per sync: the chains (all named
//! `KOBUNE-...`) whose rules changed are declared, which flushes them, and
//! refilled in one transaction, so the kernel never sees half a rule set
//! (unchanged chains, and their round-robin counters, are left alone; the
//! periodic full resync rewrites all). Chains no longer
//! needed are deleted in the same transaction.
//!
//! Layout (nat table): PREROUTING and OUTPUT jump to `KOBUNE-SERVICES`,
//! which matches each ClusterIP:port (and LoadBalancer/external IP:port)
//! and, last, any local address into `KOBUNE-NODEPORTS`. A service port's
//! `KOBUNE-SVC-*` chain picks an endpoint round robin over new connections
//! with `-m statistic --mode nth` (or `-m recent` for ClientIP affinity)
//! and jumps to that endpoint's `KOBUNE-SEP-*` chain, which DNATs. Traffic needing SNAT (from the host, from outside the pod
//! network, NodePorts, a pod reaching itself) is marked by
//! `KOBUNE-MARK-MASQ` and masqueraded in `KOBUNE-POSTROUTING`. Service
//! ports without usable endpoints are rejected in the filter table
//! (`KOBUNE-SERVICES`, `KOBUNE-EXTERNAL-SERVICES`) so clients fail at once.

use crate::iptables::{self, run, Dirty, Jump, Syncer};
pub use crate::iptables::{iptables_restore, Rules};
use kobune_apiserver::cache::EventType;
use kobune_apiserver::registry::{Registry, WriteOptions};
use kobune_controllers::runtime::{builtin_resource, Informer, Source};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Every chain the proxy owns starts with this.
pub const CHAIN_PREFIX: &str = "KOBUNE-";
/// Changes arriving within this window after a sync are applied together.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// Full resync (rules re-applied, jumps and route checked) this often.
pub const RESYNC: Duration = Duration::from_secs(30);
/// The packet mark bit meaning "masquerade this" (kube-proxy's default bit 14).
pub const MASQ_MARK: &str = "0x4000";
pub const FIELD_MANAGER: &str = "kobune-service-proxy";
const DEFAULT_AFFINITY_SECONDS: i64 = 10800;

const SERVICES: &str = "KOBUNE-SERVICES";
const EXTERNAL_SERVICES: &str = "KOBUNE-EXTERNAL-SERVICES";
const NODEPORTS: &str = "KOBUNE-NODEPORTS";
const POSTROUTING: &str = "KOBUNE-POSTROUTING";
const MARK_MASQ: &str = "KOBUNE-MARK-MASQ";
const FIREWALL: &str = "KOBUNE-FIREWALL";

/// The tables the proxy writes.
const TABLES: [&str; 2] = ["nat", "filter"];

/// The jumps from the built-in chains: (table, chain, rule spec).
pub const JUMPS: &[Jump] = &[
    ("nat", "PREROUTING", "-j KOBUNE-SERVICES"),
    ("nat", "OUTPUT", "-j KOBUNE-SERVICES"),
    ("nat", "POSTROUTING", "-j KOBUNE-POSTROUTING"),
    ("filter", "INPUT", "-j KOBUNE-FIREWALL"),
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW -j KOBUNE-EXTERNAL-SERVICES",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -j KOBUNE-SERVICES",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -j KOBUNE-EXTERNAL-SERVICES",
    ),
    (
        "filter",
        "OUTPUT",
        "-m conntrack --ctstate NEW -j KOBUNE-SERVICES",
    ),
];

// ---------------------------------------------------------------------------
// Snapshot -> rules

/// What the rules depend on besides Services and EndpointSlices.
#[derive(Debug, Clone, Default)]
pub struct NodeContext {
    /// The pod network (traffic from elsewhere to a ClusterIP is masqueraded).
    pub cluster_cidr: String,
    /// This node's addresses: LoadBalancer services are reachable on them.
    pub node_ips: Vec<String>,
    /// This node's name (which endpoints are local).
    pub node_name: String,
}

/// One endpoint of a service port, from an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: String,
    pub port: i64,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The endpoint's node ("" when not given).
    pub node_name: String,
}

/// One port of a Service, with what the proxy needs of it.
#[derive(Debug, Clone)]
pub struct ServicePort {
    /// `namespace/name:port` (port name, or the number when unnamed).
    pub id: String,
    pub namespace: String,
    pub service: String,
    pub port_name: String,
    /// iptables protocol name: tcp, udp, sctp.
    pub protocol: String,
    pub cluster_ip: Option<String>,
    pub port: i64,
    pub node_port: Option<i64>,
    /// LoadBalancer ingress and external IPs.
    pub external_ips: Vec<String>,
    /// ClientIP affinity timeout.
    pub affinity: Option<i64>,
    /// internalTrafficPolicy Local: ClusterIP traffic to this node's endpoints only.
    pub internal_local: bool,
    /// externalTrafficPolicy Local: NodePort/LoadBalancer traffic to this
    /// node's endpoints only, without SNAT (the client address is kept).
    pub external_local: bool,
}

fn str_at<'v>(o: &'v Value, ptr: &str) -> Option<&'v str> {
    o.pointer(ptr).and_then(Value::as_str)
}

fn meta<'v>(o: &'v Value, f: &str) -> &'v str {
    o.get("metadata")
        .and_then(|m| m.get(f))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The ports of a Service the proxy programs (none for headless and
/// ExternalName services).
pub fn service_ports(svc: &Value, ctx: &NodeContext) -> Vec<ServicePort> {
    let ty = str_at(svc, "/spec/type").unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return vec![];
    }
    let cluster_ip = str_at(svc, "/spec/clusterIP")
        .filter(|ip| !ip.is_empty() && *ip != "None" && ip.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string);
    let mut external: BTreeSet<String> = BTreeSet::new();
    if let Some(ips) = svc.pointer("/spec/externalIPs").and_then(Value::as_array) {
        external.extend(ips.iter().filter_map(Value::as_str).map(str::to_string));
    }
    if ty == "LoadBalancer" {
        external.extend(ctx.node_ips.iter().cloned());
        if let Some(ing) = svc
            .pointer("/status/loadBalancer/ingress")
            .and_then(Value::as_array)
        {
            external.extend(
                ing.iter()
                    .filter_map(|i| i.get("ip").and_then(Value::as_str))
                    .map(str::to_string),
            );
        }
    }
    external.retain(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok());
    let internal_local = str_at(svc, "/spec/internalTrafficPolicy") == Some("Local");
    let external_local = str_at(svc, "/spec/externalTrafficPolicy") == Some("Local");
    let affinity = (str_at(svc, "/spec/sessionAffinity") == Some("ClientIP")).then(|| {
        svc.pointer("/spec/sessionAffinityConfig/clientIP/timeoutSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let (ns, name) = (meta(svc, "namespace"), meta(svc, "name"));
    let Some(ports) = svc.pointer("/spec/ports").and_then(Value::as_array) else {
        return vec![];
    };
    ports
        .iter()
        .filter_map(|p| {
            let port = p.get("port").and_then(Value::as_i64)?;
            let port_name = p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let protocol = p
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_lowercase();
            let node_port = if ty == "NodePort" || ty == "LoadBalancer" {
                p.get("nodePort").and_then(Value::as_i64).filter(|n| *n > 0)
            } else {
                None
            };
            let label = if port_name.is_empty() {
                port.to_string()
            } else {
                port_name.clone()
            };
            Some(ServicePort {
                id: format!("{ns}/{name}:{label}"),
                namespace: ns.to_string(),
                service: name.to_string(),
                port_name,
                protocol,
                cluster_ip: cluster_ip.clone(),
                port,
                node_port,
                external_ips: external.iter().cloned().collect(),
                affinity,
                internal_local,
                external_local,
            })
        })
        .filter(|p| p.cluster_ip.is_some() || p.node_port.is_some() || !p.external_ips.is_empty())
        .collect()
}

/// The endpoints of a service port from the service's slices (IPv4 only),
/// one per address:port. Missing conditions mean ready (as upstream says).
pub fn endpoints_for(sp: &ServicePort, slices: &[Arc<Value>]) -> Vec<Endpoint> {
    let mut out: BTreeMap<(String, i64), Endpoint> = BTreeMap::new();
    for s in slices {
        if s.get("addressType").and_then(Value::as_str) != Some("IPv4") {
            continue;
        }
        let port = s
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| {
                p.get("name").and_then(Value::as_str).unwrap_or("") == sp.port_name
                    && p.get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("TCP")
                        .eq_ignore_ascii_case(&sp.protocol)
            })
            .and_then(|p| p.get("port").and_then(Value::as_i64));
        let Some(port) = port else { continue };
        for ep in s
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(ip) = ep
                .pointer("/addresses/0")
                .and_then(Value::as_str)
                .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
            else {
                continue;
            };
            let cond = |k: &str| {
                ep.pointer(&format!("/conditions/{k}"))
                    .and_then(Value::as_bool)
            };
            let ready = cond("ready").unwrap_or(true);
            let e = Endpoint {
                ip: ip.to_string(),
                port,
                ready,
                serving: cond("serving").unwrap_or(ready),
                terminating: cond("terminating").unwrap_or(false),
                node_name: ep
                    .get("nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            };
            let key = (e.ip.clone(), port);
            match out.get(&key) {
                Some(old) if old.ready || !e.ready => {}
                _ => {
                    out.insert(key, e);
                }
            }
        }
    }
    out.into_values().collect()
}

/// kube-proxy's choice: the ready endpoints; when there are none, the
/// serving terminating ones (so connections drain to pods shutting down).
pub fn usable(eps: &[Endpoint]) -> Vec<&Endpoint> {
    let ready: Vec<&Endpoint> = eps.iter().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.iter().filter(|e| e.serving && e.terminating).collect()
}

/// 64-bit FNV-1a, for stable chain names.
fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A chain name: prefix + 16 hex digits (at most 27 characters, under
/// iptables' limit of 28).
pub fn chain(kind: &str, id: &str) -> String {
    format!("{CHAIN_PREFIX}{kind}-{:016X}", fnv64(id))
}

fn proto_match(p: &ServicePort) -> String {
    format!("-p {0} -m {0}", p.protocol)
}

/// The whole rule set for a snapshot. `slices_of(namespace, service)` gives
/// the EndpointSlices of a service.
pub fn build_rules(
    services: &[Arc<Value>],
    slices_of: &dyn Fn(&str, &str) -> Vec<Arc<Value>>,
    ctx: &NodeContext,
) -> Rules {
    let mut nat = String::new();
    let mut filter = String::new();
    let mut chains: BTreeSet<(String, String)> = BTreeSet::new();
    let mut add_chain = |t: &str, c: &str| {
        chains.insert((t.to_string(), c.to_string()));
    };
    for c in [SERVICES, NODEPORTS, POSTROUTING, MARK_MASQ] {
        add_chain("nat", c);
    }
    for c in [SERVICES, EXTERNAL_SERVICES, FIREWALL] {
        add_chain("filter", c);
    }
    let _ = writeln!(
        nat,
        "-A {POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(nat, "-A {POSTROUTING} -j MARK --xor-mark {MASQ_MARK}");
    let _ = writeln!(
        nat,
        "-A {POSTROUTING} -m comment --comment \"kobune service traffic requiring SNAT\" -j MASQUERADE --random-fully"
    );
    let _ = writeln!(nat, "-A {MARK_MASQ} -j MARK --or-mark {MASQ_MARK}");
    // route_localnet lets NodePorts answer on 127.0.0.1; it must not let
    // other hosts reach this host's loopback services (CVE-2020-8558).
    let _ = writeln!(
        filter,
        "-A {FIREWALL} ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
    );

    let mut services: Vec<&Arc<Value>> = services.iter().collect();
    services.sort_by(|a, b| {
        (meta(a, "namespace"), meta(a, "name")).cmp(&(meta(b, "namespace"), meta(b, "name")))
    });
    let mut per_port = String::new();
    let mut nodeports = String::new();
    for svc in services {
        let ports = service_ports(svc, ctx);
        if ports.is_empty() {
            continue;
        }
        let slices = slices_of(meta(svc, "namespace"), meta(svc, "name"));
        for sp in ports {
            let all = endpoints_for(&sp, &slices);
            let cluster = usable(&all);
            let pm = proto_match(&sp);
            let reject = |filter: &mut String,
                          chain: &str,
                          dst: &str,
                          port: i64,
                          why: &str,
                          target: &str| {
                let _ = writeln!(
                    filter,
                    "-A {chain} {dst}{pm} --dport {port} -m comment --comment \"{} {why}\" -j {target}",
                    sp.id
                );
            };
            const REJECT: &str = "REJECT --reject-with icmp-port-unreachable";
            if cluster.is_empty() {
                if let Some(ip) = &sp.cluster_ip {
                    let dst = format!("-d {ip}/32 ");
                    reject(
                        &mut filter,
                        SERVICES,
                        &dst,
                        sp.port,
                        "has no endpoints",
                        REJECT,
                    );
                }
                for ip in &sp.external_ips {
                    let dst = format!("-d {ip}/32 ");
                    reject(
                        &mut filter,
                        EXTERNAL_SERVICES,
                        &dst,
                        sp.port,
                        "has no endpoints",
                        REJECT,
                    );
                }
                if let Some(np) = sp.node_port {
                    let dst = "-m addrtype --dst-type LOCAL ";
                    reject(
                        &mut filter,
                        EXTERNAL_SERVICES,
                        dst,
                        np,
                        "has no endpoints",
                        REJECT,
                    );
                }
                continue;
            }
            let local_all: Vec<Endpoint> = all
                .iter()
                .filter(|e| !ctx.node_name.is_empty() && e.node_name == ctx.node_name)
                .cloned()
                .collect();
            let local = usable(&local_all);
            let external = sp.node_port.is_some() || !sp.external_ips.is_empty();
            let key = format!("{}/{}", sp.id, sp.protocol);
            let svc_chain = chain("SVC", &key);
            let svl_chain = chain("SVL", &key);
            // Endpoint chains used by either policy chain, each written once.
            let mut seps: BTreeMap<String, Endpoint> = BTreeMap::new();
            let mut balance = |out: &mut String, from: &str, eps: &[&Endpoint]| {
                let named: Vec<(String, &Endpoint)> = eps
                    .iter()
                    .map(|e| (chain("SEP", &format!("{key}/{}:{}", e.ip, e.port)), *e))
                    .collect();
                if let Some(timeout) = sp.affinity {
                    for (sep, e) in &named {
                        let _ = writeln!(
                            out,
                            "-A {from} -m comment --comment \"{} -> {}:{}\" -m recent --name {sep} --rcheck --seconds {timeout} --reap -j {sep}",
                            sp.id, e.ip, e.port
                        );
                    }
                }
                let n = named.len();
                for (i, (sep, e)) in named.into_iter().enumerate() {
                    let comment =
                        format!("-m comment --comment \"{} -> {}:{}\"", sp.id, e.ip, e.port);
                    if i + 1 < n {
                        // Round robin over new connections (IPVS's default
                        // scheduler): of the connections reaching this
                        // rule, every (n-i)th takes this endpoint, so a
                        // handful of long-lived connections spreads evenly
                        // (random picks often pile them up on one pod).
                        let _ = writeln!(
                            out,
                            "-A {from} {comment} -m statistic --mode nth --every {} --packet 0 -j {sep}",
                            n - i
                        );
                    } else {
                        let _ = writeln!(out, "-A {from} {comment} -j {sep}");
                    }
                    seps.insert(sep, e.clone());
                }
            };
            let uses_cluster_chain = !sp.internal_local || external;
            let uses_local_chain =
                !local.is_empty() && (sp.internal_local || (external && sp.external_local));
            if uses_cluster_chain {
                add_chain("nat", &svc_chain);
                balance(&mut per_port, &svc_chain, &cluster);
            }
            if uses_local_chain {
                add_chain("nat", &svl_chain);
                balance(&mut per_port, &svl_chain, &local);
            }
            if let Some(ip) = &sp.cluster_ip {
                let target = if !sp.internal_local {
                    Some(&svc_chain)
                } else if uses_local_chain {
                    Some(&svl_chain)
                } else {
                    None
                };
                match target {
                    Some(target) => {
                        let _ = writeln!(
                            nat,
                            "-A {SERVICES} -d {ip}/32 {pm} --dport {} -m comment --comment \"{} cluster IP\" -j {target}",
                            sp.port, sp.id
                        );
                        if !ctx.cluster_cidr.is_empty() {
                            let _ = writeln!(
                                per_port,
                                "-A {target} ! -s {} -d {ip}/32 {pm} --dport {} -m comment --comment \"{} cluster IP\" -j {MARK_MASQ}",
                                ctx.cluster_cidr, sp.port, sp.id
                            );
                        }
                    }
                    None => {
                        let dst = format!("-d {ip}/32 ");
                        reject(
                            &mut filter,
                            SERVICES,
                            &dst,
                            sp.port,
                            "has no local endpoints",
                            "DROP",
                        );
                    }
                }
            }
            if external {
                let ext = chain("EXT", &key);
                add_chain("nat", &ext);
                if sp.external_local {
                    // Source kept for outside clients; pods and the host
                    // itself may use any endpoint (as kube-proxy does).
                    if !ctx.cluster_cidr.is_empty() {
                        let _ = writeln!(
                            per_port,
                            "-A {ext} -s {} -m comment --comment \"pod traffic for {} external destinations\" -j {svc_chain}",
                            ctx.cluster_cidr, sp.id
                        );
                    }
                    let _ = writeln!(
                        per_port,
                        "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {} external destinations\" -m addrtype --src-type LOCAL -j {MARK_MASQ}",
                        sp.id
                    );
                    let _ = writeln!(
                        per_port,
                        "-A {ext} -m comment --comment \"route LOCAL traffic for {} external destinations\" -m addrtype --src-type LOCAL -j {svc_chain}",
                        sp.id
                    );
                    if uses_local_chain {
                        let _ = writeln!(per_port, "-A {ext} -j {svl_chain}");
                    } else {
                        for ip in &sp.external_ips {
                            let dst = format!("-d {ip}/32 ");
                            reject(
                                &mut filter,
                                EXTERNAL_SERVICES,
                                &dst,
                                sp.port,
                                "has no local endpoints",
                                "DROP",
                            );
                        }
                        if let Some(np) = sp.node_port {
                            let dst = "-m addrtype --dst-type LOCAL ";
                            reject(
                                &mut filter,
                                EXTERNAL_SERVICES,
                                dst,
                                np,
                                "has no local endpoints",
                                "DROP",
                            );
                        }
                    }
                } else {
                    let _ = writeln!(
                        per_port,
                        "-A {ext} -m comment --comment \"masquerade traffic for {} external destinations\" -j {MARK_MASQ}",
                        sp.id
                    );
                    let _ = writeln!(per_port, "-A {ext} -j {svc_chain}");
                }
                for ip in &sp.external_ips {
                    let _ = writeln!(
                        nat,
                        "-A {SERVICES} -d {ip}/32 {pm} --dport {} -m comment --comment \"{} external IP\" -j {ext}",
                        sp.port, sp.id
                    );
                }
                if let Some(np) = sp.node_port {
                    let _ = writeln!(
                        nodeports,
                        "-A {NODEPORTS} {pm} --dport {np} -m comment --comment \"{}\" -j {ext}",
                        sp.id
                    );
                }
            }
            for (sep, e) in seps {
                add_chain("nat", &sep);
                let comment = format!("-m comment --comment \"{} -> {}:{}\"", sp.id, e.ip, e.port);
                let _ = writeln!(per_port, "-A {sep} {comment} -s {}/32 -j {MARK_MASQ}", e.ip);
                let recent = if sp.affinity.is_some() {
                    format!(" -m recent --name {sep} --set --rsource")
                } else {
                    String::new()
                };
                let _ = writeln!(
                    per_port,
                    "-A {sep} {comment} {pm}{recent} -j DNAT --to-destination {}:{}",
                    e.ip, e.port
                );
            }
        }
    }
    // NodePorts: any local destination address, checked last.
    let _ = writeln!(
        nat,
        "-A {SERVICES} -m comment --comment \"kobune service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j {NODEPORTS}"
    );
    nat.push_str(&nodeports);
    nat.push_str(&per_port);
    Rules {
        nat,
        filter,
        chains,
    }
}

// ---------------------------------------------------------------------------
// Talking to the kernel

/// The proxy's chains: every `KOBUNE-` one but the NetworkPolicy ones.
fn is_ours(c: &str) -> bool {
    c.starts_with(CHAIN_PREFIX) && !crate::netpol::is_our_chain(c)
}

/// The restore input that removes every chain of the proxy and every jump
/// to one, given `iptables-save` output of each table.
pub fn cleanup_input(saved: &[(&str, String)]) -> Option<String> {
    iptables::cleanup_input(saved, &is_ours)
}

/// Removes the proxy's chains and jumps from the nat and filter tables.
pub fn cleanup_rules() -> anyhow::Result<()> {
    iptables::cleanup_rules(&TABLES, &is_ours)
}

/// Kernel settings the rules need: NodePorts on 127.0.0.1
/// (route_localnet), bridged traffic through iptables (so replies between
/// pods on the same bridge are un-NATed) and forwarding.
fn set_sysctls() {
    let bridge = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if !std::path::Path::new(bridge).exists() {
        let _ = run("modprobe", &["br_netfilter"], None);
    }
    iptables::write_sysctl(bridge, "1");
    iptables::write_sysctl("/proc/sys/net/ipv4/conf/all/route_localnet", "1");
    iptables::write_sysctl("/proc/sys/net/ipv4/ip_forward", "1");
}

// ---------------------------------------------------------------------------
// The proxy

/// How to run the proxy on this node.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub node_name: String,
    pub cluster_cidr: String,
    pub service_cidr: String,
    /// The pod bridge: service addresses are routed to it.
    pub bridge: String,
}

struct Inner {
    /// Where LoadBalancer status is written (the server's node only).
    status: Option<Arc<Registry>>,
    cfg: ProxyConfig,
    services: Arc<Informer>,
    slices: Arc<Informer>,
    nodes: Arc<Informer>,
    dirty: Dirty,
}

/// A running service proxy; its rules outlive it until [`cleanup_rules`].
pub struct Proxy {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn slice_service(o: &Value) -> Vec<String> {
    o.pointer("/metadata/labels/kubernetes.io~1service-name")
        .and_then(Value::as_str)
        .map(|s| vec![format!("{}/{s}", meta(o, "namespace"))])
        .unwrap_or_default()
}

const BY_SERVICE: &str = "service";

fn node_ips(node: &Value) -> Vec<String> {
    let mut ips: Vec<String> = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| matches!(a["type"].as_str(), Some("InternalIP") | Some("ExternalIP")))
        .filter_map(|a| a.get("address").and_then(Value::as_str))
        .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
        .collect();
    ips.dedup();
    ips
}

impl Inner {
    fn mark_dirty(&self) {
        self.dirty.mark();
    }

    fn context(&self) -> NodeContext {
        let node = self
            .nodes
            .get(&format!("{}{}", self.nodes.prefix(), self.cfg.node_name));
        NodeContext {
            cluster_cidr: self.cfg.cluster_cidr.clone(),
            node_ips: node.map(|n| node_ips(&n)).unwrap_or_default(),
            node_name: self.cfg.node_name.clone(),
        }
    }

    fn rules(&self, ctx: &NodeContext) -> Rules {
        let services: Vec<Arc<Value>> = self.services.list().into_iter().map(|(_, s)| s).collect();
        build_rules(
            &services,
            &|ns, name| {
                self.slices
                    .objects_by_index(BY_SERVICE, &format!("{ns}/{name}"))
            },
            ctx,
        )
    }

    /// k3s servicelb's part: LoadBalancer services get this node's address
    /// as their ingress; others lose an ingress this proxy gave them.
    async fn update_lb_status(&self, ctx: &NodeContext) {
        let Some(reg) = &self.status else {
            return;
        };
        let Some(info) = reg.resources.find("", "v1", "services") else {
            return;
        };
        let opts = WriteOptions {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        for (_, svc) in self.services.list() {
            let lb = str_at(&svc, "/spec/type") == Some("LoadBalancer");
            let current: Vec<&str> = svc
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("ip").and_then(Value::as_str))
                .collect();
            let want: Vec<&str> = if lb {
                ctx.node_ips.iter().map(String::as_str).collect()
            } else if !current.is_empty()
                && current
                    .iter()
                    .all(|ip| ctx.node_ips.iter().any(|n| n == ip))
            {
                vec![]
            } else {
                continue;
            };
            if current == want || (lb && want.is_empty()) {
                continue;
            }
            let mut obj = (*svc).clone();
            obj["status"]["loadBalancer"] = if want.is_empty() {
                json!({})
            } else {
                json!({"ingress": want.iter().map(|ip| json!({"ip": ip, "ipMode": "VIP"})).collect::<Vec<_>>()})
            };
            let (ns, name) = (meta(&svc, "namespace"), meta(&svc, "name"));
            if let Err(e) = reg
                .update(&info, Some(ns), name, obj, &opts, Some("status"))
                .await
            {
                tracing::debug!(service = %format!("{ns}/{name}"), "load balancer status: {e}");
            }
        }
    }
}

/// Routes the service range to the pod bridge (never the default route).
fn ensure_route(cfg: &ProxyConfig) -> anyhow::Result<()> {
    run(
        "ip",
        &["route", "replace", &cfg.service_cidr, "dev", &cfg.bridge],
        None,
    )
    .map(|_| ())
}

impl Proxy {
    /// Sets the kernel up and starts following Services and EndpointSlices
    /// from `source`; the first sync replaces what an earlier run left in
    /// one transaction (so Service traffic flows across a restart). With `status`, LoadBalancer Services get this node's
    /// addresses as their ingress (the server's node does this; agents'
    /// proxies only program rules).
    pub async fn start(
        source: Arc<dyn Source>,
        status: Option<Arc<Registry>>,
        cfg: ProxyConfig,
    ) -> anyhow::Result<Proxy> {
        kobune_apiserver::parse_cidr(&cfg.cluster_cidr)?;
        kobune_apiserver::parse_cidr(&cfg.service_cidr)?;
        tokio::task::spawn_blocking(set_sysctls).await?;
        let services_res = builtin_resource("", "v1", "services")?;
        let slices_res = builtin_resource("discovery.k8s.io", "v1", "endpointslices")?;
        let nodes_res = builtin_resource("", "v1", "nodes")?;
        let services = Arc::new(Informer::new(services_res.key_prefix()));
        let slices =
            Arc::new(Informer::new(slices_res.key_prefix()).with_index(BY_SERVICE, slice_service));
        let nodes = Arc::new(Informer::new(nodes_res.key_prefix()));
        let inner = Arc::new(Inner {
            status,
            cfg: cfg.clone(),
            services: services.clone(),
            slices: slices.clone(),
            nodes: nodes.clone(),
            dirty: Dirty::new(),
        });
        let i = inner.clone();
        (source.clone())
            .follow(
                &services_res,
                &services,
                Arc::new(move |_, _| i.mark_dirty()),
            )
            .await?;
        let i = inner.clone();
        (source.clone())
            .follow(
                &slices_res,
                &slices,
                Arc::new(move |_, ev| {
                    if !slice_service(&ev.object).is_empty() {
                        i.mark_dirty();
                    }
                }),
            )
            .await?;
        let i = inner.clone();
        let me = cfg.node_name.clone();
        source
            .follow(
                &nodes_res,
                &nodes,
                Arc::new(move |_, ev| {
                    if meta(&ev.object, "name") != me {
                        return;
                    }
                    let before = ev.prev.as_deref().map(node_ips);
                    let now = (ev.kind != EventType::Deleted).then(|| node_ips(&ev.object));
                    if before != now {
                        i.mark_dirty();
                    }
                }),
            )
            .await?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_loop(inner, stop_rx));
        Ok(Proxy { stop, task })
    }

    /// Stops syncing; the rules stay in the kernel, so Services keep
    /// working until the next start takes them over (or `kobune killall`).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut sync = Syncer::new("service proxy", &TABLES, JUMPS, is_ours, DEBOUNCE, RESYNC);
    let mut route_ok = false;
    while let Some(pass) = sync.next(&inner.dirty, &mut stop).await {
        if pass.full {
            route_ok = false;
        }
        let ctx = inner.context();
        let rules = inner.rules(&ctx);
        if !route_ok {
            let cfg = inner.cfg.clone();
            route_ok = tokio::task::spawn_blocking(move || ensure_route(&cfg))
                .await
                .is_ok_and(|r| {
                    r.map_err(|e| tracing::debug!("service route not set yet: {e:#}"))
                        .is_ok()
                });
        }
        sync.apply(rules, &pass, &inner.dirty).await;
        inner.update_lb_status(&ctx).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ty: &str) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"name": "web", "namespace": "d"},
            "spec": {"type": ty, "clusterIP": "10.43.0.10",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080}]}
        }))
    }

    fn slice(eps: &[(&str, bool, bool, bool)]) -> Arc<Value> {
        let eps: Vec<Value> = eps
            .iter()
            .map(|(ip, r, s, t)| json!({"addresses": [ip], "conditions": {"ready": r, "serving": s, "terminating": t}}))
            .collect();
        Arc::new(json!({
            "metadata": {"name": "web-x", "namespace": "d", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps,
        }))
    }

    fn ctx() -> NodeContext {
        NodeContext {
            cluster_cidr: "10.42.0.0/16".into(),
            node_ips: vec!["127.0.0.1".into()],
            node_name: "n1".into(),
        }
    }

    #[test]
    fn spreads_over_ready_endpoints_with_dnat() {
        let s = slice(&[
            ("10.42.0.2", true, true, false),
            ("10.42.0.3", true, true, false),
            ("10.42.0.4", false, false, false),
        ]);
        let r = build_rules(&[svc("ClusterIP")], &|_, _| vec![s.clone()], &ctx());
        let svc_chain = chain("SVC", "d/web:http/tcp");
        assert!(r.nat.contains(&format!(
            "-A KOBUNE-SERVICES -d 10.43.0.10/32 -p tcp -m tcp --dport 80 -m comment --comment \"d/web:http cluster IP\" -j {svc_chain}"
        )));
        assert!(r
            .nat
            .contains("-m statistic --mode nth --every 2 --packet 0 -j"));
        assert!(r.nat.contains("-j DNAT --to-destination 10.42.0.2:8080"));
        assert!(r.nat.contains("-j DNAT --to-destination 10.42.0.3:8080"));
        assert!(!r.nat.contains("10.42.0.4"), "not-ready endpoint unused");
        assert!(r.nat.contains(&format!("-A {svc_chain} ! -s 10.42.0.0/16")));
        assert!(!r.filter.contains("REJECT"));
        assert!(r
            .nat
            .trim_end()
            .lines()
            .rfind(|l| l.starts_with("-A KOBUNE-SERVICES"))
            .unwrap()
            .contains("--dst-type LOCAL -j KOBUNE-NODEPORTS"));
        // Three chains per service port here: SVC + two SEP.
        assert_eq!(r.chains.len(), 7 + 3);
    }

    #[test]
    fn terminating_serving_endpoints_are_a_fallback_only() {
        let eps = vec![
            Endpoint {
                ip: "a".into(),
                port: 1,
                ready: false,
                serving: true,
                terminating: true,
                node_name: String::new(),
            },
            Endpoint {
                ip: "b".into(),
                port: 1,
                ready: false,
                serving: false,
                terminating: true,
                node_name: String::new(),
            },
        ];
        assert_eq!(usable(&eps).len(), 1);
        let mut with_ready = eps.clone();
        with_ready.push(Endpoint {
            ip: "c".into(),
            port: 1,
            ready: true,
            serving: true,
            terminating: false,
            node_name: String::new(),
        });
        let u = usable(&with_ready);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].ip, "c");
    }

    #[test]
    fn no_endpoints_rejects_in_filter() {
        let r = build_rules(&[svc("NodePort")], &|_, _| vec![], &ctx());
        assert!(r.filter.contains("-A KOBUNE-SERVICES -d 10.43.0.10/32 -p tcp -m tcp --dport 80 -m comment --comment \"d/web:http has no endpoints\" -j REJECT"));
        assert!(r.filter.contains(
            "-A KOBUNE-EXTERNAL-SERVICES -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30080"
        ));
        assert!(!r.nat.contains("KOBUNE-SVC-"));
    }

    #[test]
    fn nodeport_loadbalancer_and_affinity() {
        let mut s = (*svc("LoadBalancer")).clone();
        s["spec"]["sessionAffinity"] = json!("ClientIP");
        s["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 60}});
        let sl = slice(&[("10.42.0.2", true, true, false)]);
        let r = build_rules(&[Arc::new(s)], &|_, _| vec![sl.clone()], &ctx());
        let ext = chain("EXT", "d/web:http/tcp");
        assert!(r.nat.contains(&format!(
            "-A KOBUNE-NODEPORTS -p tcp -m tcp --dport 30080 -m comment --comment \"d/web:http\" -j {ext}"
        )));
        assert!(r.nat.contains(&format!(
            "-A KOBUNE-SERVICES -d 127.0.0.1/32 -p tcp -m tcp --dport 80 -m comment --comment \"d/web:http external IP\" -j {ext}"
        )));
        assert!(r.nat.contains(&format!("-A {ext} -m comment --comment \"masquerade traffic for d/web:http external destinations\" -j KOBUNE-MARK-MASQ")));
        assert!(r.nat.contains("--rcheck --seconds 60 --reap"));
        assert!(r
            .nat
            .contains("--set --rsource -j DNAT --to-destination 10.42.0.2:8080"));
    }

    #[test]
    fn headless_and_external_name_get_no_rules() {
        let mut h = (*svc("ClusterIP")).clone();
        h["spec"]["clusterIP"] = json!("None");
        let mut e = (*svc("ExternalName")).clone();
        e["spec"]["externalName"] = json!("example.com");
        let r = build_rules(&[Arc::new(h), Arc::new(e)], &|_, _| vec![], &ctx());
        assert!(!r.filter.contains("REJECT"));
        assert_eq!(r.chains.len(), 7);
    }

    #[test]
    fn restore_input_deletes_stale_chains_and_inserts_jumps() {
        let r = build_rules(&[], &|_, _| vec![], &ctx());
        let stale: BTreeSet<(String, String)> =
            [("nat".to_string(), "KOBUNE-SVC-0000000000000001".to_string())].into();
        let input = r.restore_input(&stale, JUMPS);
        assert!(input.contains(":KOBUNE-SVC-0000000000000001 - [0:0]\n"));
        assert!(input.contains("-X KOBUNE-SVC-0000000000000001\n"));
        assert!(input.contains("-I PREROUTING 1 -j KOBUNE-SERVICES\n"));
        assert_eq!(input.matches("COMMIT").count(), 2);
    }

    #[test]
    fn cleanup_removes_only_ours() {
        let nat = "*nat\n:PREROUTING ACCEPT [0:0]\n:KOBUNE-SERVICES - [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n-A PREROUTING -j KOBUNE-SERVICES\n-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n-A KOBUNE-SERVICES -j RETURN\nCOMMIT\n";
        let input = cleanup_input(&[("nat", nat.to_string()), ("filter", String::new())]).unwrap();
        assert_eq!(
            input,
            "*nat\n-D PREROUTING -j KOBUNE-SERVICES\n:KOBUNE-SERVICES - [0:0]\n-X KOBUNE-SERVICES\nCOMMIT\n"
        );
        assert!(cleanup_input(&[("nat", "*nat\nCOMMIT\n".into())]).is_none());
    }

    #[test]
    fn traffic_policies_local() {
        let sl = Arc::new(json!({
            "metadata": {"name": "web-x", "namespace": "d", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.2"], "conditions": {"ready": true}, "nodeName": "n1"},
                {"addresses": ["10.42.1.2"], "conditions": {"ready": true}, "nodeName": "n2"},
            ],
        }));
        let mut s = (*svc("NodePort")).clone();
        s["spec"]["internalTrafficPolicy"] = json!("Local");
        s["spec"]["externalTrafficPolicy"] = json!("Local");
        let r = build_rules(&[Arc::new(s.clone())], &|_, _| vec![sl.clone()], &ctx());
        let (svc_c, svl, ext) = (
            chain("SVC", "d/web:http/tcp"),
            chain("SVL", "d/web:http/tcp"),
            chain("EXT", "d/web:http/tcp"),
        );
        assert!(r.nat.contains(&format!(
            "--dport 80 -m comment --comment \"d/web:http cluster IP\" -j {svl}"
        )));
        let svl_rules: Vec<&str> = r
            .nat
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svl} ")))
            .collect();
        assert!(svl_rules.iter().any(|l| l.contains("10.42.0.2:8080")));
        assert!(
            !svl_rules.iter().any(|l| l.contains("10.42.1.2")),
            "{svl_rules:?}"
        );
        let svc_rules: Vec<&str> = r
            .nat
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc_c} ")))
            .collect();
        assert!(
            svc_rules.iter().any(|l| l.contains("10.42.1.2")),
            "pods and the host use every endpoint"
        );
        let ext_rules: Vec<&str> = r
            .nat
            .lines()
            .filter(|l| l.starts_with(&format!("-A {ext} ")))
            .collect();
        assert_eq!(ext_rules.len(), 4, "{ext_rules:?}");
        assert!(ext_rules[0].contains("-s 10.42.0.0/16") && ext_rules[0].ends_with(&svc_c));
        assert!(ext_rules[1].contains("--src-type LOCAL -j KOBUNE-MARK-MASQ"));
        assert!(
            ext_rules[3].ends_with(&format!("-j {svl}")),
            "outside clients keep their address"
        );

        // No local endpoint: ClusterIP and external traffic dropped, not sent elsewhere.
        let mut other = ctx();
        other.node_name = "n3".into();
        let r = build_rules(&[Arc::new(s)], &|_, _| vec![sl.clone()], &other);
        assert!(r.filter.contains("-d 10.43.0.10/32 -p tcp -m tcp --dport 80 -m comment --comment \"d/web:http has no local endpoints\" -j DROP"));
        assert!(r.filter.contains(
            "--dport 30080 -m comment --comment \"d/web:http has no local endpoints\" -j DROP"
        ));
        assert!(!r.nat.contains(&svl));
    }

    /// What the kernel holds after restore inputs, as iptables-restore
    /// --noflush applies them: `:C` creates or flushes, `-A` appends, `-X`
    /// deletes; jumps into built-in chains are left out.
    fn kernel_after(kernel: &mut BTreeMap<(String, String), Vec<String>>, input: &str) {
        let mut table = String::new();
        for line in input.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.to_string();
            } else if let Some(c) = line.strip_prefix(':') {
                let c = c.split_whitespace().next().unwrap().to_string();
                kernel.insert((table.clone(), c), vec![]);
            } else if let Some(r) = line.strip_prefix("-A ") {
                let c = r.split_whitespace().next().unwrap().to_string();
                kernel
                    .get_mut(&(table.clone(), c.clone()))
                    .unwrap_or_else(|| panic!("-A to missing chain {c}: {input}"))
                    .push(line.to_string());
            } else if let Some(c) = line.strip_prefix("-X ") {
                let rules = kernel.remove(&(table.clone(), c.to_string()));
                assert_eq!(rules, Some(vec![]), "-X of a missing or full chain {c}");
                for ((t, _), lines) in kernel.iter() {
                    assert!(
                        !(t == &table && lines.iter().any(|l| l.ends_with(&format!("-j {c}")))),
                        "{c} deleted while still referenced: {input}"
                    );
                }
            }
        }
    }

    #[test]
    fn partial_restores_leave_the_kernel_as_full_ones() {
        fn ep(ip: &str, ready: bool) -> (&str, bool, bool, bool) {
            (ip, ready, ready, false)
        }
        type Ep<'a> = (&'a str, bool, bool, bool);
        let states: Vec<(Vec<Arc<Value>>, Vec<Ep>)> = vec![
            (vec![svc("ClusterIP")], vec![]),
            (vec![svc("ClusterIP")], vec![ep("10.42.0.2", false)]),
            (vec![svc("ClusterIP")], vec![ep("10.42.0.2", true)]),
            (
                vec![svc("NodePort")],
                vec![ep("10.42.0.2", true), ep("10.42.0.3", true)],
            ),
            (
                vec![svc("NodePort")],
                vec![
                    ep("10.42.0.3", true),
                    ep("10.42.0.4", true),
                    ep("10.42.0.2", false),
                ],
            ),
            (vec![svc("LoadBalancer")], vec![ep("10.42.0.4", true)]),
            (vec![svc("NodePort")], vec![]),
            (vec![], vec![]),
            (vec![svc("ClusterIP")], vec![ep("10.42.0.5", true)]),
        ];
        let mut kernel = BTreeMap::new();
        let mut applied: Option<Rules> = None;
        let mut declared: BTreeSet<(String, String)> = BTreeSet::new();
        for (i, (services, eps)) in states.iter().enumerate() {
            let sl = slice(eps);
            let rules = build_rules(services, &|_, _| vec![sl.clone()], &ctx());
            let stale: BTreeSet<(String, String)> =
                declared.difference(&rules.chains).cloned().collect();
            let input = rules.restore_input_since(applied.as_ref(), &stale, &[]);
            kernel_after(&mut kernel, &input);
            // The same state from nothing, with every chain written.
            let mut want = BTreeMap::new();
            kernel_after(&mut want, &rules.restore_input(&BTreeSet::new(), &[]));
            assert_eq!(kernel, want, "state {i}: {input}");
            declared = rules.chains.clone();
            applied = Some(rules);
        }
    }

    #[test]
    fn chain_names_fit_iptables() {
        let c = chain("SEP", "some/long-service-name:port/tcp/10.42.0.200:65535");
        assert!(c.len() <= 28, "{c}");
        assert_ne!(chain("SVC", "a"), chain("SVC", "b"));
    }
}
