//! The rules of tags, which say what an entry was computed from so that it can be invalidated when that
//! changes: what a valid tag is, and the stored form of an entry's tags (sorted, distinct). Gathering the
//! tags while a memoized body runs is `memo/scope.rs`; invalidation by tag is `cache/tags.rs`. A leaf module.

use crate::error::{CacheError, Result};
use std::collections::BTreeSet;
use std::sync::Arc;

#[doc(inline)]
pub use cache_rules::MAX_TAG_CHARS;

/// An entry's tags, sorted and distinct; never empty (no tags is `None`).
pub(crate) type Tags = Arc<[String]>;

/// Checks a tag: 1 to [`MAX_TAG_CHARS`] characters, none of them a control character (so no NUL, which
/// PostgreSQL text cannot hold, and no U+001F, which separates tags in batched writes).
///
/// ```
/// assert!(cache_runtime::validate_tag("doc:42").is_ok());
/// assert!(cache_runtime::validate_tag("").is_err());
/// ```
///
/// # Errors
/// [`CacheError::InvalidTag`].
pub fn validate_tag(tag: &str) -> Result<()> {
    match cache_rules::tag_problem(tag) {
        Some(problem) => {
            Err(CacheError::InvalidTag { tag: tag.chars().take(64).collect(), reason: problem.reason().to_owned() })
        }
        None => Ok(()),
    }
}

/// Checks tags given to an operation and puts them in stored form: sorted, distinct, `None` when empty.
pub(crate) fn stored_form<S: AsRef<str>>(tags: &[S]) -> Result<Option<Tags>> {
    let mut set = BTreeSet::new();
    for tag in tags {
        validate_tag(tag.as_ref())?;
        set.insert(tag.as_ref().to_owned());
    }
    Ok((!set.is_empty()).then(|| set.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_checked() {
        assert!(validate_tag("doc:42").is_ok());
        assert!(validate_tag(&"t".repeat(MAX_TAG_CHARS)).is_ok());
        assert!(validate_tag(&"é".repeat(MAX_TAG_CHARS)).is_ok());
        for bad in ["", "a\0b", "a\u{1f}b", "line\nbreak"] {
            assert!(matches!(validate_tag(bad), Err(CacheError::InvalidTag { .. })), "{bad:?}");
        }
        assert!(validate_tag(&"t".repeat(MAX_TAG_CHARS + 1)).is_err());
    }

    #[test]
    fn stored_form_is_sorted_and_distinct() {
        let tags = stored_form(&["b", "a", "b"]).ok().flatten();
        assert_eq!(tags.as_deref(), Some(&["a".to_owned(), "b".to_owned()][..]));
        assert!(stored_form::<&str>(&[]).ok().flatten().is_none());
        assert!(stored_form(&["ok", ""]).is_err());
    }
}
