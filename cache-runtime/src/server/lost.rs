//! A test hook (feature `test-support`): the answer of the next delete of a key is lost after its statement
//! committed, as when the connection dies between the server's commit and the client reading the result.
//! The statement then fails with a connection error and `exec` runs it once more on a fresh connection: the
//! case a delete's report must survive (see `pg_cached_delete`'s `p_token`).

use std::collections::HashSet;
use std::sync::Mutex;

static LOSE: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Loses the answer of the next delete statement that carries `key` (once).
pub(crate) fn lose_next_delete_answer(key: &str) {
    LOSE.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashSet::new).insert(key.to_owned());
}

/// A connection error if the answer of a statement that deleted `keys` is to be lost (and the hook is spent).
pub(crate) fn lost(keys: &[String]) -> Option<sqlx::Error> {
    let mut armed = LOSE.lock().unwrap_or_else(|e| e.into_inner());
    let set = armed.as_mut()?;
    let hit = keys.iter().any(|k| set.remove(k));
    hit.then(|| {
        let gone = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "test hook: the answer was lost");
        sqlx::Error::Io(gone)
    })
}
