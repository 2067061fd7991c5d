//! Connection strings without their passwords, for `Debug` output, error messages and logs. A leaf module.
//!
//! A password can sit in a URL's user-info (`postgres://app:secret@db/x`, one host or several), in its query
//! string (`?password=`, `&password=`, a percent-encoded key such as `pass%77ord`, or a key sqlx does not
//! read but would log, such as `sslpassword`), or in a libpq `key=value` string (`host=db password='a b'`),
//! which sqlx does not accept but a user may still pass and then see echoed in an error. A password that was
//! not percent-encoded may also hold characters that break the URL's structure (`/`, `@`, `?`, `#`, `&`):
//! such a URL does not parse, and its error message must not show the password either.
//!
//! So the rules err on the side of hiding: a span that may be a password is replaced by `***` even where
//! that hides a little more (a URL with an `@` in its query string may lose the text before it).

use std::ops::Range;

/// What a hidden span is replaced with.
const MASK: &str = "***";

/// `text` (a URL, or a libpq `key=value` string) with every span that may be a password replaced by `***`.
///
/// ```
/// use cache_runtime::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cret@db:5432/cache"), "postgres://app:***@db:5432/cache");
/// assert_eq!(redact_url("postgres://db/cache?password=s3cret&sslmode=require"), "postgres://db/cache?password=***&sslmode=require");
/// assert_eq!(redact_url("host=db password='s3 cret' dbname=cache"), "host=db password=*** dbname=cache");
/// ```
pub fn redact_url(text: &str) -> String {
    let mut redacted = String::with_capacity(text.len());
    let mut shown = 0;
    for span in merged(secret_spans(text)) {
        redacted.push_str(&text[shown..span.start]);
        redacted.push_str(MASK);
        shown = span.end;
    }
    redacted.push_str(&text[shown..]);
    redacted
}

/// Whether a query-string or `key=value` key may name a password (percent-encoded keys are decoded first,
/// as sqlx decodes them): `password`, `PASSWORD`, `sslpassword`, `pwd`, `secret`...
pub(crate) fn is_secret_key(key: &str) -> bool {
    let decoded = decoded_key(key).to_lowercase();
    ["pass", "pwd", "secret"].iter().any(|word| decoded.contains(word))
}

/// A query-string key as sqlx reads it: `+` is a space, `%XX` escapes are decoded.
pub(crate) fn decoded_key(key: &str) -> String {
    percent_encoding::percent_decode_str(&key.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// The byte ranges of `text` that may hold a password, in any order, possibly overlapping.
fn secret_spans(text: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let url_body = text.find("://").map(|scheme_end| scheme_end + 3);
    // A user-info password; also looked for without `://`, as in `postgres:/u:p@h` or `u:p@h/db`.
    let user_info = user_info_password(text, url_body.unwrap_or(0));
    match url_body {
        // The query string starts at the first `?` after the user-info, or at the first `?` at all when the
        // `@` taken as the user-info's end was in fact in the query: both are read.
        Some(body) => {
            let after_user_info = user_info.as_ref().map_or(body, |span| span.end);
            let mut starts: Vec<usize> =
                [body, after_user_info].iter().filter_map(|&from| Some(from + text[from..].find('?')? + 1)).collect();
            starts.dedup();
            for start in starts {
                query_passwords(text, start, &mut spans);
            }
        }
        None => key_value_passwords(text, &mut spans),
    }
    spans.extend(user_info);
    spans
}

/// The password of `user:password@host`: from the first `:` after `body` to the last `@`, when what comes
/// before the `:` can be a user name. The last `@` is taken because a password may hold `@`, `/`, `?`, `#`.
fn user_info_password(text: &str, body: usize) -> Option<Range<usize>> {
    let rest = &text[body..];
    let at = rest.rfind('@')?;
    let colon = rest[..at].find(':')?;
    let user = &rest[..colon];
    let not_a_user = |c: char| matches!(c, '/' | '?' | '#' | '=' | '&') || c.is_whitespace();
    (!user.contains(not_a_user)).then_some(body + colon + 1..body + at)
}

/// The values of password keys in the query string that starts at `start`. Pairs are split on `&` (and on
/// `#`, where a fragment would begin); a piece that is not `key=value` continues the value before it, so a
/// password holding an unencoded `&` or `#` is hidden whole.
fn query_passwords(text: &str, start: usize, spans: &mut Vec<Range<usize>>) {
    let mut open: Option<Range<usize>> = None;
    let mut piece_start = start;
    for piece in text[start..].split(['&', '#']) {
        let range = piece_start..piece_start + piece.len();
        piece_start = range.end + 1;
        match piece.split_once('=').filter(|(key, _)| looks_like_key(key)) {
            Some((key, _)) => {
                spans.extend(open.take());
                if is_secret_key(key) {
                    open = Some(range.start + key.len() + 1..range.end);
                }
            }
            None => {
                if let Some(value) = &mut open {
                    value.end = range.end;
                }
            }
        }
    }
    spans.extend(open);
}

/// Whether `key` can be a query-string key (percent-encoded or not).
fn looks_like_key(key: &str) -> bool {
    !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '%' | '+' | '[' | ']'))
}

/// The values of password keys in a libpq `key = value` string: a value is a run of non-blank characters or
/// a single-quoted string in which `\'` and `\\` are escapes.
fn key_value_passwords(text: &str, spans: &mut Vec<Range<usize>>) {
    let bytes = text.as_bytes();
    let blank = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_whitespace);
    let mut i = 0;
    while i < bytes.len() {
        while blank(i) {
            i += 1;
        }
        let key_start = i;
        while i < bytes.len() && !blank(i) && bytes[i] != b'=' {
            i += 1;
        }
        let key = &text[key_start..i];
        while blank(i) {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        while blank(i) {
            i += 1;
        }
        let value_start = i;
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
        } else {
            while i < bytes.len() && !blank(i) {
                i += 1;
            }
        }
        if is_secret_key(key) && i > value_start {
            spans.push(value_start..i);
        }
    }
}

/// `spans` sorted, with overlapping or touching ones joined.
fn merged(mut spans: Vec<Range<usize>>) -> Vec<Range<usize>> {
    spans.sort_by_key(|span| span.start);
    let mut joined: Vec<Range<usize>> = Vec::with_capacity(spans.len());
    for span in spans {
        match joined.last_mut() {
            Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
            _ => joined.push(span),
        }
    }
    joined
}

#[cfg(test)]
mod tests;
