//! The ids of the principals a token belongs to: `AccountId` and `OwnerId`.
//! Both are principals (1..=128 letters, digits and `. _ : @ -`), parsed once
//! at the edge with a `FieldViolation` naming the field; past the edge an id
//! of one kind cannot be passed where the other is expected. The store keeps
//! them as text and converts at its boundary.

use std::fmt;

use super::{FieldViolation, fields};

macro_rules! principal_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Parses a principal sent in `field`.
            pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
                fields::principal(field, s).map(Self)
            }

            /// An id read back from the store, where only parsed ids are
            /// written (the store's boundary converts with this).
            pub fn from_stored(s: String) -> Self {
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

        /// Test fixtures name ids inline.
        #[cfg(test)]
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

principal_id!(
    /// The account (tenant) a token belongs to.
    AccountId
);
principal_id!(
    /// The owner (a user or service) a token belongs to, or who acted.
    OwnerId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_principals_and_errors_name_the_field() {
        assert_eq!(
            AccountId::parse("account_id", "acme").map(AccountId::into_inner),
            Ok("acme".to_owned())
        );
        assert_eq!(
            OwnerId::parse("owner_id", "ci@acme").map(|o| o.to_string()),
            Ok("ci@acme".to_owned())
        );
        let bad = OwnerId::parse("owner_id", "no spaces");
        assert!(matches!(bad, Err(v) if v.field == "owner_id"));
        assert!(AccountId::parse("account_id", "").is_err());
    }
}
