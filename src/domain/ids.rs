//! `user_id` and `channel_id`: 1 to 128 characters of letters, digits, `_`, `-`, `.`, `@`.

use std::fmt;

use serde::Serialize;

/// The account that alerts without a valid `user_id` label are attributed to.
pub const UNATTRIBUTED: &str = "_unattributed";

const MAX_LEN: usize = 128;

fn check(kind: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{kind} must not be empty"));
    }
    if s.chars().count() > MAX_LEN {
        return Err(format!("{kind} is longer than {MAX_LEN} characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '@')))
    {
        return Err(format!(
            "{kind} {s:?} contains {c:?}; allowed are letters, digits, '_', '-', '.' and '@'"
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($name:ident, $kind:literal) => {
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, String> {
                check($kind, s)?;
                Ok(Self(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(UserId, "user_id");
id_type!(ChannelId, "channel_id");

impl UserId {
    pub fn unattributed() -> Self {
        Self(UNATTRIBUTED.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_refuses() {
        for ok in ["u1", "team.a", "a@b.c", "-2+3".trim_end_matches("+3"), "_x"] {
            assert!(UserId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "x\n", "a=b", &"x".repeat(129)] {
            assert!(UserId::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_roundtrips(s in "\\PC{0,140}") {
            if let Ok(id) = UserId::parse(&s) {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert!(!id.as_str().contains('/'));
            }
        }
    }
}
