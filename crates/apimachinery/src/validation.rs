//! Validation of names, labels and the fields users touch, with upstream messages.
//!
//! Messages follow k8s.io/apimachinery/pkg/util/validation and
//! k8s.io/kubernetes/pkg/apis/*/validation; the order of causes follows the
//! order in which upstream appends them.

use crate::resource::ResourceInfo;
use crate::status::Cause;
use serde_json::{Map, Value};

// ---------- string validators (k8s.io/apimachinery/pkg/util/validation) ----------

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_ERR: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const ENV_VAR_FMT: &str = "[-._a-zA-Z][-._a-zA-Z0-9]*";
const ENV_VAR_ERR: &str = "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit";
const CONFIG_KEY_FMT: &str = "[-._a-zA-Z0-9]+";
const CONFIG_KEY_ERR: &str =
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'";
const PERCENT_FMT: &str = "[0-9]+%";
const PERCENT_ERR: &str =
    "a valid percent string must be a numeric string followed by an ending '%'";

/// Total size of all annotations (keys plus values).
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;
/// Maximum total size of a ConfigMap's or Secret's data.
pub const MAX_SECRET_SIZE: usize = 1024 * 1024;

const IMMUTABLE: &str = "field is immutable";
const NEGATIVE: &str = "must be greater than or equal to 0";
const SELECTOR_MISMATCH: &str = "`selector` does not match template `labels`";

/// upstream's `RegexError`: the message, examples and the regex.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut s = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push_str(&format!("'{e}', "));
    }
    s.push_str(&format!("regex used for validation is '{fmt}')"));
    s
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn matches_label(s: &str) -> bool {
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().last()) else {
        return false;
    };
    is_lower_alnum(first)
        && is_lower_alnum(last)
        && s.chars().all(|c| is_lower_alnum(c) || c == '-')
}

fn matches_subdomain(s: &str) -> bool {
    s.split('.').all(matches_label)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn matches_qualified_part(s: &str) -> bool {
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub fn is_dns1123_label(s: &str) -> Vec<String> {
    let mut errs = vec![];
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !matches_label(s) {
        if matches_subdomain(s) {
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_ERR,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

pub fn is_dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = vec![];
    if s.len() > 253 {
        errs.push(max_len_error(253));
    }
    if !matches_subdomain(s) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

pub fn is_dns1035_label(s: &str) -> Vec<String> {
    let mut errs = vec![];
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    let ok = s.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && matches_label(s);
    if !ok {
        errs.push(regex_error(
            DNS1035_LABEL_ERR,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

pub fn is_qualified_name(s: &str) -> Vec<String> {
    let mut errs = vec![];
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    is_dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !matches_qualified_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

pub fn is_valid_label_value(s: &str) -> Vec<String> {
    let mut errs = vec![];
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !s.is_empty() && !matches_qualified_part(s) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

fn has_chdir_prefix(s: &str) -> Vec<String> {
    match s {
        "." => vec!["must not be '.'".into()],
        ".." => vec!["must not be '..'".into()],
        _ if s.starts_with("..") => vec!["must not start with '..'".into()],
        _ => vec![],
    }
}

pub fn is_env_var_name(s: &str) -> Vec<String> {
    let mut errs = vec![];
    let ok = s.chars().next().is_some_and(|c| !c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !ok {
        errs.push(regex_error(
            ENV_VAR_ERR,
            ENV_VAR_FMT,
            &["my.env-name", "MY_ENV.NAME", "MyEnvName1"],
        ));
    }
    errs.extend(has_chdir_prefix(s));
    errs
}

pub fn is_config_map_key(s: &str) -> Vec<String> {
    let mut errs = vec![];
    if s.len() > 253 {
        errs.push(max_len_error(253));
    }
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !ok {
        errs.push(regex_error(
            CONFIG_KEY_ERR,
            CONFIG_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    errs.extend(has_chdir_prefix(s));
    errs
}

pub fn is_valid_port_num(n: i64) -> Vec<String> {
    if (1..=65535).contains(&n) {
        vec![]
    } else {
        vec!["must be between 1 and 65535, inclusive".into()]
    }
}

pub fn is_valid_port_name(s: &str) -> Vec<String> {
    let mut errs = vec![];
    if s.len() > 15 {
        errs.push(max_len_error(15));
    }
    if s.is_empty() || !s.chars().all(|c| is_lower_alnum(c) || c == '-') {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// Path-segment names (RBAC kinds and a few others).
pub fn is_valid_path_segment_name(s: &str) -> Vec<String> {
    for bad in [".", ".."] {
        if s == bad {
            return vec![format!("may not be '{bad}'")];
        }
    }
    is_valid_path_segment_prefix(s)
}

fn is_valid_path_segment_prefix(s: &str) -> Vec<String> {
    ["/", "%"]
        .iter()
        .filter(|c| s.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
        .collect()
}

fn is_valid_percent(s: &str) -> Vec<String> {
    let ok =
        s.len() > 1 && s.ends_with('%') && s[..s.len() - 1].chars().all(|c| c.is_ascii_digit());
    if ok {
        vec![]
    } else {
        vec![regex_error(PERCENT_ERR, PERCENT_FMT, &["1%", "93%"])]
    }
}

// ---------- small JSON helpers ----------

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn map_of<'a>(v: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    v.get(key).and_then(Value::as_object)
}

fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

fn present(v: &Value, key: &str) -> bool {
    v.get(key).is_some_and(|x| !x.is_null())
}

fn js(s: &str) -> Value {
    Value::String(s.to_string())
}

/// A cause whose value is shown verbatim (Go's `%#v` of a non-string).
fn invalid_raw(field: impl Into<String>, shown: &str, detail: &str) -> Cause {
    Cause::new(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {shown}: {detail}"),
    )
}

fn not_found(field: impl Into<String>, value: &str) -> Cause {
    Cause::new("FieldValueNotFound", field, format!("Not found: {value:?}"))
}

fn nonnegative(out: &mut Vec<Cause>, v: &Value, key: &str, path: &str) {
    if let Some(n) = int(v, key) {
        if n < 0 {
            out.push(Cause::invalid(
                format!("{path}.{key}"),
                &Value::from(n),
                NEGATIVE,
            ));
        }
    }
}

// ---------- Go value rendering (for messages that print structs) ----------

/// Go's `%#v` of a `map[string]string`.
fn go_string_map(m: Option<&Map<String, Value>>) -> String {
    match m {
        None => "map[string]string(nil)".into(),
        Some(m) => {
            let parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or_default()))
                .collect();
            format!("map[string]string{{{}}}", parts.join(", "))
        }
    }
}

/// Go's `%#v` of a `v1.LabelSelector` value.
fn go_label_selector(sel: &Value) -> String {
    let exprs = match sel.get("matchExpressions").and_then(Value::as_array) {
        None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
        Some(a) => {
            let parts: Vec<String> = a
                .iter()
                .map(|e| {
                    let values = match e.get("values").and_then(Value::as_array) {
                        None => "[]string(nil)".to_string(),
                        Some(vs) => format!(
                            "[]string{{{}}}",
                            vs.iter()
                                .map(|v| format!("{:?}", v.as_str().unwrap_or_default()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:{values}}}",
                        s(e, "key"),
                        s(e, "operator")
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", parts.join(", "))
        }
    };
    format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{exprs}}}",
        go_string_map(map_of(sel, "matchLabels"))
    )
}

/// Go's `%#v` of an `intstr.IntOrString` value.
fn go_int_or_string(v: &Value) -> String {
    match v {
        Value::String(s) => format!("intstr.IntOrString{{Type:1, IntVal:0, StrVal:{s:?}}}"),
        other => format!(
            "intstr.IntOrString{{Type:0, IntVal:{}, StrVal:\"\"}}",
            other.as_i64().unwrap_or_default()
        ),
    }
}

// ---------- entry points ----------

/// Validation causes for an object on create (old None) or update (old Some).
pub fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = validate_meta(info, obj);
    if info.crd_schema.is_some() {
        return out;
    }
    let null = Value::Null;
    let spec = obj.get("spec").unwrap_or(&null);
    let old_spec = old.map(|o| o.get("spec").unwrap_or(&null));
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => pod_spec(&mut out, spec, "spec"),
        ("", "PodTemplate") => {
            template_spec(&mut out, obj.get("template").unwrap_or(&null), "template")
        }
        ("", "ReplicationController") => replication_controller(&mut out, spec),
        ("apps", "Deployment") => deployment(&mut out, spec, old_spec),
        ("apps", "ReplicaSet") => replica_set(&mut out, spec, old_spec),
        ("apps", "StatefulSet") => stateful_set(&mut out, spec, old_spec),
        ("apps", "DaemonSet") => daemon_set(&mut out, spec, old_spec),
        ("batch", "Job") => job(&mut out, spec, old_spec),
        ("batch", "CronJob") => cron_job(&mut out, spec),
        ("", "Service") => service(&mut out, spec),
        ("", "ConfigMap") => config_map(&mut out, obj),
        ("", "Secret") => secret(&mut out, obj, old),
        ("networking.k8s.io", "Ingress") => ingress(&mut out, spec),
        ("autoscaling", "HorizontalPodAutoscaler") => hpa(&mut out, spec),
        ("policy", "PodDisruptionBudget") => pdb(&mut out, spec),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(&mut out, spec),
        _ => {}
    }
    out
}

// ---------- label selectors ----------

fn validate_label_selector(out: &mut Vec<Cause>, sel: &Value, path: &str) {
    if sel.is_null() {
        return;
    }
    validate_labels(
        out,
        map_of(sel, "matchLabels"),
        &format!("{path}.matchLabels"),
    );
    for (i, e) in arr(sel, "matchExpressions").iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = arr(e, "values");
        match s(e, "operator") {
            "In" | "NotIn" => {
                if values.is_empty() {
                    out.push(Cause::new(
                        "FieldValueRequired",
                        format!("{p}.values"),
                        "Required value: must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    out.push(Cause::forbidden(
                        format!("{p}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            op => out.push(Cause::invalid(
                format!("{p}.operator"),
                &js(op),
                "not a valid selector operator",
            )),
        }
        let key = s(e, "key");
        for m in is_qualified_name(key) {
            out.push(Cause::invalid(format!("{p}.key"), &js(key), &m));
        }
        for (j, v) in values.iter().enumerate() {
            let v = v.as_str().unwrap_or_default();
            for m in is_valid_label_value(v) {
                out.push(Cause::invalid(format!("{p}.values[{j}]"), &js(v), &m));
            }
        }
    }
}

fn selector_is_empty(sel: &Value) -> bool {
    map_of(sel, "matchLabels").is_none_or(Map::is_empty) && arr(sel, "matchExpressions").is_empty()
}

/// Whether a workload selector (absent: matches nothing) matches the template labels.
/// `Err` when the selector cannot be converted.
fn selector_matches(sel: &Value, labels: Option<&Map<String, Value>>) -> Result<bool, ()> {
    if sel.is_null() {
        return Ok(false);
    }
    let parsed = crate::selectors::Selector::from_label_selector(sel).map_err(|_| ())?;
    Ok(parsed.matches_labels(labels))
}

fn template_labels(tmpl: &Value) -> Option<&Map<String, Value>> {
    tmpl.get("metadata").and_then(|m| map_of(m, "labels"))
}

fn mismatch(out: &mut Vec<Cause>, tmpl: &Value, path: &str) {
    out.push(invalid_raw(
        format!("{path}.metadata.labels"),
        &go_string_map(template_labels(tmpl)),
        SELECTOR_MISMATCH,
    ));
}

fn immutable_selector(out: &mut Vec<Cause>, spec: &Value, old_spec: Option<&Value>) {
    let Some(old) = old_spec else { return };
    let new_sel = spec.get("selector").unwrap_or(&Value::Null);
    let old_sel = old.get("selector").unwrap_or(&Value::Null);
    if normalized_selector(new_sel) != normalized_selector(old_sel) {
        let shown = if new_sel.is_null() {
            "null".to_string()
        } else {
            go_label_selector(new_sel)
        };
        out.push(invalid_raw("spec.selector", &shown, IMMUTABLE));
    }
}

/// A selector with empty parts dropped, for semantic comparison.
fn normalized_selector(sel: &Value) -> Value {
    let mut m = Map::new();
    if let Some(ml) = map_of(sel, "matchLabels").filter(|m| !m.is_empty()) {
        m.insert("matchLabels".into(), Value::Object(ml.clone()));
    }
    let exprs = arr(sel, "matchExpressions");
    if !exprs.is_empty() {
        m.insert("matchExpressions".into(), Value::Array(exprs.to_vec()));
    }
    if sel.is_null() {
        Value::Null
    } else {
        Value::Object(m)
    }
}

// ---------- pods ----------

const VOLUME_SOURCES_IGNORED: &[&str] = &["name"];

fn validate_port_num_or_name(out: &mut Vec<Cause>, v: Option<&Value>, path: &str) {
    match v {
        Some(Value::String(name)) => {
            for m in is_valid_port_name(name) {
                out.push(Cause::invalid(path, &js(name), &m));
            }
        }
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(0);
            for m in is_valid_port_num(n) {
                out.push(Cause::invalid(path, &Value::from(n), &m));
            }
        }
        _ => {}
    }
}

/// Volumes; returns the names of valid volumes.
fn validate_volumes(out: &mut Vec<Cause>, volumes: &[Value], path: &str) -> Vec<String> {
    let mut names: Vec<String> = vec![];
    for (i, vol) in volumes.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let mut el = vec![];
        let sources: Vec<&String> = vol
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| !VOLUME_SOURCES_IGNORED.contains(&k.as_str()) && !v.is_null())
            .map(|(k, _)| k)
            .collect();
        if sources.is_empty() {
            el.push(Cause::new(
                "FieldValueRequired",
                p.clone(),
                "Required value: must specify a volume type",
            ));
        }
        for extra in sources.iter().skip(1) {
            el.push(Cause::forbidden(
                format!("{p}.{extra}"),
                "may not specify more than 1 volume type",
            ));
        }
        let name = s(vol, "name");
        let name_path = format!("{p}.name");
        if name.is_empty() {
            el.push(Cause::required(&name_path));
        } else {
            for m in is_dns1123_label(name) {
                el.push(Cause::invalid(&name_path, &js(name), &m));
            }
        }
        if names.iter().any(|n| n == name) {
            el.push(Cause::duplicate(&name_path, &js(name)));
        }
        if el.is_empty() {
            names.push(name.to_string());
        } else {
            out.extend(el);
        }
    }
    names
}

fn validate_handler(out: &mut Vec<Cause>, h: &Value, path: &str, kinds: &[&str]) {
    let mut count = 0;
    for k in kinds {
        let Some(action) = h.get(*k).filter(|v| !v.is_null()) else {
            continue;
        };
        if count > 0 {
            out.push(Cause::forbidden(
                format!("{path}.{k}"),
                "may not specify more than 1 handler type",
            ));
            continue;
        }
        count += 1;
        match *k {
            "exec" if arr(action, "command").is_empty() => {
                out.push(Cause::required(format!("{path}.exec.command")));
            }
            "httpGet" | "tcpSocket" => {
                validate_port_num_or_name(out, action.get("port"), &format!("{path}.{k}.port"));
            }
            _ => {}
        }
    }
    if count == 0 {
        out.push(Cause::new(
            "FieldValueRequired",
            path,
            "Required value: must specify a handler type",
        ));
    }
}

fn validate_probe(out: &mut Vec<Cause>, c: &Value, key: &str, path: &str) {
    let Some(probe) = c.get(key).filter(|v| !v.is_null()) else {
        return;
    };
    let p = format!("{path}.{key}");
    validate_handler(out, probe, &p, &["exec", "httpGet", "tcpSocket", "grpc"]);
    for f in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        nonnegative(out, probe, f, &p);
    }
    if key != "readinessProbe" {
        if let Some(n) = int(probe, "successThreshold") {
            if n != 1 {
                out.push(Cause::invalid(
                    format!("{p}.successThreshold"),
                    &Value::from(n),
                    "must be 1",
                ));
            }
        }
    }
}

fn validate_container_common(out: &mut Vec<Cause>, c: &Value, volumes: &[String], path: &str) {
    let name = s(c, "name");
    let name_path = format!("{path}.name");
    if name.is_empty() {
        out.push(Cause::required(&name_path));
    } else {
        for m in is_dns1123_label(name) {
            out.push(Cause::invalid(&name_path, &js(name), &m));
        }
    }
    if s(c, "image").is_empty() {
        out.push(Cause::required(format!("{path}.image")));
    }
    if let Some(p) = c.get("terminationMessagePolicy").and_then(Value::as_str) {
        if !matches!(p, "File" | "FallbackToLogsOnError") {
            out.push(Cause::not_supported(
                format!("{path}.terminationMessagePolicy"),
                &js(p),
                &["File", "FallbackToLogsOnError"],
            ));
        }
    }
    // ports
    let mut port_names: Vec<&str> = vec![];
    for (i, port) in arr(c, "ports").iter().enumerate() {
        let p = format!("{path}.ports[{i}]");
        let pname = s(port, "name");
        if !pname.is_empty() {
            let msgs = is_valid_port_name(pname);
            if !msgs.is_empty() {
                for m in msgs {
                    out.push(Cause::invalid(format!("{p}.name"), &js(pname), &m));
                }
            } else if port_names.contains(&pname) {
                out.push(Cause::duplicate(format!("{p}.name"), &js(pname)));
            } else {
                port_names.push(pname);
            }
        }
        match int(port, "containerPort").unwrap_or(0) {
            0 => out.push(Cause::required(format!("{p}.containerPort"))),
            n => {
                for m in is_valid_port_num(n) {
                    out.push(Cause::invalid(
                        format!("{p}.containerPort"),
                        &Value::from(n),
                        &m,
                    ));
                }
            }
        }
        if let Some(n) = int(port, "hostPort").filter(|n| *n != 0) {
            for m in is_valid_port_num(n) {
                out.push(Cause::invalid(format!("{p}.hostPort"), &Value::from(n), &m));
            }
        }
        validate_protocol(out, port, &p);
    }
    // env
    for (i, e) in arr(c, "env").iter().enumerate() {
        let p = format!("{path}.env[{i}].name");
        let n = s(e, "name");
        if n.is_empty() {
            out.push(Cause::required(&p));
        } else {
            for m in is_env_var_name(n) {
                out.push(Cause::invalid(&p, &js(n), &m));
            }
        }
    }
    // volume mounts
    let mut mount_points: Vec<&str> = vec![];
    for (i, m) in arr(c, "volumeMounts").iter().enumerate() {
        let p = format!("{path}.volumeMounts[{i}]");
        let n = s(m, "name");
        if n.is_empty() {
            out.push(Cause::required(format!("{p}.name")));
        }
        if !volumes.iter().any(|v| v == n) {
            out.push(not_found(format!("{p}.name"), n));
        }
        let mp = s(m, "mountPath");
        if mp.is_empty() {
            out.push(Cause::required(format!("{p}.mountPath")));
        }
        if mount_points.contains(&mp) {
            out.push(Cause::invalid(
                format!("{p}.mountPath"),
                &js(mp),
                "must be unique",
            ));
        }
        mount_points.push(mp);
    }
    if let Some(p) = c.get("imagePullPolicy").and_then(Value::as_str) {
        if !matches!(p, "Always" | "IfNotPresent" | "Never") {
            out.push(Cause::not_supported(
                format!("{path}.imagePullPolicy"),
                &js(p),
                &["Always", "IfNotPresent", "Never"],
            ));
        }
    }
}

fn validate_protocol(out: &mut Vec<Cause>, port: &Value, path: &str) {
    match port.get("protocol").and_then(Value::as_str) {
        None => {}
        Some("") => out.push(Cause::required(format!("{path}.protocol"))),
        Some("TCP" | "UDP" | "SCTP") => {}
        Some(p) => out.push(Cause::not_supported(
            format!("{path}.protocol"),
            &js(p),
            &["SCTP", "TCP", "UDP"],
        )),
    }
}

fn pod_spec(out: &mut Vec<Cause>, spec: &Value, path: &str) {
    let volumes = validate_volumes(out, arr(spec, "volumes"), &format!("{path}.volumes"));
    let containers = arr(spec, "containers");
    let cpath = format!("{path}.containers");
    if containers.is_empty() {
        out.push(Cause::required(&cpath));
    }
    let mut names: Vec<&str> = vec![];
    for (i, c) in containers.iter().enumerate() {
        let p = format!("{cpath}[{i}]");
        validate_container_common(out, c, &volumes, &p);
        let n = s(c, "name");
        if names.contains(&n) {
            out.push(Cause::duplicate(format!("{p}.name"), &js(n)));
        } else {
            names.push(n);
        }
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            validate_probe(out, c, probe, &p);
        }
        if let Some(lc) = c.get("lifecycle") {
            for hook in ["postStart", "preStop"] {
                if let Some(h) = lc.get(hook).filter(|v| !v.is_null()) {
                    validate_handler(
                        out,
                        h,
                        &format!("{p}.lifecycle.{hook}"),
                        &["exec", "httpGet", "tcpSocket", "sleep"],
                    );
                }
            }
        }
    }
    for (i, c) in arr(spec, "initContainers").iter().enumerate() {
        let p = format!("{path}.initContainers[{i}]");
        validate_container_common(out, c, &volumes, &p);
        let n = s(c, "name");
        if names.contains(&n) {
            out.push(Cause::duplicate(format!("{p}.name"), &js(n)));
        } else {
            names.push(n);
        }
    }
    match spec.get("restartPolicy").and_then(Value::as_str) {
        None | Some("Always" | "OnFailure" | "Never") => {}
        Some("") => out.push(Cause::required(format!("{path}.restartPolicy"))),
        Some(p) => out.push(Cause::not_supported(
            format!("{path}.restartPolicy"),
            &js(p),
            &["Always", "OnFailure", "Never"],
        )),
    }
    match spec.get("dnsPolicy").and_then(Value::as_str) {
        None | Some("ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None") => {}
        Some("") => out.push(Cause::required(format!("{path}.dnsPolicy"))),
        Some(p) => out.push(Cause::not_supported(
            format!("{path}.dnsPolicy"),
            &js(p),
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        )),
    }
    nonnegative(out, spec, "terminationGracePeriodSeconds", path);
    if let Some(n) = int(spec, "activeDeadlineSeconds") {
        if n <= 0 {
            out.push(Cause::invalid(
                format!("{path}.activeDeadlineSeconds"),
                &Value::from(n),
                "must be between 1 and 2147483647, inclusive",
            ));
        }
    }
}

/// `ValidatePodTemplateSpec`: labels and annotations sit directly under the
/// template path in upstream's field paths.
fn template_spec(out: &mut Vec<Cause>, tmpl: &Value, path: &str) {
    let meta = tmpl.get("metadata").unwrap_or(&Value::Null);
    validate_labels(out, map_of(meta, "labels"), &format!("{path}.labels"));
    validate_annotations(
        out,
        map_of(meta, "annotations"),
        &format!("{path}.annotations"),
    );
    pod_spec(
        out,
        tmpl.get("spec").unwrap_or(&Value::Null),
        &format!("{path}.spec"),
    );
}

fn restart_always(out: &mut Vec<Cause>, tmpl: &Value, path: &str) {
    let rp = tmpl
        .get("spec")
        .map(|sp| s(sp, "restartPolicy"))
        .unwrap_or_default();
    if rp != "Always" {
        out.push(Cause::not_supported(
            format!("{path}.spec.restartPolicy"),
            &js(rp),
            &["Always"],
        ));
    }
}

// ---------- workloads ----------

fn template_of(spec: &Value) -> &Value {
    spec.get("template").unwrap_or(&Value::Null)
}

/// `ValidatePodTemplateSpecForReplicaSet`.
fn template_for_replica_set(out: &mut Vec<Cause>, spec: &Value, sel: &Value, kind: &str) {
    let tmpl = template_of(spec);
    if tmpl.is_null() {
        out.push(Cause::required("spec.template"));
        return;
    }
    let everything = !sel.is_null() && selector_is_empty(sel);
    if !everything && selector_matches(sel, template_labels(tmpl)) == Ok(false) {
        mismatch(out, tmpl, "spec.template");
    }
    template_spec(out, tmpl, "spec.template");
    restart_always(out, tmpl, "spec.template");
    if let Some(n) = tmpl
        .get("spec")
        .and_then(|s| s.get("activeDeadlineSeconds"))
        .filter(|v| !v.is_null())
    {
        out.push(Cause::invalid(
            "spec.template.spec.activeDeadlineSeconds",
            n,
            &format!("activeDeadlineSeconds in {kind} is not Supported"),
        ));
    }
}

fn required_selector(out: &mut Vec<Cause>, sel: &Value, what: &str) {
    if sel.is_null() {
        out.push(Cause::required("spec.selector"));
    } else {
        validate_label_selector(out, sel, "spec.selector");
        if selector_is_empty(sel) {
            out.push(invalid_raw(
                "spec.selector",
                &go_label_selector(sel),
                &format!("empty selector is invalid for {what}"),
            ));
        }
    }
}

fn selector_convertible(out: &mut Vec<Cause>, sel: &Value) -> bool {
    if sel.is_null() || crate::selectors::Selector::from_label_selector(sel).is_ok() {
        return true;
    }
    out.push(invalid_raw(
        "spec.selector",
        &go_label_selector(sel),
        "invalid label selector",
    ));
    false
}

fn deployment(out: &mut Vec<Cause>, spec: &Value, old_spec: Option<&Value>) {
    nonnegative(out, spec, "replicas", "spec");
    let sel = spec.get("selector").unwrap_or(&Value::Null);
    required_selector(out, sel, "deployment");
    if selector_convertible(out, sel) {
        template_for_replica_set(out, spec, sel, "ReplicaSet");
    }
    let st = spec.get("strategy").unwrap_or(&Value::Null);
    match s(st, "type") {
        "Recreate" => {
            if present(st, "rollingUpdate") {
                out.push(Cause::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        "RollingUpdate" => {
            if let Some(ru) = st.get("rollingUpdate").filter(|v| !v.is_null()) {
                rolling_update(out, ru, "spec.strategy.rollingUpdate", true);
            }
        }
        t => {
            let ru = if present(st, "rollingUpdate") {
                "(*apps.RollingUpdateDeployment)(0xc000010000)"
            } else {
                "(*apps.RollingUpdateDeployment)(nil)"
            };
            out.push(Cause::new(
                "FieldValueNotSupported",
                "spec.strategy",
                format!(
                    "Unsupported value: apps.DeploymentStrategy{{Type:{t:?}, RollingUpdate:{ru}}}: supported values: \"Recreate\", \"RollingUpdate\""
                ),
            ));
        }
    }
    nonnegative(out, spec, "minReadySeconds", "spec");
    nonnegative(out, spec, "revisionHistoryLimit", "spec");
    if let Some(p) = int(spec, "progressDeadlineSeconds") {
        nonnegative(out, spec, "progressDeadlineSeconds", "spec");
        if p <= int(spec, "minReadySeconds").unwrap_or(0) {
            out.push(Cause::invalid(
                "spec.progressDeadlineSeconds",
                &Value::from(p),
                "must be greater than minReadySeconds",
            ));
        }
    }
    immutable_selector(out, spec, old_spec);
}

fn int_or_percent(out: &mut Vec<Cause>, v: &Value, path: &str) {
    match v {
        Value::String(s) => {
            for m in is_valid_percent(s) {
                out.push(invalid_raw(path, &go_int_or_string(v), &m));
            }
            let pct = s.strip_suffix('%').and_then(|n| n.parse::<i64>().ok());
            if pct.is_some_and(|n| n > 100) {
                out.push(invalid_raw(
                    path,
                    &go_int_or_string(v),
                    "must not be greater than 100%",
                ));
            }
        }
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or(0);
            if n < 0 {
                out.push(Cause::invalid(path, &Value::from(n), NEGATIVE));
            }
        }
        _ => {}
    }
}

fn int_or_percent_value(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.trim_end_matches('%').parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn rolling_update(out: &mut Vec<Cause>, ru: &Value, path: &str, check_zero: bool) {
    let mu = ru.get("maxUnavailable");
    let ms = ru.get("maxSurge");
    if let Some(v) = mu {
        int_or_percent(out, v, &format!("{path}.maxUnavailable"));
    }
    if let Some(v) = ms {
        int_or_percent(out, v, &format!("{path}.maxSurge"));
    }
    if check_zero && int_or_percent_value(mu) == 0 && int_or_percent_value(ms) == 0 {
        out.push(invalid_raw(
            format!("{path}.maxUnavailable"),
            &go_int_or_string(mu.unwrap_or(&Value::from(0))),
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

fn replica_set(out: &mut Vec<Cause>, spec: &Value, old_spec: Option<&Value>) {
    nonnegative(out, spec, "replicas", "spec");
    nonnegative(out, spec, "minReadySeconds", "spec");
    let sel = spec.get("selector").unwrap_or(&Value::Null);
    // upstream says "deployment" here too.
    required_selector(out, sel, "deployment");
    if selector_convertible(out, sel) {
        template_for_replica_set(out, spec, sel, "ReplicaSet");
    }
    immutable_selector(out, spec, old_spec);
}

fn replication_controller(out: &mut Vec<Cause>, spec: &Value) {
    nonnegative(out, spec, "minReadySeconds", "spec");
    let sel = map_of(spec, "selector");
    if sel.is_none_or(Map::is_empty) {
        out.push(Cause::required("spec.selector"));
    } else {
        validate_labels(out, sel, "spec.selector");
    }
    nonnegative(out, spec, "replicas", "spec");
    let tmpl = template_of(spec);
    if tmpl.is_null() {
        out.push(Cause::required("spec.template"));
        return;
    }
    if let Some(sel) = sel.filter(|m| !m.is_empty()) {
        let labels = template_labels(tmpl);
        if !sel
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            mismatch(out, tmpl, "spec.template");
        }
    }
    template_spec(out, tmpl, "spec.template");
    restart_always(out, tmpl, "spec.template");
}

const STS_FORBIDDEN: &str = "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden";

fn stateful_set(out: &mut Vec<Cause>, spec: &Value, old_spec: Option<&Value>) {
    match spec.get("podManagementPolicy").and_then(Value::as_str) {
        None | Some("OrderedReady" | "Parallel") => {}
        Some("") => out.push(Cause::required("spec.podManagementPolicy")),
        Some(p) => out.push(Cause::invalid(
            "spec.podManagementPolicy",
            &js(p),
            "must be 'OrderedReady' or 'Parallel'",
        )),
    }
    let us = spec.get("updateStrategy").unwrap_or(&Value::Null);
    match s(us, "type") {
        "" => out.push(Cause::required("spec.updateStrategy")),
        "RollingUpdate" => {
            if let Some(ru) = us.get("rollingUpdate") {
                nonnegative(out, ru, "partition", "spec.updateStrategy.rollingUpdate");
            }
        }
        "OnDelete" => {
            if present(us, "rollingUpdate") {
                out.push(invalid_raw(
                    "spec.updateStrategy.rollingUpdate",
                    "apps.RollingUpdateStatefulSetStrategy{Partition:0, MaxUnavailable:(*intstr.IntOrString)(nil)}",
                    "only allowed for updateStrategy 'RollingUpdate'",
                ));
            }
        }
        t => out.push(invalid_raw(
            "spec.updateStrategy",
            &format!("apps.StatefulSetUpdateStrategy{{Type:{t:?}, RollingUpdate:(*apps.RollingUpdateStatefulSetStrategy)(nil)}}"),
            "must be 'RollingUpdate' or 'OnDelete'",
        )),
    }
    nonnegative(out, spec, "replicas", "spec");
    nonnegative(out, spec, "minReadySeconds", "spec");
    let sel = spec.get("selector").unwrap_or(&Value::Null);
    required_selector(out, sel, "statefulset");
    if selector_convertible(out, sel) {
        let tmpl = template_of(spec);
        let everything = !sel.is_null() && selector_is_empty(sel);
        if !everything && selector_matches(sel, template_labels(tmpl)) == Ok(false) {
            mismatch(out, tmpl, "spec.template");
        }
        // The pods get a volume per volumeClaimTemplate: mounts may name them.
        let mut with_claims = tmpl.clone();
        if let Some(pod) = with_claims.get_mut("spec").filter(|p| p.is_object()) {
            let mut vols = arr(pod, "volumes").to_vec();
            for t in arr(spec, "volumeClaimTemplates") {
                let n = t.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
                vols.retain(|v| v.get("name") != Some(&n));
                vols.push(
                    serde_json::json!({"name": n, "persistentVolumeClaim": {"claimName": n}}),
                );
            }
            pod["volumes"] = Value::Array(vols);
        }
        template_spec(out, &with_claims, "spec.template");
    }
    restart_always(out, template_of(spec), "spec.template");
    if let Some(old) = old_spec {
        let strip = |v: &Value| {
            let mut m = v.as_object().cloned().unwrap_or_default();
            for k in [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ] {
                m.remove(k);
            }
            if let Some(sel) = m.get_mut("selector") {
                *sel = normalized_selector(sel);
            }
            m
        };
        if strip(spec) != strip(old) {
            out.push(Cause::forbidden("spec", STS_FORBIDDEN));
        }
    }
}

fn daemon_set(out: &mut Vec<Cause>, spec: &Value, old_spec: Option<&Value>) {
    let sel = spec.get("selector").unwrap_or(&Value::Null);
    let tmpl = template_of(spec);
    validate_label_selector(out, sel, "spec.selector");
    if selector_matches(sel, template_labels(tmpl)) == Ok(false) {
        mismatch(out, tmpl, "spec.template");
    }
    if !sel.is_null() && selector_is_empty(sel) {
        out.push(invalid_raw(
            "spec.selector",
            &go_label_selector(sel),
            "empty selector is invalid for daemonset",
        ));
    }
    template_spec(out, tmpl, "spec.template");
    restart_always(out, tmpl, "spec.template");
    if tmpl
        .get("spec")
        .and_then(|s| s.get("activeDeadlineSeconds"))
        .is_some_and(|v| !v.is_null())
    {
        out.push(Cause::forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in DaemonSet is not Supported",
        ));
    }
    nonnegative(out, spec, "minReadySeconds", "spec");
    let us = spec.get("updateStrategy").unwrap_or(&Value::Null);
    match s(us, "type") {
        "OnDelete" => {}
        "RollingUpdate" => match us.get("rollingUpdate").filter(|v| !v.is_null()) {
            None => out.push(Cause::required("spec.updateStrategy.rollingUpdate")),
            Some(ru) => rolling_update(out, ru, "spec.updateStrategy.rollingUpdate", true),
        },
        t => out.push(Cause::new(
            "FieldValueNotSupported",
            "spec.updateStrategy",
            format!(
                "Unsupported value: apps.DaemonSetUpdateStrategy{{Type:{t:?}, RollingUpdate:(*apps.RollingUpdateDaemonSet)(nil)}}: supported values: \"RollingUpdate\", \"OnDelete\""
            ),
        )),
    }
    nonnegative(out, spec, "revisionHistoryLimit", "spec");
    immutable_selector(out, spec, old_spec);
}

/// `validateJobSpec` (shared by Jobs and CronJob job templates).
fn job_spec_common(out: &mut Vec<Cause>, spec: &Value, path: &str) {
    for f in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        nonnegative(out, spec, f, path);
    }
}

fn job_template(out: &mut Vec<Cause>, spec: &Value, path: &str) {
    let tmpl = spec.get("template").unwrap_or(&Value::Null);
    let tpath = format!("{path}.template");
    template_spec(out, tmpl, &tpath);
    let rp = tmpl
        .get("spec")
        .map(|sp| s(sp, "restartPolicy"))
        .unwrap_or_default();
    if rp != "OnFailure" && rp != "Never" {
        out.push(Cause::not_supported(
            format!("{tpath}.spec.restartPolicy"),
            &js(rp),
            &["OnFailure", "Never"],
        ));
    }
}

fn job(out: &mut Vec<Cause>, spec: &Value, old_spec: Option<&Value>) {
    job_spec_common(out, spec, "spec");
    let sel = spec.get("selector").unwrap_or(&Value::Null);
    if sel.is_null() {
        out.push(Cause::required("spec.selector"));
    } else {
        validate_label_selector(out, sel, "spec.selector");
    }
    let tmpl = template_of(spec);
    if selector_matches(sel, template_labels(tmpl)) == Ok(false) {
        mismatch(out, tmpl, "spec.template");
    }
    job_template(out, spec, "spec");
    if let Some(old) = old_spec {
        let old_sel = old.get("selector").unwrap_or(&Value::Null);
        if normalized_selector(sel) != normalized_selector(old_sel) {
            let shown = if sel.is_null() {
                "null".to_string()
            } else {
                go_label_selector(sel)
            };
            out.push(invalid_raw("spec.selector", &shown, IMMUTABLE));
        }
    }
}

fn cron_job(out: &mut Vec<Cause>, spec: &Value) {
    let schedule = s(spec, "schedule");
    if schedule.is_empty() {
        out.push(Cause::required("spec.schedule"));
    } else if let Err(e) = parse_cron(schedule) {
        out.push(Cause::invalid("spec.schedule", &js(schedule), &e));
    }
    nonnegative(out, spec, "startingDeadlineSeconds", "spec");
    match spec.get("concurrencyPolicy").and_then(Value::as_str) {
        None | Some("Allow" | "Forbid" | "Replace") => {}
        Some("") => out.push(Cause::required("spec.concurrencyPolicy")),
        Some(p) => out.push(Cause::not_supported(
            "spec.concurrencyPolicy",
            &js(p),
            &["Allow", "Forbid", "Replace"],
        )),
    }
    let jt = spec.get("jobTemplate").unwrap_or(&Value::Null);
    let jspec = jt.get("spec").unwrap_or(&Value::Null);
    job_spec_common(out, jspec, "spec.jobTemplate.spec");
    job_template(out, jspec, "spec.jobTemplate.spec");
    if let Some(sel) = jspec.get("selector").filter(|v| !v.is_null()) {
        out.push(invalid_raw(
            "spec.jobTemplate.spec.selector",
            &go_label_selector(sel),
            "`selector` will be auto-generated",
        ));
    }
    if jspec.get("manualSelector").and_then(Value::as_bool) == Some(true) {
        out.push(Cause::new(
            "FieldValueNotSupported",
            "spec.jobTemplate.spec.manualSelector",
            "Unsupported value: true: supported values: \"nil\", \"false\"",
        ));
    }
    nonnegative(out, spec, "successfulJobsHistoryLimit", "spec");
    nonnegative(out, spec, "failedJobsHistoryLimit", "spec");
}

// ---------- services ----------

fn go_service_port(p: &Value) -> String {
    format!(
        "core.ServicePort{{Name:\"\", Protocol:{:?}, AppProtocol:(*string)(nil), Port:{}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
        s(p, "protocol"),
        int(p, "port").unwrap_or(0)
    )
}

fn service(out: &mut Vec<Cause>, spec: &Value) {
    let ty = s(spec, "type");
    let headless = s(spec, "clusterIP") == "None";
    let ports = arr(spec, "ports");
    if ports.is_empty() && !headless && ty != "ExternalName" {
        out.push(Cause::required("spec.ports"));
    }
    if ty == "ExternalName" {
        let cname = s(spec, "externalName").trim_end_matches('.');
        if cname.is_empty() {
            out.push(Cause::required("spec.externalName"));
        } else {
            for m in is_dns1123_subdomain(cname) {
                out.push(Cause::invalid("spec.externalName", &js(cname), &m));
            }
        }
    }
    let mut names: Vec<&str> = vec![];
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let name = s(p, "name");
        if ports.len() > 1 && name.is_empty() {
            out.push(Cause::required(format!("{path}.name")));
        } else if !name.is_empty() {
            for m in is_dns1123_label(name) {
                out.push(Cause::invalid(format!("{path}.name"), &js(name), &m));
            }
            if names.contains(&name) {
                out.push(Cause::duplicate(format!("{path}.name"), &js(name)));
            } else {
                names.push(name);
            }
        }
        let port = int(p, "port").unwrap_or(0);
        for m in is_valid_port_num(port) {
            out.push(Cause::invalid(
                format!("{path}.port"),
                &Value::from(port),
                &m,
            ));
        }
        validate_protocol(out, p, &path);
        validate_port_num_or_name(out, p.get("targetPort"), &format!("{path}.targetPort"));
    }
    if let Some(sel) = map_of(spec, "selector") {
        validate_labels(out, Some(sel), "spec.selector");
    }
    if let Some(a) = spec.get("sessionAffinity").and_then(Value::as_str) {
        if !matches!(a, "ClientIP" | "None") {
            out.push(Cause::not_supported(
                "spec.sessionAffinity",
                &js(a),
                &["ClientIP", "None"],
            ));
        }
    }
    match spec.get("type").and_then(Value::as_str) {
        None | Some("ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") => {}
        Some("") => out.push(Cause::required("spec.type")),
        Some(t) => out.push(Cause::not_supported(
            "spec.type",
            &js(t),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        )),
    }
    for (i, p) in ports.iter().enumerate() {
        if let Some(n) = int(p, "nodePort").filter(|n| *n != 0) {
            let path = format!("spec.ports[{i}].nodePort");
            if ty == "ClusterIP" {
                out.push(Cause::forbidden(
                    &path,
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if !(30000..=32767).contains(&n) {
                out.push(Cause::invalid(
                    &path,
                    &Value::from(n),
                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                ));
            }
        }
    }
    let mut node_ports: Vec<(&str, i64)> = vec![];
    for (i, p) in ports.iter().enumerate() {
        let Some(n) = int(p, "nodePort").filter(|n| *n != 0) else {
            continue;
        };
        let key = (s(p, "protocol"), n);
        if node_ports.contains(&key) {
            out.push(Cause::duplicate(
                format!("spec.ports[{i}].nodePort"),
                &Value::from(n),
            ));
        }
        node_ports.push(key);
    }
    let mut seen: Vec<(&str, i64)> = vec![];
    for (i, p) in ports.iter().enumerate() {
        let key = (s(p, "protocol"), int(p, "port").unwrap_or(0));
        if seen.contains(&key) {
            out.push(Cause::new(
                "FieldValueDuplicate",
                format!("spec.ports[{i}]"),
                format!("Duplicate value: {}", go_service_port(p)),
            ));
        }
        seen.push(key);
    }
}

// ---------- config maps and secrets ----------

/// Decoded length of a base64 string.
fn base64_len(v: &Value) -> usize {
    let s = v.as_str().unwrap_or_default().trim_end_matches('=');
    s.len() * 3 / 4
}

fn config_map(out: &mut Vec<Cause>, o: &Value) {
    let data = map_of(o, "data");
    let binary = map_of(o, "binaryData");
    let mut total = 0;
    for (k, v) in data.into_iter().flatten() {
        for m in is_config_map_key(k) {
            out.push(Cause::invalid(format!("data[{k}]"), &js(k), &m));
        }
        if binary.is_some_and(|b| b.contains_key(k)) {
            out.push(Cause::invalid(
                format!("data[{k}]"),
                &js(k),
                "duplicate of key present in binaryData",
            ));
        }
        total += v.as_str().map_or(0, str::len);
    }
    for (k, v) in binary.into_iter().flatten() {
        for m in is_config_map_key(k) {
            out.push(Cause::invalid(format!("binaryData[{k}]"), &js(k), &m));
        }
        if data.is_some_and(|d| d.contains_key(k)) {
            out.push(Cause::invalid(
                format!("binaryData[{k}]"),
                &js(k),
                "duplicate of key present in data",
            ));
        }
        total += base64_len(v);
    }
    if total > MAX_SECRET_SIZE {
        out.push(Cause::too_long("", MAX_SECRET_SIZE));
    }
}

fn secret(out: &mut Vec<Cause>, o: &Value, old: Option<&Value>) {
    let data = map_of(o, "data");
    for k in data.into_iter().flatten().map(|(k, _)| k) {
        for m in is_config_map_key(k) {
            out.push(Cause::invalid(format!("data[{k}]"), &js(k), &m));
        }
    }
    let total: usize = data.into_iter().flatten().map(|(_, v)| base64_len(v)).sum();
    if total > MAX_SECRET_SIZE {
        out.push(Cause::too_long("data", MAX_SECRET_SIZE));
    }
    let has = |k: &str| data.is_some_and(|d| d.contains_key(k));
    match s(o, "type") {
        "kubernetes.io/service-account-token" => {
            let ann = o.get("metadata").and_then(|m| map_of(m, "annotations"));
            let sa = ann
                .and_then(|a| a.get("kubernetes.io/service-account.name"))
                .and_then(Value::as_str);
            if sa.is_none_or(str::is_empty) {
                out.push(Cause::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                ));
            }
        }
        "kubernetes.io/dockercfg" if !has(".dockercfg") => {
            out.push(Cause::required("data[.dockercfg]"))
        }
        "kubernetes.io/dockerconfigjson" if !has(".dockerconfigjson") => {
            out.push(Cause::required("data[.dockerconfigjson]"))
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            out.push(Cause::required("data[username]"));
            out.push(Cause::required("data[password]"));
        }
        "kubernetes.io/ssh-auth"
            if data
                .and_then(|d| d.get("ssh-privatekey"))
                .is_none_or(|v| base64_len(v) == 0) =>
        {
            out.push(Cause::required("data[ssh-privatekey]"))
        }
        "kubernetes.io/tls" => {
            if !has("tls.crt") {
                out.push(Cause::required("data[tls.crt]"));
            }
            if !has("tls.key") {
                out.push(Cause::required("data[tls.key]"));
            }
        }
        _ => {}
    }
    if let Some(old) = old {
        if s(old, "type") != s(o, "type") {
            out.push(Cause::invalid("type", &js(s(o, "type")), IMMUTABLE));
        }
    }
}

// ---------- networking, autoscaling, policy ----------

fn ingress_backend(out: &mut Vec<Cause>, b: &Value, path: &str) {
    let svc = b.get("service").filter(|v| !v.is_null());
    let res = b.get("resource").filter(|v| !v.is_null());
    match (svc, res) {
        (Some(_), Some(_)) => out.push(Cause::invalid(
            path,
            &js(""),
            "cannot set both resource and service backends",
        )),
        (None, Some(r)) => {
            if s(r, "kind").is_empty() {
                out.push(Cause::required(format!("{path}.resource.kind")));
            }
            if s(r, "name").is_empty() {
                out.push(Cause::required(format!("{path}.resource.name")));
            }
        }
        (Some(svc), None) => {
            let name = s(svc, "name");
            if name.is_empty() {
                out.push(Cause::required(format!("{path}.service.name")));
            } else {
                for m in is_dns1035_label(name) {
                    out.push(Cause::invalid(
                        format!("{path}.service.name"),
                        &js(name),
                        &m,
                    ));
                }
            }
            let port = svc.get("port").unwrap_or(&Value::Null);
            let pname = s(port, "name");
            let pnum = int(port, "number").unwrap_or(0);
            if !pname.is_empty() && pnum != 0 {
                out.push(Cause::invalid(
                    path,
                    &js(""),
                    "cannot set both port name & port number",
                ));
            } else if !pname.is_empty() {
                for m in is_valid_port_name(pname) {
                    out.push(Cause::invalid(
                        format!("{path}.service.port.name"),
                        &js(pname),
                        &m,
                    ));
                }
            } else if pnum != 0 {
                for m in is_valid_port_num(pnum) {
                    out.push(Cause::invalid(
                        format!("{path}.service.port.number"),
                        &Value::from(pnum),
                        &m,
                    ));
                }
            } else {
                out.push(Cause::new(
                    "FieldValueRequired",
                    path,
                    "Required value: port name or number is required",
                ));
            }
        }
        (None, None) => out.push(Cause::invalid(
            path,
            &js(""),
            "resource or service backend is required",
        )),
    }
}

fn ingress_path(out: &mut Vec<Cause>, p: &Value, ppath: &str) {
    let path = s(p, "path");
    let bad = |out: &mut Vec<Cause>, detail: &str| {
        out.push(Cause::invalid(format!("{ppath}.path"), &js(path), detail))
    };
    match p.get("pathType").and_then(Value::as_str) {
        None => {
            out.push(Cause::new(
                "FieldValueRequired",
                format!("{ppath}.pathType"),
                "Required value: pathType must be specified",
            ));
            return;
        }
        Some("Exact" | "Prefix") => {
            if !path.starts_with('/') {
                bad(out, "must be an absolute path");
            }
            if !path.is_empty() {
                for seq in ["//", "/./", "/../", "%2f", "%2F"] {
                    if path.contains(seq) {
                        bad(out, &format!("must not contain '{seq}'"));
                    }
                }
                for suf in ["/..", "/."] {
                    if path.ends_with(suf) {
                        bad(out, &format!("cannot end with '{suf}'"));
                    }
                }
            }
        }
        Some("ImplementationSpecific") => {
            if !path.is_empty() && !path.starts_with('/') {
                bad(out, "must be an absolute path");
            }
        }
        Some(t) => out.push(Cause::not_supported(
            format!("{ppath}.pathType"),
            &js(t),
            &["Exact", "ImplementationSpecific", "Prefix"],
        )),
    }
    ingress_backend(
        out,
        p.get("backend").unwrap_or(&Value::Null),
        &format!("{ppath}.backend"),
    );
}

fn ingress(out: &mut Vec<Cause>, spec: &Value) {
    let rules = arr(spec, "rules");
    let default = spec.get("defaultBackend").filter(|v| !v.is_null());
    if rules.is_empty() && default.is_none() {
        let shown = if spec.get("rules").is_some() {
            "[]networking.IngressRule{}"
        } else {
            "[]networking.IngressRule(nil)"
        };
        out.push(invalid_raw(
            "spec",
            shown,
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    if let Some(b) = default {
        ingress_backend(out, b, "spec.defaultBackend");
    }
    for (i, rule) in rules.iter().enumerate() {
        let rpath = format!("spec.rules[{i}]");
        let host = s(rule, "host");
        if !host.is_empty() {
            if host.parse::<std::net::IpAddr>().is_ok() {
                out.push(Cause::invalid(
                    format!("{rpath}.host"),
                    &js(host),
                    "must be a DNS name, not an IP address",
                ));
            } else {
                let checked = host.strip_prefix("*.").unwrap_or(host);
                for m in is_dns1123_subdomain(checked) {
                    out.push(Cause::invalid(format!("{rpath}.host"), &js(host), &m));
                }
            }
        }
        let Some(http) = rule.get("http").filter(|v| !v.is_null()) else {
            continue;
        };
        for (j, p) in arr(http, "paths").iter().enumerate() {
            ingress_path(out, p, &format!("{rpath}.http.paths[{j}]"));
        }
    }
}

fn hpa(out: &mut Vec<Cause>, spec: &Value) {
    let min = int(spec, "minReplicas");
    let max = int(spec, "maxReplicas").unwrap_or(0);
    if let Some(m) = min.filter(|m| *m < 1) {
        out.push(Cause::invalid(
            "spec.minReplicas",
            &Value::from(m),
            "must be greater than or equal to 1",
        ));
    }
    if max < 1 {
        out.push(Cause::invalid(
            "spec.maxReplicas",
            &Value::from(max),
            "must be greater than 0",
        ));
    }
    if min.is_some_and(|m| max < m) {
        out.push(Cause::invalid(
            "spec.maxReplicas",
            &Value::from(max),
            "must be greater than or equal to `minReplicas`",
        ));
    }
    let r = spec.get("scaleTargetRef").unwrap_or(&Value::Null);
    for f in ["kind", "name"] {
        let v = s(r, f);
        let path = format!("spec.scaleTargetRef.{f}");
        if v.is_empty() {
            out.push(Cause::required(path));
        } else {
            for m in is_valid_path_segment_name(v) {
                out.push(Cause::invalid(&path, &js(v), &m));
            }
        }
    }
}

fn go_pdb_spec(spec: &Value) -> String {
    let ptr = |k: &str, ty: &str| {
        if present(spec, k) {
            format!("(*{ty})(0xc000010000)")
        } else {
            format!("(*{ty})(nil)")
        }
    };
    format!(
        "policy.PodDisruptionBudgetSpec{{MinAvailable:{}, Selector:{}, MaxUnavailable:{}, UnhealthyPodEvictionPolicy:{}}}",
        ptr("minAvailable", "intstr.IntOrString"),
        ptr("selector", "v1.LabelSelector"),
        ptr("maxUnavailable", "intstr.IntOrString"),
        ptr("unhealthyPodEvictionPolicy", "policy.UnhealthyPodEvictionPolicyType"),
    )
}

fn pdb(out: &mut Vec<Cause>, spec: &Value) {
    if present(spec, "minAvailable") && present(spec, "maxUnavailable") {
        out.push(invalid_raw(
            "spec",
            &go_pdb_spec(spec),
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for f in ["minAvailable", "maxUnavailable"] {
        if let Some(v) = spec.get(f).filter(|v| !v.is_null()) {
            int_or_percent(out, v, &format!("spec.{f}"));
        }
    }
    validate_label_selector(
        out,
        spec.get("selector").unwrap_or(&Value::Null),
        "spec.selector",
    );
    if let Some(p) = spec
        .get("unhealthyPodEvictionPolicy")
        .and_then(Value::as_str)
    {
        if !matches!(p, "AlwaysAllow" | "IfHealthyBudget") {
            out.push(Cause::not_supported(
                "spec.unhealthyPodEvictionPolicy",
                &js(p),
                &["AlwaysAllow", "IfHealthyBudget"],
            ));
        }
    }
}

// ---------- custom resource definitions ----------

fn go_crd_versions(versions: &[Value]) -> String {
    if versions.is_empty() {
        return "[]apiextensions.CustomResourceDefinitionVersion(nil)".into();
    }
    let parts: Vec<String> = versions
        .iter()
        .map(|v| {
            format!(
                "apiextensions.CustomResourceDefinitionVersion{{Name:{:?}, Served:{}, Storage:{}}}",
                s(v, "name"),
                v.get("served").and_then(Value::as_bool).unwrap_or(false),
                v.get("storage").and_then(Value::as_bool).unwrap_or(false)
            )
        })
        .collect();
    format!(
        "[]apiextensions.CustomResourceDefinitionVersion{{{}}}",
        parts.join(", ")
    )
}

fn dns1035_joined(out: &mut Vec<Cause>, path: String, v: &str, checked: &str, prefix: &str) {
    let errs = is_dns1035_label(checked);
    if !errs.is_empty() {
        out.push(Cause::invalid(
            path,
            &js(v),
            &format!("{prefix}{}", errs.join(",")),
        ));
    }
}

fn crd(out: &mut Vec<Cause>, spec: &Value) {
    let group = s(spec, "group");
    if group.is_empty() {
        out.push(Cause::required("spec.group"));
    } else {
        let errs = is_dns1123_subdomain(group);
        if !errs.is_empty() {
            out.push(Cause::invalid("spec.group", &js(group), &errs.join(",")));
        } else if !group.contains('.') {
            out.push(Cause::invalid(
                "spec.group",
                &js(group),
                "should be a domain with at least one dot",
            ));
        }
    }
    match spec.get("scope").and_then(Value::as_str) {
        None | Some("") => out.push(Cause::required("spec.scope")),
        Some("Cluster" | "Namespaced") => {}
        Some(sc) => out.push(Cause::not_supported(
            "spec.scope",
            &js(sc),
            &["Cluster", "Namespaced"],
        )),
    }
    let versions = arr(spec, "versions");
    let mut names: Vec<&str> = vec![];
    let mut unique = true;
    for (i, v) in versions.iter().enumerate() {
        let n = s(v, "name");
        if names.contains(&n) {
            unique = false;
        }
        names.push(n);
        dns1035_joined(out, format!("spec.versions[{i}].name"), n, n, "");
    }
    if !unique {
        out.push(invalid_raw(
            "spec.versions",
            &go_crd_versions(versions),
            "must contain unique version names",
        ));
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if storage != 1 {
        out.push(invalid_raw(
            "spec.versions",
            &go_crd_versions(versions),
            "must have exactly one version marked as storage version",
        ));
    }
    let n = spec.get("names").unwrap_or(&Value::Null);
    for f in ["plural", "singular"] {
        let v = s(n, f);
        if !v.is_empty() {
            dns1035_joined(out, format!("spec.names.{f}"), v, v, "");
        }
    }
    for f in ["kind", "listKind"] {
        let v = s(n, f);
        if !v.is_empty() {
            let prefix = "may have mixed case, but should otherwise match: ";
            dns1035_joined(out, format!("spec.names.{f}"), v, &v.to_lowercase(), prefix);
        }
    }
    for (i, sn) in arr(n, "shortNames").iter().enumerate() {
        let v = sn.as_str().unwrap_or_default();
        dns1035_joined(out, format!("spec.names.shortNames[{i}]"), v, v, "");
    }
    if !s(n, "kind").is_empty() && s(n, "kind") == s(n, "listKind") {
        out.push(Cause::invalid(
            "spec.names.listKind",
            &js(s(n, "listKind")),
            "kind and listKind may not be the same",
        ));
    }
    for f in ["plural", "singular", "kind", "listKind"] {
        if s(n, f).is_empty() {
            out.push(Cause::required(format!("spec.names.{f}")));
        }
    }
}

// ---------- cron schedules (robfig/cron v3 standard parser) ----------

struct Bounds {
    min: u64,
    max: u64,
    names: &'static [&'static str],
}

const MONTH_NAMES: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DOW_NAMES: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn go_atoi(expr: &str) -> Result<u64, String> {
    let err = |why: &str| {
        format!("failed to parse int from {expr}: strconv.Atoi: parsing {expr:?}: {why}")
    };
    let digits = expr.strip_prefix(['+', '-']).unwrap_or(expr);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(err("invalid syntax"));
    }
    let n: i64 = expr.parse().map_err(|_| err("value out of range"))?;
    if n < 0 {
        return Err(format!("negative number ({n}) not allowed: {expr}"));
    }
    Ok(n as u64)
}

fn parse_int_or_name(expr: &str, b: &Bounds) -> Result<u64, String> {
    let lower = expr.to_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        // month names start at 1, weekday names at 0
        return Ok(i as u64 + b.min);
    }
    go_atoi(expr)
}

fn parse_range(expr: &str, b: &Bounds) -> Result<(), String> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_high: Vec<&str> = range_and_step[0].split('-').collect();
    let (start, mut end);
    if low_high[0] == "*" || low_high[0] == "?" {
        start = b.min;
        end = b.max;
    } else {
        start = parse_int_or_name(low_high[0], b)?;
        end = match low_high.len() {
            1 => start,
            2 => parse_int_or_name(low_high[1], b)?,
            _ => return Err(format!("too many hyphens: {expr}")),
        };
    }
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = go_atoi(range_and_step[1])?;
            if low_high.len() == 1 {
                end = b.max;
            }
            step
        }
        _ => return Err(format!("too many slashes: {expr}")),
    };
    if start < b.min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        ));
    }
    if end > b.max {
        return Err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    Ok(())
}

fn go_duration_ok(d: &str) -> bool {
    // Go's time.ParseDuration: [-+]?([0-9]*(\.[0-9]*)?[a-z]+)+ or "0".
    let d = d.strip_prefix(['+', '-']).unwrap_or(d);
    if d == "0" {
        return true;
    }
    if d.is_empty() {
        return false;
    }
    let mut rest = d;
    while !rest.is_empty() {
        let num_len = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .count();
        if num_len == 0 || rest[..num_len].chars().all(|c| c == '.') {
            return false;
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .chars()
            .take_while(|c| !c.is_ascii_digit() && *c != '.')
            .count();
        if !matches!(
            &rest[..unit_len],
            "ns" | "us" | "µs" | "μs" | "ms" | "s" | "m" | "h"
        ) {
            return false;
        }
        rest = &rest[unit_len..];
    }
    true
}

/// Parses a cron schedule as the CronJob validation does; the error text is robfig/cron's.
pub fn parse_cron(spec: &str) -> Result<(), String> {
    let mut spec = spec;
    if spec.is_empty() {
        return Err("empty spec string".into());
    }
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        let i = spec.find(' ').unwrap_or(spec.len());
        spec = spec[i..].trim_start();
    }
    if spec.starts_with('@') {
        return match spec {
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight"
            | "@hourly" => Ok(()),
            _ => match spec.strip_prefix("@every ") {
                Some(d) if go_duration_ok(d) => Ok(()),
                Some(d) => Err(format!(
                    "failed to parse duration {spec}: time: invalid duration {:?}",
                    d
                )),
                None => Err(format!("unrecognized descriptor: {spec}")),
            },
        };
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    let bounds = [
        Bounds {
            min: 0,
            max: 59,
            names: &[],
        },
        Bounds {
            min: 0,
            max: 23,
            names: &[],
        },
        Bounds {
            min: 1,
            max: 31,
            names: &[],
        },
        Bounds {
            min: 1,
            max: 12,
            names: MONTH_NAMES,
        },
        Bounds {
            min: 0,
            max: 6,
            names: DOW_NAMES,
        },
    ];
    for (f, b) in fields.iter().zip(bounds.iter()) {
        for expr in f.split(',').filter(|e| !e.is_empty()) {
            parse_range(expr, b)?;
        }
    }
    Ok(())
}

enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    PathSegment,
}

fn name_rule(info: &ResourceInfo) -> NameRule {
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Namespace") => NameRule::Label,
        ("", "Service") => NameRule::Dns1035,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

fn name_messages(info: &ResourceInfo, name: &str, prefix: bool) -> Vec<String> {
    let masked;
    let checked = if prefix && name.len() > 1 && name.ends_with('-') {
        masked = format!("{}a", &name[..name.len() - 1]);
        masked.as_str()
    } else {
        name
    };
    match name_rule(info) {
        NameRule::Subdomain => is_dns1123_subdomain(checked),
        NameRule::Label => is_dns1123_label(checked),
        NameRule::Dns1035 => is_dns1035_label(checked),
        NameRule::PathSegment if prefix => is_valid_path_segment_prefix(name),
        NameRule::PathSegment => is_valid_path_segment_name(name),
    }
}

/// Name rules for metadata.name per resource.
pub fn validate_name(info: &ResourceInfo, name: &str) -> Vec<Cause> {
    let mut msgs = name_messages(info, name, false);
    if info.group.is_empty() && info.kind == "Service" {
        // no extra rule
    } else if info.group == "batch" && info.kind == "CronJob" && name.len() > 52 && msgs.is_empty()
    {
        msgs.push("must be no more than 52 characters".into());
    }
    msgs.into_iter()
        .map(|m| Cause::invalid("metadata.name", &js(name), &m))
        .collect()
}

fn validate_labels(out: &mut Vec<Cause>, labels: Option<&Map<String, Value>>, path: &str) {
    for (k, v) in labels.into_iter().flatten() {
        for m in is_qualified_name(k) {
            out.push(Cause::invalid(path, &js(k), &m));
        }
        let v = v.as_str().unwrap_or_default();
        for m in is_valid_label_value(v) {
            out.push(Cause::invalid(path, &js(v), &m));
        }
    }
}

fn validate_annotations(
    out: &mut Vec<Cause>,
    annotations: Option<&Map<String, Value>>,
    path: &str,
) {
    let Some(a) = annotations else { return };
    let mut total = 0;
    for (k, v) in a {
        for m in is_qualified_name(&k.to_lowercase()) {
            out.push(Cause::invalid(path, &js(k), &m));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        out.push(Cause::too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
}

fn validate_meta(info: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    let mut out = vec![];
    let meta = obj.get("metadata").unwrap_or(&Value::Null);
    let generate = s(meta, "generateName");
    if !generate.is_empty() {
        for m in name_messages(info, generate, true) {
            out.push(Cause::invalid("metadata.generateName", &js(generate), &m));
        }
    }
    let name = s(meta, "name");
    if info.kind == "CustomResourceDefinition" && info.group == "apiextensions.k8s.io" {
        let mut msgs = name_messages(info, name, false);
        let spec = obj.get("spec").unwrap_or(&Value::Null);
        let plural = spec
            .get("names")
            .map(|n| s(n, "plural"))
            .unwrap_or_default();
        if name != format!("{plural}.{}", s(spec, "group")) {
            msgs.push("must be spec.names.plural+\".\"+spec.group".into());
        }
        out.extend(
            msgs.into_iter()
                .map(|m| Cause::invalid("metadata.name", &js(name), &m)),
        );
    } else if !name.is_empty() {
        out.extend(validate_name(info, name));
    }
    validate_labels(&mut out, map_of(meta, "labels"), "metadata.labels");
    validate_annotations(
        &mut out,
        map_of(meta, "annotations"),
        "metadata.annotations",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(super) fn info(group: &str, kind: &str) -> ResourceInfo {
        crate::resource::builtins()
            .into_iter()
            .find(|r| r.group == group && r.kind == kind)
            .unwrap_or_else(|| panic!("no builtin {group}/{kind}"))
    }

    fn msgs(c: &[Cause]) -> Vec<String> {
        c.iter().map(Cause::display).collect()
    }

    #[test]
    fn subdomain_name_message_matches_upstream() {
        let c = validate(
            &info("", "ConfigMap"),
            &json!({"metadata": {"name": "Web_1"}}),
            None,
        );
        assert_eq!(
            msgs(&c),
            vec!["metadata.name: Invalid value: \"Web_1\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"]
        );
        assert_eq!(c[0].reason, "FieldValueInvalid");
    }

    #[test]
    fn label_and_1035_names() {
        assert_eq!(is_dns1123_label("a.b"), vec!["must not contain dots"]);
        assert_eq!(
            is_dns1123_label("A"),
            vec!["a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"]
        );
        let c = validate_name(&info("", "Service"), "1web");
        assert_eq!(c[0].message, "Invalid value: \"1web\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')");
        assert_eq!(
            validate_name(&info("", "Namespace"), "a.b")[0].message,
            "Invalid value: \"a.b\": must not contain dots"
        );
        let c = validate_name(
            &info("rbac.authorization.k8s.io", "ClusterRole"),
            "system:a/b%",
        );
        assert_eq!(
            msgs(&c),
            vec![
                "metadata.name: Invalid value: \"system:a/b%\": may not contain '/'",
                "metadata.name: Invalid value: \"system:a/b%\": may not contain '%'",
            ]
        );
        assert!(validate_name(&info("rbac.authorization.k8s.io", "Role"), "system:Foo").is_empty());
        assert_eq!(
            validate_name(&info("rbac.authorization.k8s.io", "Role"), "..")[0].message,
            "Invalid value: \"..\": may not be '..'"
        );
        assert_eq!(
            is_dns1123_subdomain(&"a".repeat(254))[0],
            "must be no more than 253 characters"
        );
    }

    #[test]
    fn generate_name_masks_trailing_dash() {
        let i = info("", "ConfigMap");
        assert!(validate(
            &i,
            &json!({"metadata": {"generateName": "web-", "name": "web-x1"}}),
            None
        )
        .is_empty());
        let c = validate(
            &i,
            &json!({"metadata": {"generateName": "Web-", "name": "web-x"}}),
            None,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "metadata.generateName");
    }

    #[test]
    fn labels_and_annotations() {
        let o = json!({"metadata": {"name": "a", "labels": {"bad key": "ok", "ok": "-bad"}, "annotations": {"x/y/z": "1"}}});
        let c = validate(&info("", "ConfigMap"), &o, None);
        assert_eq!(msgs(&c), vec![
            "metadata.labels: Invalid value: \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            "metadata.labels: Invalid value: \"-bad\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            "metadata.annotations: Invalid value: \"x/y/z\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
        ]);
        assert_eq!(
            is_qualified_name("/a"),
            vec!["prefix part must be non-empty"]
        );
        assert!(is_qualified_name("example.com/My_Name").is_empty());
        assert!(is_valid_label_value("").is_empty());
        let big = json!({"metadata": {"name": "a", "annotations": {"k": "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT)}}});
        let c = validate(&info("", "ConfigMap"), &big, None);
        assert_eq!(
            msgs(&c),
            vec!["metadata.annotations: Too long: may not be more than 262144 bytes"]
        );
    }
    fn first(c: &[Cause], field: &str) -> String {
        c.iter()
            .find(|x| x.field == field)
            .map(Cause::display)
            .unwrap_or_else(|| panic!("no {field} in {c:?}"))
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn pod_spec_rules() {
        let i = info("", "Pod");
        assert_eq!(
            msgs(&validate(&i, &pod(json!({})), None)),
            vec!["spec.containers: Required value"]
        );
        let spec = json!({
            "restartPolicy": "Sometimes",
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "data", "emptyDir": {}}],
            "containers": [
                {"name": "web", "ports": [{"containerPort": 70000, "protocol": "TCP"}, {"containerPort": 80, "protocol": "HTTP"}],
                 "env": [{"name": "1BAD"}], "volumeMounts": [{"name": "x", "mountPath": "/x"}],
                 "livenessProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}},
                 "readinessProbe": {}},
                {"name": "web", "image": "nginx"}
            ]
        });
        let c = validate(&i, &pod(spec), None);
        assert_eq!(
            first(&c, "spec.volumes[1].name"),
            "spec.volumes[1].name: Duplicate value: \"data\""
        );
        assert_eq!(
            first(&c, "spec.containers[0].image"),
            "spec.containers[0].image: Required value"
        );
        assert_eq!(
            first(&c, "spec.containers[0].ports[0].containerPort"),
            "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
        assert_eq!(
            first(&c, "spec.containers[0].ports[1].protocol"),
            "spec.containers[0].ports[1].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\""
        );
        assert_eq!(
            first(&c, "spec.containers[0].env[0].name"),
            "spec.containers[0].env[0].name: Invalid value: \"1BAD\": a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')"
        );
        let nf = c
            .iter()
            .find(|x| x.field == "spec.containers[0].volumeMounts[0].name")
            .unwrap();
        assert_eq!(
            (nf.reason.as_str(), nf.message.as_str()),
            ("FieldValueNotFound", "Not found: \"x\"")
        );
        assert_eq!(
            first(&c, "spec.containers[0].livenessProbe.tcpSocket"),
            "spec.containers[0].livenessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type"
        );
        assert_eq!(
            first(&c, "spec.containers[0].readinessProbe"),
            "spec.containers[0].readinessProbe: Required value: must specify a handler type"
        );
        assert_eq!(
            first(&c, "spec.containers[1].name"),
            "spec.containers[1].name: Duplicate value: \"web\""
        );
        assert_eq!(
            first(&c, "spec.restartPolicy"),
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
        );
        let ok = pod(
            json!({"restartPolicy": "Always", "volumes": [{"name": "d", "emptyDir": {}}],
            "containers": [{"name": "a", "image": "x", "volumeMounts": [{"name": "d", "mountPath": "/d"}]}]}),
        );
        assert!(validate(&i, &ok, None).is_empty());
    }

    fn deploy(selector: Value, labels: Value, restart: &str) -> Value {
        json!({"metadata": {"name": "web"}, "spec": {
            "replicas": 1, "selector": selector,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            "template": {"metadata": {"labels": labels}, "spec": {"restartPolicy": restart, "containers": [{"name": "a", "image": "x"}]}}
        }})
    }

    #[test]
    fn workload_rules() {
        let i = info("apps", "Deployment");
        let mut d = deploy(Value::Null, json!({"app": "web"}), "Always");
        d["spec"].as_object_mut().unwrap().remove("selector");
        assert_eq!(msgs(&validate(&i, &d, None)), vec![
            "spec.selector: Required value",
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`",
        ]);
        let d = deploy(
            json!({"matchLabels": {"app": "other"}}),
            json!({"app": "web"}),
            "Never",
        );
        assert_eq!(msgs(&validate(&i, &d, None)), vec![
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`",
            "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
        ]);
        let mut d = deploy(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
            "Always",
        );
        assert!(validate(&i, &d, None).is_empty());
        d["spec"]["replicas"] = json!(-1);
        assert_eq!(
            msgs(&validate(&i, &d, None)),
            vec!["spec.replicas: Invalid value: -1: must be greater than or equal to 0"]
        );
        d["spec"]["replicas"] = json!(1);
        let old = d["spec"].clone();
        let old_obj = json!({"spec": old});
        d["spec"]["selector"] = json!({"matchLabels": {"app": "web2"}});
        d["spec"]["template"]["metadata"]["labels"] = json!({"app": "web2"});
        assert_eq!(msgs(&validate(&i, &d, Some(&old_obj))), vec![
            "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable",
        ]);
        d["spec"]["strategy"] = json!({"type": "Blue"});
        assert_eq!(
            first(&validate(&i, &d, None), "spec.strategy"),
            "spec.strategy: Unsupported value: apps.DeploymentStrategy{Type:\"Blue\", RollingUpdate:(*apps.RollingUpdateDeployment)(nil)}: supported values: \"Recreate\", \"RollingUpdate\""
        );
        // DaemonSet without selector: only the mismatch (upstream has no Required here).
        let mut ds = deploy(Value::Null, json!({"app": "web"}), "Always");
        let spec = ds["spec"].as_object_mut().unwrap();
        spec.remove("selector");
        spec.remove("strategy");
        spec.remove("replicas");
        spec.insert("updateStrategy".into(), json!({"type": "OnDelete"}));
        assert_eq!(msgs(&validate(&info("apps", "DaemonSet"), &ds, None)), vec![
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`",
        ]);
    }

    #[test]
    fn job_and_cron_job_rules() {
        let j = json!({"metadata": {"name": "j"}, "spec": {
            "selector": {"matchLabels": {"u": "1"}},
            "template": {"metadata": {"labels": {"u": "1"}}, "spec": {"restartPolicy": "Always", "containers": [{"name": "a", "image": "x"}]}}}});
        assert_eq!(msgs(&validate(&info("batch", "Job"), &j, None)), vec![
            "spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\"",
        ]);
        let cj = |schedule: &str, policy: &str| {
            json!({"metadata": {"name": "c"}, "spec": {
            "schedule": schedule, "concurrencyPolicy": policy,
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "a", "image": "x"}]}}}}}})
        };
        let i = info("batch", "CronJob");
        assert!(validate(&i, &cj("*/5 * * * *", "Allow"), None).is_empty());
        assert!(validate(&i, &cj("@hourly", "Forbid"), None).is_empty());
        assert!(validate(&i, &cj("0 9 * jan-mar mon-fri", "Replace"), None).is_empty());
        assert_eq!(
            msgs(&validate(&i, &cj("", "Allow"), None)),
            vec!["spec.schedule: Required value"]
        );
        assert_eq!(
            msgs(&validate(&i, &cj("* * *", "Sometimes"), None)),
            vec![
                "spec.schedule: Invalid value: \"* * *\": expected exactly 5 fields, found 3: [* * *]",
                "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\"",
            ]
        );
        assert_eq!(
            parse_cron("61 * * * *"),
            Err("end of range (61) above maximum (59): 61".into())
        );
        assert_eq!(
            parse_cron("@often"),
            Err("unrecognized descriptor: @often".into())
        );
        assert_eq!(
            parse_cron("x * * * *"),
            Err("failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax".into())
        );
        let long = "a".repeat(53);
        assert_eq!(
            validate_name(&i, &long)[0].message,
            format!("Invalid value: {long:?}: must be no more than 52 characters")
        );
    }

    #[test]
    fn service_rules() {
        let i = info("", "Service");
        let svc = |spec: Value| json!({"metadata": {"name": "s"}, "spec": spec});
        assert_eq!(
            msgs(&validate(
                &i,
                &svc(json!({"type": "ClusterIP", "sessionAffinity": "None"})),
                None
            )),
            vec!["spec.ports: Required value"]
        );
        assert!(validate(
            &i,
            &svc(json!({"type": "ClusterIP", "clusterIP": "None"})),
            None
        )
        .is_empty());
        let c = validate(
            &i,
            &svc(json!({"type": "Weird", "ports": [
            {"port": 80, "protocol": "TCP", "targetPort": 80},
            {"name": "b", "port": 0, "protocol": "TCP", "targetPort": 80}]})),
            None,
        );
        assert_eq!(msgs(&c), vec![
            "spec.ports[0].name: Required value",
            "spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            "spec.type: Unsupported value: \"Weird\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
        ]);
        assert_eq!(
            msgs(&validate(&i, &svc(json!({"type": "ExternalName"})), None)),
            vec!["spec.externalName: Required value"]
        );
        let c = validate(
            &i,
            &svc(
                json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 80}]}),
            ),
            None,
        );
        assert_eq!(msgs(&c), vec!["spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"]);
    }

    #[test]
    fn config_map_and_secret_rules() {
        let i = info("", "ConfigMap");
        let cm = json!({"metadata": {"name": "c"}, "data": {"bad key": "v", "dup": "x"}, "binaryData": {"dup": "eA=="}});
        assert_eq!(msgs(&validate(&i, &cm, None)), vec![
            "data[bad key]: Invalid value: \"bad key\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            "data[dup]: Invalid value: \"dup\": duplicate of key present in binaryData",
            "binaryData[dup]: Invalid value: \"dup\": duplicate of key present in data",
        ]);
        let big =
            json!({"metadata": {"name": "c"}, "data": {"a": "x".repeat(MAX_SECRET_SIZE + 1)}});
        assert_eq!(
            msgs(&validate(&i, &big, None)),
            vec!["Too long: may not be more than 1048576 bytes"]
        );
        let sec =
            json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls", "data": {"..": "eA=="}});
        assert_eq!(
            msgs(&validate(&info("", "Secret"), &sec, None)),
            vec![
                "data[..]: Invalid value: \"..\": must not be '..'",
                "data[tls.crt]: Required value",
                "data[tls.key]: Required value",
            ]
        );
    }

    #[test]
    fn ingress_hpa_pdb_crd_rules() {
        let ing = json!({"metadata": {"name": "i"}, "spec": {"rules": [{"http": {"paths": [
            {"path": "/", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
            {"path": "api", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {}}}},
            {"path": "/", "pathType": "Regex", "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}]}});
        assert_eq!(msgs(&validate(&info("networking.k8s.io", "Ingress"), &ing, None)), vec![
            "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified",
            "spec.rules[0].http.paths[1].path: Invalid value: \"api\": must be an absolute path",
            "spec.rules[0].http.paths[1].backend: Required value: port name or number is required",
            "spec.rules[0].http.paths[2].pathType: Unsupported value: \"Regex\": supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\"",
        ]);
        let hpa = json!({"metadata": {"name": "h"}, "spec": {"minReplicas": 0, "maxReplicas": 0, "scaleTargetRef": {"kind": "Deployment"}}});
        let hinfo = crate::resource::builtins()
            .into_iter()
            .find(|r| r.kind == "HorizontalPodAutoscaler")
            .unwrap();
        assert_eq!(
            msgs(&validate(&hinfo, &hpa, None)),
            vec![
                "spec.minReplicas: Invalid value: 0: must be greater than or equal to 1",
                "spec.maxReplicas: Invalid value: 0: must be greater than 0",
                "spec.scaleTargetRef.name: Required value",
            ]
        );
        let pdb = json!({"metadata": {"name": "p"}, "spec": {"minAvailable": 1, "maxUnavailable": "150%"}});
        let c = validate(&info("policy", "PodDisruptionBudget"), &pdb, None);
        assert_eq!(c.len(), 2);
        assert!(
            c[0].message
                .ends_with(": minAvailable and maxUnavailable cannot be both set"),
            "{c:?}"
        );
        assert_eq!(c[1].display(), "spec.maxUnavailable: Invalid value: intstr.IntOrString{Type:1, IntVal:0, StrVal:\"150%\"}: must not be greater than 100%");
        let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": false}]}});
        let cinfo = info("apiextensions.k8s.io", "CustomResourceDefinition");
        let c = validate(&cinfo, &crd, None);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "spec.versions");
        assert!(c[0]
            .message
            .ends_with(": must have exactly one version marked as storage version"));
        let bad = json!({"metadata": {"name": "x.example.com"}, "spec": {"scope": "Namespaced", "names": {},
            "versions": [{"name": "v1", "storage": true}]}});
        let c = validate(&cinfo, &bad, None);
        assert_eq!(first(&c, "metadata.name"), "metadata.name: Invalid value: \"x.example.com\": must be spec.names.plural+\".\"+spec.group");
        assert_eq!(first(&c, "spec.group"), "spec.group: Required value");
        assert_eq!(
            first(&c, "spec.names.plural"),
            "spec.names.plural: Required value"
        );
        assert_eq!(
            first(&c, "spec.names.kind"),
            "spec.names.kind: Required value"
        );
    }
}
