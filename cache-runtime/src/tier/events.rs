//! Cross-process events over PostgreSQL's LISTEN/NOTIFY, on the channel `pg_cached_events`.
//!
//! Two kinds of news travel here: invalidations (a key or a namespace changed, so every process drops it
//! from its in-process tier) and lease releases (a cluster-wide computation finished, so waiting processes
//! read the value now instead of at their next poll).
//!
//! The payload format is in `channel.rs`.
//!
//! Notifications are lost while the listener is disconnected, so after every reconnect the in-process tier is
//! cleared. Between a loss and the reconnect, entries still expire by their max age: no value is served more
//! than the tier's max age after it was invalidated.

use super::local::LocalTier;
use crate::channel::{decode, Message, Notice, CHANNEL};
use crate::key::key_hash;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// What one `PgCache` shares with its listener task.
#[derive(Debug)]
pub(crate) struct Events {
    pub(crate) sender: u64,
    /// Callers waiting for a cluster-wide computation, by key hash.
    waiters: Mutex<HashMap<u64, Weak<Notify>>>,
    /// Times the listener (re)connected; each one cleared the in-process tier.
    pub(crate) connects: std::sync::atomic::AtomicU64,
    /// Whether every shard's listener is connected now. The in-process tier serves nothing while one is not
    /// (see `LocalTier`), since invalidations sent meanwhile would be missed.
    pub(crate) listening: Arc<AtomicBool>,
    /// Listeners connected now, and how many there are (one per shard).
    connected: Mutex<usize>,
    shards: usize,
    listeners: OnceLock<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Events {
    fn drop(&mut self) {
        for handle in self.listeners.get().into_iter().flatten() {
            handle.abort();
        }
    }
}

impl Events {
    /// The events of a cache over `shards` servers (each has a listener).
    pub(crate) fn new(shards: usize) -> Self {
        let sender = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
            );
            h.write_u32(std::process::id());
            h.finish()
        };
        Events {
            sender,
            waiters: Mutex::default(),
            connects: Default::default(),
            listening: Arc::default(),
            connected: Mutex::new(0),
            shards: shards.max(1),
            listeners: OnceLock::new(),
        }
    }
    /// A handle that is notified when another process reports `key` done.
    pub(crate) fn waiter(&self, key: &str) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters.retain(|_, w| w.strong_count() > 0);
        let hash = key_hash(key);
        if let Some(existing) = waiters.get(&hash).and_then(Weak::upgrade) {
            return existing;
        }
        let notify = Arc::new(Notify::new());
        waiters.insert(hash, Arc::downgrade(&notify));
        notify
    }

    fn wake(&self, hash: u64) {
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(notify) = waiters.get(&hash).and_then(Weak::upgrade) {
            notify.notify_waiters();
        }
    }

    /// Starts the listener tasks once, one per shard's pool; later calls do nothing.
    pub(crate) fn ensure_listening<'a>(
        self: &Arc<Self>,
        pools: impl Iterator<Item = &'a PgPool>,
        local: Weak<OnceLock<LocalTier>>,
    ) {
        self.listeners.get_or_init(|| {
            pools.map(|pool| tokio::spawn(listen(Arc::downgrade(self), pool.clone(), local.clone()))).collect()
        });
    }

    /// One more listener is connected; the tier may serve again once all are.
    fn connected(&self) {
        // The count and the flag change together, so that a listener connecting while another drops cannot
        // leave the flag up.
        let mut connected = self.connected.lock().unwrap_or_else(|e| e.into_inner());
        *connected += 1;
        self.listening.store(*connected >= self.shards, Ordering::Release);
    }

    /// A listener lost its connection: the tier serves nothing until it is back.
    fn disconnected(&self) {
        let mut connected = self.connected.lock().unwrap_or_else(|e| e.into_inner());
        *connected = connected.saturating_sub(1);
        self.listening.store(false, Ordering::Release);
    }
}

fn apply(events: &Events, local: Option<&LocalTier>, payload: &str) {
    let Some(Message { sender, notice }) = decode(payload) else {
        tracing::debug!(payload, "ignoring a cache event this version does not understand");
        return;
    };
    if sender == events.sender {
        return;
    }
    match (notice, local) {
        (Notice::Keys(hashes), Some(local)) => hashes.into_iter().for_each(|hash| local.remove_hash(hash)),
        (Notice::Namespace(namespace), Some(local)) => local.remove_namespace(&namespace),
        (Notice::Tag(tag), Some(local)) => local.remove_tag(&tag),
        (Notice::Done(hash), _) => events.wake(hash),
        _ => {}
    }
}

async fn listen(events: Weak<Events>, cache_pool: PgPool, local: Weak<OnceLock<LocalTier>>) {
    // The listener holds its connection for good: give it a pool of its own on the same server, so it never
    // takes a connection from the caller's pool (a pool of one would otherwise starve every cache operation).
    // It is made anew at each reconnect from the cache pool's current options, which follow the primary
    // after a failover (see `failover.rs`).
    let listener_pool = || {
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with((*cache_pool.connect_options()).clone())
    };
    let clear_local = |local: &Weak<OnceLock<LocalTier>>| {
        if let Some(tier) = local.upgrade().as_deref().and_then(OnceLock::get) {
            tier.clear();
        }
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match connect(&listener_pool()).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(%error, "cache event listener cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        {
            let Some(events) = events.upgrade() else { return };
            // Whatever was sent before we listened is lost, on the first connection as on later ones: forget
            // everything the tier may hold, and only then let it serve again.
            clear_local(&local);
            events.connected();
            if events.connects.fetch_add(1, Ordering::Relaxed) > 0 {
                tracing::info!("cache event listener reconnected; in-process tier cleared");
            }
        }
        // `Ok(None)` or an error means the connection dropped: reconnect with a fresh listener (counted above,
        // which clears the in-process tier).
        while let Ok(Some(notification)) = listener.try_recv().await {
            let Some(events) = events.upgrade() else { return };
            let tier = local.upgrade();
            apply(&events, tier.as_deref().and_then(OnceLock::get), notification.payload());
        }
        if let Some(events) = events.upgrade() {
            events.disconnected();
        }
        clear_local(&local);
    }
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
