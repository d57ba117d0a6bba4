//! Load and propagation trials shared by the multi-replica tests: steady
//! Validate traffic on every replica, mutations on one, and how long each
//! other replica takes to stop accepting what was mutated.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokend::pb;

use super::harness::*;
use crate::helpers::{TestApp, id_of};

/// A value that must never validate again (with these required modules) once
/// `returned` + 2 s has passed.
#[derive(Clone)]
pub(crate) struct Dead {
    pub(crate) label: String,
    pub(crate) value: String,
    pub(crate) required: Vec<String>,
    pub(crate) expected: pb::Reason,
    pub(crate) returned: Instant,
}

#[derive(Default)]
pub(crate) struct Shared {
    /// Values that stay valid (with `svc:read`) all along.
    pub(crate) steady: Mutex<Vec<String>>,
    pub(crate) dead: Mutex<Vec<Dead>>,
    /// Validates that started more than 2 s after a mutation returned and
    /// still answered valid=true.
    pub(crate) late_valid: Mutex<Vec<String>>,
    pub(crate) picks: AtomicU64,
}

impl Shared {
    pub(crate) fn record_late(&self, what: String) {
        self.late_valid.lock().unwrap().push(what);
    }

    pub(crate) fn pick_dead(&self) -> Option<Dead> {
        let dead = self.dead.lock().unwrap();
        if dead.is_empty() {
            return None;
        }
        let i = self.picks.fetch_add(7919, Ordering::Relaxed) as usize % dead.len();
        Some(dead[i].clone())
    }
}

#[derive(Debug, Default)]
pub(crate) struct LoadReport {
    pub(crate) replica: String,
    pub(crate) calls: u64,
    pub(crate) errors: Vec<String>,
    pub(crate) steady_rejected: Vec<String>,
}

pub(crate) struct Load {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) task: tokio::task::JoinHandle<LoadReport>,
}

impl Load {
    pub(crate) async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Continuous Validate traffic on one replica: steady tokens (must be valid)
/// interleaved with dead ones (must not be valid 2 s after their mutation).
pub(crate) fn start_load(name: &str, c: Client, caller: String, shared: Arc<Shared>) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let name = name.to_owned();
    let task = tokio::spawn(async move {
        let mut report = LoadReport {
            replica: name.clone(),
            ..Default::default()
        };
        let required = modules(&["svc:read"]);
        let mut i = 0usize;
        while !flag.load(Ordering::Relaxed) {
            i += 1;
            let steady = {
                let s = shared.steady.lock().unwrap();
                s[i % s.len()].clone()
            };
            report.calls += 1;
            match validate(&c, &caller, &steady, &required).await {
                Ok(v) if v.valid => {}
                Ok(v) => {
                    report
                        .steady_rejected
                        .push(format!("{} -> {:?}", id_of(&steady), v.reason()))
                }
                Err(e) => report
                    .errors
                    .push(format!("{:?}: {}", e.code(), e.message())),
            }
            if let Some(d) = shared.pick_dead() {
                let started = Instant::now();
                report.calls += 1;
                match validate(&c, &caller, &d.value, &d.required).await {
                    Ok(v) if v.valid && started > d.returned + Duration::from_secs(2) => shared
                        .record_late(format!(
                            "{name}: {} valid {} after its mutation returned",
                            d.label,
                            ms(started - d.returned)
                        )),
                    Ok(_) => {}
                    Err(e) => report
                        .errors
                        .push(format!("{:?}: {}", e.code(), e.message())),
                }
            }
            if report.errors.len() > 50 {
                // A replica that is gone: no point hammering it.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        report
    });
    Load { stop, task }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Disable,
    Revoke,
    Rotate,
    Update,
}

/// One replica's view of one mutation.
#[derive(Debug)]
pub(crate) struct Sample {
    pub(crate) kind: Kind,
    pub(crate) reader: String,
    /// From the mutation's return to the first rejection received.
    pub(crate) propagation: Duration,
}

/// A named client of one replica.
#[derive(Clone)]
pub(crate) struct Peer {
    pub(crate) name: String,
    pub(crate) client: Client,
}

pub(crate) async fn peer(name: &str, app: &TestApp) -> Peer {
    Peer {
        name: name.into(),
        client: client(app),
    }
}

/// Polls `value` on `reader` in a tight loop until it is rejected; records
/// late valid answers. Returns (propagation, reason).
pub(crate) async fn until_rejected(
    reader: Peer,
    caller: String,
    value: String,
    required: Vec<String>,
    returned: Instant,
    shared: Arc<Shared>,
) -> (String, Duration, Result<pb::Reason, String>) {
    loop {
        let started = Instant::now();
        match validate(&reader.client, &caller, &value, &required).await {
            Ok(v) if v.valid => {
                if started > returned + Duration::from_secs(2) {
                    shared.record_late(format!(
                        "{}: {} valid {} after its mutation returned",
                        reader.name,
                        id_of(&value),
                        ms(started - returned)
                    ));
                }
            }
            Ok(v) => return (reader.name, returned.elapsed(), Ok(v.reason())),
            Err(e) => {
                return (
                    reader.name,
                    returned.elapsed(),
                    Err(format!("{:?}: {}", e.code(), e.message())),
                );
            }
        }
        if returned.elapsed() > Duration::from_secs(5) {
            return (
                reader.name,
                returned.elapsed(),
                Err("still valid after 5 s".into()),
            );
        }
    }
}

/// Validates `value` on every reader until it is valid (caching it there).
pub(crate) async fn warm(
    readers: &[Peer],
    caller: &str,
    value: &str,
    required: &[String],
    what: &str,
) {
    let mut set = tokio::task::JoinSet::new();
    for r in readers {
        let (r, caller, value, required, what) = (
            r.clone(),
            caller.to_owned(),
            value.to_owned(),
            required.to_vec(),
            what.to_owned(),
        );
        set.spawn(async move {
            for _ in 0..50 {
                let v = validate(&r.client, &caller, &value, &required)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: warming on {}: {e}", r.name));
                if v.valid {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{what}: {} never valid on {}", id_of(&value), r.name);
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// Issues a token on `writer`, warms it on every reader, mutates it on
/// `writer`, then measures how long each reader keeps accepting it.
/// Returns the samples and the still-valid value of a rotated token.
pub(crate) async fn trial(
    kind: Kind,
    n: usize,
    writer: &mut Peer,
    readers: &[Peer],
    caller: &str,
    shared: &Arc<Shared>,
) -> (Vec<Sample>, Option<String>) {
    let read = modules(&["svc:read"]);
    let (id, value) = issue_named(&writer.client, caller, &format!("trial {n}")).await;
    warm(readers, caller, &value, &read, &format!("trial {n}")).await;
    let w = &mut writer.client;
    let (dead_value, required, expected, fresh) = match kind {
        Kind::Disable => {
            w.change_state(caller, &id, pb::State::Disabled, "trial")
                .await
                .expect("SetState");
            (value, read, pb::Reason::Disabled, None)
        }
        Kind::Revoke => {
            revoke_id(w, caller, &id).await.expect("Revoke");
            (value, read, pb::Reason::Revoked, None)
        }
        Kind::Rotate => {
            let (_, new) = rotate(w, caller, &id, None).await.expect("Rotate");
            (value, read, pb::Reason::Unknown, Some(new))
        }
        Kind::Update => {
            update(
                w,
                caller,
                pb::UpdateRequest {
                    id: id.clone(),
                    modules: modules(&["svc:write"]),
                    ..Default::default()
                },
                &["modules"],
            )
            .await
            .expect("Update");
            (value, read, pb::Reason::MissingModules, None)
        }
    };
    let returned = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for r in readers {
        set.spawn(until_rejected(
            r.clone(),
            caller.to_owned(),
            dead_value.clone(),
            required.clone(),
            returned,
            Arc::clone(shared),
        ));
    }
    let mut samples = Vec::new();
    while let Some(res) = set.join_next().await {
        let (reader, propagation, outcome) = res.unwrap();
        match outcome {
            Ok(reason) => assert_eq!(
                reason, expected,
                "trial {n} ({kind:?} on {}): {reader} answered {reason:?}",
                writer.name
            ),
            Err(e) => panic!("trial {n} ({kind:?} on {}): {reader}: {e}", writer.name),
        }
        samples.push(Sample {
            kind,
            reader,
            propagation,
        });
    }
    shared.dead.lock().unwrap().push(Dead {
        label: format!("trial {n} ({kind:?} {id})"),
        value: dead_value,
        required,
        expected,
        returned,
    });
    if let Some(new) = &fresh {
        for r in readers {
            let c = r.client.clone();
            assert_eq!(
                c.reason(caller, new, &["svc:read"]).await,
                pb::Reason::Valid,
                "trial {n}: the rotated value on {}",
                r.name
            );
        }
    }
    (samples, fresh)
}

pub(crate) fn kind_for(n: usize) -> Kind {
    match n % 8 {
        0 | 2 | 5 => Kind::Disable,
        1 | 3 | 6 => Kind::Revoke,
        4 => Kind::Rotate,
        _ => Kind::Update,
    }
}

/// Issues `n` steady tokens on `writer` and warms them on every replica.
pub(crate) async fn steady_tokens(
    writer: &Client,
    all: &[Client],
    caller: &str,
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let (_, v) = issue_named(writer, caller, &format!("steady {i}")).await;
        for c in all.iter() {
            assert_eq!(c.reason(caller, &v, &["svc:read"]).await, pb::Reason::Valid);
        }
        out.push(v);
    }
    out
}

pub(crate) fn assert_loads_clean(reports: &[LoadReport]) {
    for r in reports {
        println!("load on {}: {} Validates", r.replica, r.calls);
        assert!(r.calls > 0, "no load ran on {}", r.replica);
        assert!(
            r.errors.is_empty(),
            "load on {}: {} errors, e.g. {:?}",
            r.replica,
            r.errors.len(),
            &r.errors[..r.errors.len().min(3)]
        );
        assert!(
            r.steady_rejected.is_empty(),
            "load on {}: steady tokens rejected: {:?}",
            r.replica,
            &r.steady_rejected[..r.steady_rejected.len().min(3)]
        );
    }
}

pub(crate) fn assert_no_late_valid(shared: &Shared) {
    let late = shared.late_valid.lock().unwrap();
    assert!(
        late.is_empty(),
        "{} Validates started > 2 s after a mutation returned and answered valid, e.g. {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
}

/// Every dead value is rejected with its expected reason on `c`.
pub(crate) async fn assert_all_dead(c: &Client, on: &str, caller: &str, shared: &Shared) {
    let dead = shared.dead.lock().unwrap().clone();
    for d in &dead {
        let v = validate(c, caller, &d.value, &d.required)
            .await
            .unwrap_or_else(|e| panic!("{on}: Validate {}: {e}", d.label));
        assert_eq!(v.reason(), d.expected, "{on}: {}", d.label);
    }
}

pub(crate) fn propagation_figures(
    label: &str,
    samples: &[Sample],
) -> (Duration, Duration, Duration) {
    for kind in [Kind::Disable, Kind::Revoke, Kind::Rotate, Kind::Update] {
        let s: Vec<_> = samples
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.propagation)
            .collect();
        if !s.is_empty() {
            figures(&format!("{label} {kind:?}"), &s);
        }
    }
    let mut readers: Vec<_> = samples.iter().map(|s| s.reader.clone()).collect();
    readers.sort();
    readers.dedup();
    for r in readers {
        let s: Vec<_> = samples
            .iter()
            .filter(|s| s.reader == r)
            .map(|s| s.propagation)
            .collect();
        figures(&format!("{label} to {r}"), &s);
    }
    let all: Vec<_> = samples.iter().map(|s| s.propagation).collect();
    figures(&format!("{label} all"), &all)
}

/// Asserts the propagation bounds of the contract: p99 <= 1 s, max <= 2 s.
pub(crate) fn assert_propagation(label: &str, samples: &[Sample]) {
    let (_, p99, max) = propagation_figures(label, samples);
    assert!(p99 <= Duration::from_secs(1), "{label}: p99 {}", ms(p99));
    assert!(max <= Duration::from_secs(2), "{label}: max {}", ms(max));
}

/// Polls `value` on every reader until rejected; asserts the reason.
pub(crate) async fn rejections(
    readers: &[Peer],
    caller: &str,
    value: &str,
    expected: pb::Reason,
    since: Instant,
    shared: &Arc<Shared>,
    kind: Kind,
) -> Vec<Sample> {
    let mut set = tokio::task::JoinSet::new();
    for r in readers {
        set.spawn(until_rejected(
            r.clone(),
            caller.to_owned(),
            value.to_owned(),
            modules(&["svc:read"]),
            since,
            Arc::clone(shared),
        ));
    }
    let mut out = Vec::new();
    while let Some(res) = set.join_next().await {
        let (reader, propagation, outcome) = res.unwrap();
        assert_eq!(outcome, Ok(expected), "{reader} on {}", id_of(value));
        out.push(Sample {
            kind,
            reader,
            propagation,
        });
    }
    out
}
