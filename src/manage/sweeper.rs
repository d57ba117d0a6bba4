//! The hygiene sweeper: a supervised background task of every server that
//! acts on two fields of the account policies (`domain::hygiene` has the
//! rules, `store::sweep` the queries and why they are exactly-once):
//!
//! - **Expiry notices.** For each horizon of a token's account's
//!   `expiry_notice_before` (or the server's default), one
//!   `EVENT_KIND_EXPIRING_SOON` once `expires_at - horizon <= now <
//!   expires_at`, and one `EVENT_KIND_EXPIRED` once `expires_at` passes; a
//!   token first seen inside several horizons gets the nearest one only.
//!   Each notice is keyed by (token, kind, horizon, expiry) in the store, so
//!   it is recorded exactly once across replicas and restarts, and an Update
//!   that moves the expiry gets fresh ones. Revoked tokens get none; disabled
//!   ones still do (they can be enabled again).
//! - **Unused tokens.** Active tokens unused (never used: since created) for
//!   longer than the account's `disable_unused_after` are disabled, reason
//!   "unused for <d>", with an `EVENT_KIND_AUTO_DISABLED` event; the change
//!   goes through the change log and NOTIFY like every mutation, so every
//!   replica's Validate cache learns of it (this one's at once).
//!
//! Each pass reads only what came due since the last one: notices from the
//! horizon starts that passed since the watermark (minus `SLACK`, for late
//! commits and clock skew between replicas) and from tokens written since
//! then (new ones, moved expiries); the first pass ever looks at every token
//! inside a horizon now, but gives `Expired` only to tokens that expired in
//! the last `SLACK` (not to every token that expired before the sweeper
//! existed). The watermark moves only after a whole pass succeeded: a
//! replica that dies mid-pass leaves it, and the next pass redoes the
//! window, the store's key turning repeats into no-ops.
//!
//! **Last-used lag.** Last-used times reach the store in batches (every
//! `--last-used-flush-interval`, each flush bounded by the store timeout),
//! so the stored time may lag a use by `flush_lag`. The sweeper therefore
//! judges "unused" as of `now - flush_lag`: a token used at any time in the
//! `disable_unused_after` before that has a stored time after the cutoff and
//! is kept. A token that had already been unused for longer than the limit
//! and is used again in the last `flush_lag` races its disabling exactly as
//! it would race an admin's Disable; this process skips tokens it has a use
//! pending for, other replicas' pending uses are not visible to it.
//!
//! Horizons added to a policy (or to the server's default) apply from the
//! next horizon start that passes, and to tokens written afterwards; a token
//! whose horizon start already passed under the old policy is not revisited.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{
        TokenState,
        hygiene::{self, DueNotice},
        policy::AccountPolicy,
    },
    error::Result,
    store::{NoticeRange, NoticeToken, RuleAccounts, Store},
    telemetry::metrics,
    validation::{Validator, clock::Clock, usage::UsageRecorder},
};

/// How far before the watermark each pass looks again: commits that land
/// late (a transaction stamps its times before it commits, within the store
/// timeout) and clocks of replicas that disagree by less than this.
pub const SLACK: Duration = Duration::from_secs(120);

/// Most tokens disabled per transaction: each costs four statements (the
/// token, its event, its change-log row and NOTIFY), so a batch stays well
/// inside one store call's timeout.
pub const DISABLE_BATCH: u64 = 50;

/// The sweeper's settings (`--sweep*`).
#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub interval: Duration,
    /// Tokens per notice transaction (auto-disables: at most `DISABLE_BATCH`).
    pub batch: u64,
    /// The longest a use can take to reach the stored last-used time.
    pub flush_lag: Duration,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub expiring_soon: u64,
    pub expired: u64,
    pub auto_disabled: u64,
}

pub struct Sweeper {
    store: Arc<Store>,
    validator: Arc<Validator>,
    usage: Arc<UsageRecorder>,
    defaults: AccountPolicy,
    clock: Clock,
    config: SweepConfig,
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn minus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_sub_signed(chrono(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(chrono(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Sweeper {
    pub fn new(
        store: Arc<Store>,
        validator: Arc<Validator>,
        usage: Arc<UsageRecorder>,
        defaults: AccountPolicy,
        clock: Clock,
        config: SweepConfig,
    ) -> Self {
        Self {
            store,
            validator,
            usage,
            defaults,
            clock,
            config,
        }
    }

    /// Sweeps now and then every interval, until `stop`. A failed pass is
    /// logged and retried at the next interval (its committed batches stay).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> Result<()> {
        tracing::info!(interval = ?self.config.interval, batch = self.config.batch, "sweeper: expiry notices and unused tokens in the background");
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                r = self.sweep_once() => match r {
                    Ok(r) if r.expiring_soon + r.expired + r.auto_disabled > 0 => {
                        tracing::info!(expiring_soon = r.expiring_soon, expired = r.expired, auto_disabled = r.auto_disabled, "sweeper: pass done");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "sweeper: pass failed; retrying next interval"),
                },
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }

    /// One pass: notices, then unused tokens.
    #[tracing::instrument(skip_all)]
    pub async fn sweep_once(&self) -> Result<SweepReport> {
        let started = Instant::now();
        let mut report = SweepReport::default();
        let result = async {
            let mut policies = HashMap::new();
            let rules = self.store.policy_rules().await?;
            self.notices(&rules, &mut policies, &mut report).await?;
            self.unused(&rules, &mut report).await
        }
        .await;
        metrics::sweep_finished(
            started.elapsed(),
            report.expiring_soon,
            report.expired,
            report.auto_disabled,
        );
        result.map(|()| report)
    }

    /// The policy in force for `account`, looked up once per pass.
    async fn policy<'a>(
        &self,
        policies: &'a mut HashMap<String, AccountPolicy>,
        account: &str,
    ) -> Result<&'a AccountPolicy> {
        if !policies.contains_key(account) {
            let p = match self.store.find_policy(account).await? {
                Some(s) => s.policy,
                None => self.defaults.clone(),
            };
            policies.insert(account.to_owned(), p);
        }
        Ok(&policies[account])
    }

    /// Settles every notice that came due.
    async fn notices(
        &self,
        rules: &crate::store::PolicyRules,
        policies: &mut HashMap<String, AccountPolicy>,
        report: &mut SweepReport,
    ) -> Result<()> {
        let now = self.clock.now_utc();
        let mut horizons: Vec<Duration> = self.defaults.expiry_notice_before.clone();
        for list in &rules.notice_lists {
            horizons.extend(list.iter().map(|s| Duration::from_secs(*s)));
        }
        horizons.sort_unstable();
        horizons.dedup();
        let farthest = horizons.last().copied().unwrap_or(Duration::ZERO);
        let ranges = match self.store.sweep_watermark().await? {
            None => vec![NoticeRange::Expiring {
                after: minus(now, SLACK),
                until: plus(now, farthest),
            }],
            Some(mark) => {
                let from = minus(mark.min(now), SLACK);
                let mut r = vec![NoticeRange::Written {
                    since: from,
                    until: plus(now, farthest),
                }];
                for h in std::iter::once(Duration::ZERO).chain(horizons.iter().copied()) {
                    r.push(NoticeRange::Expiring {
                        after: plus(from, h),
                        until: plus(now, h),
                    });
                }
                r
            }
        };
        for range in ranges {
            let mut after = None;
            loop {
                let page = self
                    .store
                    .notice_candidates(range, after.clone(), self.config.batch)
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some((last.key, last.id.clone()));
                for account in crate::store::accounts_of(&page) {
                    self.policy(policies, &account).await?;
                }
                let due = |t: &NoticeToken| -> Vec<DueNotice> {
                    let horizons = policies
                        .get(&t.account_id)
                        .map_or(&self.defaults.expiry_notice_before, |p| {
                            &p.expiry_notice_before
                        });
                    hygiene::due_notices(t.expires_at, horizons, now)
                };
                let done = self.store.record_notices(&page, now, due).await?;
                report.expiring_soon += done.expiring_soon;
                report.expired += done.expired;
                if (page.len() as u64) < self.config.batch {
                    break;
                }
            }
        }
        self.store.advance_sweep_watermark(now).await
    }

    /// Disables every unused token under each rule in force.
    async fn unused(
        &self,
        rules: &crate::store::PolicyRules,
        report: &mut SweepReport,
    ) -> Result<()> {
        let mut todo: Vec<(RuleAccounts, Duration)> = rules
            .disable_after_secs
            .iter()
            .map(|s| {
                (
                    RuleAccounts::Custom(*s),
                    Duration::from_secs(u64::try_from(*s).unwrap_or(0)),
                )
            })
            .collect();
        if let Some(d) = self.defaults.disable_unused_after {
            todo.push((RuleAccounts::Default, d));
        }
        for (accounts, after) in todo {
            let as_of = minus(self.clock.now_utc(), self.config.flush_lag);
            let cutoff = minus(as_of, after);
            let now = self.clock.now_utc();
            let mut next = None;
            let limit = self.config.batch.min(DISABLE_BATCH);
            loop {
                let usage = &self.usage;
                let decide = |t: crate::domain::Token| {
                    if t.state != TokenState::Active
                        || !hygiene::is_unused(&t, after, as_of)
                        || usage.pending_at(t.id).is_some()
                    {
                        return None;
                    }
                    Some(hygiene::auto_disabled(t, after, now))
                };
                let batch = self
                    .store
                    .auto_disable_batch(accounts, cutoff, next, limit, decide)
                    .await?;
                for t in &batch.disabled {
                    self.validator.apply(t, None);
                }
                report.auto_disabled += batch.disabled.len() as u64;
                if batch.scanned < limit {
                    break;
                }
                next = batch.next;
            }
        }
        Ok(())
    }
}
