//! The token state machine: Active <-> Disabled, and either -> Revoked, which is final.

use std::fmt;

/// A token's lifecycle state. "Revoked" is what the product calls "Deleted":
/// the record stays as a tombstone and never validates again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenState {
    Active,
    Disabled,
    Revoked,
}

/// Result of asking for a state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The token moves to the new state.
    To(TokenState),
    /// Already there: nothing is written (the call is idempotent).
    Unchanged,
}

/// A requested change the state machine refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("token is revoked; a revoked token cannot be {0}")]
pub struct RevokedIsFinal(&'static str);

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "disabled" => Some(Self::Disabled),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }

    /// Enable (`Active`) or disable (`Disabled`) a token.
    pub fn set(self, target: TokenState) -> Result<Transition, RevokedIsFinal> {
        match (self, target) {
            (Self::Revoked, Self::Active) => Err(RevokedIsFinal("enabled")),
            (Self::Revoked, _) => Err(RevokedIsFinal("disabled")),
            (from, to) if from == to => Ok(Transition::Unchanged),
            (_, to) => Ok(Transition::To(to)),
        }
    }

    /// Revoke: permanent and idempotent.
    pub fn revoke(self) -> Transition {
        match self {
            Self::Revoked => Transition::Unchanged,
            _ => Transition::To(Self::Revoked),
        }
    }

    /// Whether secrets of a token in this state may still change (rotate, update).
    pub fn ensure_mutable(self, action: &'static str) -> Result<(), RevokedIsFinal> {
        match self {
            Self::Revoked => Err(RevokedIsFinal(action)),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for TokenState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TokenState::*;

    #[test]
    fn enable_disable_round_trip() {
        assert_eq!(Active.set(Disabled), Ok(Transition::To(Disabled)));
        assert_eq!(Disabled.set(Active), Ok(Transition::To(Active)));
        assert_eq!(Active.set(Active), Ok(Transition::Unchanged));
        assert_eq!(Disabled.set(Disabled), Ok(Transition::Unchanged));
    }

    #[test]
    fn revoked_is_final() {
        assert!(Revoked.set(Active).is_err());
        assert!(Revoked.set(Disabled).is_err());
        assert_eq!(Revoked.revoke(), Transition::Unchanged);
        assert_eq!(Active.revoke(), Transition::To(Revoked));
        assert_eq!(Disabled.revoke(), Transition::To(Revoked));
        assert!(Revoked.ensure_mutable("rotated").is_err());
    }

    #[test]
    fn storage_names_round_trip() {
        for s in [Active, Disabled, Revoked] {
            assert_eq!(TokenState::parse(s.as_str()), Some(s));
        }
        assert_eq!(TokenState::parse("deleted"), None);
    }
}
