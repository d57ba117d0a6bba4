//! GetAccountPolicy and UpdateAccountPolicy: the wire form of an account
//! policy, parsed field by field (each bad value named), and back.

use tonic::Request;

use super::{
    TokenApi,
    convert::{duration, opt_account, to_timestamp},
};
use crate::{
    domain::{
        FieldViolation,
        policy::{self, AccountPolicy, Cidr, PolicyField},
    },
    error::{Error, Result},
    manage::policy::{PolicyPatch, PolicyView},
    pb,
};

fn to_pb_duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// An optional policy duration: unset is "no rule"; set, it must be positive.
fn opt_duration(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<std::time::Duration>, FieldViolation> {
    match d {
        None => Ok(None),
        Some(d) => policy::duration(field, Some(duration(field, Some(d))?)),
    }
}

pub(super) fn policy_to_pb(v: &PolicyView) -> pb::AccountPolicy {
    let p = &v.policy;
    pb::AccountPolicy {
        account_id: v.account_id.clone(),
        max_lifetime: p.max_lifetime.map(to_pb_duration),
        require_expiry: p.require_expiry,
        max_tokens_per_owner: p
            .max_tokens_per_owner
            .map_or(0, |n| i32::try_from(n).unwrap_or(i32::MAX)),
        disable_unused_after: p.disable_unused_after.map(to_pb_duration),
        default_allowed_cidrs: p
            .default_allowed_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect(),
        expiry_notice_before: p
            .expiry_notice_before
            .iter()
            .map(|d| to_pb_duration(*d))
            .collect(),
        custom: v.custom,
        updated_at: v.updated_at.map(to_timestamp),
        updated_by: v.updated_by.clone(),
    }
}

/// The masked fields of `p`, each parsed and named as `policy.<field>`.
fn patch(p: pb::AccountPolicy, paths: &[String]) -> Result<PolicyPatch> {
    let mut values = AccountPolicy::default();
    let mut fields = Vec::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        let field = PolicyField::parse(path).ok_or_else(|| {
            Error::invalid(
                format!("update_mask.paths[{i}]"),
                format!("{path:?} is not a policy field"),
            )
        })?;
        let name = format!("policy.{path}");
        match field {
            PolicyField::MaxLifetime => {
                values.max_lifetime = opt_duration(&name, p.max_lifetime.as_ref())?
            }
            PolicyField::RequireExpiry => values.require_expiry = p.require_expiry,
            PolicyField::MaxTokensPerOwner => {
                values.max_tokens_per_owner = match p.max_tokens_per_owner {
                    n if n < 0 => {
                        return Err(Error::invalid(
                            name,
                            "must not be negative (0 = the server's default)",
                        ));
                    }
                    0 => None,
                    n => Some(n as u32),
                }
            }
            PolicyField::DisableUnusedAfter => {
                values.disable_unused_after = opt_duration(&name, p.disable_unused_after.as_ref())?
            }
            PolicyField::DefaultAllowedCidrs => {
                values.default_allowed_cidrs = Cidr::parse_list(&name, &p.default_allowed_cidrs)?
            }
            PolicyField::ExpiryNoticeBefore => {
                let mut parsed = Vec::with_capacity(p.expiry_notice_before.len());
                for (j, d) in p.expiry_notice_before.iter().enumerate() {
                    parsed.push(duration(&format!("{name}[{j}]"), Some(d))?);
                }
                values.expiry_notice_before = policy::notices(&name, &parsed)?;
            }
        }
        if !fields.contains(&field) {
            fields.push(field);
        }
    }
    Ok(PolicyPatch {
        account_id: opt_account("policy.account_id", &p.account_id)?
            .map(crate::domain::AccountId::into_inner),
        values,
        fields,
    })
}

impl TokenApi {
    pub(super) async fn inner_get_account_policy(
        &self,
        req: Request<pb::GetAccountPolicyRequest>,
    ) -> Result<pb::GetAccountPolicyResponse> {
        let caller = self.caller(&req).await?;
        let account = opt_account("account_id", &req.get_ref().account_id)?
            .map(crate::domain::AccountId::into_inner);
        let v = self.manager.policies().get(&caller, account).await?;
        Ok(pb::GetAccountPolicyResponse {
            policy: Some(policy_to_pb(&v)),
        })
    }

    pub(super) async fn inner_update_account_policy(
        &self,
        req: Request<pb::UpdateAccountPolicyRequest>,
    ) -> Result<pb::UpdateAccountPolicyResponse> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let patch = patch(r.policy.unwrap_or_default(), &paths)?;
        let v = self.manager.policies().update(&caller, patch).await?;
        Ok(pb::UpdateAccountPolicyResponse {
            policy: Some(policy_to_pb(&v)),
        })
    }
}
