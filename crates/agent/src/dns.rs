//! A pod's resolv.conf, as the kubelet forms it (`dnsPolicy` and
//! `dnsConfig`), handed to the runtime as the CRI sandbox's DNS config.
//!
//! - `ClusterFirst` (the default): the cluster DNS servers, searches
//!   `<ns>.svc.<domain> svc.<domain> <domain>` followed by the host's, and
//!   `options ndots:5`. A hostNetwork pod with `ClusterFirst` gets the
//!   host's configuration instead, and so does every pod when no cluster DNS
//!   is configured.
//! - `ClusterFirstWithHostNet`: the cluster configuration, also for
//!   hostNetwork pods.
//! - `Default`: the host's resolv.conf (the node's `--resolv-conf`).
//! - `None`: only what `dnsConfig` lists.
//!
//! `dnsConfig` is then merged in: its nameservers and searches appended
//! (duplicates dropped), its options overriding by name. At most 3
//! nameservers and 32 search domains are kept, as the kubelet does.

use std::path::PathBuf;

use serde_json::{json, Value};

/// Pod JSON key under which the agent hands the CRI layer the sandbox DNS
/// config (`{"servers": [...], "searches": [...], "options": [...]}`).
pub use kobune_cri::pod::DNS_CONFIG_KEY;

const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// The node's DNS settings (the kubelet's `--cluster-dns`,
/// `--cluster-domain` and `--resolv-conf`).
#[derive(Debug, Clone)]
pub struct PodDnsSettings {
    /// Cluster DNS server addresses; empty means none configured.
    pub cluster_dns: Vec<String>,
    /// The cluster domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// The host resolv.conf `Default` pods get (None: no host config).
    pub resolv_conf: Option<PathBuf>,
}

impl Default for PodDnsSettings {
    fn default() -> Self {
        PodDnsSettings {
            cluster_dns: vec![],
            cluster_domain: "cluster.local".into(),
            resolv_conf: Some(PathBuf::from("/etc/resolv.conf")),
        }
    }
}

/// A resolv.conf's parts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResolvConf {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Parses resolv.conf text: `nameserver`, `search` (the last line wins, as
/// the resolver reads it; `domain` counts as a search) and `options`.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut out = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next() {
                    out.servers.push(ip.to_string());
                }
            }
            Some("search") | Some("domain") => {
                out.searches = words
                    .map(|w| w.trim_end_matches('.').to_string())
                    .filter(|w| !w.is_empty())
                    .collect();
            }
            Some("options") => out.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    out
}

fn omit_duplicates(v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.into_iter().filter(|s| seen.insert(s.clone())).collect()
}

/// Options by name, later ones overriding, in first-seen order.
fn merge_options(existing: &[String], pod: &[(String, Option<String>)]) -> Vec<String> {
    let mut merged: Vec<(String, Option<String>)> = vec![];
    let mut set =
        |name: &str, value: Option<String>| match merged.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => merged.push((name.to_string(), value)),
        };
    for o in existing {
        match o.split_once(':') {
            Some((n, v)) => set(n, Some(v.to_string())),
            None => set(o, None),
        }
    }
    for (n, v) in pod {
        set(n, v.clone());
    }
    merged
        .into_iter()
        .map(|(n, v)| match v {
            Some(v) if !v.is_empty() => format!("{n}:{v}"),
            _ => n,
        })
        .collect()
}

/// The resolv.conf of `pod` given the node's settings and the host's
/// resolv.conf text (None when unreadable).
pub fn pod_resolv_conf(pod: &Value, settings: &PodDnsSettings, host: Option<&str>) -> ResolvConf {
    let spec = &pod["spec"];
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let host_network = spec["hostNetwork"].as_bool() == Some(true);
    let policy = spec["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let host_conf = || host.map(parse_resolv_conf).unwrap_or_default();
    let cluster = match policy {
        "ClusterFirstWithHostNet" => Some(true),
        "ClusterFirst" => Some(!host_network),
        "None" => None,
        _ => Some(false),
    };
    let mut conf = match cluster {
        None => ResolvConf::default(),
        Some(true) if !settings.cluster_dns.is_empty() => {
            let d = settings.cluster_domain.trim_end_matches('.');
            let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.to_string()];
            searches.extend(host_conf().searches);
            ResolvConf {
                servers: settings.cluster_dns.clone(),
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        Some(_) => host_conf(),
    };
    let dc = &spec["dnsConfig"];
    if dc.is_object() {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        };
        conf.servers.extend(strings(&dc["nameservers"]));
        conf.searches.extend(strings(&dc["searches"]));
        let opts: Vec<(String, Option<String>)> = dc["options"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| {
                Some((
                    o["name"].as_str()?.to_string(),
                    o["value"].as_str().map(String::from),
                ))
            })
            .collect();
        conf.options = merge_options(&conf.options, &opts);
    }
    conf.servers = omit_duplicates(conf.servers);
    conf.servers.truncate(MAX_NAMESERVERS);
    conf.searches = omit_duplicates(conf.searches);
    conf.searches.truncate(MAX_SEARCHES);
    conf
}

/// The value to put under [`DNS_CONFIG_KEY`] for `pod`, reading the host's
/// resolv.conf from the settings' path.
pub fn pod_dns_value(pod: &Value, settings: &PodDnsSettings) -> Value {
    let host = settings
        .resolv_conf
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let c = pod_resolv_conf(pod, settings, host.as_deref());
    json!({"servers": c.servers, "searches": c.searches, "options": c.options})
}

/// The kubelet-managed `/etc/hosts` of `pod`, as the value for
/// [`kobune_cri::pod::ETC_HOSTS_KEY`]: localhost entries, the pod's IP
/// with `<hostname>.<subdomain>.<ns>.svc.<domain>` and `<hostname>`, then
/// `hostAliases`; for a hostNetwork pod the host's `/etc/hosts` and the
/// aliases. Written to `path` (in the pod's directory) once the IP is known.
pub fn etc_hosts_value(pod: &Value, settings: &PodDnsSettings, path: &std::path::Path) -> Value {
    let spec = &pod["spec"];
    let mut tail = String::new();
    let aliases: Vec<&Value> = spec["hostAliases"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if !aliases.is_empty() {
        tail.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            let names: Vec<&str> = a["hostnames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let ip = a["ip"].as_str().unwrap_or_default();
            tail.push_str(&format!("{ip}\t{}\n", names.join("\t")));
        }
    }
    let (head, names) = if spec["hostNetwork"].as_bool() == Some(true) {
        let host = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        (
            format!("# Kubernetes-managed hosts file (host network).\n{host}"),
            String::new(),
        )
    } else {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let mut host = spec["hostname"]
            .as_str()
            .filter(|h| !h.is_empty())
            .unwrap_or(name)
            .to_string();
        host.truncate(63);
        let host = host.trim_end_matches(['-', '.']).to_string();
        let names = match spec["subdomain"].as_str().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let d = settings.cluster_domain.trim_end_matches('.');
                format!("{host}.{sub}.{ns}.svc.{d}\t{host}")
            }
            None => host,
        };
        (
            "# Kubernetes-managed hosts file.\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n\
             fe00::0\tip6-mcastprefix\n\
             fe00::1\tip6-allnodes\n\
             fe00::2\tip6-allrouters\n"
                .to_string(),
            names,
        )
    };
    json!({"path": path.to_string_lossy(), "head": head, "names": names, "tail": tail})
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "# host\nsearch corp.example lab.example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\noptions edns0 ndots:2\n";

    fn settings() -> PodDnsSettings {
        PodDnsSettings {
            cluster_dns: vec!["10.43.0.10".into()],
            ..Default::default()
        }
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec})
    }

    #[test]
    fn etc_hosts() {
        let p = pod(json!({"hostname": "db-0", "subdomain": "db",
            "hostAliases": [{"ip": "192.0.2.9", "hostnames": ["a.test", "b.test"]}]}));
        let v = etc_hosts_value(&p, &settings(), std::path::Path::new("/p/etc-hosts"));
        assert_eq!(v["path"], "/p/etc-hosts");
        assert!(v["head"]
            .as_str()
            .unwrap()
            .starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert_eq!(v["names"], "db-0.db.shop.svc.cluster.local\tdb-0");
        assert_eq!(
            v["tail"],
            "\n# Entries added by HostAliases.\n192.0.2.9\ta.test\tb.test\n"
        );
        let v = etc_hosts_value(&pod(json!({})), &settings(), std::path::Path::new("/x"));
        assert_eq!(v["names"], "p");
        assert_eq!(v["tail"], "");
        let v = etc_hosts_value(
            &pod(json!({"hostNetwork": true})),
            &settings(),
            std::path::Path::new("/x"),
        );
        assert_eq!(v["names"], "");
        assert!(v["head"]
            .as_str()
            .unwrap()
            .starts_with("# Kubernetes-managed hosts file (host network).\n"));
    }

    #[test]
    fn parses_host_resolv_conf() {
        let c = parse_resolv_conf(HOST);
        assert_eq!(c.servers, ["192.0.2.53", "192.0.2.54"]);
        assert_eq!(c.searches, ["corp.example", "lab.example"]);
        assert_eq!(c.options, ["edns0", "ndots:2"]);
    }

    #[test]
    fn cluster_first() {
        let c = pod_resolv_conf(&pod(json!({})), &settings(), Some(HOST));
        assert_eq!(c.servers, ["10.43.0.10"]);
        assert_eq!(
            c.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example",
                "lab.example"
            ]
        );
        assert_eq!(c.options, ["ndots:5"]);
        // hostNetwork pods fall back to the host's, unless WithHostNet.
        let c = pod_resolv_conf(
            &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirst"})),
            &settings(),
            Some(HOST),
        );
        assert_eq!(c.servers, ["192.0.2.53", "192.0.2.54"]);
        let c = pod_resolv_conf(
            &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            &settings(),
            Some(HOST),
        );
        assert_eq!(c.servers, ["10.43.0.10"]);
        // Without cluster DNS, ClusterFirst is the host's.
        let c = pod_resolv_conf(&pod(json!({})), &PodDnsSettings::default(), Some(HOST));
        assert_eq!(c.searches, ["corp.example", "lab.example"]);
    }

    #[test]
    fn default_and_none() {
        let c = pod_resolv_conf(
            &pod(json!({"dnsPolicy": "Default"})),
            &settings(),
            Some(HOST),
        );
        assert_eq!(c, parse_resolv_conf(HOST));
        let c = pod_resolv_conf(
            &pod(json!({"dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["1.1.1.1"], "searches": ["a.example"],
                "options": [{"name": "ndots", "value": "1"}, {"name": "rotate"}]}})),
            &settings(),
            Some(HOST),
        );
        assert_eq!(c.servers, ["1.1.1.1"]);
        assert_eq!(c.searches, ["a.example"]);
        assert_eq!(c.options, ["ndots:1", "rotate"]);
    }

    #[test]
    fn dns_config_merges() {
        let c = pod_resolv_conf(
            &pod(json!({"dnsConfig": {
                "nameservers": ["10.43.0.10", "1.1.1.1", "8.8.8.8", "9.9.9.9"],
                "searches": ["cluster.local", "x.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}})),
            &settings(),
            None,
        );
        assert_eq!(c.servers, ["10.43.0.10", "1.1.1.1", "8.8.8.8"]);
        assert_eq!(
            c.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "x.example"
            ]
        );
        assert_eq!(c.options, ["ndots:2", "edns0"]);
        let v = pod_dns_value(&pod(json!({"dnsPolicy": "None"})), &settings());
        assert_eq!(v, json!({"servers": [], "searches": [], "options": []}));
    }
}
