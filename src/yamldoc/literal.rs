//! One fixed string field (`apiVersion`, `kind`), refused at the value's own position when it
//! is anything else. Shared by every document kind.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// Accepts exactly `expected` for `field`.
pub fn literal<'de, D: Deserializer<'de>>(
    deserializer: D,
    field: &'static str,
    expected: &'static str,
) -> Result<(), D::Error> {
    deserializer.deserialize_str(Literal { field, expected })
}

struct Literal {
    field: &'static str,
    expected: &'static str,
}

impl Visitor<'_> for Literal {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "\"{}\"", self.expected)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if v == self.expected {
            Ok(())
        } else {
            Err(E::custom(format!(
                "unsupported {} \"{v}\" (expected \"{}\")",
                self.field, self.expected
            )))
        }
    }
}
