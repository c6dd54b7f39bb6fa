//! Cluster DNS, as CoreDNS's `kubernetes` plugin serves it, run on each node
//! at the node's pod-network gateway address (10.42.0.1:53 for the pod CIDR
//! 10.42.0.0/24), over UDP and TCP.
//!
//! Names under the cluster domain (`cluster.local`) are answered from
//! informers over Services, EndpointSlices and Pods:
//!
//! - `svc.ns.svc.cluster.local`: A to the ClusterIP; for a headless Service
//!   the ready endpoint addresses (all of them with
//!   `publishNotReadyAddresses`); CNAME to `spec.externalName` for an
//!   ExternalName Service (chased inside the cluster domain, else through
//!   the upstream servers).
//! - `host.svc.ns.svc.cluster.local`: a headless Service's endpoint by its
//!   `hostname` (StatefulSets) or its dashed address (`10-42-0-5`).
//! - `_port._proto.svc.ns.svc.cluster.local`: SRV per named port, with the
//!   targets' A records as additional records.
//! - `a-b-c-d.ns.pod.cluster.local`: a pod of that namespace with that IP.
//!
//! Other names in the cluster domain get NXDOMAIN, names that exist but have
//! no record of the asked type NODATA, both with the zone's SOA in the
//! authority section. Everything else is forwarded to the nameservers of a
//! resolv.conf (the host's by default), over UDP with a TCP retry when the
//! answer is truncated. Records carry a 5 second TTL.
//!
//! [`ensure_kube_dns`] creates the `kube-system/kube-dns` Service (at the
//! 10th address of the service range, as k3s) and an EndpointSlice naming
//! this node's DNS address, so pods reach the server through the Service IP.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::listeners::{InFlight, Listeners};
use anyhow::Context;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, NS, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use kobune_apiserver::registry::{Registry, WriteOptions};
use kobune_controllers::runtime::Informer;
use serde_json::{json, Value};
use socket2::Type;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// The default cluster domain.
pub const DEFAULT_DOMAIN: &str = "cluster.local";
/// Time to live of every record served from the cluster.
pub const TTL: u32 = 5;
/// The `endpointslice.kubernetes.io/managed-by` value of kube-dns's slice.
pub const MANAGED_BY: &str = "dns.kobune.io";
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
const BY_SERVICE: &str = "by-service";
const BY_IP: &str = "by-ip";

/// How to run the DNS server.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Address and port to answer on (the gateway, port 53).
    pub listen: SocketAddr,
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: String,
    /// Where the upstream nameservers are listed (re-read when it changes).
    pub resolv_conf: PathBuf,
}

/// The gateway of a pod CIDR: its first address (`10.42.0.0/24` ->
/// `10.42.0.1`).
pub fn gateway_of(pod_cidr: &str) -> anyhow::Result<Ipv4Addr> {
    let (ip, bits) = pod_cidr.split_once('/').context("CIDR needs a /prefix")?;
    let ip: Ipv4Addr = ip.parse().context("CIDR address")?;
    let bits: u8 = bits.parse().context("CIDR prefix")?;
    anyhow::ensure!(bits <= 30, "pod CIDR {pod_cidr} is too small");
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits as u32)
    };
    Ok(Ipv4Addr::from((u32::from(ip) & mask) + 1))
}

/// The cluster DNS Service IP: the 10th address of the service range
/// (`10.43.0.0/16` -> `10.43.0.10`), as k3s picks it.
pub fn cluster_dns_ip(service_cidr: &str) -> anyhow::Result<Ipv4Addr> {
    let (ip, bits) = service_cidr
        .split_once('/')
        .context("CIDR needs a /prefix")?;
    let ip: Ipv4Addr = ip.parse().context("CIDR address")?;
    let bits: u8 = bits.parse().context("CIDR prefix")?;
    anyhow::ensure!(bits <= 28, "service CIDR {service_cidr} is too small");
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits as u32)
    };
    Ok(Ipv4Addr::from((u32::from(ip) & mask) + 10))
}

// ---------------------------------------------------------------------------
// Records

/// What a query gets.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Not in the cluster domain: ask the upstream servers.
    Forward,
    /// Answers (possibly a CNAME to chase) and additional records.
    Answer {
        answers: Vec<Record>,
        additionals: Vec<Record>,
        /// The CNAME target still to resolve (ExternalName).
        chase: Option<Name>,
    },
    /// The name exists but has no records of the type.
    NoData,
    /// The name does not exist.
    NxDomain,
}

/// The cluster's records, from informers.
pub struct Zone {
    pub services: Arc<Informer>,
    pub slices: Arc<Informer>,
    pub pods: Arc<Informer>,
    domain: Name,
    /// The address `ns.dns.<domain>` resolves to (this server's).
    own_ip: Ipv4Addr,
}

fn index_service(o: &Value) -> Vec<String> {
    let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
    o["metadata"]["labels"]["kubernetes.io/service-name"]
        .as_str()
        .map(|s| vec![format!("{ns}/{s}")])
        .unwrap_or_default()
}

fn index_pod_ip(o: &Value) -> Vec<String> {
    let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
    let mut ips: BTreeSet<String> = o["status"]["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["ip"].as_str().map(String::from))
        .collect();
    if let Some(ip) = o["status"]["podIP"].as_str() {
        ips.insert(ip.to_string());
    }
    ips.into_iter().map(|ip| format!("{ns}/{ip}")).collect()
}

fn dashed(ip: &str) -> String {
    ip.replace(['.', ':'], "-")
}

fn undash_v4(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('-').collect();
    if parts.len() != 4 {
        return None;
    }
    parts.join(".").parse().ok()
}

fn a_record(name: &Name, ip: Ipv4Addr) -> Record {
    Record::from_rdata(name.clone(), TTL, RData::A(A(ip)))
}

/// One endpoint address of a Service.
struct Endpoint {
    ip: Ipv4Addr,
    hostname: Option<String>,
}

impl Zone {
    pub fn new(domain: &str, own_ip: Ipv4Addr) -> anyhow::Result<Zone> {
        let domain = Name::from_ascii(format!("{}.", domain.trim_end_matches('.')))
            .context("cluster domain")?
            .to_lowercase();
        Ok(Zone {
            services: Arc::new(Informer::new("/registry/core/services/")),
            slices: Arc::new(
                Informer::new("/registry/discovery.k8s.io/endpointslices/")
                    .with_index(BY_SERVICE, index_service),
            ),
            pods: Arc::new(Informer::new("/registry/core/pods/").with_index(BY_IP, index_pod_ip)),
            domain,
            own_ip,
        })
    }

    /// The zone apex, e.g. `cluster.local.`.
    pub fn domain(&self) -> &Name {
        &self.domain
    }

    /// The SOA record of the zone.
    pub fn soa(&self) -> Record {
        let mname = self.sub(&["ns", "dns"]);
        let rname = self.sub(&["hostmaster"]);
        let serial = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Record::from_rdata(
            self.domain.clone(),
            TTL,
            RData::SOA(SOA::new(mname, rname, serial, 7200, 1800, 86400, TTL)),
        )
    }

    /// `labels` (leftmost first) prepended to the domain.
    fn sub(&self, labels: &[&str]) -> Name {
        let mut n = self.domain.clone();
        for l in labels.iter().rev() {
            n = n.prepend_label(*l).unwrap_or_else(|_| n.clone());
        }
        n
    }

    fn service(&self, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.services
            .get(&format!("{}{ns}/{name}", self.services.prefix()))
    }

    /// The endpoints DNS publishes for a Service: ready ones, or every one
    /// with `publishNotReadyAddresses`; unique by address, in order.
    fn endpoints(&self, ns: &str, name: &str, svc: &Value) -> Vec<Endpoint> {
        let all = svc["spec"]["publishNotReadyAddresses"].as_bool() == Some(true);
        let mut seen = BTreeSet::new();
        let mut out = vec![];
        for (_, slice) in self.slices.by_index(BY_SERVICE, &format!("{ns}/{name}")) {
            if slice["addressType"].as_str().unwrap_or("IPv4") != "IPv4" {
                continue;
            }
            for ep in slice["endpoints"].as_array().into_iter().flatten() {
                if !all && ep["conditions"]["ready"].as_bool() == Some(false) {
                    continue;
                }
                for ip in ep["addresses"].as_array().into_iter().flatten() {
                    let Some(ip) = ip.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()) else {
                        continue;
                    };
                    if seen.insert(ip) {
                        out.push(Endpoint {
                            ip,
                            hostname: ep["hostname"].as_str().map(str::to_lowercase),
                        });
                    }
                }
            }
        }
        out
    }

    /// The port numbers of a headless Service's endpoints by (name,
    /// protocol), from its slices.
    fn slice_ports(&self, ns: &str, name: &str) -> Vec<(String, String, u16)> {
        let mut out = BTreeSet::new();
        for (_, slice) in self.slices.by_index(BY_SERVICE, &format!("{ns}/{name}")) {
            for p in slice["ports"].as_array().into_iter().flatten() {
                let Some(port) = p["port"].as_u64() else {
                    continue;
                };
                out.insert((
                    p["name"].as_str().unwrap_or_default().to_lowercase(),
                    p["protocol"].as_str().unwrap_or("TCP").to_lowercase(),
                    port as u16,
                ));
            }
        }
        out.into_iter().collect()
    }

    /// The service's own ports by (name, protocol).
    fn service_ports(svc: &Value) -> Vec<(String, String, u16)> {
        svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p["name"].as_str().unwrap_or_default().to_lowercase(),
                    p["protocol"].as_str().unwrap_or("TCP").to_lowercase(),
                    p["port"].as_u64()? as u16,
                ))
            })
            .collect()
    }

    fn endpoint_host(ep: &Endpoint) -> String {
        ep.hostname
            .clone()
            .unwrap_or_else(|| dashed(&ep.ip.to_string()))
    }

    /// Answers one question. `qname` keeps the asker's case for the answer.
    pub fn resolve(&self, qname: &Name, qtype: RecordType) -> Outcome {
        let lower = qname.to_lowercase();
        if !self.domain.zone_of(&lower) {
            return self.reverse(qname, &lower, qtype);
        }
        let n = lower.num_labels() as usize - self.domain.num_labels() as usize;
        let labels: Vec<String> = lower
            .iter()
            .take(n)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        match l.as_slice() {
            [] => match qtype {
                RecordType::SOA => answer(vec![self.soa()]),
                RecordType::NS => answer(vec![Record::from_rdata(
                    qname.clone(),
                    TTL,
                    RData::NS(NS(self.sub(&["ns", "dns"]))),
                )]),
                _ => Outcome::NoData,
            },
            ["ns", "dns"] => self.only_a(qtype, vec![a_record(qname, self.own_ip)]),
            ["dns"] | ["svc"] | ["pod"] => Outcome::NoData,
            [ns, "svc"] => {
                let prefix = format!("{}{ns}/", self.services.prefix());
                if self
                    .services
                    .list()
                    .iter()
                    .any(|(k, _)| k.starts_with(&prefix))
                {
                    Outcome::NoData
                } else {
                    Outcome::NxDomain
                }
            }
            [name, ns, "svc"] => self.service_name(qname, ns, name, qtype),
            [port, proto, name, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv(ns, name, &port[1..], &proto[1..], qtype)
            }
            [host, name, ns, "svc"] => {
                let Some(svc) = self.service(ns, name) else {
                    return Outcome::NxDomain;
                };
                let ips: Vec<Record> = self
                    .endpoints(ns, name, &svc)
                    .iter()
                    .filter(|ep| Self::endpoint_host(ep) == *host)
                    .map(|ep| a_record(qname, ep.ip))
                    .collect();
                if ips.is_empty() {
                    Outcome::NxDomain
                } else {
                    self.only_a(qtype, ips)
                }
            }
            [ip, ns, "pod"] => {
                let Some(addr) = undash_v4(ip) else {
                    return Outcome::NxDomain;
                };
                if self
                    .pods
                    .by_index(BY_IP, &format!("{ns}/{addr}"))
                    .is_empty()
                {
                    return Outcome::NxDomain;
                }
                self.only_a(qtype, vec![a_record(qname, addr)])
            }
            _ => Outcome::NxDomain,
        }
    }

    /// PTR for a Service's ClusterIP (`svc.ns.svc.<domain>`) or a Service
    /// endpoint's address (`host.svc.ns.svc.<domain>`); other addresses and
    /// names are forwarded, as CoreDNS falls through for in-addr.arpa.
    fn reverse(&self, qname: &Name, lower: &Name, qtype: RecordType) -> Outcome {
        let text = lower.to_ascii();
        let Some(rev) = text.strip_suffix(".in-addr.arpa.") else {
            return Outcome::Forward;
        };
        let mut octets: Vec<&str> = rev.split('.').collect();
        if octets.len() != 4 {
            return Outcome::Forward;
        }
        octets.reverse();
        let Ok(ip) = octets.join(".").parse::<Ipv4Addr>() else {
            return Outcome::Forward;
        };
        let ip_text = ip.to_string();
        let mut targets = vec![];
        for (_, svc) in self.services.list() {
            if svc["spec"]["clusterIP"].as_str() == Some(ip_text.as_str()) {
                let m = &svc["metadata"];
                if let (Some(name), Some(ns)) = (m["name"].as_str(), m["namespace"].as_str()) {
                    targets.push(self.sub(&[name, ns, "svc"]));
                }
            }
        }
        if targets.is_empty() {
            for (_, slice) in self.slices.list() {
                let m = &slice["metadata"];
                let (Some(svc), Some(ns)) = (
                    m["labels"]["kubernetes.io/service-name"].as_str(),
                    m["namespace"].as_str(),
                ) else {
                    continue;
                };
                for ep in slice["endpoints"].as_array().into_iter().flatten() {
                    let has = ep["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|a| a.as_str() == Some(ip_text.as_str()));
                    if has {
                        let host = ep["hostname"]
                            .as_str()
                            .map(str::to_lowercase)
                            .unwrap_or_else(|| dashed(&ip_text));
                        targets.push(self.sub(&[&host, svc, ns, "svc"]));
                    }
                }
            }
        }
        if targets.is_empty() {
            return Outcome::Forward;
        }
        if qtype != RecordType::PTR && qtype != RecordType::ANY {
            return Outcome::NoData;
        }
        targets.sort();
        targets.dedup();
        answer(
            targets
                .into_iter()
                .map(|t| Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(t))))
                .collect(),
        )
    }

    /// A-type answers for a name that has only A records.
    fn only_a(&self, qtype: RecordType, records: Vec<Record>) -> Outcome {
        match qtype {
            RecordType::A | RecordType::ANY => answer(records),
            _ => Outcome::NoData,
        }
    }

    fn service_name(&self, qname: &Name, ns: &str, name: &str, qtype: RecordType) -> Outcome {
        let Some(svc) = self.service(ns, name) else {
            return Outcome::NxDomain;
        };
        let spec = &svc["spec"];
        if spec["type"].as_str() == Some("ExternalName") {
            let Some(target) = spec["externalName"]
                .as_str()
                .and_then(|t| Name::from_ascii(format!("{}.", t.trim_end_matches('.'))).ok())
            else {
                return Outcome::NxDomain;
            };
            let cname = Record::from_rdata(qname.clone(), TTL, RData::CNAME(CNAME(target.clone())));
            return Outcome::Answer {
                answers: vec![cname],
                additionals: vec![],
                chase: (qtype != RecordType::CNAME).then_some(target),
            };
        }
        let headless = spec["clusterIP"].as_str() == Some("None");
        if qtype == RecordType::SRV {
            let mut answers = vec![];
            let mut additionals = vec![];
            if headless {
                let eps = self.endpoints(ns, name, &svc);
                for (pname, _, port) in self.slice_ports(ns, name) {
                    if pname.is_empty() {
                        continue;
                    }
                    for ep in &eps {
                        let target = self.sub(&[&Self::endpoint_host(ep), name, ns, "svc"]);
                        answers.push(srv_record(qname, port, &target));
                        additionals.push(a_record(&target, ep.ip));
                    }
                }
            } else if let Some(ip) = cluster_ip(&svc) {
                let target = self.sub(&[name, ns, "svc"]);
                for (pname, _, port) in Self::service_ports(&svc) {
                    if pname.is_empty() {
                        continue;
                    }
                    answers.push(srv_record(qname, port, &target));
                }
                if !answers.is_empty() {
                    additionals.push(a_record(&target, ip));
                }
            }
            return with_additionals(answers, additionals);
        }
        let records: Vec<Record> = if headless {
            self.endpoints(ns, name, &svc)
                .iter()
                .map(|ep| a_record(qname, ep.ip))
                .collect()
        } else {
            cluster_ip(&svc)
                .map(|ip| vec![a_record(qname, ip)])
                .unwrap_or_default()
        };
        if records.is_empty() {
            return Outcome::NoData;
        }
        self.only_a(qtype, records)
    }

    fn srv(&self, ns: &str, name: &str, port: &str, proto: &str, qtype: RecordType) -> Outcome {
        let Some(svc) = self.service(ns, name) else {
            return Outcome::NxDomain;
        };
        let qname = self.sub(&[&format!("_{port}"), &format!("_{proto}"), name, ns, "svc"]);
        let matches = |p: &(String, String, u16)| p.0 == port && p.1 == proto;
        let mut answers = vec![];
        let mut additionals = vec![];
        if svc["spec"]["clusterIP"].as_str() == Some("None") {
            let eps = self.endpoints(ns, name, &svc);
            for (_, _, number) in self.slice_ports(ns, name).into_iter().filter(matches) {
                for ep in &eps {
                    let target = self.sub(&[&Self::endpoint_host(ep), name, ns, "svc"]);
                    answers.push(srv_record(&qname, number, &target));
                    additionals.push(a_record(&target, ep.ip));
                }
            }
        } else if let Some(ip) = cluster_ip(&svc) {
            let target = self.sub(&[name, ns, "svc"]);
            for (_, _, number) in Self::service_ports(&svc).into_iter().filter(matches) {
                answers.push(srv_record(&qname, number, &target));
            }
            if !answers.is_empty() {
                additionals.push(a_record(&target, ip));
            }
        }
        if answers.is_empty() {
            return Outcome::NxDomain;
        }
        if qtype != RecordType::SRV && qtype != RecordType::ANY {
            return Outcome::NoData;
        }
        with_additionals(answers, additionals)
    }
}

fn cluster_ip(svc: &Value) -> Option<Ipv4Addr> {
    svc["spec"]["clusterIP"].as_str()?.parse().ok()
}

fn srv_record(qname: &Name, port: u16, target: &Name) -> Record {
    Record::from_rdata(
        qname.clone(),
        TTL,
        RData::SRV(SRV::new(0, 100, port, target.clone())),
    )
}

fn answer(answers: Vec<Record>) -> Outcome {
    with_additionals(answers, vec![])
}

fn with_additionals(answers: Vec<Record>, additionals: Vec<Record>) -> Outcome {
    if answers.is_empty() {
        return Outcome::NoData;
    }
    Outcome::Answer {
        answers,
        additionals,
        chase: None,
    }
}

// ---------------------------------------------------------------------------
// Upstream servers

/// The nameservers of a resolv.conf, in order, at port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let ip: IpAddr = words.next()?.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

struct Upstreams {
    path: PathBuf,
    own: SocketAddr,
    cached: Mutex<(Option<SystemTime>, Vec<SocketAddr>)>,
}

impl Upstreams {
    /// The current servers, re-read when the file's mtime changes; our own
    /// address is left out so nothing loops.
    fn servers(&self) -> Vec<SocketAddr> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if c.0.is_none() || c.0 != mtime {
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            let servers: Vec<SocketAddr> = parse_resolv_conf(&text)
                .into_iter()
                .filter(|s| *s != self.own)
                .collect();
            if servers.is_empty() {
                tracing::warn!(path = %self.path.display(), "no upstream nameservers");
            }
            *c = (mtime, servers);
        }
        c.1.clone()
    }
}

async fn query_udp(server: SocketAddr, req: &[u8], id: u16) -> anyhow::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(req).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf))
            .await
            .context("timed out")??;
        if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn query_tcp(server: SocketAddr, req: &[u8]) -> anyhow::Result<Vec<u8>> {
    let work = async {
        let mut s = TcpStream::connect(server).await?;
        let mut framed = (req.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(req);
        s.write_all(&framed).await?;
        let len = s.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        anyhow::Ok(buf)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, work)
        .await
        .context("timed out")?
}

fn is_truncated(msg: &[u8]) -> bool {
    msg.len() > 2 && msg[2] & 0x02 != 0
}

// ---------------------------------------------------------------------------
// Server

/// The running DNS server; dropping it stops nothing, [`DnsServer::stop`]
/// does.
pub struct DnsServer {
    pub zone: Arc<Zone>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    in_flight: InFlight,
}

impl DnsServer {
    /// Stops taking queries and waits (up to a second) for those being
    /// answered. Queries that arrive later wait in the socket for the next
    /// server if a keeper holds it (see [`crate::listeners`]).
    pub async fn stop(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.in_flight.wait(Duration::from_secs(1)).await;
    }
}

struct Handler {
    zone: Arc<Zone>,
    upstreams: Upstreams,
}

/// The UDP and TCP sockets at `addr`, from `listeners` (held across a
/// server restart) or bound anew. Freebind: the bridge may get its address
/// only when the first pod starts.
fn bind_sockets(
    listeners: &Listeners,
    addr: SocketAddr,
) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let udp = listeners
        .take(addr, Type::DGRAM, true)
        .with_context(|| format!("binding udp {addr}"))?;
    let tcp = listeners
        .take(addr, Type::STREAM, true)
        .with_context(|| format!("binding tcp {addr}"))?;
    let udp = UdpSocket::from_std(std::net::UdpSocket::from(udp))?;
    let tcp = TcpListener::from_std(std::net::TcpListener::from(tcp))?;
    Ok((udp, tcp))
}

/// Makes sure `bridge` exists, is up and holds `gateway/prefix`, so the DNS
/// address answers before the first pod's CNI call creates the bridge (the
/// bridge plugin adopts an existing bridge with the gateway address).
pub fn ensure_bridge(bridge: &str, gateway: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
    let ip = |args: &[&str]| -> anyhow::Result<(bool, String)> {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .context("running ip (iproute2)")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (exists, _) = ip(&["link", "show", "dev", bridge])?;
    if !exists {
        let (ok, err) = ip(&["link", "add", bridge, "type", "bridge"])?;
        anyhow::ensure!(ok || err.contains("exists"), "ip link add {bridge}: {err}");
    }
    let cidr = format!("{gateway}/{prefix}");
    let (ok, err) = ip(&["addr", "add", &cidr, "dev", bridge])?;
    anyhow::ensure!(
        ok || err.contains("exists") || err.contains("already assigned"),
        "ip addr add {cidr} dev {bridge}: {err}"
    );
    let (ok, err) = ip(&["link", "set", bridge, "up"])?;
    anyhow::ensure!(ok, "ip link set {bridge} up: {err}");
    Ok(())
}

/// Starts the informers and the UDP and TCP listeners.
pub async fn start(
    registry: Arc<Registry>,
    cfg: DnsConfig,
    listeners: &Listeners,
) -> anyhow::Result<DnsServer> {
    let own_ip = match cfg.listen.ip() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    let zone = Arc::new(Zone::new(&cfg.domain, own_ip)?);
    let mut tasks = vec![
        zone.services.start(&registry.cache, |_, _| {})?,
        zone.slices.start(&registry.cache, |_, _| {})?,
        zone.pods.start(&registry.cache, |_, _| {})?,
    ];
    let (udp, tcp) = bind_sockets(listeners, cfg.listen)?;
    let in_flight = InFlight::default();
    let handler = Arc::new(Handler {
        zone: zone.clone(),
        upstreams: Upstreams {
            path: cfg.resolv_conf.clone(),
            own: cfg.listen,
            cached: Mutex::new((None, vec![])),
        },
    });
    let udp = Arc::new(udp);
    let (h, flight) = (handler.clone(), in_flight.clone());
    tasks.push(tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, peer) = match udp.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("dns udp recv: {e}");
                    continue;
                }
            };
            let req = buf[..n].to_vec();
            let (h, udp, busy) = (h.clone(), udp.clone(), flight.enter());
            tokio::spawn(async move {
                if let Some(resp) = h.handle(&req, true).await {
                    let _ = udp.send_to(&resp, peer).await;
                }
                drop(busy);
            });
        }
    }));
    let (h, flight) = (handler.clone(), in_flight.clone());
    tasks.push(tokio::spawn(async move {
        loop {
            let (stream, _) = match tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("dns tcp accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (h, busy) = (h.clone(), flight.enter());
            tokio::spawn(async move {
                let _ = serve_tcp(h, stream).await;
                drop(busy);
            });
        }
    }));
    tracing::info!(listen = %cfg.listen, domain = %cfg.domain, "cluster DNS serving");
    Ok(DnsServer {
        zone,
        tasks,
        in_flight,
    })
}

async fn serve_tcp(h: Arc<Handler>, mut stream: TcpStream) -> anyhow::Result<()> {
    loop {
        let len = match tokio::time::timeout(Duration::from_secs(10), stream.read_u16()).await {
            Ok(Ok(n)) => n as usize,
            _ => return Ok(()),
        };
        let mut req = vec![0u8; len];
        stream.read_exact(&mut req).await?;
        if let Some(resp) = h.handle(&req, false).await {
            let mut framed = (resp.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&resp);
            stream.write_all(&framed).await?;
        }
    }
}

impl Handler {
    /// The reply to one request (wire format in and out); `None` drops it.
    async fn handle(&self, req: &[u8], udp: bool) -> Option<Vec<u8>> {
        if req.len() < 12 {
            return None;
        }
        let id = u16::from_be_bytes([req[0], req[1]]);
        let msg = match Message::from_vec(req) {
            Ok(m) => m,
            Err(_) => {
                let m = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
                return m.to_vec().ok();
            }
        };
        if msg.metadata.message_type != MessageType::Query {
            return None;
        }
        let limit = if udp {
            msg.edns
                .as_ref()
                .map(|e| e.max_payload().max(512))
                .unwrap_or(512) as usize
        } else {
            65535
        };
        if msg.metadata.op_code != OpCode::Query || msg.queries.len() != 1 {
            let code = if msg.metadata.op_code != OpCode::Query {
                ResponseCode::NotImp
            } else {
                ResponseCode::FormErr
            };
            let mut m = Message::error_msg(id, msg.metadata.op_code, code);
            m.queries = msg.queries.clone();
            return m.to_vec().ok();
        }
        let q = msg.queries[0].clone();
        let outcome = self.zone.resolve(q.name(), q.query_type());
        let bytes = match outcome {
            Outcome::Forward => match self.forward(req, id).await {
                Some(b) => b,
                None => {
                    let mut m = Message::error_msg(id, OpCode::Query, ResponseCode::ServFail);
                    m.queries = vec![q];
                    m.metadata.recursion_desired = msg.metadata.recursion_desired;
                    m.metadata.recursion_available = true;
                    m.to_vec().ok()?
                }
            },
            outcome => self.local_reply(&msg, outcome).await.to_vec().ok()?,
        };
        if bytes.len() > limit {
            let m = Message::from_vec(&bytes).ok()?;
            let mut t = m.truncate();
            t.metadata.id = id;
            return t.to_vec().ok();
        }
        Some(bytes)
    }

    async fn local_reply(&self, req: &Message, outcome: Outcome) -> Message {
        let mut m = Message::response(req.metadata.id, OpCode::Query);
        m.metadata.authoritative = true;
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.metadata.recursion_available = true;
        m.queries = req.queries.clone();
        if req.edns.is_some() {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            m.edns = Some(e);
        }
        let qtype = req.queries[0].query_type();
        match outcome {
            Outcome::Forward => {}
            Outcome::NoData => m.authorities.push(self.zone.soa()),
            Outcome::NxDomain => {
                m.metadata.response_code = ResponseCode::NXDomain;
                m.authorities.push(self.zone.soa());
            }
            Outcome::Answer {
                answers,
                additionals,
                chase,
            } => {
                m.answers = answers;
                m.additionals = additionals;
                if let Some(target) = chase {
                    self.chase(&mut m, target, qtype).await;
                }
            }
        }
        m
    }

    /// Follows a CNAME: inside the cluster domain from the zone (a few
    /// hops), else through the upstream servers.
    async fn chase(&self, m: &mut Message, mut target: Name, qtype: RecordType) {
        for _ in 0..8 {
            match self.zone.resolve(&target, qtype) {
                Outcome::Answer {
                    answers,
                    additionals,
                    chase,
                } => {
                    m.answers.extend(answers);
                    m.additionals.extend(additionals);
                    match chase {
                        Some(next) => target = next,
                        None => return,
                    }
                }
                Outcome::NoData | Outcome::NxDomain => return,
                Outcome::Forward => {
                    let mut q = Message::query();
                    q.metadata.recursion_desired = true;
                    q.queries = vec![hickory_proto::op::Query::query(target.clone(), qtype)];
                    let Ok(bytes) = q.to_vec() else { return };
                    if let Some(resp) = self.forward(&bytes, q.metadata.id).await {
                        if let Ok(r) = Message::from_vec(&resp) {
                            m.answers.extend(r.answers);
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Asks the upstream servers in order; a truncated UDP answer is asked
    /// again over TCP.
    async fn forward(&self, req: &[u8], id: u16) -> Option<Vec<u8>> {
        for server in self.upstreams.servers() {
            match query_udp(server, req, id).await {
                Ok(resp) if is_truncated(&resp) => match query_tcp(server, req).await {
                    Ok(full) => return Some(full),
                    Err(e) => {
                        // The truncated answer tells the client to try TCP.
                        tracing::debug!(%server, "dns tcp upstream: {e:#}");
                        return Some(resp);
                    }
                },
                Ok(resp) => return Some(resp),
                Err(e) => tracing::debug!(%server, "dns upstream: {e:#}"),
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------
// The kube-dns Service

/// Creates, idempotently, Service `kube-system/kube-dns` at `cluster_ip`
/// (selectorless, ports dns/53/UDP and dns-tcp/53/TCP, labelled as k3s's
/// CoreDNS) and an EndpointSlice naming `node_ip:53` on `node`.
pub async fn ensure_kube_dns(
    registry: &Registry,
    cluster_ip: Ipv4Addr,
    node: &str,
    node_ip: Ipv4Addr,
) -> anyhow::Result<()> {
    let opts = WriteOptions {
        field_manager: Some(MANAGED_BY.into()),
        ..Default::default()
    };
    let svcs = registry
        .resources
        .find("", "v1", "services")
        .context("services not served")?;
    let slices = registry
        .resources
        .find("discovery.k8s.io", "v1", "endpointslices")
        .context("endpointslices not served")?;
    let want = kube_dns_service(cluster_ip);
    let svc = match registry.get(&svcs, Some("kube-system"), "kube-dns").await {
        Ok(s) => s,
        Err(e) if e.code == 404 => {
            match registry
                .create(&svcs, Some("kube-system"), want.clone(), &opts)
                .await
            {
                Ok(r) => r.object,
                Err(e) if e.code == 409 => {
                    registry.get(&svcs, Some("kube-system"), "kube-dns").await?
                }
                Err(e) => return Err(anyhow::anyhow!("creating kube-system/kube-dns: {e}")),
            }
        }
        Err(e) => return Err(anyhow::anyhow!("reading kube-system/kube-dns: {e}")),
    };
    if svc["spec"]["clusterIP"].as_str() != Some(&cluster_ip.to_string()) {
        tracing::warn!(
            "Service kube-system/kube-dns has clusterIP {} rather than {cluster_ip}",
            svc["spec"]["clusterIP"]
        );
    }
    let name = format!("kube-dns-{node}");
    let mut slice = kube_dns_slice(&name, &svc, node, node_ip);
    match registry.get(&slices, Some("kube-system"), &name).await {
        Ok(old) => {
            let same = ["endpoints", "ports", "addressType"]
                .iter()
                .all(|f| old[*f] == slice[*f])
                && old["metadata"]["ownerReferences"] == slice["metadata"]["ownerReferences"];
            if !same {
                slice["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                registry
                    .update(&slices, Some("kube-system"), &name, slice, &opts, None)
                    .await
                    .map_err(|e| anyhow::anyhow!("updating EndpointSlice {name}: {e}"))?;
            }
        }
        Err(e) if e.code == 404 => match registry
            .create(&slices, Some("kube-system"), slice, &opts)
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(anyhow::anyhow!("creating EndpointSlice {name}: {e}")),
        },
        Err(e) => return Err(anyhow::anyhow!("reading EndpointSlice {name}: {e}")),
    }
    Ok(())
}

fn kube_dns_service(cluster_ip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "namespace": "kube-system",
            "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "CoreDNS",
            },
        },
        "spec": {
            "clusterIP": cluster_ip.to_string(),
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
    })
}

fn kube_dns_slice(name: &str, svc: &Value, node: &str, node_ip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "kube-system",
            "labels": {
                "kubernetes.io/service-name": "kube-dns",
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                "k8s-app": "kube-dns",
            },
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Service",
                "name": "kube-dns",
                "uid": svc["metadata"]["uid"],
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": [node_ip.to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": node,
        }],
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ],
    })
}

/// Runs [`ensure_kube_dns`] until it succeeds (the registry may still be
/// settling at startup), then returns.
pub async fn ensure_kube_dns_retrying(
    registry: Arc<Registry>,
    cluster_ip: Ipv4Addr,
    node: String,
    node_ip: Ipv4Addr,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        match ensure_kube_dns(&registry, cluster_ip, &node, node_ip).await {
            Ok(()) => return,
            Err(e) => tracing::warn!("kube-dns service: {e:#}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// The host resolv.conf to use by default, as k3s picks it:
/// `/etc/resolv.conf`, unless it names only loopback nameservers (a local
/// stub such as systemd-resolved's 127.0.0.53, unreachable from pods) and
/// `/run/systemd/resolve/resolv.conf` lists real ones.
pub fn default_resolv_conf() -> PathBuf {
    pick_resolv_conf(
        Path::new("/etc/resolv.conf"),
        Path::new("/run/systemd/resolve/resolv.conf"),
    )
}

fn pick_resolv_conf(etc: &Path, systemd: &Path) -> PathBuf {
    let usable = |p: &Path| {
        let servers = parse_resolv_conf(&std::fs::read_to_string(p).unwrap_or_default());
        !servers.is_empty() && servers.iter().all(|s| !s.ip().is_loopback())
    };
    if !usable(etc) && usable(systemd) {
        systemd.to_path_buf()
    } else {
        etc.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        let z = Zone::new("cluster.local", Ipv4Addr::new(10, 42, 0, 1)).unwrap();
        let svc = |ns: &str, name: &str, spec: Value| {
            z.services.upsert(
                format!("/registry/core/services/{ns}/{name}"),
                json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}),
            );
        };
        svc(
            "shop",
            "web",
            json!({"clusterIP": "10.43.0.20", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"port": 9000, "protocol": "TCP"}]}),
        );
        svc(
            "shop",
            "db",
            json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}),
        );
        svc(
            "shop",
            "all",
            json!({"clusterIP": "None", "publishNotReadyAddresses": true}),
        );
        svc(
            "shop",
            "ext",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        );
        svc(
            "shop",
            "inner",
            json!({"type": "ExternalName", "externalName": "web.shop.svc.cluster.local"}),
        );
        let slice = |name: &str, svc: &str, endpoints: Value| {
            z.slices.upsert(
                format!("/registry/discovery.k8s.io/endpointslices/shop/{name}"),
                json!({"metadata": {"namespace": "shop", "name": name,
                        "labels": {"kubernetes.io/service-name": svc}},
                       "addressType": "IPv4",
                       "ports": [{"name": "pg", "port": 5433, "protocol": "TCP"}],
                       "endpoints": endpoints}),
            );
        };
        slice(
            "db-1",
            "db",
            json!([
                {"addresses": ["10.42.0.7"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.8"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.9"], "conditions": {"ready": false}},
            ]),
        );
        slice(
            "all-1",
            "all",
            json!([{"addresses": ["10.42.0.9"], "conditions": {"ready": false}}]),
        );
        z.pods.upsert(
            "/registry/core/pods/shop/p",
            json!({"metadata": {"namespace": "shop", "name": "p"},
                   "status": {"podIP": "10.42.0.5", "podIPs": [{"ip": "10.42.0.5"}]}}),
        );
        z
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn ips(o: &Outcome) -> Vec<String> {
        match o {
            Outcome::Answer { answers, .. } => answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0.to_string()),
                    _ => None,
                })
                .collect(),
            other => panic!("not an answer: {other:?}"),
        }
    }

    fn srvs(o: &Outcome) -> Vec<(u16, String)> {
        match o {
            Outcome::Answer { answers, .. } => answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some((s.port, s.target.to_ascii())),
                    _ => None,
                })
                .collect(),
            other => panic!("not an answer: {other:?}"),
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            gateway_of("10.42.0.0/24").unwrap(),
            Ipv4Addr::new(10, 42, 0, 1)
        );
        assert_eq!(
            gateway_of("10.42.3.7/24").unwrap(),
            Ipv4Addr::new(10, 42, 3, 1)
        );
        assert_eq!(
            cluster_dns_ip("10.43.0.0/16").unwrap(),
            Ipv4Addr::new(10, 43, 0, 10)
        );
        assert_eq!(
            cluster_dns_ip("10.96.0.0/12").unwrap(),
            Ipv4Addr::new(10, 96, 0, 10)
        );
        assert!(cluster_dns_ip("10.0.0.0/30").is_err());
    }

    #[test]
    fn cluster_ip_service() {
        let z = zone();
        let o = z.resolve(&name("Web.Shop.svc.cluster.local."), RecordType::A);
        assert_eq!(ips(&o), ["10.43.0.20"]);
        if let Outcome::Answer { answers, .. } = &o {
            // The asker's case is kept, with the 5 second TTL.
            assert_eq!(answers[0].name.to_ascii(), "Web.Shop.svc.cluster.local.");
            assert_eq!(answers[0].ttl, TTL);
        }
        assert_eq!(
            z.resolve(&name("web.shop.svc.cluster.local."), RecordType::AAAA),
            Outcome::NoData
        );
        assert_eq!(
            z.resolve(&name("nope.shop.svc.cluster.local."), RecordType::A),
            Outcome::NxDomain
        );
        assert_eq!(
            z.resolve(&name("web.other.svc.cluster.local."), RecordType::A),
            Outcome::NxDomain
        );
    }

    #[test]
    fn headless_service() {
        let z = zone();
        let o = z.resolve(&name("db.shop.svc.cluster.local."), RecordType::A);
        assert_eq!(ips(&o), ["10.42.0.7", "10.42.0.8"]);
        let o = z.resolve(&name("all.shop.svc.cluster.local."), RecordType::A);
        assert_eq!(ips(&o), ["10.42.0.9"]);
        let o = z.resolve(&name("db-0.db.shop.svc.cluster.local."), RecordType::A);
        assert_eq!(ips(&o), ["10.42.0.7"]);
        let o = z.resolve(&name("10-42-0-8.db.shop.svc.cluster.local."), RecordType::A);
        assert_eq!(ips(&o), ["10.42.0.8"]);
        assert_eq!(
            z.resolve(&name("10-42-0-9.db.shop.svc.cluster.local."), RecordType::A),
            Outcome::NxDomain
        );
        assert_eq!(
            z.resolve(&name("db-1.db.shop.svc.cluster.local."), RecordType::A),
            Outcome::NxDomain
        );
    }

    #[test]
    fn srv_records() {
        let z = zone();
        let o = z.resolve(
            &name("_http._tcp.web.shop.svc.cluster.local."),
            RecordType::SRV,
        );
        assert_eq!(srvs(&o), [(80, "web.shop.svc.cluster.local.".to_string())]);
        if let Outcome::Answer { additionals, .. } = &o {
            assert_eq!(additionals.len(), 1);
        }
        let o = z.resolve(
            &name("_dns._udp.web.shop.svc.cluster.local."),
            RecordType::SRV,
        );
        assert_eq!(srvs(&o), [(53, "web.shop.svc.cluster.local.".to_string())]);
        assert_eq!(
            z.resolve(
                &name("_http._udp.web.shop.svc.cluster.local."),
                RecordType::SRV
            ),
            Outcome::NxDomain
        );
        let o = z.resolve(
            &name("_pg._tcp.db.shop.svc.cluster.local."),
            RecordType::SRV,
        );
        assert_eq!(
            srvs(&o),
            [
                (5433, "db-0.db.shop.svc.cluster.local.".to_string()),
                (5433, "10-42-0-8.db.shop.svc.cluster.local.".to_string())
            ]
        );
        // SRV on the service name lists every named port.
        let o = z.resolve(&name("web.shop.svc.cluster.local."), RecordType::SRV);
        assert_eq!(srvs(&o).len(), 2);
    }

    #[test]
    fn external_name() {
        let z = zone();
        match z.resolve(&name("ext.shop.svc.cluster.local."), RecordType::A) {
            Outcome::Answer { answers, chase, .. } => {
                assert_eq!(answers[0].record_type(), RecordType::CNAME);
                assert_eq!(chase.unwrap().to_ascii(), "example.com.");
            }
            o => panic!("{o:?}"),
        }
        match z.resolve(&name("inner.shop.svc.cluster.local."), RecordType::A) {
            Outcome::Answer { chase, .. } => {
                let target = chase.unwrap();
                assert_eq!(ips(&z.resolve(&target, RecordType::A)), ["10.43.0.20"]);
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn pods_and_others() {
        let z = zone();
        let o = z.resolve(&name("10-42-0-5.shop.pod.cluster.local."), RecordType::A);
        assert_eq!(ips(&o), ["10.42.0.5"]);
        assert_eq!(
            z.resolve(&name("10-42-0-6.shop.pod.cluster.local."), RecordType::A),
            Outcome::NxDomain
        );
        assert_eq!(
            z.resolve(&name("10-42-0-5.other.pod.cluster.local."), RecordType::A),
            Outcome::NxDomain
        );
        assert_eq!(
            z.resolve(&name("example.com."), RecordType::A),
            Outcome::Forward
        );
        assert_eq!(
            z.resolve(&name("shop.svc.cluster.local."), RecordType::A),
            Outcome::NoData
        );
        assert_eq!(
            z.resolve(&name("empty.svc.cluster.local."), RecordType::A),
            Outcome::NxDomain
        );
        assert_eq!(
            z.resolve(&name("a.b.c.d.e.f.cluster.local."), RecordType::A),
            Outcome::NxDomain
        );
        assert!(matches!(
            z.resolve(&name("cluster.local."), RecordType::SOA),
            Outcome::Answer { .. }
        ));
    }

    #[test]
    fn reverse_lookups() {
        let z = zone();
        let ptr = |n: &str| match z.resolve(&name(n), RecordType::PTR) {
            Outcome::Answer { answers, .. } => answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(p) => Some(p.0.to_ascii()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            o => panic!("{n}: {o:?}"),
        };
        assert_eq!(
            ptr("20.0.43.10.in-addr.arpa."),
            ["web.shop.svc.cluster.local."]
        );
        assert_eq!(
            ptr("7.0.42.10.in-addr.arpa."),
            ["db-0.db.shop.svc.cluster.local."]
        );
        assert_eq!(
            ptr("8.0.42.10.in-addr.arpa."),
            ["10-42-0-8.db.shop.svc.cluster.local."]
        );
        assert_eq!(
            z.resolve(&name("1.2.0.192.in-addr.arpa."), RecordType::PTR),
            Outcome::Forward
        );
    }

    #[test]
    fn picks_a_resolv_conf_without_loopback() {
        let d = tempfile::tempdir().unwrap();
        let (etc, sd) = (d.path().join("etc"), d.path().join("sd"));
        std::fs::write(&etc, "nameserver 127.0.0.53\n").unwrap();
        assert_eq!(pick_resolv_conf(&etc, &sd), etc);
        std::fs::write(&sd, "nameserver 192.0.2.53\n").unwrap();
        assert_eq!(pick_resolv_conf(&etc, &sd), sd);
        std::fs::write(&etc, "nameserver 192.0.2.1\n").unwrap();
        assert_eq!(pick_resolv_conf(&etc, &sd), etc);
    }

    #[test]
    fn resolv_conf() {
        let text = "# x\nsearch a b\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\noptions ndots:2\nnameserver bad\n";
        assert_eq!(
            parse_resolv_conf(text),
            [
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn serves_and_forwards_over_udp_and_tcp() {
        // A fake upstream that answers every query with one A record and,
        // over UDP, with the truncation bit, so the TCP retry is exercised.
        let up_udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up_udp.local_addr().unwrap();
        let up_tcp = TcpListener::bind(up_addr).await.unwrap();
        let reply = |req: &[u8], truncated: bool| {
            let q = Message::from_vec(req).unwrap();
            let mut m = Message::response(q.metadata.id, OpCode::Query);
            m.queries = q.queries.clone();
            m.metadata.truncation = truncated;
            if !truncated {
                m.answers
                    .push(a_record(q.queries[0].name(), Ipv4Addr::new(192, 0, 2, 7)));
            }
            m.to_vec().unwrap()
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let (n, peer) = up_udp.recv_from(&mut buf).await.unwrap();
                up_udp.send_to(&reply(&buf[..n], true), peer).await.unwrap();
            }
        });
        tokio::spawn(async move {
            loop {
                let (mut s, _) = up_tcp.accept().await.unwrap();
                let len = s.read_u16().await.unwrap() as usize;
                let mut req = vec![0u8; len];
                s.read_exact(&mut req).await.unwrap();
                let resp = reply(&req, false);
                s.write_u16(resp.len() as u16).await.unwrap();
                s.write_all(&resp).await.unwrap();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let rc = dir.path().join("resolv.conf");
        std::fs::write(&rc, "nameserver 127.0.0.1\n").unwrap();
        let h = Handler {
            zone: Arc::new(zone()),
            upstreams: Upstreams {
                path: rc,
                own: "127.0.0.9:53".parse().unwrap(),
                cached: Mutex::new((None, vec![])),
            },
        };
        // The upstream's port is not 53, so point the cache at it directly.
        *h.upstreams.cached.lock().unwrap() = (
            std::fs::metadata(&h.upstreams.path)
                .unwrap()
                .modified()
                .ok(),
            vec![up_addr],
        );
        let ask = |n: &str, t: RecordType| {
            let mut q = Message::query();
            q.metadata.recursion_desired = true;
            q.queries = vec![hickory_proto::op::Query::query(name(n), t)];
            q.to_vec().unwrap()
        };
        let r = h.handle(&ask("example.org.", RecordType::A), true).await;
        let r = Message::from_vec(&r.unwrap()).unwrap();
        assert_eq!(r.answers.len(), 1);
        assert!(!r.metadata.truncation);
        let r = h
            .handle(&ask("web.shop.svc.cluster.local.", RecordType::A), true)
            .await;
        let r = Message::from_vec(&r.unwrap()).unwrap();
        assert!(r.metadata.authoritative);
        assert_eq!(r.answers.len(), 1);
        let r = h
            .handle(&ask("x.shop.svc.cluster.local.", RecordType::A), false)
            .await;
        let r = Message::from_vec(&r.unwrap()).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        // ExternalName to an outside name: CNAME plus the upstream's answer.
        let r = h
            .handle(&ask("ext.shop.svc.cluster.local.", RecordType::A), true)
            .await;
        let r = Message::from_vec(&r.unwrap()).unwrap();
        assert_eq!(r.answers.len(), 2);
        assert_eq!(r.answers[0].record_type(), RecordType::CNAME);
    }
}
