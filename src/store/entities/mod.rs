//! sea-orm entities: one file per table. Only the store module uses them; the
//! rest of the service sees `domain` types.

pub mod account_policy;
pub mod owner_quota;
pub mod sweep_state;
pub mod token;
pub mod token_change;
pub mod token_event;
pub mod token_notice;

use std::fmt;

use sea_orm::DeriveValueType;

/// An argon2id PHC string as stored. A column newtype so that even the
/// generated `Debug` of models and active models cannot print a hash.
#[derive(Clone, PartialEq, Eq, DeriveValueType)]
pub struct HashColumn(pub String);

impl fmt::Debug for HashColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashColumn(<redacted>)")
    }
}

/// A keyed verifier MAC as stored: redacted in `Debug` like the hash.
#[derive(Clone, PartialEq, Eq, DeriveValueType)]
pub struct VerifierColumn(pub Vec<u8>);

impl fmt::Debug for VerifierColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerifierColumn(<redacted>)")
    }
}
