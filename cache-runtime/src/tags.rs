//! The rules of tags, which say what an entry was computed from so that it can be invalidated when that
//! changes: what a valid tag is, and the stored form of an entry's tags (sorted, distinct). Gathering the
//! tags while a memoized body runs is `memo/scope.rs`; invalidation by tag is `cache/tags.rs`. A leaf module.

use crate::error::{CacheError, Result};
use std::collections::BTreeSet;
use std::sync::Arc;

#[doc(inline)]
pub use cache_rules::{MAX_TAGS_PER_ENTRY, MAX_TAG_CHARS};

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
/// Invalidations may name any number; see [`entry_form`] for an entry's.
pub(crate) fn stored_form<S: AsRef<str>>(tags: &[S]) -> Result<Option<Tags>> {
    let mut set = BTreeSet::new();
    for tag in tags {
        validate_tag(tag.as_ref())?;
        set.insert(tag.as_ref().to_owned());
    }
    Ok((!set.is_empty()).then(|| set.into_iter().collect()))
}

/// [`stored_form`] of an entry's tags: at most [`MAX_TAGS_PER_ENTRY`] distinct ones.
pub(crate) fn entry_form<S: AsRef<str>>(tags: &[S]) -> Result<Option<Tags>> {
    let tags = stored_form(tags)?;
    check_count(tags.as_deref().map_or(0, <[String]>::len))?;
    Ok(tags)
}

/// [`CacheError::TooManyTags`] past [`MAX_TAGS_PER_ENTRY`] distinct tags on one entry.
pub(crate) fn check_count(count: usize) -> Result<()> {
    if count > MAX_TAGS_PER_ENTRY {
        return Err(CacheError::TooManyTags { count, max: MAX_TAGS_PER_ENTRY });
    }
    Ok(())
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
    fn an_entry_carries_at_most_the_cap() {
        let at_cap: Vec<String> = (0..MAX_TAGS_PER_ENTRY).map(|i| format!("t{i}")).collect();
        assert_eq!(entry_form(&at_cap).ok().flatten().map(|t| t.len()), Some(MAX_TAGS_PER_ENTRY));
        let mut past = at_cap.clone();
        past.push("one more".to_owned());
        assert!(matches!(entry_form(&past), Err(CacheError::TooManyTags { count: 65, max: 64 })));
        past.push("one more".to_owned()); // duplicates count once
        assert!(matches!(entry_form(&past), Err(CacheError::TooManyTags { count: 65, .. })));
        assert!(stored_form(&past).is_ok(), "an invalidation may name any number");
    }

    #[test]
    fn stored_form_is_sorted_and_distinct() {
        let tags = stored_form(&["b", "a", "b"]).ok().flatten();
        assert_eq!(tags.as_deref(), Some(&["a".to_owned(), "b".to_owned()][..]));
        assert!(stored_form::<&str>(&[]).ok().flatten().is_none());
        assert!(stored_form(&["ok", ""]).is_err());
    }
}
