//! The scheduling queue: an active queue ordered by priority then arrival,
//! a backoff queue (per-pod exponential backoff, 1s doubling to 10s) and
//! the unschedulable pods, which go back when the cluster changes.

use crate::types::PodInfo;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried at least this often (upstream: 5 minutes).
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

pub fn backoff_for(attempts: u32) -> Duration {
    let n = attempts.saturating_sub(1).min(16);
    (INITIAL_BACKOFF * (1u32 << n)).min(MAX_BACKOFF)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active(u64),
    Backoff(u64),
    Unschedulable(Instant),
    /// Popped; the scheduling cycle number.
    InFlight(u64),
    /// Placed on a node; waiting for the binding to show up.
    Assumed,
}

struct Entry {
    pod: Arc<PodInfo>,
    attempts: u32,
    last_attempt: Option<Instant>,
    state: State,
}

#[derive(Default)]
struct Inner {
    pods: HashMap<String, Entry>,
    active: BinaryHeap<(i64, Reverse<u64>, String)>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    seq: u64,
    cycle: u64,
    /// The cycle at the last cluster change that may help pending pods.
    move_cycle: u64,
    waiting_for_pods: HashSet<String>,
    last_flush: Option<Instant>,
    closed: bool,
}

impl Inner {
    fn push_active(&mut self, key: &str) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(e) = self.pods.get_mut(key) {
            e.state = State::Active(seq);
            self.active
                .push((e.pod.priority, Reverse(seq), key.to_string()));
        }
    }
    fn push_backoff(&mut self, key: &str, until: Instant) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(e) = self.pods.get_mut(key) {
            e.state = State::Backoff(seq);
            self.backoff.push(Reverse((until, seq, key.to_string())));
        }
    }
    fn backoff_until(&self, key: &str) -> Option<Instant> {
        let e = self.pods.get(key)?;
        let last = e.last_attempt?;
        let until = last + backoff_for(e.attempts);
        (until > Instant::now()).then_some(until)
    }
    /// Active, or backoff when the pod's backoff has not run out.
    fn requeue(&mut self, key: &str) {
        match self.backoff_until(key) {
            Some(until) => self.push_backoff(key, until),
            None => self.push_active(key),
        }
    }
    fn flush_backoff(&mut self, now: Instant) {
        while let Some(Reverse((until, seq, _))) = self.backoff.peek() {
            if *until > now {
                break;
            }
            let (seq, Reverse((_, _, key))) = (*seq, self.backoff.pop().expect("peeked"));
            if self
                .pods
                .get(&key)
                .is_some_and(|e| e.state == State::Backoff(seq))
            {
                self.push_active(&key);
            }
        }
    }
    fn flush_unschedulable(&mut self, now: Instant) {
        if self
            .last_flush
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(30))
        {
            return;
        }
        self.last_flush = Some(now);
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, e)| {
                matches!(e.state, State::Unschedulable(t) if now.duration_since(t) >= MAX_UNSCHEDULABLE)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.requeue(&k);
        }
    }
}

#[derive(Default)]
pub struct SchedulingQueue {
    inner: Mutex<Inner>,
    notify: Notify,
}

impl SchedulingQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new pending pod, or an update to one. `changed`: its spec or labels
    /// changed, so an unschedulable pod deserves another try.
    pub fn add_or_update(&self, pod: Arc<PodInfo>, changed: bool) {
        let mut q = self.lock();
        let key = pod.key.clone();
        match q.pods.get_mut(&key) {
            None => {
                q.pods.insert(
                    key.clone(),
                    Entry {
                        pod,
                        attempts: 0,
                        last_attempt: None,
                        state: State::Active(0),
                    },
                );
                q.push_active(&key);
            }
            Some(e) => {
                e.pod = pod;
                if changed && matches!(e.state, State::Unschedulable(_)) {
                    q.requeue(&key);
                } else {
                    return;
                }
            }
        }
        drop(q);
        self.notify.notify_one();
    }

    pub fn delete(&self, key: &str) {
        let mut q = self.lock();
        q.pods.remove(key);
        q.waiting_for_pods.remove(key);
    }

    pub fn contains(&self, key: &str) -> bool {
        self.lock().pods.contains_key(key)
    }

    /// Waits for the next pod to schedule; returns it with its cycle number.
    pub async fn pop(&self) -> Option<(Arc<PodInfo>, u64)> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let mut q = self.lock();
                if q.closed {
                    return None;
                }
                let now = Instant::now();
                q.flush_backoff(now);
                q.flush_unschedulable(now);
                while let Some((_, Reverse(seq), key)) = q.active.pop() {
                    if !q
                        .pods
                        .get(&key)
                        .is_some_and(|e| e.state == State::Active(seq))
                    {
                        continue;
                    }
                    q.cycle += 1;
                    let cycle = q.cycle;
                    let e = q.pods.get_mut(&key).expect("checked");
                    e.state = State::InFlight(cycle);
                    e.attempts += 1;
                    e.last_attempt = Some(now);
                    return Some((e.pod.clone(), cycle));
                }
                q.backoff
                    .peek()
                    .map(|Reverse((t, _, _))| t.saturating_duration_since(now))
                    .unwrap_or(Duration::from_secs(30))
                    .min(Duration::from_secs(30))
            };
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }

    /// The pod did not fit anywhere. If the cluster changed while it was
    /// being scheduled it goes to backoff rather than waiting for a change.
    pub fn unschedulable(&self, key: &str, cycle: u64) {
        let mut q = self.lock();
        let Some(e) = q.pods.get(key) else { return };
        if e.state != State::InFlight(cycle) {
            return;
        }
        let needs_pods = !e.pod.affinity.is_empty();
        if q.move_cycle >= cycle {
            q.requeue(key);
            drop(q);
            self.notify.notify_one();
            return;
        }
        if needs_pods {
            q.waiting_for_pods.insert(key.to_string());
        }
        q.pods.get_mut(key).expect("present").state = State::Unschedulable(Instant::now());
    }

    /// The pod was placed on a node; updates are ignored until it is bound.
    pub fn assumed(&self, key: &str) {
        if let Some(e) = self.lock().pods.get_mut(key) {
            e.state = State::Assumed;
        }
    }

    /// Binding (or some API call) failed: try again after the pod's backoff.
    pub fn retry(&self, key: &str) {
        let mut q = self.lock();
        if q.pods.contains_key(key) {
            q.requeue(key);
            drop(q);
            self.notify.notify_one();
        }
    }

    /// A node appeared or changed, or a pod went away: every unschedulable
    /// pod gets another try (after its backoff).
    pub fn move_all(&self) {
        let mut q = self.lock();
        q.move_cycle = q.cycle;
        let keys: Vec<String> = q
            .pods
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Unschedulable(_)))
            .map(|(k, _)| k.clone())
            .collect();
        q.waiting_for_pods.clear();
        if keys.is_empty() {
            return;
        }
        for k in keys {
            q.requeue(&k);
        }
        drop(q);
        self.notify.notify_one();
    }

    /// A pod was placed: pods waiting for pod affinity get another try.
    pub fn move_for_pod_added(&self) {
        let mut q = self.lock();
        if q.waiting_for_pods.is_empty() {
            return;
        }
        let keys: Vec<String> = q.waiting_for_pods.drain().collect();
        for k in keys {
            if q.pods
                .get(&k)
                .is_some_and(|e| matches!(e.state, State::Unschedulable(_)))
            {
                q.requeue(&k);
            }
        }
        drop(q);
        self.notify.notify_one();
    }

    /// (active, backoff, unschedulable) counts.
    pub fn stats(&self) -> (usize, usize, usize) {
        let q = self.lock();
        let mut s = (0, 0, 0);
        for e in q.pods.values() {
            match e.state {
                State::Active(_) => s.0 += 1,
                State::Backoff(_) => s.1 += 1,
                State::Unschedulable(_) => s.2 += 1,
                _ => {}
            }
        }
        s
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, prio: i64) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            key: format!("/registry/core/pods/default/{name}"),
            name: name.into(),
            priority: prio,
            ..Default::default()
        })
    }

    #[test]
    fn backoff_doubles_from_1s_to_10s() {
        assert_eq!(backoff_for(1), Duration::from_secs(1));
        assert_eq!(backoff_for(2), Duration::from_secs(2));
        assert_eq!(backoff_for(4), Duration::from_secs(8));
        assert_eq!(backoff_for(5), Duration::from_secs(10));
        assert_eq!(backoff_for(100), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn priority_then_arrival() {
        let q = SchedulingQueue::default();
        q.add_or_update(pod("a", 0), false);
        q.add_or_update(pod("b", 10), false);
        q.add_or_update(pod("c", 0), false);
        q.add_or_update(pod("d", 10), false);
        let mut order = vec![];
        for _ in 0..4 {
            order.push(q.pop().await.unwrap().0.name.clone());
        }
        assert_eq!(order, ["b", "d", "a", "c"]);
    }

    #[tokio::test]
    async fn unschedulable_pods_return_after_a_move_with_backoff() {
        let q = SchedulingQueue::default();
        q.add_or_update(pod("a", 0), false);
        let (p, cycle) = q.pop().await.unwrap();
        q.unschedulable(&p.key, cycle);
        assert_eq!(q.stats(), (0, 0, 1));
        q.move_all();
        // Still in its 1s backoff.
        assert_eq!(q.stats(), (0, 1, 0));
        let start = Instant::now();
        let (p2, c2) = q.pop().await.unwrap();
        assert_eq!(p2.name, "a");
        assert!(Instant::now() - start >= Duration::from_millis(900));
        // A move during the cycle sends it to backoff, not unschedulable.
        q.move_all();
        q.unschedulable(&p2.key, c2);
        assert_eq!(q.stats(), (0, 1, 0));
        q.delete(&p2.key);
        assert_eq!(q.stats(), (0, 0, 0));
    }

    #[tokio::test]
    async fn assumed_pods_ignore_updates() {
        let q = SchedulingQueue::default();
        q.add_or_update(pod("a", 0), false);
        let (p, _) = q.pop().await.unwrap();
        q.assumed(&p.key);
        q.add_or_update(pod("a", 0), true);
        assert_eq!(q.stats(), (0, 0, 0));
        q.retry(&p.key);
        assert_eq!(q.stats(), (0, 1, 0));
    }
}
