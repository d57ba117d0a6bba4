//! What `grpc.health.v1` reports. The server is SERVING while no condition
//! fails; each condition is set by the part that knows it:
//!
//! - `Store`: the store watcher, once the store has been unreachable for
//!   `--store-unhealthy-after`;
//! - `Follower` (PostgreSQL): the change-log follower, from the moment it is
//!   not running, or its LISTEN connection is lost, until it is connected
//!   again and a poll has caught up with the log. A replica that cannot learn
//!   of revocations must not take traffic;
//! - `Warming`: from start-up until the warm start has loaded the Validate
//!   cache (or timed out);
//! - `Draining`: shutdown, for good.
//!
//! Setters are synchronous (a `watch` channel); one task reports each change
//! to the health service and to the `tokend_health_serving` gauge.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{error::Result, telemetry::metrics};

/// One reason not to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Condition {
    Store = 1,
    Follower = 2,
    Draining = 4,
    Warming = 8,
}

/// The failing conditions, shared by whoever sets them and the reporter.
#[derive(Debug, Clone)]
pub struct Health {
    failing: watch::Sender<u8>,
}

impl Health {
    pub fn new(initially_failing: &[Condition]) -> Self {
        let mask = initially_failing.iter().fold(0, |m, c| m | *c as u8);
        Self {
            failing: watch::Sender::new(mask),
        }
    }

    /// Marks `condition` as met (`ok`) or failing.
    pub fn set(&self, condition: Condition, ok: bool) {
        self.failing.send_if_modified(|mask| {
            let old = *mask;
            if ok {
                *mask &= !(condition as u8);
            } else {
                *mask |= condition as u8;
            }
            *mask != old
        });
    }

    pub fn is_serving(&self) -> bool {
        *self.failing.borrow() == 0
    }

    /// Resolves once nothing fails (at once if nothing does).
    pub async fn until_serving(&self) {
        let mut changes = self.failing.subscribe();
        let _ = changes.wait_for(|mask| *mask == 0).await;
    }

    /// Resolves once `condition` is met (at once if it is).
    pub async fn until_met(&self, condition: Condition) {
        let mut changes = self.failing.subscribe();
        // The sender lives in `self`, so the channel cannot close meanwhile.
        let _ = changes.wait_for(|mask| mask & condition as u8 == 0).await;
    }

    /// Reports the current status under `services` (and "" for the whole
    /// server), then every change, until `stop`.
    pub async fn report(
        self,
        reporter: HealthReporter,
        services: &'static [&'static str],
        stop: CancellationToken,
    ) -> Result<()> {
        let mut changes = self.failing.subscribe();
        let mut last = None;
        loop {
            let mask = *changes.borrow_and_update();
            let serving = mask == 0;
            if last != Some(serving) {
                let status = if serving {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                tracing::info!(serving, failing = ?describe(mask), "health");
                for service in services.iter().copied().chain([""]) {
                    reporter.set_service_status(service, status).await;
                    metrics::health(service, serving);
                }
                last = Some(serving);
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                r = changes.changed() => if r.is_err() { return Ok(()) },
            }
        }
    }
}

fn describe(mask: u8) -> Vec<&'static str> {
    [
        (Condition::Store, "store unreachable"),
        (Condition::Follower, "change-log follower not caught up"),
        (Condition::Draining, "draining"),
        (Condition::Warming, "warm start loading the Validate cache"),
    ]
    .into_iter()
    .filter(|(c, _)| mask & *c as u8 != 0)
    .map(|(_, what)| what)
    .collect()
}

/// The change-log follower's side of `Condition::Follower`: ready once its
/// LISTEN connection is up and a poll that started after that connection
/// found nothing left to apply (so no change slipped by while it was down).
#[derive(Debug)]
pub struct FollowerStatus {
    health: Health,
    /// (connection epoch, connected)
    state: Mutex<(u64, bool)>,
}

/// The connection epoch a poll started in (`None`: not connected then).
#[derive(Debug, Clone, Copy)]
pub struct PollTicket(Option<u64>);

impl FollowerStatus {
    pub fn new(health: Health) -> Arc<Self> {
        Arc::new(Self {
            health,
            state: Mutex::new((0, false)),
        })
    }

    /// The LISTEN connection is (re-)established; not ready until a poll
    /// started from now on has caught up.
    pub fn listener_up(&self) {
        let mut s = self.state.lock();
        *s = (s.0 + 1, true);
        self.health.set(Condition::Follower, false);
    }

    /// The LISTEN connection is lost, or the follower stopped.
    pub fn listener_down(&self) {
        self.state.lock().1 = false;
        self.health.set(Condition::Follower, false);
    }

    pub fn poll_started(&self) -> PollTicket {
        let s = self.state.lock();
        PollTicket(s.1.then_some(s.0))
    }

    /// A poll that started with `ticket` read everything there was.
    pub fn caught_up(&self, ticket: PollTicket) {
        let s = self.state.lock();
        if s.1 && ticket.0 == Some(s.0) {
            self.health.set(Condition::Follower, true);
        }
    }

    /// Marks the follower down when dropped: held by each run of the
    /// follower, so one that ends or panics is never left looking ready.
    pub fn session(self: &Arc<Self>) -> FollowerSession {
        FollowerSession(Arc::clone(self))
    }
}

pub struct FollowerSession(Arc<FollowerStatus>);

impl Drop for FollowerSession {
    fn drop(&mut self) {
        self.0.listener_down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_only_when_nothing_fails() {
        let h = Health::new(&[Condition::Follower]);
        assert!(!h.is_serving());
        let f = FollowerStatus::new(h.clone());
        let early = f.poll_started();
        f.listener_up();
        f.caught_up(early);
        assert!(
            !h.is_serving(),
            "a poll from before the connection proves nothing"
        );
        let ticket = f.poll_started();
        f.caught_up(ticket);
        assert!(h.is_serving());
        h.set(Condition::Store, false);
        assert!(!h.is_serving());
        h.set(Condition::Store, true);
        assert!(h.is_serving());
        {
            let _session = f.session();
        }
        assert!(!h.is_serving(), "a follower that stopped is not ready");
        f.listener_up();
        f.caught_up(f.poll_started());
        assert!(h.is_serving());
        h.set(Condition::Draining, false);
        assert!(!h.is_serving());
    }
}
