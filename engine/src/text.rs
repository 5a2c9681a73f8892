//! Immutable text in a row: a string that lives for the whole process (a generator's fixed
//! tables), a short string held inline, or a shared, reference-counted one.
//!
//! Copying a `Text` never copies more than its own 23 bytes, and only long text is allocated:
//! short fields (a Nexmark bid's `extra`, most names and codes in CSV records) cost no
//! allocation and no free. The static form spares the reference count as well:
//! half of all Nexmark bids name one of 10,000 channels picked at random, and bumping and
//! dropping the count of a random table entry on every bid costs a cache miss plus an atomic
//! write each time (a quarter of the generator's time when the strings were `Arc<str>`). Read
//! only, one table serves every parallel subtask without their cores fighting over it.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Immutable text; compares, hashes and prints as its `str`.
#[derive(Clone)]
pub struct Text(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    /// `len` bytes of UTF-8 at the start of `bytes`.
    Inline {
        len: u8,
        bytes: [u8; INLINE_CAPACITY],
    },
    Shared(Arc<str>),
}

/// The longest text held inline: what fits beside the tags of `Repr` and of the `Value` that
/// holds it, so that a value stays three words (a test in `crate::data` pins that).
pub const INLINE_CAPACITY: usize = 21;

impl Text {
    /// Text that lives as long as the process, shared without a reference count.
    pub const fn from_static(text: &'static str) -> Self {
        Text(Repr::Static(text))
    }

    /// Copies `text` inline if it is short enough, else into a new shared allocation.
    pub fn new(text: &str) -> Self {
        match inline(text) {
            Some(repr) => Text(repr),
            None => Text(Repr::Shared(text.into())),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Inline { len, bytes } => {
                let bytes = &bytes[..usize::from(*len)];
                // SAFETY: only `inline` builds this variant, by copying all the bytes of a
                // `str` of length `len`, and nothing changes them afterwards. (Checking UTF-8
                // again on every read cost 2% of a CSV sink job.)
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            Repr::Shared(s) => s,
        }
    }
}

fn inline(text: &str) -> Option<Repr> {
    let len = u8::try_from(text.len())
        .ok()
        .filter(|&n| usize::from(n) <= INLINE_CAPACITY)?;
    let mut bytes = [0u8; INLINE_CAPACITY];
    bytes[..text.len()].copy_from_slice(text.as_bytes());
    Some(Repr::Inline { len, bytes })
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Text::new(text)
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Text::new(&text)
    }
}

impl From<Arc<str>> for Text {
    fn from(text: Arc<str>) -> Self {
        match inline(&text) {
            Some(repr) => Text(repr),
            None => Text(Repr::Shared(text)),
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that `Borrow<str>` lookups find the same entries.
        self.as_str().hash(state)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        std::borrow::Cow::<str>::deserialize(deserializer).map(|text| Text::new(&text))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn static_and_shared_text_are_the_same_value() {
        let fixed = Text::from_static("Google");
        let shared = Text::from(String::from("Google"));
        assert_eq!(fixed, shared);
        assert_eq!(fixed.cmp(&shared), Ordering::Equal);
        assert!(Text::from_static("Apple") < fixed);
        assert_eq!(fixed, "Google");

        let mut counts: HashMap<Text, u32> = HashMap::new();
        *counts.entry(fixed).or_default() += 1;
        *counts.entry(shared).or_default() += 1;
        assert_eq!(counts.get("Google"), Some(&2));
    }

    #[test]
    fn short_text_is_inline_and_long_text_shared() {
        for len in [0, 1, 7, INLINE_CAPACITY, INLINE_CAPACITY + 1, 300] {
            let source = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let text = Text::from(source.clone());
            assert_eq!(text.as_str(), source);
            let inline = matches!(text.0, Repr::Inline { .. });
            assert_eq!(inline, source.len() <= INLINE_CAPACITY, "{len}");
            assert_eq!(text.clone(), text);
        }
    }

    #[test]
    fn text_round_trips_through_serde_as_a_plain_string() {
        let json = serde_json::to_string(&Text::from_static("a \"b\"")).unwrap();
        assert_eq!(json, r#""a \"b\"""#);
        let back: Text = serde_json::from_str(&json).unwrap();
        assert_eq!(back, "a \"b\"");
        assert_eq!(format!("{back} {back:?}"), r#"a "b" "a \"b\"""#);
    }
}
