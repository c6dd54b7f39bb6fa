//! The CronJob controller, as upstream's: creates a Job named
//! `<cronjob>-<scheduled time in unix minutes>` from `spec.jobTemplate` at
//! each schedule time (5-field cron or @hourly/@daily/@weekly/@monthly/
//! @yearly/@every), honouring concurrencyPolicy, startingDeadlineSeconds,
//! suspend and the history limits, and requeues for the next time.
//!
//! Time zones: `UTC`, `Etc/UTC` and the fixed `Etc/GMT±N` zones (no tz
//! database); others are reported as UnknownTimeZone.

use crate::job::{finished, has_condition};
use crate::runtime::{Informer, Requeue, WorkQueue};
use crate::workload::*;
use chrono::{DateTime, Datelike, Duration as CDuration, TimeZone, Timelike, Utc};
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::cache::EventType;
use kobune_apiserver::registry::{DeleteOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub const COMPONENT: &str = "cronjob-controller";
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

// ---------------------------------------------------------------------------
// Schedules

#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Cron {
        minutes: u64,
        hours: u64,
        dom: u64,
        months: u64,
        dow: u64,
        /// Both day fields restricted: either matches.
        day_or: bool,
    },
    Every(i64),
}

fn parse_field(f: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let mut bits = 0u64;
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + min);
        }
        s.parse::<u32>()
            .map_err(|_| format!("failed to parse int from {s}"))
    };
    for part in f.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("failed to parse int from {s}"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("step of range should be a positive number: {part}"));
        }
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("end of range ({hi}) above maximum ({max}): {part}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

fn parse_duration(s: &str) -> Option<i64> {
    let (mut total, mut num) = (0f64, String::new());
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            unit.push(chars.next()?);
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        total += n * match unit.as_str() {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        any = true;
    }
    (any && num.is_empty()).then_some(total as i64)
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        let spec = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            _ => s,
        };
        if let Some(d) = spec.strip_prefix("@every ") {
            let secs =
                parse_duration(d.trim()).ok_or_else(|| format!("failed to parse duration {s}"))?;
            return Ok(Schedule::Every(secs.max(1)));
        }
        if spec.starts_with('@') {
            return Err(format!("unrecognized descriptor: {s}"));
        }
        let f: Vec<&str> = spec.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!("expected exactly 5 fields, found {}: {s}", f.len()));
        }
        const MONTHS: &[&str] = &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let mut dow = parse_field(f[4], 0, 7, DAYS)?;
        if dow & (1 << 7) != 0 {
            dow = (dow | 1) & !(1 << 7);
        }
        let star = |x: &str| x.starts_with('*') || x.starts_with('?');
        Ok(Schedule::Cron {
            minutes: parse_field(f[0], 0, 59, &[])?,
            hours: parse_field(f[1], 0, 23, &[])?,
            dom: parse_field(f[2], 1, 31, &[])?,
            months: parse_field(f[3], 1, 12, MONTHS)?,
            dow,
            day_or: !star(f[2]) && !star(f[4]),
        })
    }

    /// The first schedule time strictly after `t`, in a zone `offset`
    /// seconds east of UTC.
    pub fn next(&self, t: DateTime<Utc>, offset: i32) -> Option<DateTime<Utc>> {
        let (minutes, hours, dom, months, dow, day_or) = match self {
            Schedule::Every(d) => {
                let base = Utc.timestamp_opt(t.timestamp(), 0).single()?;
                return Some(base + CDuration::seconds(*d));
            }
            Schedule::Cron {
                minutes,
                hours,
                dom,
                months,
                dow,
                day_or,
            } => (*minutes, *hours, *dom, *months, *dow, *day_or),
        };
        let off = CDuration::seconds(offset as i64);
        // Work in local wall time (a fixed offset has no gaps).
        let mut l = (t + off).naive_utc();
        l = l.with_second(0)?.with_nanosecond(0)? + CDuration::minutes(1);
        let limit = l + CDuration::days(366 * 5);
        let day_ok = |d: &chrono::NaiveDateTime| {
            let a = dom & (1 << d.day()) != 0;
            let b = dow & (1 << d.weekday().num_days_from_sunday()) != 0;
            if day_or {
                a || b
            } else {
                a && b
            }
        };
        while l < limit {
            if months & (1 << l.month()) == 0 {
                let (y, m) = if l.month() == 12 {
                    (l.year() + 1, 1)
                } else {
                    (l.year(), l.month() + 1)
                };
                l = chrono::NaiveDate::from_ymd_opt(y, m, 1)?.and_hms_opt(0, 0, 0)?;
                continue;
            }
            if !day_ok(&l) {
                l = (l.date() + CDuration::days(1)).and_hms_opt(0, 0, 0)?;
                continue;
            }
            if hours & (1 << l.hour()) == 0 {
                l = l.with_minute(0)? + CDuration::hours(1);
                continue;
            }
            if minutes & (1 << l.minute()) == 0 {
                l += CDuration::minutes(1);
                continue;
            }
            return Some(Utc.from_utc_datetime(&(l - off)));
        }
        None
    }
}

/// Seconds east of UTC for a supported zone name.
pub fn zone_offset(tz: Option<&str>) -> Result<i32, String> {
    match tz {
        None
        | Some(
            "UTC" | "Etc/UTC" | "Etc/GMT" | "GMT" | "Etc/Zulu" | "Zulu" | "Etc/UCT" | "UCT"
            | "Etc/Universal" | "Universal",
        ) => Ok(0),
        Some(z) => {
            let bad = || format!("unknown time zone {z}");
            let rest = z.strip_prefix("Etc/GMT").ok_or_else(bad)?;
            let n: i32 = rest.parse().map_err(|_| bad())?;
            if !(-14..=12).contains(&n) || !(rest.starts_with('+') || rest.starts_with('-')) {
                return Err(bad());
            }
            // POSIX style: Etc/GMT+5 is five hours west.
            Ok(-n * 3600)
        }
    }
}

/// The schedule and zone of a CronJob (a `CRON_TZ=`/`TZ=` prefix too).
pub fn schedule_of(cj: &Value) -> Result<(Schedule, i32), String> {
    let raw = cj
        .pointer("/spec/schedule")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim();
    let tz = cj.pointer("/spec/timeZone").and_then(Value::as_str);
    let (zone, spec) = match raw
        .strip_prefix("CRON_TZ=")
        .or_else(|| raw.strip_prefix("TZ="))
    {
        Some(r) => {
            let (z, s) = r.split_once(char::is_whitespace).unwrap_or((r, ""));
            (Some(z), s)
        }
        None => (tz, raw),
    };
    Ok((Schedule::parse(spec)?, zone_offset(zone)?))
}

/// Upstream's mostRecentScheduleTime: the latest schedule time in
/// (earliest, now], how many were missed, and the next one after now.
pub fn most_recent(
    sched: &Schedule,
    offset: i32,
    earliest: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, usize, Option<DateTime<Utc>>) {
    let (mut last, mut n) = (None, 0);
    let mut t = earliest;
    loop {
        match sched.next(t, offset) {
            Some(x) if x <= now => {
                last = Some(x);
                n += 1;
                if n > 100_000 {
                    // Far behind: jump ahead close to now.
                    t = now - CDuration::days(1).min(now - x);
                    if t <= x {
                        t = x;
                    }
                    continue;
                }
                t = x;
            }
            next => return (last, n, next),
        }
    }
}

fn ts(s: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The Job for a schedule time.
pub fn job_for(cj: &Value, at: DateTime<Utc>) -> Value {
    let t = cj
        .pointer("/spec/jobTemplate")
        .cloned()
        .unwrap_or(json!({}));
    let mut meta = json!({
        "name": format!("{}-{}", name(cj), at.timestamp() / 60),
        "namespace": namespace(cj),
        "ownerReferences": [controller_owner_ref("batch/v1", "CronJob", cj)],
        "labels": {},
        "annotations": {},
    });
    for k in ["labels", "annotations"] {
        if let Some(v) = t
            .pointer(&format!("/metadata/{k}"))
            .filter(|v| v.is_object())
        {
            meta[k] = v.clone();
        }
    }
    meta["annotations"][SCHEDULED_TIMESTAMP] = json!(rfc(at));
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
           "spec": t.get("spec").cloned().unwrap_or(json!({}))})
}

// ---------------------------------------------------------------------------
// The controller

pub struct Controller {
    pub reg: Arc<Registry>,
    pub opts: Arc<WriteOptions>,
    pub cj_info: Arc<ResourceInfo>,
    pub job_info: Arc<ResourceInfo>,
    pub cronjobs: Arc<Informer>,
    pub jobs: Arc<Informer>,
    pub queue: WorkQueue,
}

/// The key of a pod's (or job's) owning CronJob.
fn owner_key(o: &Value) -> Option<String> {
    controller_key(o, "CronJob")
}

impl Controller {
    pub fn new(reg: Arc<Registry>, opts: Arc<WriteOptions>) -> anyhow::Result<Arc<Controller>> {
        let find = |g: &str, p: &str| crate::runtime::served(&reg, g, "v1", p);
        let (cj_info, job_info) = (find("batch", "cronjobs")?, find("batch", "jobs")?);
        Ok(Arc::new(Controller {
            cronjobs: Arc::new(Informer::new(cj_info.key_prefix())),
            jobs: Arc::new(
                Informer::new(job_info.key_prefix()).with_index(BY_CONTROLLER, index_controller),
            ),
            reg,
            opts,
            cj_info,
            job_info,
            queue: WorkQueue::default(),
        }))
    }

    pub fn start_informers(self: &Arc<Self>) -> anyhow::Result<()> {
        let c = self.clone();
        self.cronjobs.start(&self.reg.cache, move |_, ev| {
            c.queue.add(ns_key(&ev.object))
        })?;
        let c = self.clone();
        self.jobs.start(&self.reg.cache, move |_, ev| {
            for o in std::iter::once(&ev.object).chain(ev.prev.iter()) {
                if let Some(k) = owner_key(o) {
                    c.queue.add(k);
                }
            }
            let _ = ev.kind == EventType::Deleted;
        })?;
        Ok(())
    }

    async fn event(&self, cj: &Value, ty: &str, reason: &str, msg: &str) {
        record_event(
            &self.reg,
            &self.opts,
            COMPONENT,
            cj,
            ("batch/v1", "CronJob"),
            ty,
            reason,
            msg,
        )
        .await;
    }

    async fn delete_job(&self, cj: &Value, job: &Value) {
        let del = DeleteOptions {
            propagation_policy: Some("Background".into()),
            ..Default::default()
        };
        if self
            .reg
            .delete(&self.job_info, Some(namespace(job)), name(job), &del)
            .await
            .is_ok()
        {
            self.event(
                cj,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted job {}", name(job)),
            )
            .await;
        }
    }

    /// One reconcile of the CronJob `namespace/name`.
    pub async fn sync(self: &Arc<Self>, key: &str) -> anyhow::Result<Requeue> {
        let Some((ns, n)) = key.split_once('/') else {
            return Ok(None);
        };
        let Some(cj) = self.cronjobs.get(&self.cj_info.key(Some(ns), n)) else {
            return Ok(None);
        };
        let jobs: Vec<Arc<Value>> = self.jobs.objects_by_index(BY_CONTROLLER, uid(&cj));
        let mut status = cj
            .get("status")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or(json!({}));
        let job_ref = |j: &Value| {
            json!({"kind": "Job", "namespace": namespace(j), "name": name(j), "uid": uid(j),
                   "apiVersion": "batch/v1", "resourceVersion": meta_str(j, "resourceVersion")})
        };
        // Active list: our unfinished jobs; note finished ones.
        let was_active: Vec<String> = status["active"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["uid"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut active = vec![];
        for j in &jobs {
            if finished(j) {
                if was_active.iter().any(|u| u == uid(j)) {
                    let c = if has_condition(j, "Complete") {
                        "Complete"
                    } else {
                        "Failed"
                    };
                    self.event(
                        &cj,
                        "Normal",
                        "SawCompletedJob",
                        &format!("Saw completed job: {}, condition: {c}", name(j)),
                    )
                    .await;
                }
                if has_condition(j, "Complete") {
                    let t = j
                        .pointer("/status/completionTime")
                        .and_then(Value::as_str)
                        .and_then(|s| ts(Some(s)));
                    let cur = ts(status["lastSuccessfulTime"].as_str());
                    if let Some(t) = t.filter(|t| cur.is_none_or(|c| *t > c)) {
                        status["lastSuccessfulTime"] = json!(rfc(t));
                    }
                }
            } else if !deleting(j) {
                active.push(j.clone());
            }
        }
        // History limits.
        for (cond, field, default) in [
            ("Complete", "successfulJobsHistoryLimit", 3),
            ("Failed", "failedJobsHistoryLimit", 1),
        ] {
            let limit = cj
                .pointer(&format!("/spec/{field}"))
                .and_then(Value::as_i64)
                .unwrap_or(default)
                .max(0) as usize;
            let mut done: Vec<&Arc<Value>> = jobs
                .iter()
                .filter(|j| has_condition(j, cond) && !deleting(j))
                .collect();
            if done.len() > limit {
                done.sort_by(|a, b| {
                    let t = |j: &Value| {
                        j.pointer("/status/startTime")
                            .and_then(Value::as_str)
                            .unwrap_or(meta_str(j, "creationTimestamp"))
                            .to_string()
                    };
                    t(a).cmp(&t(b))
                });
                for j in &done[..done.len() - limit] {
                    self.delete_job(&cj, j).await;
                }
            }
        }
        let mut requeue = None;
        let now = Utc::now();
        if !deleting(&cj) && cj.pointer("/spec/suspend").and_then(Value::as_bool) != Some(true) {
            match schedule_of(&cj) {
                Err(e) => {
                    let reason = if e.starts_with("unknown time zone") {
                        "UnknownTimeZone"
                    } else {
                        "InvalidSchedule"
                    };
                    self.event(&cj, "Warning", reason, &e).await;
                }
                Ok((sched, offset)) => {
                    let created = ts(Some(meta_str(&cj, "creationTimestamp"))).unwrap_or(now);
                    let mut earliest = ts(status["lastScheduleTime"].as_str()).unwrap_or(created);
                    let deadline = cj
                        .pointer("/spec/startingDeadlineSeconds")
                        .and_then(Value::as_i64);
                    if let Some(d) = deadline {
                        earliest = earliest.max(now - CDuration::seconds(d));
                    }
                    let (last, missed, next) = most_recent(&sched, offset, earliest, now);
                    if missed > 100 {
                        self.event(&cj, "Warning", "TooManyMissedTimes", "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew").await;
                    }
                    if let Some(at) = last {
                        let job_name = format!("{}-{}", name(&cj), at.timestamp() / 60);
                        let exists = jobs.iter().any(|j| name(j) == job_name);
                        let too_late = deadline.is_some_and(|d| at + CDuration::seconds(d) < now);
                        let policy = cj
                            .pointer("/spec/concurrencyPolicy")
                            .and_then(Value::as_str)
                            .unwrap_or("Allow");
                        if exists || too_late {
                        } else if policy == "Forbid" && !active.is_empty() {
                            self.event(&cj, "Normal", "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid").await;
                        } else {
                            if policy == "Replace" {
                                for j in active.drain(..) {
                                    self.delete_job(&cj, &j).await;
                                }
                            }
                            match self
                                .reg
                                .create(&self.job_info, Some(ns), job_for(&cj, at), &self.opts)
                                .await
                            {
                                Ok(r) => {
                                    self.event(
                                        &cj,
                                        "Normal",
                                        "SuccessfulCreate",
                                        &format!("Created job {}", name(&r.object)),
                                    )
                                    .await;
                                    active.push(Arc::new(r.object));
                                    status["lastScheduleTime"] = json!(rfc(at));
                                }
                                Err(e) if e.code == 409 => {
                                    status["lastScheduleTime"] = json!(rfc(at));
                                }
                                Err(e) => {
                                    self.event(
                                        &cj,
                                        "Warning",
                                        "FailedCreate",
                                        &format!("Error creating job: {}", e.message),
                                    )
                                    .await;
                                    return Err(e.into());
                                }
                            }
                        }
                    }
                    if let Some(nx) = next {
                        let d = (nx - now).num_milliseconds().max(0) as u64 + 100;
                        requeue = Some(Duration::from_millis(d));
                    }
                }
            }
        }
        if active.is_empty() {
            status.as_object_mut().map(|m| m.remove("active"));
        } else {
            status["active"] = json!(active.iter().map(|j| job_ref(j)).collect::<Vec<_>>());
        }
        update_status_if_changed(&self.reg, &self.cj_info, &cj, status, &self.opts, &[404]).await?;
        Ok(requeue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        ts(Some(s)).unwrap()
    }

    #[test]
    fn parses_fields_and_descriptors() {
        assert!(Schedule::parse("* * * * *").is_ok());
        assert!(Schedule::parse("*/15 1-5 1,15 jan-jun mon-fri").is_ok());
        assert!(Schedule::parse("0 0 * *").is_err());
        assert!(Schedule::parse("60 * * * *").is_err());
        assert!(Schedule::parse("@fortnightly").is_err());
        assert_eq!(
            Schedule::parse("@every 1h30m").unwrap(),
            Schedule::Every(5400)
        );
        assert_eq!(
            Schedule::parse("@daily").unwrap(),
            Schedule::parse("0 0 * * *").unwrap()
        );
        assert_eq!(
            Schedule::parse("0 0 * * 7").unwrap(),
            Schedule::parse("0 0 * * 0").unwrap()
        );
    }

    #[test]
    fn next_times() {
        let s = |x: &str| Schedule::parse(x).unwrap();
        let t = at("2024-01-31T10:07:30Z");
        assert_eq!(
            s("* * * * *").next(t, 0).unwrap(),
            at("2024-01-31T10:08:00Z")
        );
        assert_eq!(
            s("*/15 * * * *").next(t, 0).unwrap(),
            at("2024-01-31T10:15:00Z")
        );
        assert_eq!(s("@hourly").next(t, 0).unwrap(), at("2024-01-31T11:00:00Z"));
        assert_eq!(
            s("@monthly").next(t, 0).unwrap(),
            at("2024-02-01T00:00:00Z")
        );
        assert_eq!(s("@yearly").next(t, 0).unwrap(), at("2025-01-01T00:00:00Z"));
        // 2024-01-31 is a Wednesday; Sunday midnight next.
        assert_eq!(s("@weekly").next(t, 0).unwrap(), at("2024-02-04T00:00:00Z"));
        assert_eq!(
            s("0 0 29 2 *").next(t, 0).unwrap(),
            at("2024-02-29T00:00:00Z")
        );
        // Day of month OR day of week when both are restricted.
        assert_eq!(
            s("0 0 15 * fri").next(t, 0).unwrap(),
            at("2024-02-02T00:00:00Z")
        );
        assert_eq!(
            s("@every 90s").next(t, 0).unwrap(),
            at("2024-01-31T10:09:00Z")
        );
        // Etc/GMT-2 is UTC+2: 09:00 local is 07:00 UTC.
        let off = zone_offset(Some("Etc/GMT-2")).unwrap();
        assert_eq!(off, 7200);
        assert_eq!(
            s("0 9 * * *").next(t, off).unwrap(),
            at("2024-02-01T07:00:00Z")
        );
        assert_eq!(zone_offset(Some("Etc/GMT+5")).unwrap(), -5 * 3600);
        assert!(zone_offset(Some("Europe/Paris")).is_err());
    }

    #[test]
    fn most_recent_counts_missed_times() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        let (last, n, next) = most_recent(
            &s,
            0,
            at("2024-01-01T00:05:00Z"),
            at("2024-01-01T00:41:00Z"),
        );
        assert_eq!(last.unwrap(), at("2024-01-01T00:40:00Z"));
        assert_eq!(n, 4);
        assert_eq!(next.unwrap(), at("2024-01-01T00:50:00Z"));
        let (last, n, _) = most_recent(
            &s,
            0,
            at("2024-01-01T00:40:00Z"),
            at("2024-01-01T00:41:00Z"),
        );
        assert!(last.is_none() && n == 0);
    }

    #[test]
    fn jobs_are_named_by_scheduled_minute() {
        let cj = json!({"metadata": {"name": "hello", "namespace": "d", "uid": "c1"},
            "spec": {"jobTemplate": {"metadata": {"labels": {"a": "b"}}, "spec": {"template": {}}}}});
        let j = job_for(&cj, at("2024-01-01T00:40:00Z"));
        assert_eq!(
            j["metadata"]["name"],
            format!("hello-{}", at("2024-01-01T00:40:00Z").timestamp() / 60)
        );
        assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
        assert_eq!(j["metadata"]["labels"]["a"], "b");
        assert_eq!(
            j["metadata"]["annotations"][SCHEDULED_TIMESTAMP],
            "2024-01-01T00:40:00Z"
        );
    }
}
