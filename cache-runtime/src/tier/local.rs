//! The optional in-process tier (L1) in front of PostgreSQL.
//!
//! Entries are keyed by a 64-bit FNV-1a hash of the cache key, because invalidation notifications carry
//! hashes (so payloads stay small whatever the keys). Each entry keeps its full key and is only served when
//! the key matches, so a hash collision is a miss, never a wrong value.
//!
//! Every entry has a deadline: the earlier of its PostgreSQL expiry and the tier's max age. An entry past its
//! deadline is never served, whether or not moka has evicted it yet.

use crate::channel::name_hash;
use crate::entry::{remaining, EntryMeta, LiveEntry};
use crate::key::{key_hash, namespace_of};
use crate::latest::LatestInstant;
use moka::sync::Cache;
use moka::Expiry;
use std::any::Any;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The capacity of a tier created on demand by a function with `local = "..."`.
pub(crate) const DEFAULT_CAPACITY: u64 = 10_000;

#[derive(Debug)]
pub(crate) struct LocalEntry {
    key: Box<str>,
    pub(crate) json: Arc<str>,
    /// Its tags (a tag invalidation removes it) and compute time (what a hit saved).
    pub(crate) meta: EntryMeta,
    /// The decoded value, for memoized functions with `local = "..."`: filled on first use, then cloned out.
    typed: OnceLock<Arc<dyn Any + Send + Sync>>,
    deadline: Instant,
    /// When the entry expires in PostgreSQL (`None`: never), for `refresh_ahead`.
    expires: Option<Instant>,
    /// The [`name_hash`] of its namespace and of each of its tags, by which other processes' invalidations
    /// name them (computed once, when the entry is stored).
    names: NameHashes,
}

/// The hashes by which the events channel names an entry's namespace and tags.
#[derive(Debug)]
struct NameHashes {
    namespace: u64,
    tags: Box<[u64]>,
}

impl NameHashes {
    fn of(key: &str, meta: &EntryMeta) -> NameHashes {
        let tags = meta.tags.as_ref().map_or_else(Box::default, |tags| tags.iter().map(|t| name_hash(t)).collect());
        NameHashes { namespace: name_hash(namespace_of(key)), tags }
    }
}

impl LocalEntry {
    fn namespace(&self) -> &str {
        namespace_of(&self.key)
    }

    /// The decoded value if it was decoded as `T` before.
    pub(crate) fn typed<T: Clone + 'static>(&self) -> Option<T> {
        self.typed.get()?.downcast_ref::<T>().cloned()
    }

    pub(crate) fn set_typed<T: Send + Sync + 'static>(&self, value: T) {
        let _ = self.typed.set(Arc::new(value));
    }

    /// Milliseconds until the entry expires in PostgreSQL; `None`: never.
    pub(crate) fn remaining_ms(&self) -> Option<i64> {
        let left = self.expires?.saturating_duration_since(Instant::now());
        Some(i64::try_from(left.as_millis()).unwrap_or(i64::MAX))
    }
}

struct UntilDeadline;

impl Expiry<u64, Arc<LocalEntry>> for UntilDeadline {
    fn expire_after_create(&self, _: &u64, entry: &Arc<LocalEntry>, created_at: Instant) -> Option<Duration> {
        Some(entry.deadline.saturating_duration_since(created_at))
    }
    fn expire_after_update(
        &self,
        _: &u64,
        entry: &Arc<LocalEntry>,
        updated_at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.deadline.saturating_duration_since(updated_at))
    }
}

/// The longest an entry is ever kept: `Instant` arithmetic past this could overflow.
const LONGEST_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The tier itself.
///
/// **Coherence.** Two things keep an invalidated value from coming back:
/// - The *epoch*, bumped by every removal. A reader takes it ([`epoch`](Self::epoch)) before it reads
///   PostgreSQL, and [`put`](Self::put) drops the entry again if any removal happened since: a read that
///   fetched a row before an invalidation committed cannot refill the tier after the invalidation cleared it.
///   A read from a standby may miss invalidations heard even before it began, up to the instant the standby
///   is known to hold (`as_of`): such a value is kept only if no removal at all happened since that instant.
/// - *Listening*: the tier serves and stores nothing while this process's event listener is not connected,
///   since invalidations sent meanwhile would be missed; the listener clears the tier whenever it connects.
pub(crate) struct LocalTier {
    entries: Cache<u64, Arc<LocalEntry>>,
    max_age: Duration,
    /// Whether `PgCache::get`/`set` use it for every key (builder option) or only functions that ask for it.
    pub(crate) for_all_keys: bool,
    epoch: AtomicU64,
    /// When the last removal happened.
    last_removal: LatestInstant,
    /// Shared with the event listener, which sets it while it is connected.
    listening: Arc<AtomicBool>,
}

impl std::fmt::Debug for LocalTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTier")
            .field("entries", &self.entries.entry_count())
            .field("max_age", &self.max_age)
            .field("for_all_keys", &self.for_all_keys)
            .finish()
    }
}

impl LocalTier {
    pub(crate) fn new(capacity: u64, max_age: Duration, for_all_keys: bool, listening: Arc<AtomicBool>) -> LocalTier {
        let entries =
            Cache::builder().max_capacity(capacity).expire_after(UntilDeadline).support_invalidation_closures().build();
        LocalTier {
            entries,
            max_age: max_age.min(LONGEST_LIFETIME),
            for_all_keys,
            epoch: AtomicU64::new(0),
            last_removal: LatestInstant::default(),
            listening,
        }
    }

    /// Whether every listener is connected, so that the tier may serve.
    pub(crate) fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// A live entry for `key`.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<LocalEntry>> {
        if !self.listening() {
            return None;
        }
        let entry = self.entries.get(&key_hash(key))?;
        (&*entry.key == key && Instant::now() < entry.deadline).then_some(entry)
    }

    /// The current epoch: take it before reading what will be [`put`](Self::put).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// A ticket to fill the tier with what a read or write is about to bring: take it before the I/O (it
    /// notes the epoch, see the coherence notes above), and [`Fill::put`] the result after it.
    pub(crate) fn fill(&self) -> Fill<'_> {
        Fill { tier: self, epoch: self.epoch() }
    }

    /// Stores `entry` for `key`, for at most `max_age` (the tier's, or a shorter one of the function's) and
    /// never past the time it has left in PostgreSQL, unless a removal happened since `epoch` (or, for a value
    /// read from a standby, since its `as_of`) or the listener is not connected. Returns the entry when it was
    /// kept.
    fn put(&self, key: &str, entry: LiveEntry, max_age: Option<Duration>, epoch: u64) -> Option<Arc<LocalEntry>> {
        let LiveEntry { json, remaining_ms, as_of, meta } = entry;
        let mut lifetime = max_age.map_or(self.max_age, |m| m.min(self.max_age));
        if let Some(remaining) = remaining(remaining_ms) {
            lifetime = lifetime.min(remaining);
        }
        if lifetime.is_zero() || !self.listening() || self.epoch() != epoch || self.removed_since(as_of) {
            return None;
        }
        let now = Instant::now();
        let deadline = now.checked_add(lifetime).unwrap_or(now);
        let expires = remaining(remaining_ms).and_then(|left| now.checked_add(left));
        let names = NameHashes::of(key, &meta);
        let entry =
            Arc::new(LocalEntry { key: key.into(), json, meta, typed: OnceLock::new(), deadline, expires, names });
        let hash = key_hash(key);
        self.entries.insert(hash, Arc::clone(&entry));
        // A removal that bumped the epoch after the check above may have run before the insert: undo it.
        // (Removals bump first and remove second, so one of the two always sees the other.)
        if self.epoch() != epoch || !self.listening() {
            self.entries.invalidate(&hash);
            return None;
        }
        Some(entry)
    }

    fn bump(&self) {
        self.last_removal.advance(Instant::now());
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether a removal happened at or after `as_of` (always false without one).
    fn removed_since(&self, as_of: Option<Instant>) -> bool {
        let (Some(as_of), Some(last)) = (as_of, self.last_removal.get()) else { return false };
        last >= as_of
    }

    pub(crate) fn remove_hash(&self, hash: u64) {
        self.bump();
        self.entries.invalidate(&hash);
    }

    pub(crate) fn remove(&self, key: &str) {
        self.remove_hash(key_hash(key));
    }

    /// Removes every entry of one of `namespaces` or carrying one of `tags` (by their [`name_hash`], as
    /// other processes' notifications name them), in one scan.
    pub(crate) fn remove_namespaces_and_tags(&self, namespaces: &HashSet<u64>, tags: &HashSet<u64>) {
        if namespaces.is_empty() && tags.is_empty() {
            return;
        }
        self.bump();
        let (namespaces, tags) = (namespaces.clone(), tags.clone());
        let _ = self.entries.invalidate_entries_if(move |_, entry| {
            namespaces.contains(&entry.names.namespace) || entry.names.tags.iter().any(|tag| tags.contains(tag))
        });
    }

    pub(crate) fn remove_namespace(&self, namespace: &str) {
        self.bump();
        let namespace: Box<str> = namespace.into();
        // Only fails when closures were not enabled at build time, and they are.
        let _ = self.entries.invalidate_entries_if(move |_, entry| entry.namespace() == &*namespace);
    }

    /// Removes every entry carrying `tag`.
    pub(crate) fn remove_tag(&self, tag: &str) {
        self.bump();
        let tag: Box<str> = tag.into();
        let _ = self.entries.invalidate_entries_if(move |_, entry| {
            entry.meta.tags.as_ref().is_some_and(|t| t.iter().any(|t| **t == *tag))
        });
    }

    pub(crate) fn clear(&self) {
        self.bump();
        self.entries.invalidate_all();
    }

    #[cfg(feature = "test-support")]
    pub(crate) fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}

/// See [`LocalTier::fill`].
#[derive(Debug)]
pub(crate) struct Fill<'a> {
    tier: &'a LocalTier,
    epoch: u64,
}

impl Fill<'_> {
    /// The tier this ticket fills.
    pub(crate) fn tier(&self) -> &LocalTier {
        self.tier
    }

    /// Keeps `entry` for `key` (for at most `max_age`, the function's own, if any) unless something was
    /// removed from the tier since the ticket was taken. Returns the entry when it was kept.
    pub(crate) fn put(&self, key: &str, entry: LiveEntry, max_age: Option<Duration>) -> Option<Arc<LocalEntry>> {
        self.tier.put(key, entry, max_age, self.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_pinned() {
        // Notifications carry these between processes and builds: they must never change.
        assert_eq!(key_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(key_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(key_hash("retrieval:abc"), key_hash("retrieval:abc"));
    }

    /// An entry as a read brought it: `remaining` before it expires, read from a standby at `as_of`.
    fn live(json: &str, meta: EntryMeta, remaining: Option<Duration>, as_of: Option<Instant>) -> LiveEntry {
        let remaining_ms = remaining.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        LiveEntry { json: json.into(), remaining_ms, as_of, meta }
    }

    fn listening_tier(max_age: Duration) -> LocalTier {
        LocalTier::new(100, max_age, true, Arc::new(AtomicBool::new(true)))
    }

    #[test]
    fn never_serves_past_the_deadline_or_another_key() {
        let tier = listening_tier(Duration::from_secs(60));
        tier.put("ns:a", live("1", EntryMeta::default(), Some(Duration::from_millis(30)), None), None, tier.epoch());
        assert!(tier.get("ns:a").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(tier.get("ns:a").is_none(), "the PostgreSQL expiry bounds the entry");
        tier.put("ns:b", live("2", EntryMeta::default(), None, None), Some(Duration::from_millis(20)), tier.epoch());
        std::thread::sleep(Duration::from_millis(30));
        assert!(tier.get("ns:b").is_none(), "the function's max age bounds the entry");
        tier.put("ns:c", live("3", EntryMeta::default(), None, None), None, tier.epoch());
        assert!(tier.get("ns:c").is_some());
        tier.remove_namespace("ns");
        assert!(tier.get("ns:c").is_none());
    }

    #[test]
    fn a_tag_removes_the_entries_carrying_it() {
        let tier = listening_tier(Duration::from_secs(60));
        let tagged =
            |tags: &[&str]| EntryMeta { tags: crate::tags::stored_form(tags).ok().flatten(), ..EntryMeta::default() };
        tier.put("a:1", live("1", tagged(&["doc:1", "corpus"]), None, None), None, tier.epoch());
        tier.put("a:2", live("2", tagged(&["doc:2"]), None, None), None, tier.epoch());
        tier.put("a:3", live("3", EntryMeta::default(), None, None), None, tier.epoch());
        let before = tier.epoch();
        tier.remove_tag("doc:1");
        assert!(tier.get("a:1").is_none());
        assert!(tier.get("a:2").is_some() && tier.get("a:3").is_some());
        assert!(tier.put("a:1", live("1", EntryMeta::default(), None, None), None, before).is_none(), "epoch");
    }

    #[test]
    fn a_read_from_before_an_invalidation_is_not_kept() {
        let tier = listening_tier(Duration::from_secs(60));
        let before = tier.epoch();
        tier.remove("ns:other");
        assert!(tier.put("ns:a", live("old", EntryMeta::default(), None, None), None, before).is_none());
        assert!(tier.get("ns:a").is_none());
        assert!(tier.put("ns:a", live("new", EntryMeta::default(), None, None), None, tier.epoch()).is_some());
    }

    #[test]
    fn a_standby_read_is_kept_only_without_removals_since_its_instant() {
        let tier = listening_tier(Duration::from_secs(60));
        let as_of = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let epoch = tier.epoch();
        assert!(
            tier.put("ns:a", live("1", EntryMeta::default(), None, Some(as_of)), None, epoch).is_some(),
            "no removal since"
        );
        tier.remove("ns:other");
        // The removal came before this read began (the epoch is current), but after the standby's instant.
        assert!(tier.put("ns:b", live("2", EntryMeta::default(), None, Some(as_of)), None, tier.epoch()).is_none());
        std::thread::sleep(Duration::from_millis(2));
        assert!(tier
            .put("ns:b", live("2", EntryMeta::default(), None, Some(Instant::now())), None, tier.epoch())
            .is_some());
    }

    #[test]
    fn nothing_is_served_or_kept_while_not_listening() {
        let listening = Arc::new(AtomicBool::new(false));
        let tier = LocalTier::new(100, Duration::from_secs(60), true, Arc::clone(&listening));
        assert!(tier.put("ns:a", live("1", EntryMeta::default(), None, None), None, tier.epoch()).is_none());
        listening.store(true, Ordering::Release);
        tier.put("ns:a", live("1", EntryMeta::default(), None, None), None, tier.epoch());
        assert!(tier.get("ns:a").is_some());
        listening.store(false, Ordering::Release);
        assert!(tier.get("ns:a").is_none());
    }

    #[test]
    fn an_unbounded_max_age_does_not_overflow() {
        let tier = listening_tier(Duration::MAX);
        assert!(tier.put("ns:forever", live("1", EntryMeta::default(), None, None), None, tier.epoch()).is_some());
        assert!(tier.get("ns:forever").is_some());
    }

    #[test]
    fn typed_values_are_cloned_out() {
        let tier = listening_tier(Duration::from_secs(60));
        let entry =
            tier.put("ns:t", live("[1,2]", EntryMeta::default(), None, None), None, tier.epoch()).expect("kept");
        assert_eq!(entry.typed::<Vec<u8>>(), None);
        entry.set_typed(vec![1u8, 2]);
        assert_eq!(tier.get("ns:t").and_then(|e| e.typed::<Vec<u8>>()), Some(vec![1, 2]));
        assert_eq!(tier.get("ns:t").and_then(|e| e.typed::<String>()), None, "another type is not served");
    }
}
