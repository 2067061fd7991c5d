//! Tags: labels on an entry (`doc:42`) by which a group of entries is invalidated.
//!
//! The rule: 1 to [`MAX_TAG_CHARS`] characters (Unicode scalar values, not bytes), none of them a control
//! character. No control character means no NUL, which PostgreSQL `text` cannot hold, and no U+001F, which
//! separates tags in batched writes.
//!
//! Where it is enforced: in Rust, wherever a tag enters the cache. `#[pg_cached(tags("..."))]` checks its
//! literals at compile time; `cache_runtime::validate_tag` checks at run time every tag given to `tag()`,
//! `tags()`, `set_tagged`, `invalidate_tag` and `invalidate_tags`, so no entry ever carries an invalid tag.
//!
//! SQL holds only a bound in bytes, [`SQL_MAX_TAG_BYTES`]: `pg_cached_invalidate_tags`
//! (`migrations/0005_tags.sql`) rejects a longer tag, because each invalidated tag becomes a key of the
//! `cache_tag_invalidations` primary key, whose entries PostgreSQL limits in bytes. It is there for tags that
//! never pass through Rust: those the triggers of `invalidate_on_change` build as `prefix || value`, and
//! those given to the function from plain SQL. Every valid tag passes it (a valid tag takes at most
//! [`MAX_TAG_BYTES`] bytes); a longer tag built in SQL invalidates nothing, since no entry can carry it.

/// The longest tag, in characters.
pub const MAX_TAG_CHARS: usize = 200;

/// The most distinct tags one entry may carry. Each is a lock a write takes (shared) and an element of the
/// entry's indexed array; the SQL side bounds the locks of an invalidation at 64 tags likewise
/// (`pg_cached_lock_tags` in `migrations/functions.sql`), and a coalesced batch of writes at
/// [`MAX_TAG_LOCKS_PER_BATCH`].
pub const MAX_TAGS_PER_ENTRY: usize = 64;

/// The most tags one coalesced batch of writes carries, all entries together (a batch ends before the write
/// that would pass it; a write alone may carry [`MAX_TAGS_PER_ENTRY`]).
pub const MAX_TAG_LOCKS_PER_BATCH: usize = 1024;

const _: () = assert!(MAX_TAGS_PER_ENTRY <= MAX_TAG_LOCKS_PER_BATCH);

/// The most bytes a valid tag takes in UTF-8: four per character.
pub const MAX_TAG_BYTES: usize = MAX_TAG_CHARS * 4;

/// The longest tag `pg_cached_invalidate_tags` accepts in SQL, in bytes (`octet_length`). It is a guard on
/// the size of an index entry for tags built in SQL, not the rule: see the module's documentation.
pub const SQL_MAX_TAG_BYTES: usize = 1000;

// Every tag that the rule allows passes the SQL guard.
const _: () = assert!(MAX_TAG_BYTES <= SQL_MAX_TAG_BYTES);

/// What is wrong with a tag, found by [`tag_problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagProblem {
    /// It is empty.
    Empty,
    /// It holds this control character (the first one).
    Control(char),
    /// It has this many characters, more than [`MAX_TAG_CHARS`].
    TooLong {
        /// The tag's length in characters.
        chars: usize,
    },
}

impl TagProblem {
    /// The runtime's short reason (`CacheError::InvalidTag`'s `reason`).
    pub const fn reason(self) -> &'static str {
        match self {
            TagProblem::Empty => "the tag is empty",
            TagProblem::Control(_) => "the tag contains a control character",
            TagProblem::TooLong { .. } => "the tag is longer than 200 characters",
        }
    }
}

/// Whether `tag` breaks the rule, and how; `None` for a valid tag. The problems are looked for in this order:
/// empty, a control character, too long.
///
/// ```
/// use cache_rules::{tag_problem, TagProblem};
/// assert_eq!(tag_problem("doc:42"), None);
/// assert_eq!(tag_problem("a\tb"), Some(TagProblem::Control('\t')));
/// ```
pub fn tag_problem(tag: &str) -> Option<TagProblem> {
    if tag.is_empty() {
        return Some(TagProblem::Empty);
    }
    if let Some(c) = tag.chars().find(|c| c.is_control()) {
        return Some(TagProblem::Control(c));
    }
    // Counting characters is only needed when the bytes alone could exceed the limit.
    if tag.len() > MAX_TAG_CHARS {
        let chars = tag.chars().count();
        if chars > MAX_TAG_CHARS {
            return Some(TagProblem::TooLong { chars });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_tags() {
        for ok in ["doc:42", "a", "with space", "é", &"t".repeat(MAX_TAG_CHARS), &"é".repeat(MAX_TAG_CHARS)] {
            assert_eq!(tag_problem(ok), None, "{ok:?}");
        }
        // The longest tag in bytes: four-byte characters.
        let widest = "😀".repeat(MAX_TAG_CHARS);
        assert_eq!((tag_problem(&widest), widest.len()), (None, MAX_TAG_BYTES));
    }

    #[test]
    fn each_problem() {
        assert_eq!(tag_problem(""), Some(TagProblem::Empty));
        assert_eq!(tag_problem("a\0b"), Some(TagProblem::Control('\0')));
        assert_eq!(tag_problem("a\u{1f}b"), Some(TagProblem::Control('\u{1f}')));
        assert_eq!(tag_problem("a\u{85}b"), Some(TagProblem::Control('\u{85}')));
        let long = "t".repeat(MAX_TAG_CHARS + 1);
        assert_eq!(tag_problem(&long), Some(TagProblem::TooLong { chars: MAX_TAG_CHARS + 1 }));
        let long = "é".repeat(MAX_TAG_CHARS + 1);
        assert_eq!(tag_problem(&long), Some(TagProblem::TooLong { chars: MAX_TAG_CHARS + 1 }));
        // A control character is named before the length.
        let both = format!("{}\n", "t".repeat(MAX_TAG_CHARS + 1));
        assert_eq!(tag_problem(&both), Some(TagProblem::Control('\n')));
    }

    #[test]
    fn reasons_state_the_rule() {
        assert!(TagProblem::TooLong { chars: 201 }.reason().contains(&MAX_TAG_CHARS.to_string()));
    }

    /// The bound `SQL_MAX_TAG_BYTES` is the one the migration enforces.
    #[test]
    fn the_sql_guard_is_the_migrations() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/0005_tags.sql");
        let sql = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let guard = format!("WHERE octet_length(t) > {SQL_MAX_TAG_BYTES})");
        assert!(sql.contains(&guard), "{path} does not hold `{guard}`");
        assert_eq!(sql.matches("octet_length").count(), 1, "{path} has another bound on tags");
    }
}
