//! The routing table: Ingress rules merged into hosts and paths, matched as
//! the Ingress API specifies (exact hosts before wildcard hosts before
//! rules without a host; the longest matching path wins, Exact before
//! Prefix on a tie, the oldest Ingress on a conflict).

use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How a backend names the Service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number(i64),
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

/// A Service port traffic goes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    pub port: PortRef,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} port {}", self.namespace, self.service, self.port)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathType {
    Exact,
    Prefix,
}

/// Per-Ingress settings from `kobune.io/` annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// kobune.io/proxy-read-timeout (seconds): how long to wait for the
    /// upstream's response.
    pub read_timeout: Duration,
    /// kobune.io/proxy-body-size ("1m", "512k", "0" = unlimited).
    pub body_limit: Option<u64>,
    /// kobune.io/ssl-redirect: plain HTTP to a host with TLS is redirected.
    pub ssl_redirect: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            read_timeout: Duration::from_secs(60),
            body_limit: Some(1024 * 1024),
            ssl_redirect: true,
        }
    }
}

pub const ANNOTATION_PREFIX: &str = "kobune.io/";

/// Parses an nginx-style size: bytes, or a number with k, m or g.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1024),
        'm' | 'M' => (&s[..s.len() - 1], 1024 * 1024),
        'g' | 'G' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

impl Settings {
    pub fn from_annotations(ing: &Value) -> Settings {
        let mut s = Settings::default();
        let Some(ann) = ing
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
        else {
            return s;
        };
        let get = |k: &str| {
            ann.get(&format!("{ANNOTATION_PREFIX}{k}"))
                .and_then(Value::as_str)
        };
        if let Some(v) = get("proxy-read-timeout").and_then(|v| v.trim().parse::<u64>().ok()) {
            s.read_timeout = Duration::from_secs(v.max(1));
        }
        if let Some(v) = get("proxy-body-size").and_then(parse_size) {
            s.body_limit = (v > 0).then_some(v);
        }
        if let Some(v) = get("ssl-redirect") {
            s.ssl_redirect = v.trim() != "false";
        }
        s
    }
}

/// What the router knows about the Ingress a route came from.
#[derive(Debug)]
pub struct IngressInfo {
    pub namespace: String,
    pub name: String,
    pub settings: Settings,
    /// Hosts this Ingress has TLS for (may hold wildcards).
    pub tls_hosts: Vec<String>,
}

impl IngressInfo {
    pub fn has_tls_for(&self, host: &str) -> bool {
        self.tls_hosts.iter().any(|h| host_matches(h, host))
    }
}

#[derive(Clone, Debug)]
pub struct Route {
    pub path: String,
    pub path_type: PathType,
    pub backend: Backend,
    pub ingress: Arc<IngressInfo>,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        match self.path_type {
            PathType::Exact => path == self.path,
            PathType::Prefix => prefix_matches(&self.path, path),
        }
    }
    /// Length used to rank matches: trailing slashes of a prefix don't count.
    fn rank_len(&self) -> usize {
        match self.path_type {
            PathType::Exact => self.path.len(),
            PathType::Prefix => self.path.trim_end_matches('/').len(),
        }
    }
}

/// Prefix matching element by element, as upstream: `/foo` matches `/foo`,
/// `/foo/` and `/foo/bar`, not `/foobar`; a trailing slash is ignored.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        return true;
    }
    let path_trim = path.trim_end_matches('/');
    path_trim == p || (path.starts_with(p) && path[p.len()..].starts_with('/'))
}

/// `pattern` is a host or `*.domain` (which matches exactly one more label).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

#[derive(Debug, Default)]
pub struct HostRoutes {
    routes: Vec<Route>,
    /// The defaultBackend of the oldest Ingress with rules for this host.
    default: Option<(Backend, Arc<IngressInfo>)>,
}

impl HostRoutes {
    fn finish(&mut self) {
        // Stable: among equals the oldest Ingress (inserted first) wins.
        self.routes.sort_by(|a, b| {
            b.rank_len().cmp(&a.rank_len()).then_with(|| {
                (a.path_type != PathType::Exact).cmp(&(b.path_type != PathType::Exact))
            })
        });
    }
    fn lookup(&self, path: &str) -> Option<(&Backend, &Arc<IngressInfo>)> {
        self.routes
            .iter()
            .find(|r| r.matches(path))
            .map(|r| (&r.backend, &r.ingress))
            .or_else(|| self.default.as_ref().map(|(b, i)| (b, i)))
    }
}

/// Every served Ingress merged into one table.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, HostRoutes>,
    /// keyed by the domain after `*.`
    wildcard: HashMap<String, HostRoutes>,
    any: Option<HostRoutes>,
    default: Option<(Backend, Arc<IngressInfo>)>,
}

/// A matched route: where to send the request and under which settings.
#[derive(Debug, Clone)]
pub struct Matched {
    pub backend: Backend,
    pub ingress: Arc<IngressInfo>,
}

pub fn backend_of(ns: &str, b: &Value) -> Option<Backend> {
    let svc = b.get("service")?;
    let name = svc.get("name")?.as_str()?.to_string();
    let port = svc.get("port")?;
    let port = if let Some(n) = port.get("number").and_then(Value::as_i64) {
        PortRef::Number(n)
    } else {
        PortRef::Name(port.get("name")?.as_str()?.to_string())
    };
    Some(Backend {
        namespace: ns.to_string(),
        service: name,
        port,
    })
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

impl RouteTable {
    /// Builds the table from the served Ingresses, oldest first.
    pub fn build(ingresses: &[Arc<Value>]) -> RouteTable {
        let mut t = RouteTable::default();
        for ing in ingresses {
            let ns = str_at(ing, "/metadata/namespace");
            let mut tls_hosts = vec![];
            for tls in ing
                .pointer("/spec/tls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for h in tls
                    .get("hosts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(h) = h.as_str() {
                        tls_hosts.push(h.to_ascii_lowercase());
                    }
                }
            }
            let info = Arc::new(IngressInfo {
                namespace: ns.to_string(),
                name: str_at(ing, "/metadata/name").to_string(),
                settings: Settings::from_annotations(ing),
                tls_hosts,
            });
            let default = ing
                .pointer("/spec/defaultBackend")
                .and_then(|b| backend_of(ns, b))
                .map(|b| (b, info.clone()));
            if t.default.is_none() {
                t.default = default.clone();
            }
            for rule in ing
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let host = rule
                    .get("host")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let group = if host.is_empty() {
                    t.any.get_or_insert_with(HostRoutes::default)
                } else if let Some(suffix) = host.strip_prefix("*.") {
                    t.wildcard.entry(suffix.to_string()).or_default()
                } else {
                    t.exact.entry(host).or_default()
                };
                if group.default.is_none() {
                    group.default = default.clone();
                }
                for p in rule
                    .pointer("/http/paths")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(backend) = p.get("backend").and_then(|b| backend_of(ns, b)) else {
                        continue;
                    };
                    let path_type = match p.get("pathType").and_then(Value::as_str) {
                        Some("Exact") => PathType::Exact,
                        _ => PathType::Prefix,
                    };
                    let path = p.get("path").and_then(Value::as_str).unwrap_or("/");
                    group.routes.push(Route {
                        path: if path.is_empty() {
                            "/".into()
                        } else {
                            path.into()
                        },
                        path_type,
                        backend,
                        ingress: info.clone(),
                    });
                }
            }
        }
        for g in t.exact.values_mut().chain(t.wildcard.values_mut()) {
            g.finish();
        }
        if let Some(g) = &mut t.any {
            g.finish();
        }
        t
    }

    /// Routes a request; `host` without port.
    pub fn lookup(&self, host: &str, path: &str) -> Option<Matched> {
        self.find(&host.to_ascii_lowercase(), path)
            .map(|(b, i)| Matched {
                backend: b.clone(),
                ingress: i.clone(),
            })
    }

    /// Routes a request without copying anything; `host` lowercase,
    /// without port.
    pub fn find(&self, host: &str, path: &str) -> Option<(&Backend, &Arc<IngressInfo>)> {
        let group = self
            .exact
            .get(host)
            .or_else(|| {
                host.split_once('.')
                    .and_then(|(label, rest)| (!label.is_empty()).then_some(rest))
                    .and_then(|rest| self.wildcard.get(rest))
            })
            .or(self.any.as_ref());
        match group {
            Some(g) => g.lookup(path),
            None => None,
        }
        .or_else(|| self.default.as_ref().map(|(b, i)| (b, i)))
    }

    /// Every backend with the Ingress it appears in (for status and events).
    pub fn backends(&self) -> Vec<(Backend, Arc<IngressInfo>)> {
        let mut out: Vec<(Backend, Arc<IngressInfo>)> = vec![];
        let groups = self
            .exact
            .values()
            .chain(self.wildcard.values())
            .chain(self.any.iter());
        for g in groups {
            for r in &g.routes {
                out.push((r.backend.clone(), r.ingress.clone()));
            }
            if let Some((b, i)) = &g.default {
                out.push((b.clone(), i.clone()));
            }
        }
        if let Some((b, i)) = &self.default {
            out.push((b.clone(), i.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ing(name: &str, spec: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "namespace": "shop"}, "spec": spec}))
    }

    fn path(p: &str, ty: &str, svc: &str) -> Value {
        json!({"path": p, "pathType": ty, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
    }

    fn route(t: &RouteTable, host: &str, p: &str) -> Option<String> {
        t.lookup(host, p).map(|m| m.backend.service)
    }

    #[test]
    fn prefix_is_element_wise() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/foo", "/foo"));
        assert!(prefix_matches("/foo", "/foo/"));
        assert!(prefix_matches("/foo", "/foo/bar"));
        assert!(!prefix_matches("/foo", "/foobar"));
        assert!(prefix_matches("/foo/", "/foo"));
        assert!(prefix_matches("/aaa/bbb", "/aaa/bbb/ccc"));
        assert!(!prefix_matches("/aaa/bbb", "/aaa/bbbxyz"));
        assert!(!prefix_matches("/aaa/bbb", "/aaa"));
    }

    #[test]
    fn wildcard_hosts_match_one_label() {
        assert!(host_matches("*.example.com", "foo.example.com"));
        assert!(!host_matches("*.example.com", "bar.foo.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("Shop.Example.com", "shop.example.com"));
    }

    #[test]
    fn longest_path_wins_and_exact_beats_prefix() {
        let t = RouteTable::build(&[ing(
            "a",
            json!({"rules": [{"host": "shop.example.com", "http": {"paths": [
                path("/", "Prefix", "main"),
                path("/side-quest/", "Prefix", "side"),
                path("/side-quest", "Exact", "exact"),
                path("/api", "ImplementationSpecific", "api"),
            ]}}]}),
        )]);
        assert_eq!(route(&t, "shop.example.com", "/").as_deref(), Some("main"));
        assert_eq!(
            route(&t, "shop.example.com", "/x/y").as_deref(),
            Some("main")
        );
        assert_eq!(
            route(&t, "shop.example.com", "/side-quest/a").as_deref(),
            Some("side")
        );
        assert_eq!(
            route(&t, "shop.example.com", "/side-quest/").as_deref(),
            Some("side")
        );
        assert_eq!(
            route(&t, "shop.example.com", "/side-quest").as_deref(),
            Some("exact")
        );
        assert_eq!(
            route(&t, "shop.example.com", "/side-questx").as_deref(),
            Some("main")
        );
        assert_eq!(
            route(&t, "SHOP.example.com", "/api/v1").as_deref(),
            Some("api")
        );
        assert_eq!(route(&t, "other.example.com", "/"), None);
    }

    #[test]
    fn hosts_wildcards_catch_all_and_default_backend() {
        let t = RouteTable::build(&[
            ing(
                "old",
                json!({"rules": [
                    {"host": "a.example.com", "http": {"paths": [path("/", "Prefix", "exact-host")]}},
                    {"host": "*.example.com", "http": {"paths": [path("/", "Prefix", "wild")]}},
                    {"http": {"paths": [path("/only", "Exact", "any")]}},
                ]}),
            ),
            ing(
                "new",
                json!({"defaultBackend": {"service": {"name": "fallback", "port": {"name": "http"}}},
                       "rules": [{"host": "a.example.com", "http": {"paths": [path("/", "Prefix", "newer")]}}]}),
            ),
        ]);
        assert_eq!(
            route(&t, "a.example.com", "/x").as_deref(),
            Some("exact-host"),
            "oldest wins a conflict"
        );
        assert_eq!(route(&t, "b.example.com", "/x").as_deref(), Some("wild"));
        assert_eq!(
            route(&t, "c.b.example.com", "/only").as_deref(),
            Some("any")
        );
        assert_eq!(
            route(&t, "c.b.example.com", "/other").as_deref(),
            Some("fallback")
        );
        let m = t.lookup("nowhere", "/").unwrap();
        assert_eq!(m.backend.port, PortRef::Name("http".into()));
        assert_eq!(m.backend.to_string(), "shop/fallback port http");
        assert_eq!(t.backends().len(), 6);
        // Without any defaultBackend, unmatched requests find nothing.
        let t = RouteTable::build(&[ing(
            "x",
            json!({"rules": [{"host": "h", "http": {"paths": [path("/a", "Prefix", "a")]}}]}),
        )]);
        assert!(t.lookup("h", "/b").is_none());
        assert!(t.lookup("g", "/a").is_none());
    }

    #[test]
    fn annotations() {
        assert_eq!(parse_size("10m"), Some(10 * 1024 * 1024));
        assert_eq!(parse_size("512k"), Some(512 * 1024));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("x"), None);
        let i = json!({"metadata": {"annotations": {
            "kobune.io/proxy-body-size": "0", "kobune.io/proxy-read-timeout": "5", "kobune.io/ssl-redirect": "false"}}});
        let s = Settings::from_annotations(&i);
        assert_eq!(s.body_limit, None);
        assert_eq!(s.read_timeout, Duration::from_secs(5));
        assert!(!s.ssl_redirect);
        assert_eq!(Settings::from_annotations(&json!({})), Settings::default());
    }
}
