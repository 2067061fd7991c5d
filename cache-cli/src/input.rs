//! Input from the person or the script: keys, namespaces, tags, and confirmations.
//!
//! Input is checked before any I/O, so a bad key is a usage error (exit 2) and never half a batch done.

use crate::error::CliError;
use std::io::{BufRead, IsTerminal, Write};

/// Checks a key with cache-runtime's own rule (`validate_key`): not empty, no NUL character, at most
/// `MAX_KEY_CHARS` characters.
///
/// # Errors
/// [`CliError::Cache`] with the library's reason; it exits 2 as bad input.
pub fn check_key(key: &str) -> Result<(), CliError> {
    Ok(cache_runtime::validate_key(key)?)
}

pub fn check_namespace(namespace: &str) -> Result<(), CliError> {
    Ok(cache_runtime::validate_namespace(namespace)?)
}

/// Checks a tag with cache-runtime's own rule (`validate_tag`): 1 to `MAX_TAG_CHARS` characters, no control
/// character.
///
/// # Errors
/// [`CliError::Cache`] with the library's reason; it exits 2 as bad input.
pub fn check_tag(tag: &str) -> Result<(), CliError> {
    Ok(cache_runtime::validate_tag(tag)?)
}

/// Checks a tenant id as the library does (`cache_runtime::validate_tenant`).
///
/// # Errors
/// [`CliError::Cache`] with the library's reason; it exits 2 as bad input.
pub fn check_tenant(tenant: &str) -> Result<(), CliError> {
    Ok(cache_runtime::validate_tenant(tenant)?)
}

/// Checks a key prefix: anything but a NUL.
///
/// # Errors
/// [`CliError::Usage`] when it contains a NUL.
pub fn check_prefix(prefix: &str) -> Result<(), CliError> {
    if prefix.contains('\0') {
        return Err(CliError::Usage(format!("prefix {prefix:?} contains a NUL character")));
    }
    Ok(())
}

/// Keys from `reader`, one per line (a trailing `\r` is dropped, blank lines are skipped), each checked.
///
/// # Errors
/// [`CliError::Io`] when reading fails; [`CliError::Usage`] for a bad key or no key at all.
pub fn keys_from(reader: impl BufRead) -> Result<Vec<String>, CliError> {
    let mut keys = Vec::new();
    for line in reader.split(b'\n') {
        let line = line.map_err(CliError::io("reading keys from stdin"))?;
        let line = String::from_utf8(line).map_err(|_| CliError::Usage("a key on stdin is not valid UTF-8".into()))?;
        let key = line.strip_suffix('\r').unwrap_or(&line);
        if key.trim().is_empty() {
            continue;
        }
        check_key(key)?;
        keys.push(key.to_owned());
    }
    if keys.is_empty() {
        return Err(CliError::Usage("no keys on stdin".into()));
    }
    Ok(keys)
}

/// Whether a destructive command may go ahead, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// `--yes` was given.
    Given,
    /// Someone is at the terminal: ask them (see [`ask`]).
    Ask,
}

/// Decides how `action` is confirmed, before any I/O.
///
/// Deleting data is only done with a confirmation: `--yes`, or "y" typed at a terminal. When stdin is not a
/// terminal (a script, a pipe) and there is no `--yes`, nobody can answer, so this refuses rather than
/// deleting or waiting for an answer that cannot come.
///
/// # Errors
/// [`CliError::Usage`] when stdin is not a terminal and `yes` is false.
pub fn confirmation(yes: bool, action: &str) -> Result<Confirmation, CliError> {
    if yes {
        Ok(Confirmation::Given)
    } else if std::io::stdin().is_terminal() {
        Ok(Confirmation::Ask)
    } else {
        Err(CliError::Usage(format!("refusing to {action} without confirmation: stdin is not a terminal; pass --yes")))
    }
}

/// Asks `question` (a yes/no question) at the terminal; only "y" or "yes" confirm.
///
/// # Errors
/// [`CliError::NotConfirmed`] for any other answer; [`CliError::Io`] when the terminal cannot be used.
pub async fn ask(question: String) -> Result<(), CliError> {
    // Reading the terminal blocks: keep it off the runtime's thread.
    let answer = tokio::task::spawn_blocking(move || read_answer(&question))
        .await
        .map_err(|e| CliError::io("reading the answer")(std::io::Error::other(e)))??;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(CliError::NotConfirmed)
    }
}

/// Writes the question on stderr (stdout stays clean for `--json`) and reads one line.
fn read_answer(question: &str) -> Result<String, CliError> {
    let mut stderr = std::io::stderr().lock();
    write!(stderr, "{question} [y/N] ").and_then(|()| stderr.flush()).map_err(CliError::io("asking"))?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(CliError::io("reading the answer"))?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_runtime::MAX_KEY_CHARS;

    #[test]
    fn keys_are_checked_before_io() {
        let bad = |key: &str| check_key(key).map_err(|e| e.exit_code());
        assert!(check_key("retrieval:abc").is_ok());
        assert_eq!(bad(""), Err(2));
        assert_eq!(bad("a\0b"), Err(2));
        assert!(check_key(&"é".repeat(MAX_KEY_CHARS)).is_ok());
        assert_eq!(bad(&"k".repeat(MAX_KEY_CHARS + 1)), Err(2));
        assert!(check_namespace("retrieval").is_ok());
        assert_eq!(check_namespace("a:b").map_err(|e| e.exit_code()), Err(2));
        assert!(check_tag("doc:42").is_ok());
        assert_eq!(check_tag("").map_err(|e| e.exit_code()), Err(2));
        assert_eq!(check_tag("a\tb").map_err(|e| e.exit_code()), Err(2));
        assert_eq!(check_tag(&"t".repeat(cache_runtime::MAX_TAG_CHARS + 1)).map_err(|e| e.exit_code()), Err(2));
    }

    #[test]
    fn keys_from_stdin_are_one_per_line() {
        let keys = keys_from(&b"a:1\r\n\nb:2\n"[..]).ok();
        assert_eq!(keys, Some(vec!["a:1".to_owned(), "b:2".to_owned()]));
        assert_eq!(keys_from(&b"a\0b\n"[..]).map_err(|e| e.exit_code()), Err(2));
        assert!(matches!(keys_from(&b"\n\n"[..]), Err(CliError::Usage(_))));
    }
}
