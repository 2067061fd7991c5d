//! Encryption at rest at the store's one door: every write is sealed here before it goes down to a server,
//! and every read is opened here before anything above decodes it (the store API and memoized calls alike).
//! The in-process tier is filled above this door, so it holds plaintext (see docs/SECURITY.md).

use super::PgCache;
use crate::crypt::{Opened, Sealing};
use crate::entry::{LiveEntry, Lookup, Write};
use crate::error::Result;
use crate::key::namespace_of;
use crate::observe::Event;
use std::sync::Arc;

impl PgCache {
    fn sealing(&self) -> &Sealing {
        &self.inner.config.sealing
    }

    /// `write` with its value encrypted, if its namespace is (`forced`: the function asked for it).
    pub(super) fn sealed(&self, mut write: Write, forced: bool) -> Result<Write> {
        let sealing = self.sealing();
        if sealing.seals(namespace_of(&write.key), forced) {
            write.json = sealing.seal(&write.key, &write.json)?.into();
        }
        Ok(write)
    }

    /// Refuses semantic entries in an encrypted namespace: their text and vector would be stored in plain
    /// form beside the encrypted value.
    pub(super) fn refuse_if_sealed(&self, namespace: &str) -> Result<()> {
        if self.sealing().seals(namespace, false) {
            return Err(crate::error::CacheError::Config(format!(
                "namespace {namespace:?} is encrypted: semantic entries (set_similar, similar(...)) would store \
                 their text and vector unencrypted, so they are refused there"
            )));
        }
        Ok(())
    }

    /// What to serve of `json`, stored under `key`: `Some(None)` the stored JSON as it is (a plain value),
    /// `Some(Some(plaintext))` its decryption, `None` nothing (counted as undecryptable and logged; the caller
    /// counts the miss).
    pub(super) fn opened(&self, key: &str, json: &str, forced: bool) -> Option<Option<String>> {
        let sealing = self.sealing();
        let namespace = namespace_of(key);
        match sealing.open(key, json, sealing.seals(namespace, forced), self.config().max_value_bytes) {
            Opened::AsStored => Some(None),
            Opened::Decrypted(plain) => Some(Some(plain)),
            Opened::Refused(reason) => {
                self.record(namespace, Event::Undecryptable);
                tracing::warn!(namespace, key, %reason, "encrypted entry not served; treated as a miss");
                None
            }
        }
    }

    /// A live entry as the layers above may see it: decrypted, or `None` (a miss) when it cannot be.
    pub(super) fn opened_entry(&self, key: &str, mut entry: LiveEntry, forced: bool) -> Option<LiveEntry> {
        if let Some(plain) = self.opened(key, &entry.json, forced)? {
            entry.json = Arc::from(plain);
        }
        Some(entry)
    }

    /// A lookup as the engine may see it: its value decrypted, or gone (a miss) when it cannot be.
    pub(super) fn opened_lookup(&self, key: &str, mut lookup: Lookup, forced: bool) -> Lookup {
        let Some(json) = lookup.json.take() else { return lookup };
        lookup.json = match self.opened(key, &json, forced) {
            Some(Some(plain)) => Some(Arc::from(plain)),
            Some(None) => Some(json),
            None => None,
        };
        lookup
    }
}
