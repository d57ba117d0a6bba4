//! The gRPC wire layer: `TokenService` handlers. Each trait method is a thin,
//! instrumented wrapper over an `inner_*` function that authenticates the
//! caller, parses the request into domain types and calls the use-case.
//! Spans (DEBUG level, so they cost nothing at the default INFO) record ids
//! and accounts, never token material.
//!
//! The gateway contracts live beside it: `ext_authz` (Envoy's
//! `Authorization/Check` on the same port) and `gateway`, the verdict-to-HTTP
//! mapping that `ext_authz` and the HTTP forward-auth endpoint share.

pub mod connection;
mod convert;
pub mod export;
pub mod ext_authz;
pub mod gateway;
mod policy;
mod watch;
pub mod wire;

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{Span, instrument};

use self::connection::ConnectionInfo;
use self::convert::{event_to_pb, reason_to_pb, token_id, token_to_pb};
use self::wire::{ValidateCall, ValidateReply};
use crate::{
    domain::Caller,
    error::{Error, Result},
    manage::{RevokeTarget, TokenManager},
    pb::{self, token_service_server::TokenService},
    telemetry::metrics,
    validation::{callers::CallerMemo, clock::Clock},
};

pub use crate::pb::token_service_server::TokenServiceServer;

/// The `tokens.v1.TokenService` implementation.
#[derive(Clone)]
pub struct TokenApi {
    manager: Arc<TokenManager>,
    /// For the `expired` flag of returned tokens and expiry checks on input.
    clock: Clock,
}

impl TokenApi {
    pub fn new(manager: Arc<TokenManager>, clock: Clock) -> Self {
        Self { manager, clock }
    }

    async fn caller<T>(&self, req: &Request<T>) -> Result<Caller> {
        authenticate(&self.manager, req).await
    }
}

/// The caller of an RPC, from its `authorization: Bearer <token>` metadata
/// (remembered per connection: `ConnectionInfo`); records it on the
/// handler's span.
async fn authenticate<T>(manager: &TokenManager, req: &Request<T>) -> Result<Caller> {
    let (value, peer, memo) = presented(req);
    authenticate_bearer(manager, value, "the authorization metadata", peer, memo).await
}

/// The caller this connection remembers, when the request presents its
/// credential again; `None`: `authenticate` must answer. No await (Validate's
/// fast path). Records the caller on the span.
fn remembered<T>(manager: &TokenManager, req: &Request<T>) -> Option<Caller> {
    let (value, peer, memo) = presented(req);
    let caller = manager.remembered(bearer_bytes(value?)?, peer, memo?)?;
    record_caller(&caller);
    Some(caller)
}

/// What a request presents: its `authorization` value, the address it came
/// from and its connection's remembered caller.
fn presented<T>(
    req: &Request<T>,
) -> (Option<&[u8]>, Option<std::net::IpAddr>, Option<&CallerMemo>) {
    static AUTHORIZATION: std::sync::LazyLock<tonic::metadata::AsciiMetadataKey> =
        std::sync::LazyLock::new(|| {
            tonic::metadata::AsciiMetadataKey::from_static("authorization")
        });
    let value = req.metadata().get(&*AUTHORIZATION).map(|v| v.as_bytes());
    let connection = req.extensions().get::<ConnectionInfo>();
    let peer = connection.and_then(|c| c.peer).map(|p| p.ip());
    let memo = connection.map(|c| &*c.callers);
    (value, peer, memo)
}

/// The caller whose credential is `value` (`Bearer <token>`; `None` when it
/// was not sent, which `manager` refuses); `what` names where it was sent
/// in the error for any other value; `peer` is the address it came from (an
/// IP-bound credential must come from inside its ranges); `memo` is the
/// connection's remembered caller, if it keeps one. Records the caller on
/// the span.
pub(crate) async fn authenticate_bearer(
    manager: &TokenManager,
    value: Option<&[u8]>,
    what: &str,
    peer: Option<std::net::IpAddr>,
    memo: Option<&CallerMemo>,
) -> Result<Caller> {
    let credential =
        match value {
            None => None,
            Some(v) => Some(bearer_bytes(v).ok_or_else(|| {
                Error::Unauthenticated(format!("{what} must be `Bearer <token>`"))
            })?),
        };
    let caller = manager.authenticate(credential, peer, memo).await?;
    record_caller(&caller);
    Ok(caller)
}

/// Records the caller on the handler's span (when spans are on).
fn record_caller(caller: &Caller) {
    if spans_enabled() {
        let span = Span::current();
        span.record("caller", tracing::field::display(caller.token_id));
        span.record("account", caller.account_id());
    }
}

/// The credential of a `Bearer` authorization value. Works on bytes: it runs
/// on every RPC, and the token parser checks the characters anyway.
pub(crate) fn bearer(header: &[u8]) -> Option<&str> {
    std::str::from_utf8(bearer_bytes(header)?).ok()
}

/// As `bearer`, without the UTF-8 check: a connection's remembered caller is
/// recognised by its bytes, and only a credential it does not remember is
/// parsed (which checks every character).
fn bearer_bytes(header: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let (scheme, rest) = header.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    Some(rest.trim_ascii())
}

/// Whether the handler spans (DEBUG) are on: a static check, far cheaper than
/// looking up the current span, which Validate would otherwise do on every call.
fn spans_enabled() -> bool {
    tracing::enabled!(tracing::Level::DEBUG)
}

fn record_token(id: impl std::fmt::Display) {
    if spans_enabled() {
        Span::current().record("token_id", tracing::field::display(id));
    }
}

impl TokenApi {
    async fn inner_issue(&self, req: Request<pb::IssueRequest>) -> Result<pb::IssueResponse> {
        let caller = self.caller(&req).await?;
        let now = self.clock.now_utc();
        let input = convert::issue_input(req.into_inner(), now)?;
        let issued = self.manager.issue(&caller, input).await?;
        record_token(issued.token.id);
        Ok(pb::IssueResponse {
            token: Some(token_to_pb(&issued.token, now)),
            secret: issued.value.expose(),
        })
    }

    /// A cache hit (a caller this connection remembers, a token the cache
    /// can judge) runs without an await; the full paths are boxed, so their
    /// state (store reads, argon2) is neither built nor moved for a hit.
    async fn inner_validate(&self, req: Request<ValidateCall>) -> Result<ValidateReply> {
        let caller = match remembered(&self.manager, &req) {
            Some(caller) => caller,
            None => Box::pin(self.caller(&req)).await?,
        };
        let call = req.get_ref();
        convert::check_required_modules(call.required_modules())?;
        // Parsed for every token when sent (a malformed one is refused
        // whatever the token); nothing to do when not sent.
        let client_ip = crate::domain::policy::client_ip("client_ip", call.client_ip())?;
        let (value, modules) = (call.token(), call.required_modules());
        if let Ok(v) = value {
            record_token(v.id());
        }
        let started = metrics::timer();
        let verdict = match self
            .manager
            .validate_now(&caller, value, modules, client_ip)?
        {
            Some(verdict) => verdict,
            None => Box::pin(self.manager.validate(&caller, value, modules, client_ip)).await?,
        };
        metrics::validate_outcome(verdict.reason, verdict.hit, started);
        Ok(ValidateReply::new(
            verdict.is_valid(),
            reason_to_pb(verdict.reason),
            verdict.entry,
        ))
    }

    async fn inner_get(&self, req: Request<pb::GetRequest>) -> Result<pb::GetResponse> {
        let caller = self.caller(&req).await?;
        let id = token_id("id", &req.get_ref().id)?;
        record_token(id);
        let token = self.manager.get(&caller, id).await?;
        Ok(pb::GetResponse {
            token: Some(token_to_pb(&token, self.clock.now_utc())),
        })
    }

    async fn inner_update(&self, req: Request<pb::UpdateRequest>) -> Result<pb::UpdateResponse> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        let id = token_id("id", &r.id)?;
        record_token(id);
        let now = self.clock.now_utc();
        let token = self
            .manager
            .update(&caller, id, convert::update_input(r, now)?)
            .await?;
        Ok(pb::UpdateResponse {
            token: Some(token_to_pb(&token, now)),
        })
    }

    async fn inner_set_state(
        &self,
        req: Request<pb::SetStateRequest>,
    ) -> Result<pb::SetStateResponse> {
        let caller = self.caller(&req).await?;
        let id = token_id("id", &req.get_ref().id)?;
        record_token(id);
        let (state, reason) = convert::set_state_input(req.get_ref())?;
        let token = self.manager.set_state(&caller, id, state, reason).await?;
        Ok(pb::SetStateResponse {
            token: Some(token_to_pb(&token, self.clock.now_utc())),
        })
    }

    async fn inner_revoke(&self, req: Request<pb::RevokeRequest>) -> Result<pb::RevokeResponse> {
        let caller = self.caller(&req).await?;
        let (target, reason) = convert::revoke_input(req.into_inner())?;
        if let RevokeTarget::Id(id) = &target {
            record_token(id);
        }
        let token = self.manager.revoke(&caller, target, reason).await?;
        record_token(token.id);
        Ok(pb::RevokeResponse {
            token: Some(token_to_pb(&token, self.clock.now_utc())),
        })
    }

    async fn inner_rotate(&self, req: Request<pb::RotateRequest>) -> Result<pb::RotateResponse> {
        let caller = self.caller(&req).await?;
        let r = req.get_ref();
        let id = token_id("id", &r.id)?;
        record_token(id);
        let grace = convert::duration("grace_period", r.grace_period.as_ref())?;
        let issued = self.manager.rotate(&caller, id, grace).await?;
        Ok(pb::RotateResponse {
            token: Some(token_to_pb(&issued.token, self.clock.now_utc())),
            secret: issued.value.expose(),
        })
    }

    async fn inner_duplicate(
        &self,
        req: Request<pb::DuplicateRequest>,
    ) -> Result<pb::DuplicateResponse> {
        let caller = self.caller(&req).await?;
        let id = token_id("id", &req.get_ref().id)?;
        let (name, ranges) = convert::duplicate_input(req.get_ref())?;
        let issued = self.manager.duplicate(&caller, id, name, ranges).await?;
        record_token(issued.token.id);
        Ok(pb::DuplicateResponse {
            token: Some(token_to_pb(&issued.token, self.clock.now_utc())),
            secret: issued.value.expose(),
        })
    }

    async fn inner_search(&self, req: Request<pb::SearchRequest>) -> Result<pb::SearchResponse> {
        let caller = self.caller(&req).await?;
        let input = convert::search_input(req.into_inner())?;
        let page = self.manager.search(&caller, input).await?;
        let now = self.clock.now_utc();
        Ok(pb::SearchResponse {
            tokens: page.tokens.iter().map(|t| token_to_pb(t, now)).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            total_size: page.total.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
        })
    }

    async fn inner_list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<pb::ListEventsResponse> {
        let caller = self.caller(&req).await?;
        let input = convert::events_input(req.into_inner())?;
        let (events, next) = self.manager.list_events(&caller, input).await?;
        Ok(pb::ListEventsResponse {
            events: events.iter().map(event_to_pb).collect(),
            next_page_token: next.unwrap_or_default(),
        })
    }
}

/// The one place an RPC's error is handled: logged once (with the detail
/// callers never see), then mapped to its status.
fn reply<T>(result: Result<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e| {
        e.log();
        Status::from(e)
    })
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    type WatchEventsStream = watch::WatchStream;

    #[instrument(
        level = "debug",
        name = "Issue",
        skip_all,
        fields(caller, account, token_id)
    )]
    async fn issue(
        &self,
        request: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        reply(self.inner_issue(request).await)
    }

    #[instrument(
        level = "debug",
        name = "Validate",
        skip_all,
        fields(caller, account, token_id)
    )]
    async fn validate(
        &self,
        request: Request<ValidateCall>,
    ) -> Result<Response<ValidateReply>, Status> {
        reply(self.inner_validate(request).await)
    }

    #[instrument(
        level = "debug",
        name = "Get",
        skip_all,
        fields(caller, account, token_id)
    )]
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        reply(self.inner_get(request).await)
    }

    #[instrument(
        level = "debug",
        name = "Update",
        skip_all,
        fields(caller, account, token_id)
    )]
    async fn update(
        &self,
        request: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        reply(self.inner_update(request).await)
    }

    #[instrument(
        level = "debug",
        name = "SetState",
        skip_all,
        fields(caller, account, token_id)
    )]
    async fn set_state(
        &self,
        request: Request<pb::SetStateRequest>,
    ) -> Result<Response<pb::SetStateResponse>, Status> {
        reply(self.inner_set_state(request).await)
    }

    #[instrument(
        level = "debug",
        name = "Revoke",
        skip_all,
        fields(caller, account, token_id)
    )]
    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        reply(self.inner_revoke(request).await)
    }

    #[instrument(
        level = "debug",
        name = "Rotate",
        skip_all,
        fields(caller, account, token_id)
    )]
    async fn rotate(
        &self,
        request: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, Status> {
        reply(self.inner_rotate(request).await)
    }

    #[instrument(
        level = "debug",
        name = "Duplicate",
        skip_all,
        fields(caller, account, token_id)
    )]
    async fn duplicate(
        &self,
        request: Request<pb::DuplicateRequest>,
    ) -> Result<Response<pb::DuplicateResponse>, Status> {
        reply(self.inner_duplicate(request).await)
    }

    #[instrument(level = "debug", name = "Search", skip_all, fields(caller, account))]
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        reply(self.inner_search(request).await)
    }

    #[instrument(
        level = "debug",
        name = "ListEvents",
        skip_all,
        fields(caller, account)
    )]
    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        reply(self.inner_list_events(request).await)
    }

    #[instrument(
        level = "debug",
        name = "GetAccountPolicy",
        skip_all,
        fields(caller, account)
    )]
    async fn get_account_policy(
        &self,
        request: Request<pb::GetAccountPolicyRequest>,
    ) -> Result<Response<pb::GetAccountPolicyResponse>, Status> {
        reply(self.inner_get_account_policy(request).await)
    }

    #[instrument(
        level = "debug",
        name = "UpdateAccountPolicy",
        skip_all,
        fields(caller, account)
    )]
    async fn update_account_policy(
        &self,
        request: Request<pb::UpdateAccountPolicyRequest>,
    ) -> Result<Response<pb::UpdateAccountPolicyResponse>, Status> {
        reply(self.inner_update_account_policy(request).await)
    }

    #[instrument(
        level = "debug",
        name = "WatchEvents",
        skip_all,
        fields(caller, account)
    )]
    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        reply(self.inner_watch_events(request).await)
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_scheme() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer(b"BEARER abc"), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b"Bearer \xff"), None);
    }
}
