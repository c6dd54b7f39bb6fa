//! Container logs, as the kubelet serves `pods/log`: the CRI log files the
//! runtime writes (`<log_root>/<ns>_<name>_<uid>/<container>/<attempt>.log`,
//! lines `2026-01-01T00:00:00.000000000Z stdout F text`), filtered by the
//! `pods/log` options and optionally followed.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use kobune_apimachinery::ApiError;
use kobune_apiserver::kubelet::{Kubelet, LogOptions, StreamKind};
use kobune_cri::Cri;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

const FOLLOW_POLL: Duration = Duration::from_millis(150);

/// One line of a CRI log file.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// The timestamp as written (RFC 3339 with nanoseconds).
    pub timestamp: String,
    pub time: Option<DateTime<Utc>>,
    /// The text, with a newline unless the line was partial (`P`).
    pub text: Vec<u8>,
}

/// Parses one CRI log line (without its trailing newline).
pub fn parse_line(line: &[u8]) -> Option<LogLine> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let ts = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let rest = parts.next().unwrap_or_default();
    let mut text = rest.to_vec();
    if tag != b"P" {
        text.push(b'\n');
    }
    Some(LogLine {
        timestamp: ts.to_string(),
        time: DateTime::parse_from_rfc3339(ts)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        text,
    })
}

/// Parses the complete lines of `buf`; returns them and how many bytes
/// they used (a trailing partial write is left for later).
pub fn parse_lines(buf: &[u8]) -> (Vec<LogLine>, usize) {
    let mut out = vec![];
    let mut used = 0;
    while let Some(nl) = buf[used..].iter().position(|b| *b == b'\n') {
        if let Some(l) = parse_line(&buf[used..used + nl]) {
            out.push(l);
        }
        used += nl + 1;
    }
    (out, used)
}

/// Renders lines per the options (sinceSeconds, tailLines, timestamps);
/// `limitBytes` is applied by the caller across the whole stream.
pub fn render(lines: &[LogLine], opts: &LogOptions, now: DateTime<Utc>) -> Vec<u8> {
    let since = opts
        .since_seconds
        .map(|s| now - chrono::Duration::seconds(s));
    let selected: Vec<&LogLine> = lines
        .iter()
        .filter(|l| match (since, l.time) {
            (Some(since), Some(t)) => t >= since,
            _ => true,
        })
        .collect();
    let skip = match opts.tail_lines {
        Some(n) if n >= 0 => selected.len().saturating_sub(n as usize),
        _ => 0,
    };
    let mut out = vec![];
    for l in &selected[skip..] {
        if opts.timestamps {
            out.extend_from_slice(l.timestamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&l.text);
    }
    out
}

/// What the pod workers publish about each pod for the log endpoint.
#[derive(Debug, Clone)]
pub struct PodLogInfo {
    pub log_dir: PathBuf,
    /// container name -> (CRI container ID, current attempt)
    pub containers: HashMap<String, (String, u32)>,
}

/// Pods known to the agent by uid.
pub type PodLogIndex = Arc<Mutex<HashMap<String, PodLogInfo>>>;

/// The node's `Kubelet`: serves container logs.
pub struct NodeLogs {
    pub log_root: PathBuf,
    pub cri: Cri,
    pub pods: PodLogIndex,
    /// Resource usage sampled from CRI (for `metrics.k8s.io`).
    pub stats: Option<Arc<crate::stats::StatsCollector>>,
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

/// The highest attempt number with a log file in `dir`.
fn latest_attempt(dir: &Path) -> Option<u32> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse::<u32>()
                .ok()
        })
        .max()
}

impl NodeLogs {
    fn pick_container(pod: &Value, opts: &LogOptions) -> Result<String, ApiError> {
        let name = s(pod, "/metadata/name");
        let names: Vec<&str> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(
                ["/spec/initContainers", "/spec/ephemeralContainers"]
                    .iter()
                    .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
                    .flatten(),
            )
            .filter_map(|c| c["name"].as_str())
            .collect();
        match &opts.container {
            Some(c) if !c.is_empty() => {
                if names.contains(&c.as_str()) {
                    Ok(c.clone())
                } else {
                    Err(ApiError::bad_request(format!(
                        "container {c} is not valid for pod {name}"
                    )))
                }
            }
            _ => {
                let app: Vec<&str> = pod
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                if app.len() == 1 {
                    Ok(app[0].to_string())
                } else {
                    Err(ApiError::bad_request(format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        app.join(" ")
                    )))
                }
            }
        }
    }
}

#[async_trait]
impl Kubelet for NodeLogs {
    async fn logs(&self, pod: &Value, opts: LogOptions) -> Result<mpsc::Receiver<Bytes>, ApiError> {
        let (ns, name, uid) = (
            s(pod, "/metadata/namespace"),
            s(pod, "/metadata/name"),
            s(pod, "/metadata/uid"),
        );
        let container = Self::pick_container(pod, &opts)?;
        let known = self
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned();
        let log_dir = known
            .as_ref()
            .map(|k| k.log_dir.clone())
            .unwrap_or_else(|| kobune_cri::pod::pod_log_dir(&self.log_root, ns, name, uid));
        let cdir = log_dir.join(&container);
        let (cid, current) = match known.as_ref().and_then(|k| k.containers.get(&container)) {
            Some((id, n)) => (Some(id.clone()), Some(*n)),
            None => (None, latest_attempt(&cdir)),
        };
        let not_started = || {
            ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
            ))
        };
        let attempt = if opts.previous {
            match current {
                Some(n) if n > 0 => n - 1,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "previous terminated container \"{container}\" in pod \"{name}\" not found"
                    )))
                }
            }
        } else {
            current.ok_or_else(not_started)?
        };
        let path = cdir.join(format!("{attempt}.log"));
        let data = match tokio::fs::read(&path).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if opts.previous {
                    return Err(ApiError::bad_request(format!(
                        "previous terminated container \"{container}\" in pod \"{name}\" not found"
                    )));
                }
                return Err(not_started());
            }
            Err(e) => {
                return Err(ApiError::new(
                    500,
                    "InternalError",
                    format!("reading {}: {e}", path.display()),
                ))
            }
        };
        let (lines, used) = parse_lines(&data);
        let mut first = render(&lines, &opts, Utc::now());
        let mut budget = opts.limit_bytes.filter(|l| *l > 0).map(|l| l as usize);
        if let Some(b) = budget.as_mut() {
            first.truncate(*b);
            *b -= first.len();
        }
        let follow = opts.follow && !opts.previous && budget != Some(0);
        let (tx, rx) = mpsc::channel(16);
        let cri = self.cri.clone();
        tokio::spawn(async move {
            if !first.is_empty() && tx.send(Bytes::from(first)).await.is_err() {
                return;
            }
            if !follow {
                return;
            }
            let _ = follow_file(&path, used as u64, cid, cri, opts.timestamps, budget, tx).await;
        });
        Ok(rx)
    }

    async fn stream_url(&self, pod: &Value, kind: StreamKind) -> Result<String, ApiError> {
        let container = match &kind {
            StreamKind::Exec { container, .. } | StreamKind::Attach { container, .. } => {
                let opts = LogOptions {
                    container: container.clone(),
                    ..Default::default()
                };
                Some(Self::pick_container(pod, &opts)?)
            }
            StreamKind::PortForward { .. } => None,
        };
        crate::streaming::stream_url(self, pod, container, kind).await
    }

    async fn stats(&self) -> Option<kobune_apiserver::kubelet::NodeUsage> {
        self.stats.as_ref().and_then(|s| s.latest())
    }
}

async fn container_exited(cri: &Cri, id: &str) -> bool {
    match cri.container_status(id).await {
        Ok(Some(st)) => matches!(
            kobune_cri::pod::state_of(&st),
            kobune_cri::ContainerState::Terminated { .. }
        ),
        Ok(None) => true,
        Err(_) => false,
    }
}

async fn follow_file(
    path: &Path,
    mut offset: u64,
    cid: Option<String>,
    cri: Cri,
    timestamps: bool,
    mut budget: Option<usize>,
    tx: mpsc::Sender<Bytes>,
) -> anyhow::Result<()> {
    let opts = LogOptions {
        timestamps,
        ..Default::default()
    };
    loop {
        // Check for exit before reading, so output written just before the
        // exit is still sent.
        let exited = match &cid {
            Some(id) => container_exited(&cri, id).await,
            None => false,
        };
        let mut f = tokio::fs::File::open(path).await?;
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        let mut buf = vec![];
        f.read_to_end(&mut buf).await?;
        let (lines, used) = parse_lines(&buf);
        offset += used as u64;
        let mut out = render(&lines, &opts, Utc::now());
        if let Some(b) = budget.as_mut() {
            out.truncate(*b);
            *b -= out.len();
        }
        if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
            return Ok(());
        }
        if exited || budget == Some(0) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = tx.closed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LOG: &str = "2026-01-01T00:00:00.000000001Z stdout F one\n\
2026-01-01T00:00:01.000000000Z stderr P tw\n\
2026-01-01T00:00:01.000000000Z stderr F o\n\
2026-01-01T00:00:02.000000000Z stdout F three\n\
2026-01-01T00:00:03.0000";

    #[test]
    fn parses_and_renders() {
        let (lines, used) = parse_lines(LOG.as_bytes());
        assert_eq!(lines.len(), 4);
        assert_eq!(used, LOG.rfind('\n').unwrap() + 1);
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:10Z")
            .unwrap()
            .with_timezone(&Utc);
        let all = render(&lines, &LogOptions::default(), now);
        assert_eq!(all, b"one\ntwo\nthree\n");
        let tail = render(
            &lines,
            &LogOptions {
                tail_lines: Some(1),
                timestamps: true,
                ..Default::default()
            },
            now,
        );
        assert_eq!(tail, b"2026-01-01T00:00:02.000000000Z three\n");
        let since = render(
            &lines,
            &LogOptions {
                since_seconds: Some(9),
                ..Default::default()
            },
            now,
        );
        assert_eq!(since, b"two\nthree\n");
    }

    #[test]
    fn container_choice() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        let two = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let o = LogOptions::default();
        assert_eq!(NodeLogs::pick_container(&one, &o).unwrap(), "a");
        let e = NodeLogs::pick_container(&two, &o).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        let o = LogOptions {
            container: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(NodeLogs::pick_container(&two, &o).unwrap(), "b");
    }
}
