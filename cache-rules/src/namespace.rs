//! Namespaces: the part of a cache key before its `:`, naming the function (or group) an entry belongs to.
//!
//! The rule: 1 to [`MAX_NAMESPACE_LEN`] characters, each an ASCII letter or digit, `_`, `-` or `.`. A `:`
//! is never part of a namespace, so a key splits at its first `:`. The check is a `const fn` so that
//! `cache_key!` can reject a bad literal during const evaluation.

/// The longest namespace accepted, in characters (every allowed character is one byte).
pub const MAX_NAMESPACE_LEN: usize = 64;

/// What is wrong with a namespace, found by [`namespace_problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceProblem {
    /// It is empty.
    Empty,
    /// The character that starts at byte `at` is not allowed. Every character before it is allowed, hence
    /// ASCII, so `at` is a character boundary (see [`NamespaceProblem::forbidden_char`]).
    Forbidden {
        /// The byte offset of the first character that is not allowed.
        at: usize,
    },
    /// Every character is allowed, but there are `len` of them, more than [`MAX_NAMESPACE_LEN`].
    TooLong {
        /// The namespace's length, in characters (equal to its length in bytes).
        len: usize,
    },
}

impl NamespaceProblem {
    /// The runtime's short reason (`CacheError::InvalidNamespace`'s `reason`).
    pub const fn reason(self) -> &'static str {
        match self {
            NamespaceProblem::Empty => "it is empty",
            NamespaceProblem::Forbidden { .. } => "only ASCII letters, digits, '_', '-' and '.' are allowed",
            NamespaceProblem::TooLong { .. } => "it is longer than 64 characters",
        }
    }

    /// The character at fault in `namespace`, the namespace this problem was found in: `Some` for
    /// [`NamespaceProblem::Forbidden`] only.
    pub fn forbidden_char(self, namespace: &str) -> Option<char> {
        match self {
            NamespaceProblem::Forbidden { at } => namespace.get(at..).and_then(|rest| rest.chars().next()),
            NamespaceProblem::Empty | NamespaceProblem::TooLong { .. } => None,
        }
    }
}

/// Whether `namespace` breaks the rule, and how; `None` for a valid namespace.
///
/// The problems are looked for in this order: empty, a character that is not allowed, too long. So the
/// reason names the character first, whatever the length.
///
/// ```
/// use cache_rules::{namespace_problem, NamespaceProblem};
/// assert_eq!(namespace_problem("retrieval.v2"), None);
/// assert_eq!(namespace_problem("a:b"), Some(NamespaceProblem::Forbidden { at: 1 }));
/// ```
pub const fn namespace_problem(namespace: &str) -> Option<NamespaceProblem> {
    let bytes = namespace.as_bytes();
    if bytes.is_empty() {
        return Some(NamespaceProblem::Empty);
    }
    let mut at = 0;
    while at < bytes.len() {
        let b = bytes[at];
        if !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.') {
            return Some(NamespaceProblem::Forbidden { at });
        }
        at += 1;
    }
    if bytes.len() > MAX_NAMESPACE_LEN {
        return Some(NamespaceProblem::TooLong { len: bytes.len() });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_namespaces() {
        for ok in ["a", "retrieval", "a.b-c_D9", "Z", &"x".repeat(MAX_NAMESPACE_LEN)] {
            assert_eq!(namespace_problem(ok), None, "{ok:?}");
        }
    }

    #[test]
    fn each_problem() {
        assert_eq!(namespace_problem(""), Some(NamespaceProblem::Empty));
        assert_eq!(namespace_problem("has:colon"), Some(NamespaceProblem::Forbidden { at: 3 }));
        assert_eq!(namespace_problem("space here"), Some(NamespaceProblem::Forbidden { at: 5 }));
        assert_eq!(namespace_problem("nul\0"), Some(NamespaceProblem::Forbidden { at: 3 }));
        let long = "x".repeat(MAX_NAMESPACE_LEN + 1);
        assert_eq!(namespace_problem(&long), Some(NamespaceProblem::TooLong { len: MAX_NAMESPACE_LEN + 1 }));
    }

    #[test]
    fn a_forbidden_character_is_named_before_the_length() {
        let long = format!("{}é", "x".repeat(MAX_NAMESPACE_LEN));
        let problem = namespace_problem(&long);
        assert_eq!(problem, Some(NamespaceProblem::Forbidden { at: MAX_NAMESPACE_LEN }));
        assert_eq!(problem.and_then(|p| p.forbidden_char(&long)), Some('é'));
        // 40 two-byte characters are 80 bytes, but the namespace is not "too long": `é` is not allowed.
        let accents = "é".repeat(40);
        assert_eq!(namespace_problem(&accents).and_then(|p| p.forbidden_char(&accents)), Some('é'));
    }

    #[test]
    fn only_forbidden_has_a_character() {
        assert_eq!(NamespaceProblem::Empty.forbidden_char(""), None);
        assert_eq!(NamespaceProblem::TooLong { len: 65 }.forbidden_char("x"), None);
        // A problem applied to another string than its own gives nothing rather than panicking.
        assert_eq!(NamespaceProblem::Forbidden { at: 9 }.forbidden_char("short"), None);
        assert_eq!(NamespaceProblem::Forbidden { at: 1 }.forbidden_char("é"), None);
    }

    #[test]
    fn reasons_state_the_rule() {
        assert!(NamespaceProblem::TooLong { len: 65 }.reason().contains(&MAX_NAMESPACE_LEN.to_string()));
        assert_eq!(NamespaceProblem::Empty.reason(), "it is empty");
    }

    /// The check runs in const evaluation.
    #[test]
    fn is_const() {
        const BAD: Option<NamespaceProblem> = namespace_problem("a b");
        assert_eq!(BAD, Some(NamespaceProblem::Forbidden { at: 1 }));
    }
}
