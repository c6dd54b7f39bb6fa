//! HTTP: routes Kubernetes API paths to the registry, negotiates content
//! (JSON, YAML, Table, PartialObjectMetadata), decodes bodies within the
//! size limit, and streams watches.

use crate::audit;
use crate::auth::{self, UserInfo};
use crate::cache::{rv_of, CacheEvent, EventType};
use crate::discovery;
use crate::openapi::{OpenApi, KUBE_VERSION};
use crate::rbac;
use crate::registry::{
    DeleteOptions, FieldValidation, ListOptions, PatchKind, Registry, WriteOptions,
};
use crate::resources::Resources;
use crate::table::{self, IncludeObject, TABLE_CONTENT_TYPE};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use kobune_apimachinery::fields::decode_json;
use kobune_apimachinery::selectors::Selector;
use kobune_apimachinery::status::success_status;
use kobune_apimachinery::{ApiError, ResourceInfo};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;

pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted, as upstream (3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct ApiState {
    pub registry: Arc<Registry>,
    pub kubelets: Arc<crate::kubelet::Kubelets>,
    pub resources: Arc<Resources>,
    pub openapi: OpenApi,
    pub admin_token: String,
    pub server_address: String,
    pub audit: Option<Arc<crate::audit::Auditor>>,
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(full(body))
        .expect("valid response")
}

fn json_response(status: u16, v: &Value) -> Response<Body> {
    respond(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status());
    if let Some(s) = e.retry_after_seconds {
        r.headers_mut().insert(header::RETRY_AFTER, s.into());
    }
    r
}

fn not_found_path() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// What the client asked the response to be.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Object,
    Table,
    Metadata,
}

fn shape(accept: &str) -> Shape {
    // The first acceptable alternative wins, as in upstream negotiation.
    for alt in accept.split(',') {
        let alt = alt.trim();
        if alt.contains("as=Table") {
            if alt.contains("v=v1") && !alt.contains("v=v1beta1") {
                return Shape::Table;
            }
            continue;
        }
        if alt.contains("as=PartialObjectMetadata") {
            if alt.contains("v=v1") && !alt.contains("v=v1beta1") {
                return Shape::Metadata;
            }
            continue;
        }
        if alt.starts_with("application/json")
            || alt.starts_with("*/*")
            || alt.starts_with("application/yaml")
            || alt.is_empty()
        {
            return Shape::Object;
        }
    }
    Shape::Object
}

/// A boolean parameter, parsed as Go's strconv.ParseBool (as upstream);
/// a bare `?watch` counts as true.
fn go_bool(v: Option<&str>) -> bool {
    matches!(v, Some("1" | "t" | "T" | "true" | "TRUE" | "True" | ""))
}

struct Ctx {
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
    user_agent: String,
    user: UserInfo,
    audit: Option<AuditSlot>,
}

/// The audit record of a request being served, when auditing is on.
type AuditSlot = Arc<std::sync::Mutex<audit::Record>>;

fn with_record(slot: &Option<AuditSlot>, f: impl FnOnce(&mut audit::Record)) {
    if let Some(s) = slot {
        f(&mut s.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

impl Ctx {
    fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }
    fn flag(&self, k: &str) -> bool {
        go_bool(self.q(k))
    }

    fn write_options(&self) -> Result<WriteOptions, ApiError> {
        let field_validation = match self.q("fieldValidation") {
            None | Some("") | Some("Warn") => FieldValidation::Warn,
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            Some(o) => {
                return Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {o:?}; must be one of Ignore, Warn, Strict"
            )))
            }
        };
        let dry_run = match self.q("dryRun") {
            None | Some("") => false,
            Some("All") => true,
            Some(o) => {
                return Err(ApiError::bad_request(format!(
                    "dryRun: Unsupported value: {o:?}: supported values: \"All\""
                )))
            }
        };
        let field_manager = self.q("fieldManager").map(str::to_string).or_else(|| {
            let ua = self.user_agent.split('/').next().unwrap_or_default();
            (!ua.is_empty()).then(|| ua.to_string())
        });
        if field_manager.as_ref().is_some_and(|m| m.len() > 128) {
            return Err(ApiError::invalid(
                "",
                "",
                "",
                vec![kobune_apimachinery::Cause::too_long("fieldManager", 128)],
            ));
        }
        Ok(WriteOptions {
            dry_run,
            field_manager,
            field_validation,
            duplicates: vec![],
            force: self.flag("force"),
            user: Some(self.user.clone()),
        })
    }

    fn list_options(
        &self,
        registry: &Registry,
        info: &ResourceInfo,
    ) -> Result<ListOptions, ApiError> {
        let label_selector = Selector::parse_labels(self.q("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let field_selector = Selector::parse_fields(self.q("fieldSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?;
        registry.check_field_selector(info, &field_selector)?;
        let limit = match self.q("limit") {
            None | Some("") => None,
            Some(l) => Some(
                l.parse::<i64>()
                    .map_err(|_| ApiError::bad_request(format!("limit: invalid value {l:?}")))?
                    .max(0) as usize,
            ),
        };
        Ok(ListOptions {
            label_selector,
            field_selector,
            limit,
            continue_token: self.q("continue").map(str::to_string),
            resource_version: self
                .q("resourceVersion")
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        })
    }
}

/// Reads the body (at most [`MAX_BODY`] bytes).
async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large(MAX_BODY))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "error reading request body: {e}"
        ))),
    }
}

/// Decodes an object body by content type.
fn decode_object(ctx: &Ctx, bytes: &[u8], opts: &mut WriteOptions) -> Result<Value, ApiError> {
    let ct = ctx
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    let obj = match ct {
        "" | "application/json" | "*/*" => {
            let d = decode_json(bytes)
                .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?;
            opts.duplicates = d.duplicates;
            d.value
        }
        "application/yaml" => kobune_apimachinery::fields::decode_yaml(bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(bytes)?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    with_record(&ctx.audit, |r| r.capture_request(&obj));
    Ok(obj)
}

fn warning_headers(resp: &mut Response<Body>, warnings: &[String]) {
    for w in warnings {
        let v = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
        if let Ok(h) = header::HeaderValue::from_str(&v) {
            resp.headers_mut().append(header::WARNING, h);
        }
    }
}

/// Entry point for one authenticated-or-not request.
pub async fn handle(
    state: Arc<ApiState>,
    req: Request<Incoming>,
    cert_user: Option<UserInfo>,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let slot = state.audit.as_ref().map(|_| new_record(&req, peer));
    let (mut resp, err) = match route(&state, req, cert_user, slot.clone()).await {
        Ok(r) => (r, None),
        Err(e) => (error_response(&e), Some(e)),
    };
    if let (Some(auditor), Some(slot)) = (&state.audit, slot) {
        resp = finish_audit(auditor, &slot, resp, err.as_ref()).await;
    }
    tracing::debug!(
        "{method} {path} -> {} in {:?}",
        resp.status(),
        started.elapsed()
    );
    resp
}

fn new_record(req: &Request<Incoming>, peer: std::net::SocketAddr) -> AuditSlot {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    // X-Forwarded-For first, then the connection's address, as upstream.
    let mut source_ips: Vec<String> = h("x-forwarded-for")
        .split(',')
        .map(str::trim)
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        .map(str::to_string)
        .collect();
    let ip = peer.ip().to_canonical().to_string();
    if !source_ips.contains(&ip) {
        source_ips.push(ip);
    }
    Arc::new(std::sync::Mutex::new(audit::Record {
        id: uuid::Uuid::new_v4().to_string(),
        received: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        request_uri: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        user_agent: h("user-agent").to_string(),
        source_ips,
        ..Default::default()
    }))
}

/// Logs the outcome of a request: ResponseComplete, or ResponseStarted for
/// the long-running ones (watches, streams, followed logs), with the
/// response object at RequestResponse level; sets the `Audit-Id` header.
async fn finish_audit(
    auditor: &audit::Auditor,
    slot: &AuditSlot,
    resp: Response<Body>,
    err: Option<&ApiError>,
) -> Response<Body> {
    let (id, long_running, wants_response) = {
        let r = slot.lock().unwrap_or_else(|p| p.into_inner());
        let long_running = r.attrs.as_ref().is_some_and(|a| {
            a.verb == "watch"
                || matches!(
                    a.subresource.as_str(),
                    "exec" | "attach" | "portforward" | "proxy"
                )
                || (a.subresource == "log" && r.request_uri.contains("follow=true"))
        });
        (r.id.clone(), long_running, r.wants_response())
    };
    let status = match err {
        Some(e) => {
            json!({"metadata": {}, "status": "Failure", "message": e.message, "reason": e.reason, "code": e.code})
        }
        None => json!({"metadata": {}, "code": resp.status().as_u16()}),
    };
    let (mut parts, body) = resp.into_parts();
    let json_body = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    let mut response_object = None;
    let body = if wants_response && !long_running && json_body {
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        response_object = serde_json::from_slice::<Value>(&bytes).ok();
        full(bytes)
    } else {
        body
    };
    let stage = if long_running {
        audit::Stage::ResponseStarted
    } else {
        audit::Stage::ResponseComplete
    };
    {
        let r = slot.lock().unwrap_or_else(|p| p.into_inner());
        auditor.emit(&r, stage, Some(&status), response_object.as_ref());
    }
    if let Ok(v) = header::HeaderValue::from_str(&id) {
        parts.headers.insert("audit-id", v);
    }
    Response::from_parts(parts, body)
}

async fn route(
    state: &Arc<ApiState>,
    req: Request<Incoming>,
    cert_user: Option<UserInfo>,
    audit: Option<AuditSlot>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let hdr = |h: header::HeaderName| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let bearer = hdr(header::AUTHORIZATION);
    let user = cert_user.or_else(|| {
        bearer
            .strip_prefix("Bearer ")
            .and_then(|t| bearer_user(state, t.trim()))
    });
    // Health and version are public, as upstream's system:public-info-viewer.
    match (segs.as_slice(), req.method()) {
        (["healthz"] | ["livez"] | ["readyz"], &Method::GET) => {
            return Ok(respond(200, "text/plain; charset=utf-8", "ok"))
        }
        (["version"], &Method::GET) => return Ok(json_response(200, &version())),
        _ => {}
    }
    let query = parse_query(req.uri().query());
    let attrs = rbac::Attributes::of_request(
        &segs,
        req.method().as_str(),
        go_bool(query.get("watch").map(String::as_str)),
        query
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    );
    if let (Some(auditor), Some(_)) = (&state.audit, &audit) {
        with_record(&audit, |r| {
            r.verdict = auditor.verdict(user.as_ref(), &attrs);
            r.user = user.clone();
            r.attrs = Some(attrs.clone());
            r.api_version = match segs.as_slice() {
                ["api", v, ..] => v.to_string(),
                ["apis", _, v, ..] => v.to_string(),
                _ => String::new(),
            };
            auditor.emit(r, audit::Stage::RequestReceived, None, None);
        });
    }
    let Some(user) = user else {
        return Err(ApiError::unauthorized());
    };
    let user = match impersonated(state, &user, req.headers())? {
        Some(as_user) => {
            with_record(&audit, |r| r.impersonated = Some(as_user.clone()));
            as_user
        }
        None => user,
    };
    let decision = rbac::authorize(&state.registry, &user, &attrs);
    let allowed = decision.allowed;
    with_record(&audit, |r| r.decision = Some(decision.clone()));
    if !allowed {
        return Err(rbac::forbidden(&user, &attrs, &decision.reason));
    }
    let ctx = Ctx {
        query,
        accept: hdr(header::ACCEPT),
        content_type: hdr(header::CONTENT_TYPE),
        user_agent: hdr(header::USER_AGENT),
        user,
        audit,
    };
    let aggregated = ctx.accept.contains("as=APIGroupDiscoveryList");
    let res = &state.resources;
    let get = req.method() == Method::GET;
    match segs.as_slice() {
        ["apis", g, ..] if get && crate::metrics::serves(g) => {
            let m = crate::metrics::Metrics::new(state.registry.clone(), state.kubelets.clone());
            crate::metrics::serve(&m, &segs, &ctx.query)
                .await
                .map(|v| json_response(200, &v))
        }
        ["api"] if get => {
            if aggregated {
                return Ok(discovery_response(&discovery::aggregated(res, true)));
            }
            Ok(json_response(
                200,
                &discovery::api_versions(&state.server_address),
            ))
        }
        ["apis"] if get => {
            if aggregated {
                return Ok(discovery_response(&discovery::aggregated(res, false)));
            }
            Ok(json_response(200, &discovery::api_group_list(res)))
        }
        ["api", v] if get => discovery::api_resource_list(res, "", v)
            .map(|d| json_response(200, &d))
            .ok_or_else(not_found_path),
        ["apis", g] if get => discovery::api_group(res, g)
            .map(|d| json_response(200, &d))
            .ok_or_else(not_found_path),
        ["apis", g, v] if get => discovery::api_resource_list(res, g, v)
            .map(|d| json_response(200, &d))
            .ok_or_else(not_found_path),
        ["openapi", "v2"] if get && crate::openapi_pb::wants_protobuf(&ctx.accept) => Ok(respond(
            200,
            crate::openapi_pb::MEDIA_TYPE,
            state.openapi.v2_protobuf(res).to_vec(),
        )),
        ["openapi", "v2"] if get => Ok(respond(
            200,
            "application/json",
            state.openapi.v2(res).to_vec(),
        )),
        ["openapi", "v3"] if get => Ok(json_response(200, &state.openapi.v3_index(res))),
        ["openapi", "v3", rest @ ..] if get => {
            let doc = state
                .openapi
                .v3(res, &rest.join("/"))
                .ok_or_else(not_found_path)?;
            Ok(respond(200, "application/json", doc.to_vec()))
        }
        ["api", v, rest @ ..] => resource(state, req, &ctx, "", v, rest).await,
        ["apis", g, v, rest @ ..] => resource(state, req, &ctx, g, v, rest).await,
        _ => Err(not_found_path()),
    }
}

fn discovery_response(doc: &Value) -> Response<Body> {
    respond(
        200,
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        serde_json::to_vec(doc).unwrap_or_default(),
    )
}

pub fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": format!("{KUBE_VERSION}+kobune"),
        "gitCommit": env!("CARGO_PKG_VERSION"), "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust", "compiler": "rustc", "platform": format!("linux/{}", std::env::consts::ARCH),
    })
}

struct Target<'a> {
    namespace: Option<&'a str>,
    plural: &'a str,
    name: Option<&'a str>,
    sub: Option<&'a str>,
    watch: bool,
}

fn parse_target<'a>(rest: &[&'a str]) -> Option<Target<'a>> {
    let (watch, rest) = match rest.first() {
        Some(&"watch") => (true, &rest[1..]),
        _ => (false, rest),
    };
    let t = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if !matches!(*plural, "status" | "finalize") || !tail.is_empty() =>
        {
            Target {
                namespace: Some(ns),
                plural,
                name: tail.first().copied(),
                sub: tail.get(1).copied(),
                watch,
            }
        }
        [plural, tail @ ..] => Target {
            namespace: None,
            plural,
            name: tail.first().copied(),
            sub: tail.get(1).copied(),
            watch,
        },
        [] => return None,
    };
    let max = if t.namespace.is_some() { 5 } else { 3 };
    (rest.len() <= max).then_some(t)
}

async fn resource(
    state: &Arc<ApiState>,
    req: Request<Incoming>,
    ctx: &Ctx,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Response<Body>, ApiError> {
    let t = parse_target(rest).ok_or_else(not_found_path)?;
    let info = state
        .resources
        .find(group, version, t.plural)
        .ok_or_else(not_found_path)?;
    let reg = &state.registry;
    let ns = if info.namespaced() { t.namespace } else { None };
    if !info.namespaced() && t.namespace.is_some() {
        return Err(not_found_path());
    }
    if let Some(sub) = t.sub {
        if !info.has_subresource(sub) {
            return Err(not_found_path());
        }
    }
    let method = req.method().clone();
    let watch = t.watch || ctx.flag("watch");
    match (&method, t.name, t.sub) {
        (&Method::GET, None, None) if watch => watch_response(state, &info, ns, ctx).await,
        (&Method::GET, None, None) => {
            let opts = ctx.list_options(reg, &info)?;
            let list = reg.list(&info, ns, &opts).await?;
            let mut meta = json!({"resourceVersion": list.resource_version.to_string()});
            if let Some(c) = &list.continue_token {
                meta["continue"] = json!(c);
            }
            if let Some(r) = list.remaining {
                meta["remainingItemCount"] = json!(r);
            }
            match shape(&ctx.accept) {
                Shape::Table => {
                    let include = IncludeObject::parse(ctx.q("includeObject"))
                        .map_err(ApiError::bad_request)?;
                    Ok(respond(
                        200,
                        TABLE_CONTENT_TYPE,
                        serde_json::to_vec(&table::table(&info, &list.items, include, meta))
                            .unwrap_or_default(),
                    ))
                }
                Shape::Metadata => {
                    let items: Vec<Value> =
                        list.items.iter().map(table::partial_metadata).collect();
                    let body = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items});
                    Ok(respond(
                        200,
                        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                        serde_json::to_vec(&body).unwrap_or_default(),
                    ))
                }
                Shape::Object => {
                    let body = json!({"kind": info.list_kind(), "apiVersion": info.api_version(), "metadata": meta, "items": list.items});
                    Ok(json_response(200, &body))
                }
            }
        }
        (&Method::GET, Some(name), None | Some("status" | "ephemeralcontainers")) => {
            let obj = reg.get(&info, ns, name).await?;
            single(&info, ctx, &obj)
        }
        (&Method::GET, Some(name), Some("scale")) => {
            let obj = reg.get(&info, ns, name).await?;
            Ok(json_response(200, &to_scale(&info, &obj)))
        }
        (m, Some(name), Some(sub @ ("log" | "exec" | "attach" | "portforward" | "proxy")))
            if *m == Method::GET
                || (*m == Method::POST && matches!(sub, "exec" | "attach" | "portforward")) =>
        {
            let pod = reg.get(&info, ns, name).await?;
            let node = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if node.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "pod {name} does not have a host assigned"
                )));
            }
            if sub == "log" {
                if let Some(kubelet) = state.kubelets.get(node) {
                    let opts = log_options(ctx)?;
                    let rx = kubelet.logs(&pod, opts).await?;
                    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
                        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
                    return Ok(Response::builder()
                        .status(StatusCode::OK)
                        .header(header::CONTENT_TYPE, "text/plain")
                        .body(BodyExt::boxed(StreamBody::new(stream)))
                        .expect("valid response"));
                }
            }
            if matches!(sub, "exec" | "attach" | "portforward") {
                if let Some(kubelet) = state.kubelets.get(node) {
                    return crate::streaming::serve(kubelet, &pod, sub, req).await;
                }
            }
            Err(ApiError::new(
                503,
                "ServiceUnavailable",
                format!("{sub} for pod {name}: no node agent is serving node {node:?}"),
            ))
        }
        (&Method::POST, None, None) => {
            let mut opts = ctx.write_options()?;
            let body = read_body(req.into_body()).await?;
            let obj = decode_object(ctx, &body, &mut opts)?;
            if !info.stored {
                return Ok(json_response(
                    201,
                    &review(&info, obj, &ctx.user, ns, state)?,
                ));
            }
            let res = reg.create(&info, ns, obj, &opts).await?;
            let mut r = json_response(201, &res.object);
            warning_headers(&mut r, &res.warnings);
            Ok(r)
        }
        (&Method::POST, Some(name), Some(sub)) => {
            let mut opts = ctx.write_options()?;
            let body = read_body(req.into_body()).await?;
            let obj = decode_object(ctx, &body, &mut opts)?;
            post_subresource(state, &info, ns, name, sub, obj, &opts).await
        }
        (&Method::PUT, Some(name), sub) => {
            let mut opts = ctx.write_options()?;
            let body = read_body(req.into_body()).await?;
            let obj = decode_object(ctx, &body, &mut opts)?;
            if sub == Some("scale") {
                let replicas = obj
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let precondition = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let res = scale_to(reg, &info, ns, name, replicas, precondition, &opts).await?;
                return Ok(json_response(200, &to_scale(&info, &res)));
            }
            let res = reg.update(&info, ns, name, obj, &opts, sub).await?;
            let mut r = json_response(200, &res.object);
            warning_headers(&mut r, &res.warnings);
            Ok(r)
        }
        (&Method::PATCH, Some(name), sub) => {
            let mut opts = ctx.write_options()?;
            let ct = ctx
                .content_type
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            let kind = match ct.as_str() {
                "application/json-patch+json" => PatchKind::Json,
                "application/merge-patch+json" => PatchKind::Merge,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/apply-patch+yaml" => PatchKind::Apply,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let body = read_body(req.into_body()).await?;
            let patch = match kind {
                PatchKind::Apply => kobune_apimachinery::fields::decode_yaml(&body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
                _ => {
                    let d = decode_json(&body)
                        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                    opts.duplicates = d.duplicates;
                    d.value
                }
            };
            with_record(&ctx.audit, |r| r.capture_request(&patch));
            if sub == Some("scale") {
                let cur = reg.get(&info, ns, name).await?;
                let scale = to_scale(&info, &cur);
                let patched = match kind {
                    PatchKind::Json => kobune_apimachinery::patch::json_patch(&scale, &patch)
                        .map_err(|e| ApiError::new(422, "Invalid", e.0))?,
                    _ => kobune_apimachinery::patch::json_merge_patch(&scale, &patch),
                };
                let replicas = patched
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let res = scale_to(reg, &info, ns, name, replicas, None, &opts).await?;
                return Ok(json_response(200, &to_scale(&info, &res)));
            }
            let res = reg.patch(&info, ns, name, kind, &patch, &opts, sub).await?;
            let code = if res.created { 201 } else { 200 };
            let mut r = json_response(code, &res.object);
            warning_headers(&mut r, &res.warnings);
            Ok(r)
        }
        (&Method::DELETE, Some(name), None) => {
            let body = read_body(req.into_body()).await?;
            let opts = delete_options(ctx, &body)?;
            let obj = reg.delete(&info, ns, name, &opts).await?;
            let pending = obj.pointer("/metadata/deletionTimestamp").is_some()
                && obj
                    .pointer("/metadata/finalizers")
                    .is_some_and(|f| f.as_array().is_some_and(|a| !a.is_empty()));
            Ok(json_response(if pending { 202 } else { 200 }, &obj))
        }
        (&Method::DELETE, None, None) => {
            let body = read_body(req.into_body()).await?;
            let opts = delete_options(ctx, &body)?;
            let list = ctx.list_options(reg, &info)?;
            let items = reg.delete_collection(&info, ns, &list, &opts).await?;
            let rv = reg.cache.revision().to_string();
            Ok(json_response(
                200,
                &json!({"kind": info.list_kind(), "apiVersion": info.api_version(), "metadata": {"resourceVersion": rv}, "items": items}),
            ))
        }
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn single(info: &ResourceInfo, ctx: &Ctx, obj: &Value) -> Result<Response<Body>, ApiError> {
    match shape(&ctx.accept) {
        Shape::Table => {
            let include =
                IncludeObject::parse(ctx.q("includeObject")).map_err(ApiError::bad_request)?;
            let t = table::table(
                info,
                std::slice::from_ref(obj),
                include,
                json!({"resourceVersion": rv_of(obj).to_string()}),
            );
            Ok(respond(
                200,
                TABLE_CONTENT_TYPE,
                serde_json::to_vec(&t).unwrap_or_default(),
            ))
        }
        Shape::Metadata => Ok(respond(
            200,
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
            serde_json::to_vec(&table::partial_metadata(obj)).unwrap_or_default(),
        )),
        Shape::Object => Ok(json_response(200, obj)),
    }
}

fn log_options(ctx: &Ctx) -> Result<crate::kubelet::LogOptions, ApiError> {
    let num = |k: &str| -> Result<Option<i64>, ApiError> {
        match ctx.q(k) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("{k}: invalid value {v:?}"))),
        }
    };
    Ok(crate::kubelet::LogOptions {
        container: ctx
            .q("container")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        follow: ctx.flag("follow"),
        previous: ctx.flag("previous"),
        tail_lines: num("tailLines")?,
        since_seconds: num("sinceSeconds")?,
        timestamps: ctx.flag("timestamps"),
        limit_bytes: num("limitBytes")?,
    })
}

fn delete_options(ctx: &Ctx, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions::default();
    if !body.is_empty() {
        let v = if ctx.content_type.contains("protobuf") {
            crate::protobuf::decode(body)?
        } else {
            decode_json(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
                .value
        };
        opts.grace_period_seconds = v["gracePeriodSeconds"].as_i64();
        opts.propagation_policy = v["propagationPolicy"].as_str().map(str::to_string);
        if v["orphanDependents"] == json!(true) && opts.propagation_policy.is_none() {
            opts.propagation_policy = Some("Orphan".into());
        }
        opts.precondition_uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        opts.precondition_rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        opts.dry_run = v["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "All"));
    }
    if let Some(g) = ctx.q("gracePeriodSeconds") {
        opts.grace_period_seconds = Some(g.parse().map_err(|_| {
            ApiError::bad_request(format!("gracePeriodSeconds: invalid value {g:?}"))
        })?);
    }
    if let Some(p) = ctx.q("propagationPolicy") {
        opts.propagation_policy = Some(p.to_string());
    }
    if ctx.q("dryRun") == Some("All") {
        opts.dry_run = true;
    }
    if let Some(p) = &opts.propagation_policy {
        if !matches!(p.as_str(), "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::invalid(
                "DeleteOptions",
                "",
                "",
                vec![kobune_apimachinery::Cause::not_supported(
                    "propagationPolicy",
                    &json!(p),
                    &["Foreground", "Background", "Orphan", "nil"],
                )],
            ));
        }
    }
    Ok(opts)
}

fn path_get<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let p = path.trim_start_matches('.').replace('.', "/");
    obj.pointer(&format!("/{p}"))
}

fn to_scale(info: &ResourceInfo, obj: &Value) -> Value {
    let paths = info
        .scale
        .clone()
        .unwrap_or(kobune_apimachinery::resource::ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: None,
        });
    let spec = path_get(obj, &paths.spec_replicas)
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let status = path_get(obj, &paths.status_replicas)
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let selector = if info.definition.is_some() {
        obj.pointer("/spec/selector")
            .and_then(|s| Selector::from_label_selector(s).ok())
            .map(|s| s.to_string_form())
    } else {
        paths
            .label_selector
            .as_deref()
            .and_then(|p| path_get(obj, p))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let m = &obj["metadata"];
    let mut status_v = json!({"replicas": status});
    if let Some(s) = selector {
        status_v["selector"] = json!(s);
    }
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": spec},
        "status": status_v,
    })
}

async fn scale_to(
    reg: &Registry,
    info: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    replicas: i64,
    precondition: Option<String>,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let path = info
        .scale
        .as_ref()
        .map(|s| s.spec_replicas.clone())
        .unwrap_or(".spec.replicas".into());
    let mut patch = json!(replicas);
    for part in path.trim_start_matches('.').rsplit('.') {
        patch = json!({ part: patch });
    }
    if let Some(rv) = precondition.filter(|s| !s.is_empty()) {
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    Ok(reg
        .patch(info, ns, name, PatchKind::Merge, &patch, opts, None)
        .await?
        .object)
}

async fn post_subresource(
    state: &Arc<ApiState>,
    info: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    sub: &str,
    body: Value,
    opts: &WriteOptions,
) -> Result<Response<Body>, ApiError> {
    let reg = &state.registry;
    match sub {
        "eviction" => {
            let status = crate::eviction::evict(reg, info, ns, name, &body, opts).await?;
            Ok(json_response(201, &status))
        }
        "binding" => {
            let node = body
                .pointer("/target/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if node.is_empty() {
                return Err(ApiError::invalid(
                    "Binding",
                    "",
                    name,
                    vec![kobune_apimachinery::Cause::required("target.name")],
                ));
            }
            let binding = crate::binding::Binding {
                node,
                uid: body
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .filter(|u| !u.is_empty())
                    .map(str::to_string),
                annotations: body
                    .pointer("/metadata/annotations")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
                dry_run: opts.dry_run,
            };
            reg.bind_pod(ns.unwrap_or("default"), name, &binding)
                .await?;
            Ok(json_response(201, &success_status(name, "", "Binding", "")))
        }
        "token" if info.plural == "serviceaccounts" => {
            reg.cache.sync().await?;
            let out =
                crate::serviceaccount::request_token(reg, ns.unwrap_or("default"), name, &body)?;
            Ok(json_response(201, &out))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "POST is not supported on {}/{sub}",
            info.plural
        ))),
    }
}

/// The user of a bearer token: the cluster token, or a service account token.
fn bearer_user(state: &ApiState, token: &str) -> Option<UserInfo> {
    auth::from_token(token, &state.admin_token)
        .or_else(|| crate::serviceaccount::authenticate(&state.registry, token))
}

/// The user the `Impersonate-*` headers ask for, once the caller may act as them.
fn impersonated(
    state: &ApiState,
    user: &UserInfo,
    headers: &header::HeaderMap,
) -> Result<Option<UserInfo>, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let mut extra: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in headers {
        if let Some(key) = k.as_str().strip_prefix("impersonate-extra-") {
            if let Ok(v) = v.to_str() {
                extra
                    .entry(percent_decode(key))
                    .or_default()
                    .push(v.to_string());
            }
        }
    }
    rbac::impersonate(
        &state.registry,
        user,
        values("impersonate-user").first().map(String::as_str),
        &values("impersonate-group"),
        values("impersonate-uid").first().map(String::as_str),
        &extra,
    )
}

/// Answers review kinds (access reviews, self subject reviews) for the caller.
fn review(
    info: &ResourceInfo,
    mut obj: Value,
    user: &UserInfo,
    ns: Option<&str>,
    state: &ApiState,
) -> Result<Value, ApiError> {
    let reg = &state.registry;
    match info.kind.as_str() {
        "SelfSubjectAccessReview" => {
            obj["status"] = rbac::access_review(reg, user, &obj["spec"]);
        }
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let spec = &obj["spec"];
            if let Some(ns) = ns {
                let asked = spec
                    .pointer("/resourceAttributes/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if asked != ns {
                    return Err(ApiError::invalid(
                        &info.kind,
                        &info.group,
                        "",
                        vec![kobune_apimachinery::Cause::invalid(
                            "spec.resourceAttributes.namespace",
                            &json!(asked),
                            &format!("must match metadata.namespace ({ns:?})"),
                        )],
                    ));
                }
            }
            let subject = UserInfo {
                username: spec["user"].as_str().unwrap_or_default().to_string(),
                groups: kobune_apimachinery::str_list(spec.get("groups")),
            };
            obj["status"] = rbac::access_review(reg, &subject, spec);
        }
        "SelfSubjectRulesReview" => {
            let ns = obj
                .pointer("/spec/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            obj["status"] = rbac::rules_review(reg, user, &ns);
        }
        "SelfSubjectReview" => {
            obj["status"] = json!({"userInfo": {"username": user.username, "groups": user.groups}});
        }
        "TokenReview" => {
            let token = obj
                .pointer("/spec/token")
                .and_then(Value::as_str)
                .unwrap_or_default();
            obj["status"] = match bearer_user(state, token) {
                Some(u) => {
                    json!({"authenticated": true, "user": {"username": u.username, "groups": u.groups}})
                }
                None => json!({"authenticated": false}),
            };
        }
        _ => {}
    }
    if obj.get("metadata").is_none() {
        obj["metadata"] = json!({});
    }
    Ok(obj)
}

fn event_json(kind: &str, obj: Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

async fn watch_response(
    state: &Arc<ApiState>,
    info: &Arc<ResourceInfo>,
    ns: Option<&str>,
    ctx: &Ctx,
) -> Result<Response<Body>, ApiError> {
    let reg = state.registry.clone();
    let opts = ctx.list_options(&reg, info)?;
    let prefix = reg.prefix(info, ns);
    let requested = match opts.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(s) => Some(
            s.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {s:?}")))?,
        ),
    };
    if opts.resource_version.is_none() {
        reg.cache.sync().await?;
    } else if let Some(rev) = requested {
        reg.cache.wait_for(rev).await?;
    }
    // Streaming lists (sendInitialEvents): the current state as ADDED events,
    // then a bookmark marking their end; otherwise resume after the given version.
    let send_initial = ctx.q("sendInitialEvents");
    let from = match send_initial {
        Some("true") => None,
        Some("false") if requested.is_none() => Some(reg.cache.revision()),
        _ => requested,
    };
    let initial_end_bookmark = send_initial == Some("true");
    let table_mode = shape(&ctx.accept) == Shape::Table;
    let include = IncludeObject::parse(ctx.q("includeObject")).map_err(ApiError::bad_request)?;
    let bookmarks = ctx.flag("allowWatchBookmarks");
    let timeout = ctx
        .q("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or_else(|| Duration::from_secs(1800 + rand::random::<u64>() % 1800));
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
    let content_type = if table_mode {
        TABLE_CONTENT_TYPE
    } else {
        "application/json"
    };
    let render = {
        let info = info.clone();
        move |obj: &Value| -> Value {
            let o = crate::conversion::convert(obj.clone(), &info);
            if table_mode {
                table::table(
                    &info,
                    std::slice::from_ref(&o),
                    include,
                    json!({"resourceVersion": rv_of(&o).to_string()}),
                )
            } else {
                o
            }
        }
    };
    match reg.cache.subscribe(&prefix, from) {
        Err(e) => {
            let _ = tx.try_send(Ok(Frame::data(event_json("ERROR", e.to_status()))));
        }
        Ok(sub) => {
            let info = info.clone();
            tokio::spawn(async move {
                let send = |ev: &CacheEvent| -> Option<Bytes> {
                    let matches_now = reg.matches(
                        &info,
                        &ev.object,
                        &opts.label_selector,
                        &opts.field_selector,
                    );
                    let matched_before = match &ev.prev {
                        Some(p) => {
                            reg.matches(&info, p, &opts.label_selector, &opts.field_selector)
                        }
                        // Replayed history may not know the earlier state: assume unchanged membership.
                        None => ev.kind == EventType::Modified && matches_now,
                    };
                    let kind = match ev.kind {
                        EventType::Added if matches_now => "ADDED",
                        EventType::Modified if matches_now && matched_before => "MODIFIED",
                        EventType::Modified if matches_now => "ADDED",
                        EventType::Modified if matched_before => "DELETED",
                        EventType::Deleted if matches_now => "DELETED",
                        _ => return None,
                    };
                    Some(event_json(kind, render(&ev.object)))
                };
                for ev in &sub.initial {
                    if let Some(b) = send(ev) {
                        if tx.send(Ok(Frame::data(b))).await.is_err() {
                            return;
                        }
                    }
                }
                if initial_end_bookmark {
                    let bm = json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": {
                        "resourceVersion": sub.after.to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"}}});
                    if tx
                        .send(Ok(Frame::data(event_json("BOOKMARK", bm))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let deadline = tokio::time::sleep(timeout);
                tokio::pin!(deadline);
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                tick.tick().await;
                let mut live = sub.live;
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        _ = tx.closed() => return,
                        _ = tick.tick(), if bookmarks => {
                            let rv = reg.cache.revision().to_string();
                            let bm = json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": {"resourceVersion": rv}});
                            if tx.send(Ok(Frame::data(event_json("BOOKMARK", bm)))).await.is_err() { return; }
                        }
                        ev = live.recv() => match ev {
                            Ok(ev) => {
                                if ev.revision <= sub.after || !ev.key.starts_with(&prefix) { continue; }
                                if let Some(b) = send(&ev) {
                                    if tx.send(Ok(Frame::data(b))).await.is_err() { return; }
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                let e = ApiError::expired("too old resource version: the watch fell behind; relist");
                                let _ = tx.send(Ok(Frame::data(event_json("ERROR", e.to_status())))).await;
                                return;
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                    }
                }
            });
        }
    }
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(BodyExt::boxed(body))
        .expect("valid response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_like_upstream_paths() {
        let t = parse_target(&["namespaces", "default", "pods", "web", "status"]).unwrap();
        assert_eq!(
            (t.namespace, t.plural, t.name, t.sub),
            (Some("default"), "pods", Some("web"), Some("status"))
        );
        let t = parse_target(&["namespaces", "kube-system", "status"]).unwrap();
        assert_eq!(
            (t.namespace, t.plural, t.name, t.sub),
            (None, "namespaces", Some("kube-system"), Some("status"))
        );
        let t = parse_target(&["watch", "namespaces", "a", "configmaps"]).unwrap();
        assert!(t.watch);
        assert_eq!(t.plural, "configmaps");
        assert!(parse_target(&["nodes", "a", "b", "c"]).is_none());
        let t = parse_target(&["namespaces", "zz"]).unwrap();
        assert_eq!(
            (t.namespace, t.plural, t.name),
            (None, "namespaces", Some("zz"))
        );
    }

    #[test]
    fn negotiation_prefers_first_supported() {
        assert_eq!(shape("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"), Shape::Table);
        assert_eq!(
            shape("application/vnd.kubernetes.protobuf, */*"),
            Shape::Object
        );
        assert_eq!(
            shape(
                "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"
            ),
            Shape::Metadata
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("app%3Dweb%2Ctier+in+(a)"),
            "app=web,tier in (a)"
        );
        assert_eq!(percent_decode("100%"), "100%");
    }
}
