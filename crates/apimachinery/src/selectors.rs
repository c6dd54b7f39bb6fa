//! Label and field selectors, in their string form (`app=web,tier in (a,b)`)
//! and as `LabelSelector` objects.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    /// Like `matches`, for lookups that borrow (no allocation per label).
    fn matches_ref<'a>(&self, get: &dyn Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        }
    }

    fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        match self {
            Requirement::Equals(k, v) => get(k).as_deref() == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k).as_deref() != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.contains(&x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        }
    }
}

/// A conjunction of requirements. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

impl Selector {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn matches_with(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| r.matches(get))
    }
    /// Matches a `metadata.labels`-style map.
    pub fn matches_labels(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| r.matches_ref(&get))
    }
    /// Parses a label selector string.
    pub fn parse_labels(s: &str) -> Result<Selector, String> {
        parse(s, true)
    }
    /// Parses a field selector string (only `=`, `==` and `!=`).
    pub fn parse_fields(s: &str) -> Result<Selector, String> {
        parse(s, false)
    }
    /// Converts a `LabelSelector` object. `None` (absent) matches nothing
    /// for workload selectors, so callers decide; this gives the requirements.
    pub fn from_label_selector(sel: &Value) -> Result<Selector, String> {
        let mut reqs = vec![];
        if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in ml {
                reqs.push(Requirement::Equals(
                    k.clone(),
                    v.as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let values = crate::str_list(e.get("values"));
                let op = e
                    .get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                reqs.push(match op {
                    "In" => Requirement::In(key, values),
                    "NotIn" => Requirement::NotIn(key, values),
                    "Exists" => Requirement::Exists(key),
                    "DoesNotExist" => Requirement::DoesNotExist(key),
                    other => {
                        return Err(format!("{other:?} is not a valid label selector operator"))
                    }
                });
            }
        }
        Ok(Selector(reqs))
    }
    /// The string form (`a=b,c in (x,y)`), as `status.selector` shows it.
    pub fn to_string_form(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        parts.join(",")
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = vec![];
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse(s: &str, labels: bool) -> Result<Selector, String> {
    let mut reqs = vec![];
    for part in split_top(s) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let set_op = |kw: &str| -> Option<(String, Vec<String>)> {
            let idx = part.find(kw)?;
            let key = part[..idx].trim();
            let rest = part[idx + kw.len()..].trim();
            let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
            let vals = inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            (!key.is_empty() && !key.contains(' ')).then(|| (key.to_string(), vals))
        };
        if let Some((k, v)) = part.find("!=").map(|i| (&part[..i], &part[i + 2..])) {
            reqs.push(Requirement::NotEquals(check_key(k)?, v.trim().to_string()));
        } else if let Some((k, v)) = part.find("==").map(|i| (&part[..i], &part[i + 2..])) {
            reqs.push(Requirement::Equals(check_key(k)?, v.trim().to_string()));
        } else if let Some((k, v)) = part.find('=').map(|i| (&part[..i], &part[i + 1..])) {
            reqs.push(Requirement::Equals(check_key(k)?, v.trim().to_string()));
        } else if !labels {
            return Err(format!(
                "invalid selector: '{s}'; can't understand '{part}'"
            ));
        } else if let Some((k, v)) = set_op(" notin ") {
            reqs.push(Requirement::NotIn(k, v));
        } else if let Some((k, v)) = set_op(" in ") {
            reqs.push(Requirement::In(k, v));
        } else if let Some(k) = part.strip_prefix('!') {
            reqs.push(Requirement::DoesNotExist(check_key(k)?));
        } else {
            reqs.push(Requirement::Exists(check_key(part)?));
        }
    }
    Ok(Selector(reqs))
}

fn check_key(k: &str) -> Result<String, String> {
    let k = k.trim();
    if k.is_empty() || k.contains(char::is_whitespace) || k.contains(['(', ')', '!']) {
        return Err(format!(
            "unable to parse requirement: invalid label key {k:?}"
        ));
    }
    Ok(k.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn parses_and_matches_set_based() {
        let s = Selector::parse_labels("app=web,tier in (a, b),!canary,env").unwrap();
        assert_eq!(s.0.len(), 4);
        assert!(s.matches_labels(Some(&labels(json!({"app":"web","tier":"b","env":"x"})))));
        assert!(!s.matches_labels(Some(&labels(json!({"app":"web","tier":"c","env":"x"})))));
        assert!(!s.matches_labels(Some(&labels(
            json!({"app":"web","tier":"a","env":"x","canary":"1"})
        ))));
        assert!(!s.matches_labels(None));
    }

    #[test]
    fn label_selector_object() {
        let s = Selector::from_label_selector(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }))
        .unwrap();
        assert!(s.matches_labels(Some(&labels(json!({"app":"web"})))));
        assert!(!s.matches_labels(Some(&labels(json!({"app":"web","tier":"db"})))));
        assert_eq!(s.to_string_form(), "app=web,tier notin (db)");
    }

    #[test]
    fn field_selectors_reject_set_syntax() {
        assert!(Selector::parse_fields("metadata.name=x,status.phase!=Running").is_ok());
        assert!(Selector::parse_fields("status.phase in (a)").is_err());
    }
}
