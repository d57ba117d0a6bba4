//! The `--policy-*` flags: the account policy of every account that has no
//! policy of its own (GetAccountPolicy shows them with `custom: false`).

use std::time::Duration;

use clap::{ArgAction, Args};

use crate::{
    config::ConfigError,
    domain::policy::{self, AccountPolicy, Cidr},
};

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[derive(Debug, Clone, Args)]
pub struct PolicyDefaults {
    /// Default longest token lifetime (e.g. `366d`); unset: no cap.
    #[arg(long, env = "TOKEND_POLICY_MAX_LIFETIME", value_parser = duration, global = true)]
    pub policy_max_lifetime: Option<Duration>,
    /// Default: every token must have an expiry.
    #[arg(long, env = "TOKEND_POLICY_REQUIRE_EXPIRY", default_value_t = false, action = ArgAction::Set, global = true)]
    pub policy_require_expiry: bool,
    /// Default: disable tokens unused this long (e.g. `365d`); unset: never.
    #[arg(long, env = "TOKEND_POLICY_DISABLE_UNUSED_AFTER", value_parser = duration, global = true)]
    pub policy_disable_unused_after: Option<Duration>,
    /// Default CIDR ranges new tokens are bound to, comma-separated; unset: unbound.
    #[arg(
        long,
        env = "TOKEND_POLICY_DEFAULT_ALLOWED_CIDRS",
        value_delimiter = ',',
        global = true
    )]
    pub policy_default_allowed_cidrs: Vec<String>,
    /// Default expiry-notice horizons, comma-separated.
    #[arg(
        long,
        env = "TOKEND_POLICY_EXPIRY_NOTICE_BEFORE",
        value_delimiter = ',',
        default_value = "30d,7d,1d",
        value_parser = duration,
        global = true
    )]
    pub policy_expiry_notice_before: Vec<Duration>,
}

impl PolicyDefaults {
    /// The default policy, checked like one set through the API.
    pub fn account_policy(&self) -> Result<AccountPolicy, ConfigError> {
        let bad = |v: crate::domain::FieldViolation| {
            ConfigError::new(
                format!("--policy-{}", v.field.replace('_', "-")),
                v.description,
            )
        };
        Ok(AccountPolicy {
            max_lifetime: policy::duration("max_lifetime", self.policy_max_lifetime)
                .map_err(bad)?,
            require_expiry: self.policy_require_expiry,
            max_tokens_per_owner: None,
            disable_unused_after: policy::duration(
                "disable_unused_after",
                self.policy_disable_unused_after,
            )
            .map_err(bad)?,
            default_allowed_cidrs: Cidr::parse_list(
                "default_allowed_cidrs",
                &self.policy_default_allowed_cidrs,
            )
            .map_err(bad)?,
            expiry_notice_before: policy::notices(
                "expiry_notice_before",
                &self.policy_expiry_notice_before,
            )
            .map_err(bad)?,
        })
    }
}
