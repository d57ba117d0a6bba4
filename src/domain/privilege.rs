//! Callers and privileges. A caller is identified by its own tokend token (the
//! `authorization: Bearer` credential); the `tokens:*` modules of that token are
//! its privileges:
//!
//! | module            | may                                                        |
//! |-------------------|------------------------------------------------------------|
//! | `tokens:validate` | call Validate for any token                                |
//! | `tokens:self`     | manage tokens it owns (same account and owner)             |
//! | `tokens:admin`    | manage and validate every token of its account             |
//! | `tokens:platform` | everything, on every account                               |
//!
//! `platform` implies `admin`, which implies `self` (and validation within the
//! account). A caller may only grant `tokens:*` modules it holds itself.

use std::fmt;

use super::{AccountId, FieldViolation, OwnerId, TokenId, TokenIdentity};

/// Prefix reserved for tokend's own privilege modules.
pub const PRIVILEGE_PREFIX: &str = "tokens:";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Privilege {
    Validate,
    SelfService,
    Admin,
    Platform,
}

impl Privilege {
    pub const ALL: [Privilege; 4] = [
        Self::Validate,
        Self::SelfService,
        Self::Admin,
        Self::Platform,
    ];

    pub fn module(self) -> &'static str {
        match self {
            Self::Validate => "tokens:validate",
            Self::SelfService => "tokens:self",
            Self::Admin => "tokens:admin",
            Self::Platform => "tokens:platform",
        }
    }

    pub fn from_module(module: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.module() == module)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The set of privileges a caller holds, with the implications applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Privileges(u8);

impl Privileges {
    pub fn from_modules<'a>(modules: impl IntoIterator<Item = &'a str>) -> Self {
        let mut bits = 0u8;
        for p in modules.into_iter().filter_map(Privilege::from_module) {
            bits |= p.bit();
            if p >= Privilege::Admin {
                bits |= Privilege::SelfService.bit();
            }
            if p == Privilege::Platform {
                bits |= Privilege::Admin.bit() | Privilege::Validate.bit();
            }
        }
        Self(bits)
    }

    pub fn has(self, p: Privilege) -> bool {
        self.0 & p.bit() != 0
    }
}

/// Why a caller may not touch something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The target is in another account: to a non-platform caller it does not exist.
    NotFound,
    /// The caller lacks the privilege; the message says which.
    Permission(String),
}

/// Which tokens a listing may show to this caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Everything,
    Account(String),
    Owner {
        account_id: String,
        owner_id: String,
    },
}

/// An authenticated caller: its credential's id, privileges and identity
/// (plain values, shared with the cache entry that authenticated it, so
/// authenticating a request copies no strings).
#[derive(Clone)]
pub struct Caller {
    pub token_id: TokenId,
    pub privileges: Privileges,
    identity: TokenIdentity,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("token_id", &self.token_id)
            .field("account_id", &self.account_id())
            .field("owner_id", &self.owner_id())
            .field("privileges", &self.privileges)
            .finish()
    }
}

impl Caller {
    pub fn new(token_id: TokenId, privileges: Privileges, identity: TokenIdentity) -> Self {
        Self {
            token_id,
            privileges,
            identity,
        }
    }

    pub fn account_id(&self) -> &str {
        self.identity.account_id()
    }

    pub fn owner_id(&self) -> &str {
        self.identity.owner_id()
    }

    /// May this caller manage (get, update, disable, revoke, rotate, duplicate)
    /// a token of this account and owner?
    pub fn may_manage(&self, account_id: &AccountId, owner_id: &OwnerId) -> Result<(), Denied> {
        let p = self.privileges;
        if p.has(Privilege::Platform) {
            return Ok(());
        }
        if account_id.as_str() != self.account_id() {
            return Err(Denied::NotFound);
        }
        if p.has(Privilege::Admin)
            || (p.has(Privilege::SelfService) && owner_id.as_str() == self.owner_id())
        {
            return Ok(());
        }
        if p.has(Privilege::SelfService) {
            return Err(Denied::Permission("tokens:self only covers tokens of the caller's own owner_id; tokens:admin is required".into()));
        }
        Err(Denied::Permission(
            "managing tokens requires tokens:self, tokens:admin or tokens:platform".into(),
        ))
    }

    /// The widest set of tokens this caller may list or see events of.
    pub fn listing_scope(&self) -> Result<Scope, Denied> {
        let p = self.privileges;
        if p.has(Privilege::Platform) {
            Ok(Scope::Everything)
        } else if p.has(Privilege::Admin) {
            Ok(Scope::Account(self.account_id().to_owned()))
        } else if p.has(Privilege::SelfService) {
            Ok(Scope::Owner {
                account_id: self.account_id().to_owned(),
                owner_id: self.owner_id().to_owned(),
            })
        } else {
            Err(Denied::Permission(
                "listing tokens requires tokens:self, tokens:admin or tokens:platform".into(),
            ))
        }
    }

    /// Which tokens this caller may validate: `None` when it may not call
    /// Validate at all, `Some(None)` for every account, `Some(Some(a))` for one.
    pub fn validation_scope(&self) -> Option<Option<&str>> {
        let p = self.privileges;
        if p.has(Privilege::Validate) {
            Some(None)
        } else if p.has(Privilege::Admin) {
            Some(Some(self.account_id()))
        } else {
            None
        }
    }

    /// Refuses `tokens:*` modules the caller does not hold itself, and unknown
    /// `tokens:*` names (a typo there would silently grant nothing).
    pub fn check_grantable(&self, field: &str, modules: &[String]) -> Result<(), GrantError> {
        for (i, m) in modules.iter().enumerate() {
            if !m.starts_with(PRIVILEGE_PREFIX) {
                continue;
            }
            match Privilege::from_module(m) {
                None => {
                    return Err(GrantError::Unknown(FieldViolation::new(
                        format!("{field}[{i}]"),
                        format!(
                            "unknown privilege module {m:?}; the tokens: prefix is reserved for tokens:validate, tokens:self, tokens:admin and tokens:platform"
                        ),
                    )));
                }
                Some(p) if !self.privileges.has(p) => {
                    return Err(GrantError::NotHeld(format!(
                        "the caller cannot grant {m} because it does not hold it"
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantError {
    Unknown(FieldViolation),
    NotHeld(String),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn caller(modules: &[&str]) -> Caller {
        let owned: Vec<String> = modules.iter().map(|m| (*m).to_owned()).collect();
        Caller::new(
            TokenId::parse("0123456789abcdef").unwrap(),
            Privileges::from_modules(modules.iter().copied()),
            TokenIdentity::new("acme", "alice", &owned, ""),
        )
    }

    #[test]
    fn implications() {
        let platform = Privileges::from_modules(["tokens:platform"]);
        assert!(Privilege::ALL.into_iter().all(|p| platform.has(p)));
        let admin = Privileges::from_modules(["tokens:admin"]);
        assert!(
            admin.has(Privilege::SelfService)
                && !admin.has(Privilege::Validate)
                && !admin.has(Privilege::Platform)
        );
        let selfp = Privileges::from_modules(["tokens:self", "billing:read"]);
        assert!(selfp.has(Privilege::SelfService) && !selfp.has(Privilege::Admin));
    }

    fn acc(s: &str) -> AccountId {
        AccountId::parse("account_id", s).unwrap()
    }

    fn own(s: &str) -> OwnerId {
        OwnerId::parse("owner_id", s).unwrap()
    }

    #[test]
    fn manage_matrix() {
        let s = caller(&["tokens:self"]);
        assert_eq!(s.may_manage(&acc("acme"), &own("alice")), Ok(()));
        assert!(matches!(
            s.may_manage(&acc("acme"), &own("bob")),
            Err(Denied::Permission(_))
        ));
        assert_eq!(
            s.may_manage(&acc("other"), &own("alice")),
            Err(Denied::NotFound)
        );
        let a = caller(&["tokens:admin"]);
        assert_eq!(a.may_manage(&acc("acme"), &own("bob")), Ok(()));
        assert_eq!(
            a.may_manage(&acc("other"), &own("bob")),
            Err(Denied::NotFound)
        );
        let p = caller(&["tokens:platform"]);
        assert_eq!(p.may_manage(&acc("other"), &own("bob")), Ok(()));
        let v = caller(&["tokens:validate"]);
        assert!(matches!(
            v.may_manage(&acc("acme"), &own("alice")),
            Err(Denied::Permission(_))
        ));
        assert!(v.listing_scope().is_err());
        assert_eq!(v.validation_scope(), Some(None));
        assert_eq!(a.validation_scope(), Some(Some("acme")));
        assert_eq!(s.validation_scope(), None);
    }

    #[test]
    fn grants() {
        let s = caller(&["tokens:self"]);
        assert!(
            s.check_grantable("modules", &["tokens:self".into(), "x".into()])
                .is_ok()
        );
        assert!(matches!(
            s.check_grantable("modules", &["tokens:admin".into()]),
            Err(GrantError::NotHeld(_))
        ));
        assert!(matches!(
            s.check_grantable("modules", &["tokens:root".into()]),
            Err(GrantError::Unknown(_))
        ));
        let p = caller(&["tokens:platform"]);
        assert!(
            p.check_grantable(
                "modules",
                &["tokens:admin".into(), "tokens:validate".into()]
            )
            .is_ok()
        );
    }
}
