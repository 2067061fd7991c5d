//! Values to and from the JSON that goes in the `data` column.
//!
//! Encoding first walks the value once to reject what `jsonb` cannot hold exactly (NaN and infinities, which
//! serde_json would silently write as `null`; -0.0, which `numeric` turns into 0; and U+0000, which `jsonb`
//! refuses), then writes JSON through a writer that stops at the size limit, so an oversized value costs at
//! most `limit` bytes of memory and no network I/O. Last, it refuses JSON nested deeper than serde_json reads
//! back ([`MAX_DEPTH`]): such a value would be stored and never served, so a memoized function holding one
//! would recompute and rewrite it on every call.

use crate::error::CacheError;
use crate::key::canonical::{self, EncodeError, JsonbCheck};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io;

/// The deepest nesting of arrays and objects that serde_json reads back (its recursion limit, 128, counts
/// the value it starts in).
pub(crate) const MAX_DEPTH: usize = 127;

/// Serializes `value` to JSON text that PostgreSQL will store and give back unchanged.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T, limit: usize) -> Result<String, CacheError> {
    canonical::encode(&mut JsonbCheck, value).map_err(|err| match err {
        EncodeError::Unsupported(reason) => CacheError::UnsupportedValue { reason },
        EncodeError::Custom(msg) => CacheError::Serialize(serde::ser::Error::custom(msg)),
    })?;
    let mut writer = LimitedWriter { buf: Vec::new(), limit };
    match serde_json::to_writer(&mut writer, value) {
        Ok(()) => {}
        Err(err) if err.is_io() => return Err(CacheError::ValueTooLarge { limit }),
        Err(err) => return Err(CacheError::Serialize(err)),
    }
    let depth = nesting_depth(&writer.buf);
    if depth > MAX_DEPTH {
        let reason = format!("it is nested {depth} levels deep; at most {MAX_DEPTH} can be read back");
        return Err(CacheError::UnsupportedValue { reason });
    }
    // serde_json only ever writes UTF-8.
    String::from_utf8(writer.buf).map_err(|err| CacheError::Serialize(serde::ser::Error::custom(err)))
}

/// The deepest nesting of arrays and objects in well-formed JSON text, brackets inside strings excepted.
fn nesting_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in json {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parses stored JSON. A failure means the stored shape no longer matches the type: callers treat it as a miss.
pub(crate) fn decode<T: DeserializeOwned>(json: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str(json)
}

struct LimitedWriter {
    buf: Vec<u8>,
    limit: usize,
}

impl io::Write for LimitedWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buf.len() + bytes.len() > self.limit {
            return Err(io::Error::other("value exceeds the size limit"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn rejects_what_jsonb_cannot_hold() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0] {
            assert!(matches!(encode(&value, 1024), Err(CacheError::UnsupportedValue { .. })));
            assert!(matches!(encode(&Some(value), 1024), Err(CacheError::UnsupportedValue { .. })));
            assert!(matches!(encode(&vec![1.0, value], 1024), Err(CacheError::UnsupportedValue { .. })));
        }
        assert!(matches!(encode("a\0b", 1024), Err(CacheError::UnsupportedValue { .. })));
        let mut map = BTreeMap::new();
        map.insert("k\0".to_string(), 1);
        assert!(matches!(encode(&map, 1024), Err(CacheError::UnsupportedValue { .. })));
        assert!(matches!(encode(&'\0', 1024), Err(CacheError::UnsupportedValue { .. })));
    }

    #[test]
    fn size_limit_is_enforced_while_writing() {
        let big = "x".repeat(10_000);
        assert!(matches!(encode(&big, 1000), Err(CacheError::ValueTooLarge { limit: 1000 })));
        assert!(encode(&big, 10_002).is_ok());
        assert!(matches!(encode(&big, 10_001), Err(CacheError::ValueTooLarge { .. })));
    }

    #[test]
    fn refuses_what_serde_json_cannot_read_back() {
        let nested = |depth: usize| -> serde_json::Value {
            (0..depth).fold(serde_json::json!("x"), |inner, _| serde_json::json!([inner]))
        };
        let deepest = encode(&nested(MAX_DEPTH), 1 << 20).expect("the deepest value serde_json reads back");
        assert_eq!(decode::<serde_json::Value>(&deepest).ok(), Some(nested(MAX_DEPTH)));
        let too_deep = encode(&nested(MAX_DEPTH + 1), 1 << 20);
        assert!(matches!(too_deep, Err(CacheError::UnsupportedValue { .. })), "{too_deep:?}");
        // Brackets inside strings are text, escaped quotes included.
        assert_eq!(nesting_depth(br#"["[[\"[[", {"a": "]]}"}]"#), 2);
    }

    #[test]
    fn round_trips() {
        let json = encode(&(1u64, "quote\"back\\slash", -0.5f64), 1024).unwrap();
        let back: (u64, String, f64) = decode(&json).unwrap();
        assert_eq!(back, (1, "quote\"back\\slash".to_string(), -0.5));
    }
}
