//! Secrets: tokens, passwords and URLs that carry credentials. A [`Secret`]
//! never shows itself by accident: `Debug`, `Display` and serialisation print
//! [`PLACEHOLDER`]. The one place that must write the real value, the store,
//! asks for it explicitly with [`exposing`].

use std::cell::Cell;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret shows instead of itself; a `PUT` that sends it back keeps the
/// stored value.
pub const PLACEHOLDER: &str = "<secret>";

/// A secret string, zeroed when dropped.
#[derive(Clone, Default)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether this is the placeholder an API view showed, sent back unchanged.
    pub fn is_placeholder(&self) -> bool {
        self.expose() == PLACEHOLDER
    }

    /// For a `PUT` that sends the placeholder back (as `GET` showed it): the
    /// stored value stays.
    pub fn keep(&mut self, previous: &Secret) {
        if self.is_placeholder() {
            *self = previous.clone();
        }
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.expose().as_bytes().ct_eq(other.expose().as_bytes()))
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PLACEHOLDER)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PLACEHOLDER)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

thread_local! {
    static EXPOSING: Cell<bool> = const { Cell::new(false) };
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if EXPOSING.with(Cell::get) {
            s.serialize_str(self.expose())
        } else {
            s.serialize_str(PLACEHOLDER)
        }
    }
}

/// Runs `f` with secrets serialising as their real values, on this thread
/// only. For the store, which must keep what it was given; `f` must not await.
pub fn exposing<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            EXPOSING.with(|e| e.set(self.0));
        }
    }
    let _reset = Reset(EXPOSING.with(|e| e.replace(true)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_the_placeholder_unless_exposing() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<secret> <secret>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<secret>\"");
        assert_eq!(
            exposing(|| serde_json::to_string(&s).unwrap()),
            "\"hunter2\""
        );
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<secret>\"");
    }

    #[test]
    fn a_placeholder_keeps_the_previous_value() {
        let previous = Secret::new("hunter2");
        let mut sent_back = Secret::new(PLACEHOLDER);
        sent_back.keep(&previous);
        assert_eq!(sent_back.expose(), "hunter2");
        let mut changed = Secret::new("new");
        changed.keep(&previous);
        assert_eq!(changed.expose(), "new");
    }
}
