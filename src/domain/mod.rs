//! Domain types and rules, free of wire and storage concerns.
//!
//! - `token_value`: the token format (`<prefix>_<id>_<secret><checksum>`), parsing and generation.
//! - `fields`: parse-don't-validate newtypes for every user-supplied field.
//! - `state`: the Active / Disabled / Revoked state machine.
//! - `identity`: a token's account, owner, modules and API version as shared plain values.
//! - `policy`: account policies (lifetime, expiry, quota, unused tokens, CIDRs) and their checks.
//! - `privilege`: callers, their `tokens:*` privileges and what they may touch.
//! - `token`: the token record as the rest of the service sees it.
//! - `page`: opaque, filter-bound keyset page tokens.
//! - `hygiene`: the sweeper's rules: which expiry notices are due, auto-disabling unused tokens.

pub mod fields;
pub mod hygiene;
pub mod identity;
pub mod ids;
pub mod page;
pub mod policy;
pub mod privilege;
pub mod state;
pub mod token;
pub mod token_value;

pub use fields::FieldViolation;
pub use identity::TokenIdentity;
pub use ids::{AccountId, OwnerId};
pub use privilege::{Caller, Privilege, Privileges};
pub use state::TokenState;
pub use token::{EventKind, NewEvent, Token};
pub use token_value::{TokenId, TokenValue};

/// The first 64 bits of BLAKE3: a compact fingerprint for telling values apart
/// (page-token filters, stored-hash identity), never for secrecy.
pub fn fingerprint64(bytes: &[u8]) -> u64 {
    let digest = blake3::hash(bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(b)
}
