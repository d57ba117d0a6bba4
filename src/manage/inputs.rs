//! The parsed inputs of the use-cases, built by the api layer
//! (`api::convert`) from requests whose fields it has already checked, and
//! what the use-cases hand back.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::domain::{
    AccountId, OwnerId, Token, TokenId, TokenState, TokenValue, fields::TokenName, policy::Cidr,
};

/// A token and its full value, handed out once.
pub struct Issued {
    pub token: Token,
    pub value: TokenValue,
}

pub struct IssueInput {
    /// The caller's own account when `None`.
    pub account_id: Option<AccountId>,
    /// The caller's own owner when `None`.
    pub owner_id: Option<OwnerId>,
    pub name: TokenName,
    pub description: String,
    pub modules: Vec<String>,
    pub api_version: String,
    pub metadata: BTreeMap<String, String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Empty: the account policy's `default_allowed_cidrs`.
    pub allowed_cidrs: Vec<Cidr>,
}

/// Fields to change; `None` leaves a field alone.
#[derive(Default)]
pub struct UpdateInput {
    pub name: Option<TokenName>,
    pub description: Option<String>,
    pub modules: Option<Vec<String>>,
    pub api_version: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// `Some(vec![])` unbinds the token.
    pub allowed_cidrs: Option<Vec<Cidr>>,
}

pub enum RevokeTarget {
    Id(TokenId),
    Value(TokenValue),
}

/// Search by name substring or by full token value.
pub enum TextQuery {
    Name(String),
    Value(TokenValue),
}

#[derive(Default)]
pub struct SearchInput {
    pub account_id: Option<AccountId>,
    pub query: Option<TextQuery>,
    pub states: Vec<TokenState>,
    pub include_revoked: bool,
    pub owner_id: Option<OwnerId>,
    pub created_by: Option<OwnerId>,
    pub module: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub last_used_before: Option<DateTime<Utc>>,
    pub last_used_after: Option<DateTime<Utc>>,
    pub page_size: u64,
    pub page_token: Option<String>,
    /// Also count every match of the filters (ignoring paging).
    pub include_total: bool,
    pub expires_before: Option<DateTime<Utc>>,
    pub expires_after: Option<DateTime<Utc>>,
    /// Tokens whose expiry breaks their account's current policy.
    pub breaks_policy: bool,
    /// Only IP-bound tokens (`Some(true)`) or only unbound ones (`Some(false)`).
    pub bound: Option<bool>,
}

/// One page of a Search.
pub struct SearchPage {
    pub tokens: Vec<Token>,
    pub next_page_token: Option<String>,
    /// Every match of the filters, when asked for.
    pub total: Option<u64>,
}

pub struct EventsInput {
    pub token_id: Option<TokenId>,
    pub account_id: Option<AccountId>,
    pub page_size: u64,
    pub page_token: Option<String>,
}
