//! Resource usage of this node and its pods, for `metrics.k8s.io` (the
//! kubelet's summary API in metrics-server's role). Every
//! [`SAMPLE_EVERY`] the collector reads the cumulative CPU time and the
//! memory working set of every running container over CRI
//! (`ListContainerStats`) and of the node (`/proc/stat`, `/proc/meminfo`);
//! CPU rates come from the last two samples, so nothing is reported until
//! two samples exist, and a container first seen in the latest sample has
//! no rate yet.

use chrono::{DateTime, Utc};
use k8s_cri::v1 as cri;
use kobune_apiserver::kubelet::{ContainerUsage, NodeUsage, PodUsage};
use kobune_cri::Cri;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often usage is sampled (metrics-server scrapes every 15 s by default).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// One running container's cumulative counters at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSample {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub name: String,
    /// CRI timestamp of the CPU reading, in ns since the epoch.
    pub cpu_timestamp_ns: i64,
    pub cpu_usage_core_ns: u64,
    pub memory_working_set_bytes: u64,
}

/// The node and every running container at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub wall: DateTime<Utc>,
    /// Busy CPU time of the whole node since boot, in ns.
    pub node_cpu_busy_ns: u64,
    pub node_memory_working_set_bytes: u64,
    /// By container id.
    pub containers: HashMap<String, ContainerSample>,
}

/// Busy CPU time (everything but idle and iowait) from the aggregate `cpu`
/// line of /proc/stat, in clock ticks.
pub fn parse_proc_stat_busy_ticks(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already
    // counted in user and nice).
    let busy = v[0] + v[1] + v[2] + v.get(5).unwrap_or(&0) + v.get(6).unwrap_or(&0);
    Some(busy + v.get(7).unwrap_or(&0))
}

/// The node's memory working set from /proc/meminfo, in bytes: memory in
/// use (including page cache) minus inactive file pages, as the kubelet
/// computes it for the root cgroup.
pub fn parse_meminfo_working_set(text: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    let total = field("MemTotal")?;
    let free = field("MemFree")?;
    let inactive_file = field("Inactive(file)").unwrap_or(0);
    Some(total.saturating_sub(free).saturating_sub(inactive_file) * 1024)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn node_counters() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mem = std::fs::read_to_string("/proc/meminfo").ok()?;
    let ticks = parse_proc_stat_busy_ticks(&stat)?;
    let busy_ns = ticks.saturating_mul(1_000_000_000 / clock_ticks_per_second());
    Some((busy_ns, parse_meminfo_working_set(&mem)?))
}

/// Reads one sample: running containers over CRI, the node from /proc.
pub async fn take_sample(cri: &Cri) -> anyhow::Result<Sample> {
    use anyhow::Context;
    let running: std::collections::HashSet<String> = cri
        .runtime
        .clone()
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .context("ListContainers")?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    let stats = cri
        .runtime
        .clone()
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .context("ListContainerStats")?
        .into_inner()
        .stats;
    let mut containers = HashMap::new();
    for s in stats {
        let Some(attr) = s.attributes else { continue };
        if !running.contains(&attr.id) {
            continue;
        }
        let label = |k: &str| attr.labels.get(k).cloned().unwrap_or_default();
        let (Some(cpu), Some(mem)) = (s.cpu, s.memory) else {
            continue;
        };
        let (Some(usage), Some(ws)) = (cpu.usage_core_nano_seconds, mem.working_set_bytes) else {
            continue;
        };
        let name = attr
            .metadata
            .map(|m| m.name)
            .unwrap_or_else(|| label("io.kubernetes.container.name"));
        containers.insert(
            attr.id.clone(),
            ContainerSample {
                namespace: label("io.kubernetes.pod.namespace"),
                pod: label("io.kubernetes.pod.name"),
                uid: label("io.kubernetes.pod.uid"),
                name,
                cpu_timestamp_ns: cpu.timestamp,
                cpu_usage_core_ns: usage.value,
                memory_working_set_bytes: ws.value,
            },
        );
    }
    let (busy, mem) = node_counters().context("reading /proc/stat and /proc/meminfo")?;
    Ok(Sample {
        at: Instant::now(),
        wall: Utc::now(),
        node_cpu_busy_ns: busy,
        node_memory_working_set_bytes: mem,
        containers,
    })
}

/// CPU rate in nanocores from two cumulative readings `dt_ns` apart.
pub fn rate_nanocores(before: u64, after: u64, dt_ns: i64) -> Option<u64> {
    if dt_ns <= 0 || after < before {
        return None;
    }
    Some(((after - before) as u128 * 1_000_000_000 / dt_ns as u128) as u64)
}

/// Usage from two consecutive samples. Containers present in both (same
/// id, so not restarted in between) get a rate; a pod is listed (sorted
/// by namespace and name) only when every running container has one, as
/// metrics-server leaves out pods with incomplete metrics.
pub fn usage(prev: &Sample, cur: &Sample) -> Option<NodeUsage> {
    let window = cur.at.checked_duration_since(prev.at)?;
    if window.is_zero() {
        return None;
    }
    let node_cpu = rate_nanocores(
        prev.node_cpu_busy_ns,
        cur.node_cpu_busy_ns,
        window.as_nanos() as i64,
    )?;
    let mut pods: BTreeMap<(String, String, String), Vec<ContainerUsage>> = BTreeMap::new();
    let mut pod_window: HashMap<String, i64> = HashMap::new();
    let mut incomplete = std::collections::HashSet::new();
    for (id, c) in &cur.containers {
        let rate = prev.containers.get(id).and_then(|p| {
            let dt = c.cpu_timestamp_ns - p.cpu_timestamp_ns;
            Some((
                rate_nanocores(p.cpu_usage_core_ns, c.cpu_usage_core_ns, dt)?,
                dt,
            ))
        });
        let Some((cpu, dt)) = rate else {
            incomplete.insert(c.uid.clone());
            continue;
        };
        let w = pod_window.entry(c.uid.clone()).or_insert(dt);
        *w = (*w).max(dt);
        pods.entry((c.namespace.clone(), c.pod.clone(), c.uid.clone()))
            .or_default()
            .push(ContainerUsage {
                name: c.name.clone(),
                cpu_nanocores: cpu,
                memory_working_set_bytes: c.memory_working_set_bytes,
            });
    }
    let pods = pods
        .into_iter()
        .filter(|((_, _, uid), _)| !incomplete.contains(uid))
        .map(|((namespace, name, uid), mut containers)| {
            containers.sort_by(|a, b| a.name.cmp(&b.name));
            let w = pod_window.get(&uid).copied().unwrap_or(0).max(0) as u64;
            PodUsage {
                namespace,
                name,
                uid,
                timestamp: cur.wall,
                window: if w > 0 {
                    Duration::from_nanos(w)
                } else {
                    window
                },
                containers,
            }
        })
        .collect();
    Some(NodeUsage {
        timestamp: cur.wall,
        window,
        cpu_nanocores: node_cpu,
        memory_working_set_bytes: cur.node_memory_working_set_bytes,
        pods,
    })
}

/// Samples periodically and keeps the latest usage.
#[derive(Default)]
pub struct StatsCollector {
    last: Mutex<Option<Sample>>,
    latest: Mutex<Option<NodeUsage>>,
}

impl StatsCollector {
    /// The usage computed from the last two samples.
    pub fn latest(&self) -> Option<NodeUsage> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes a sample and updates the usage.
    pub async fn sample(&self, cri: &Cri) -> anyhow::Result<()> {
        let cur = take_sample(cri).await?;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(prev) = last.as_ref() {
            if let Some(u) = usage(prev, &cur) {
                *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(u);
            }
        }
        *last = Some(cur);
        Ok(())
    }

    /// Samples every [`SAMPLE_EVERY`] until the task is aborted.
    pub fn spawn(self: &Arc<Self>, cri: Cri) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = me.sample(&cri).await {
                    tracing::debug!("sampling resource usage: {e:#}");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_excludes_idle_and_iowait() {
        let t = "cpu  100 5 50 1000 40 3 2 1 0 0\ncpu0 50 2 25 500 20 1 1 0 0 0\n";
        assert_eq!(
            parse_proc_stat_busy_ticks(t),
            Some(100 + 5 + 50 + 3 + 2 + 1)
        );
        assert_eq!(parse_proc_stat_busy_ticks("intr 1 2\n"), None);
    }

    #[test]
    fn meminfo_working_set() {
        let t = "MemTotal:       16000 kB\nMemFree:         4000 kB\nMemAvailable:   9000 kB\nInactive(file):  2000 kB\n";
        assert_eq!(
            parse_meminfo_working_set(t),
            Some((16000 - 4000 - 2000) * 1024)
        );
        assert_eq!(parse_meminfo_working_set("MemFree: 1 kB\n"), None);
    }

    fn container(id_ts: i64, cpu: u64) -> ContainerSample {
        ContainerSample {
            namespace: "ns".into(),
            pod: "p".into(),
            uid: "u".into(),
            name: "c".into(),
            cpu_timestamp_ns: id_ts,
            cpu_usage_core_ns: cpu,
            memory_working_set_bytes: 4096,
        }
    }

    #[test]
    fn rates_need_two_samples_of_the_same_container() {
        let t0 = Instant::now();
        let prev = Sample {
            at: t0,
            wall: Utc::now(),
            node_cpu_busy_ns: 1_000_000_000,
            node_memory_working_set_bytes: 1,
            containers: HashMap::from([("a".to_string(), container(0, 1_000))]),
        };
        let mut cur = Sample {
            at: t0 + Duration::from_secs(10),
            wall: Utc::now(),
            node_cpu_busy_ns: 6_000_000_000,
            node_memory_working_set_bytes: 2,
            containers: HashMap::from([
                // half a core over 10 s
                ("a".to_string(), container(10_000_000_000, 5_000_001_000)),
                ("b".to_string(), container(10_000_000_000, 9)),
            ]),
        };
        let b = cur.containers.get_mut("b").unwrap();
        b.uid = "u2".into();
        b.pod = "p2".into();
        let u = usage(&prev, &cur).unwrap();
        assert_eq!(u.cpu_nanocores, 500_000_000);
        assert_eq!(u.memory_working_set_bytes, 2);
        assert_eq!(u.pods.len(), 1, "p2's only container has no earlier sample");
        assert_eq!(u.pods[0].name, "p");
        assert_eq!(u.pods[0].containers.len(), 1);
        assert_eq!(u.pods[0].containers[0].cpu_nanocores, 500_000_000);
        assert_eq!(u.pods[0].window, Duration::from_secs(10));
        // A pod with one container lacking a rate is left out entirely.
        let mut partial = cur.clone();
        partial.containers.get_mut("b").unwrap().uid = "u".into();
        assert!(usage(&prev, &partial).unwrap().pods.is_empty());
        assert_eq!(rate_nanocores(5, 4, 10), None, "counter reset");
        assert_eq!(rate_nanocores(0, 4, 0), None);
    }
}
