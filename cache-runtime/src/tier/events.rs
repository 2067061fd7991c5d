//! Cross-process events over PostgreSQL's LISTEN/NOTIFY, on the channel `pg_cached_events` (format:
//! `channel.rs`).
//!
//! Three kinds of news travel here: invalidations (keys, a namespace or a tag changed, so every process drops
//! them from its in-process tier and detaches its computations of them in flight), lease releases (a
//! cluster-wide computation finished, so waiting processes read the value now instead of at their next poll)
//! and queued invalidations (a trigger's transaction under REPEATABLE READ or SERIALIZABLE left its tags to
//! be invalidated under READ COMMITTED: the listener runs the queue, see [`request_drain`]).
//!
//! **Only a live listener counts.** Notifications are lost while a listener is not connected, so the tier
//! serves nothing until every shard's listener has connected, and is cleared whenever one (re)connects.
//! Writes notify only while some listener is registered (migration 0013 has the protocol), so a listener
//! registers when it connects, and its tier starts serving only once the transactions in progress at that
//! moment have ended: one of them may have decided, before the registration, that nobody listened. A
//! listener is its own task; if that task ends for any reason (its connection dropped, a tokio runtime shut
//! down with the task in it), a guard marks it disconnected, and the next use of the cache starts a new one.
//! A connection that stays open but carries nothing any more (half-open, a proxy that froze) is found by a
//! heartbeat: every interval the listener notifies itself, and if that ping has not come back by the next
//! interval it drops the connection and starts again.
//!
//! **Only the cache's own notifications count.** Any role that can connect may NOTIFY on the channel. A
//! listener reads its database's events secret when it connects (`channel.rs`), and drops every payload
//! that does not verify, counted ([`Events::forged`], metric `pg_cached_forged_events_total`) and otherwise
//! without effect: the tier, the flights and the connection are left as they are. That includes a payload
//! that is not UTF-8, which a `SQL_ASCII` database lets any role send: the listener asks such a server for
//! the bytes as they are (converting them to UTF-8, the server would end the listener's session), and sqlx
//! can only read them by panicking, so the read is unwound and the payload dropped. (In a build with
//! `panic = "abort"` that is impossible: there the listener refuses a `SQL_ASCII` database and the tier
//! stays off.) A listener that cannot read the
//! secret (a role not granted) does not listen, and the tier serves nothing.
//!
//! **Bursts.** A task receives notifications, verifies them and hands over only what it kept, decoded to
//! hashes, through a bounded channel, so a burst (a bulk UPDATE under a trigger, or forged payloads) costs
//! bounded memory in this process: the rest waits in PostgreSQL's queue. A forged payload costs at most one
//! HMAC over its 8,000 bytes and is never copied. Whatever has arrived is applied as one batch: keys one by one, and tags and
//! namespaces together, with one scan of the tier (or, past a bound, by clearing it), so the work per
//! notification stays bounded and tier reads are not slowed by a pile of pending invalidations.

use super::flight::Flights;
use super::listening::{connect, InFlight};
use super::local::LocalTier;
use crate::channel::{name_hash, ping_payload, Message, Notice, Secret, CHANNEL};
use crate::key::{key_hash, namespace_of};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Notifications received but not yet applied, at most.
const BACKLOG: usize = 1024;

/// Tags or namespaces in one batch beyond which the tier is cleared instead of scanned.
const SCAN_AT_MOST: usize = 64;

/// How long a listener's drain of queued invalidations may take, and wait for a lock.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What one `PgCache` shares with its listener tasks.
#[derive(Debug)]
pub(crate) struct Events {
    pub(crate) sender: u64,
    /// Callers waiting for a cluster-wide computation, by key hash.
    waiters: Mutex<HashMap<u64, Weak<Notify>>>,
    /// Times a listener (re)connected; each one cleared the in-process tier.
    pub(crate) connects: AtomicU64,
    /// Notifications dropped because the cache did not send them (see the module docs).
    pub(crate) forged: AtomicU64,
    /// Whether every shard's listener is connected now. The in-process tier serves nothing while one is not
    /// (see `LocalTier`), since invalidations sent meanwhile would be missed.
    pub(crate) listening: Arc<AtomicBool>,
    /// Listeners connected now; there is one per shard.
    connected: Mutex<usize>,
    shards: usize,
    /// How often a listener checks its connection with a ping to itself.
    heartbeat: Duration,
    /// The listener task of each shard, if one was started.
    listeners: Mutex<Vec<Option<Listener>>>,
    /// Queued tag invalidations heard of (`Notice::Queued`), and whether a drain task is running: see
    /// [`request_drain`].
    drain_requests: AtomicU64,
    draining: AtomicBool,
}

/// A running listener task.
#[derive(Debug)]
struct Listener {
    task: tokio::task::JoinHandle<()>,
    /// Cleared when the task ends, however it ends (see [`Running`]).
    alive: Arc<AtomicBool>,
}

/// What a listener's invalidations reach: this cache's tier and its flights (weakly, so that a listener
/// never keeps a dropped cache alive).
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    pub(crate) local: Weak<OnceLock<LocalTier>>,
    pub(crate) flights: Weak<Flights>,
}

impl Drop for Events {
    fn drop(&mut self) {
        for listener in self.listeners.get_mut().unwrap_or_else(|e| e.into_inner()).iter().flatten() {
            listener.task.abort();
        }
    }
}

impl Events {
    /// The events of a cache over `shards` servers (each has a listener), checking each listener's
    /// connection every `heartbeat`.
    pub(crate) fn new(shards: usize, heartbeat: Duration) -> Self {
        let sender = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
            );
            h.write_u32(std::process::id());
            h.finish()
        };
        let shards = shards.max(1);
        Events {
            sender,
            waiters: Mutex::default(),
            connects: AtomicU64::new(0),
            forged: AtomicU64::new(0),
            listening: Arc::default(),
            connected: Mutex::new(0),
            shards,
            heartbeat,
            listeners: Mutex::new((0..shards).map(|_| None).collect()),
            drain_requests: AtomicU64::new(0),
            draining: AtomicBool::new(false),
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

    /// Starts a listener task for each shard's pool that has none running: on first use, and again after a
    /// task ended (its runtime shut down, say). Must run inside a tokio runtime.
    pub(crate) fn ensure_listening<'a>(self: &Arc<Self>, pools: impl Iterator<Item = &'a PgPool>, targets: &Targets) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for (slot, pool) in listeners.iter_mut().zip(pools) {
            if slot.as_ref().is_some_and(|listener| listener.alive.load(Ordering::Acquire)) {
                continue;
            }
            let alive = Arc::new(AtomicBool::new(true));
            let running = Running { events: Arc::downgrade(self), targets: targets.clone(), alive: Arc::clone(&alive) };
            let task = tokio::spawn(listen(running, pool.clone()));
            *slot = Some(Listener { task, alive });
        }
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

/// A listener task's hold on its cache. Dropped however the task ends, it marks the task gone, so that the
/// cache's next use starts another one.
struct Running {
    events: Weak<Events>,
    targets: Targets,
    alive: Arc<AtomicBool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Release);
    }
}

/// A connected listener: while it lives the tier may serve; dropped, it stops the tier and clears it.
struct Connected<'a>(&'a Running);

impl<'a> Connected<'a> {
    fn new(running: &'a Running) -> Option<Connected<'a>> {
        let events = running.events.upgrade()?;
        // Whatever was sent before we listened is lost, on the first connection as on later ones: forget
        // everything the tier may hold, and only then let it serve again.
        clear(&running.targets);
        events.connected();
        if events.connects.fetch_add(1, Ordering::Relaxed) > 0 {
            tracing::info!("cache event listener reconnected; in-process tier cleared");
        }
        Some(Connected(running))
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        if let Some(events) = self.0.events.upgrade() {
            events.disconnected();
        }
        clear(&self.0.targets);
    }
}

fn clear(targets: &Targets) {
    if let Some(tier) = targets.local.upgrade().as_deref().and_then(OnceLock::get) {
        tier.clear();
    }
}

/// How a listening session ended.
enum Ended {
    /// The connection is gone or silent: connect again.
    Lost,
    /// The cache was dropped: stop.
    CacheGone,
}

async fn listen(running: Running, cache_pool: PgPool) {
    // The listener holds its connection for good: give it a pool of its own on the same server, so it never
    // takes a connection from the caller's pool (a pool of one would otherwise starve every cache operation).
    // It is made anew at each reconnect from the cache pool's current options, which follow the primary
    // after a failover (see `route/failover.rs`).
    let listener_pool = || {
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with((*cache_pool.connect_options()).clone())
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(sender) = running.events.upgrade().map(|events| events.sender) else { return };
        let (listener, secret, in_flight) = match connect(&listener_pool(), &cache_pool, sender).await {
            Ok(connected) => connected,
            Err(error) => {
                tracing::warn!(%error, "cache event listener cannot listen; the in-process tier is off until it does");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let (forward, received) = mpsc::channel(BACKLOG);
        let receiver = tokio::spawn(receive(listener, secret.clone(), running.events.clone(), forward));
        let ended = session(&running, received, &cache_pool, &secret, in_flight).await;
        receiver.abort();
        if matches!(ended, Ended::CacheGone) {
            return;
        }
    }
}

/// Forwards what `listener` hears, verified and decoded, until its connection is lost. Whatever does not
/// verify is counted and dropped here, before anything is copied or queued (see the module docs).
async fn receive(mut listener: PgListener, secret: Secret, events: Weak<Events>, forward: mpsc::Sender<Message>) {
    loop {
        // The session gone (its task aborted with the cache), the connection goes too, and with it the
        // listener's registration: a quiet channel must not keep it open.
        let received = tokio::select! {
            received = listener.try_recv() => received,
            () = forward.closed() => return,
        };
        let notification = match received {
            Ok(Some(notification)) => notification,
            Ok(None) => return,
            Err(error) if crate::server::exec::is_connection_error(&error) => return,
            Err(error) => {
                forged(&events);
                tracing::debug!(%error, "dropping a cache event that cannot be read");
                continue;
            }
        };
        match payload(&notification).map(|payload| secret.open(payload)) {
            Some(Ok(Some(message))) => {
                if forward.send(message).await.is_err() {
                    return;
                }
            }
            Some(Ok(None)) => crate::observe::metrics::event_dropped("unknown"),
            Some(Err(crate::channel::Forged)) | None => forged(&events),
        }
    }
}

/// The payload of `notification`, or `None` if it is not UTF-8: sqlx's accessor panics then, and the panic is
/// caught (the module docs say why that is the only way, and what a `panic = "abort"` build does instead).
fn payload(notification: &sqlx::postgres::PgNotification) -> Option<&str> {
    #[cfg(panic = "unwind")]
    {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| notification.payload())).ok()
    }
    #[cfg(not(panic = "unwind"))]
    {
        Some(notification.payload())
    }
}

/// Counts a notification the cache did not send.
fn forged(events: &Weak<Events>) {
    if let Some(events) = events.upgrade() {
        events.forged.fetch_add(1, Ordering::Relaxed);
    }
    crate::observe::metrics::forged_event();
}

/// Applies what arrives, and checks the connection every heartbeat, until one of them says to stop. The tier
/// may serve once `in_flight` have ended, until the session ends.
async fn session(
    running: &Running,
    mut received: mpsc::Receiver<Message>,
    cache_pool: &PgPool,
    secret: &Secret,
    mut in_flight: InFlight,
) -> Ended {
    let Some(events) = running.events.upgrade() else { return Ended::CacheGone };
    let (heartbeat, sender) = (events.heartbeat, events.sender);
    drop(events);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut sequence, mut awaited): (u64, Option<u64>) = (0, None);
    let mut batch = Vec::with_capacity(BACKLOG);
    // While it is `None` the tier serves nothing; dropped when the session ends, it stops and clears the tier.
    let mut connected = None;
    let settle = tokio::time::sleep_until(in_flight.next_check());
    tokio::pin!(settle);
    loop {
        if in_flight.ended() && connected.is_none() {
            let Some(now_connected) = Connected::new(running) else { return Ended::CacheGone };
            connected = Some(now_connected);
        }
        tokio::select! {
            () = &mut settle, if !in_flight.ended() => {
                in_flight.check(cache_pool, heartbeat).await;
                settle.as_mut().reset(in_flight.next_check());
            }
            count = received.recv_many(&mut batch, BACKLOG) => {
                if count == 0 {
                    return Ended::Lost;
                }
                let Some(events) = running.events.upgrade() else { return Ended::CacheGone };
                let applied = apply(&events, &running.targets, batch.drain(..), &mut awaited);
                if applied.answered {
                    tracing::trace!("cache event listener heartbeat answered");
                }
                if applied.queued {
                    request_drain(&events, cache_pool);
                }
            }
            _ = ticker.tick() => {
                if awaited.is_some() {
                    tracing::info!("cache event listener heard nothing back from its heartbeat; reconnecting");
                    return Ended::Lost;
                }
                sequence += 1;
                awaited = Some(sequence);
                let ping = secret.sign(&ping_payload(sender, sequence));
                let ping = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(ping);
                // A ping that cannot be sent is not an answer either: the next tick finds it missing.
                let _ = tokio::time::timeout(heartbeat, ping.execute(cache_pool)).await;
            }
        }
    }
}

/// What a batch of messages asked of the listener beyond invalidating.
struct Applied {
    /// It held the ping the listener awaited (then cleared).
    answered: bool,
    /// A tag invalidation was queued: drain the queue.
    queued: bool,
}

/// Applies a batch of verified messages.
fn apply(
    events: &Events,
    targets: &Targets,
    messages: impl Iterator<Item = Message>,
    awaited: &mut Option<u64>,
) -> Applied {
    let (mut keys, mut namespaces, mut tags) = (HashSet::new(), HashSet::new(), HashSet::new());
    let mut applied = Applied { answered: false, queued: false };
    for Message { sender, notice } in messages {
        match notice {
            Notice::Ping(sequence) if sender == events.sender && Some(sequence) == *awaited => {
                *awaited = None;
                applied.answered = true;
            }
            _ if sender == events.sender => {}
            Notice::Keys(hashes) => keys.extend(hashes),
            Notice::Namespace(namespace) => {
                namespaces.insert(namespace);
            }
            Notice::Tag(tag) => {
                tags.insert(tag);
            }
            Notice::Done(hash) => events.wake(hash),
            Notice::Queued(_) => applied.queued = true,
            Notice::Ping(_) => {}
        }
    }
    invalidate(targets, &keys, &namespaces, &tags);
    applied
}

/// Runs the queue of deferred tag invalidations on `pool` (see migration 0012): until then their entries
/// are hidden from reads and refused to writes, so this only gives their keys back to the cache sooner than
/// the next sweep would. One drain task per cache at a time; a request that arrives while it runs makes it
/// run once more. Every listening process drains: they share the work (the SQL skips rows another holds).
fn request_drain(events: &Arc<Events>, pool: &PgPool) {
    events.drain_requests.fetch_add(1, Ordering::AcqRel);
    if events.draining.swap(true, Ordering::AcqRel) {
        return;
    }
    let (events, pool) = (Arc::downgrade(events), pool.clone());
    tokio::spawn(async move {
        loop {
            let Some(seen) = events.upgrade().map(|e| e.drain_requests.load(Ordering::Acquire)) else { return };
            match crate::server::drain_invalidations_on(&pool, DRAIN_TIMEOUT).await {
                Ok(drained) => tracing::debug!(drained, "queued tag invalidations drained"),
                Err(error) => tracing::warn!(%error, "queued tag invalidations not drained; the next sweep retries"),
            }
            let Some(events) = events.upgrade() else { return };
            if events.drain_requests.load(Ordering::Acquire) != seen {
                continue;
            }
            events.draining.store(false, Ordering::Release);
            // A request that came between the check and the store found the flag still up: take it back
            // and run again, unless that request's sender started a drain itself.
            if events.drain_requests.load(Ordering::Acquire) == seen || events.draining.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    });
}

/// Drops what other processes invalidated from the tier, and detaches this process's computations of it.
fn invalidate(targets: &Targets, keys: &HashSet<u64>, namespaces: &HashSet<u64>, tags: &HashSet<u64>) {
    if let Some(tier) = targets.local.upgrade().as_deref().and_then(OnceLock::get) {
        keys.iter().for_each(|&hash| tier.remove_hash(hash));
        if namespaces.len() + tags.len() > SCAN_AT_MOST {
            tier.clear();
        } else {
            tier.remove_namespaces_and_tags(namespaces, tags);
        }
    }
    // A caller arriving from now on must not join a computation that began before the invalidation. Which
    // tags a computation will carry is only known when it ends: a tag detaches them all.
    if let Some(flights) = targets.flights.upgrade() {
        if !tags.is_empty() {
            flights.detach(|_| true);
        } else if !keys.is_empty() || !namespaces.is_empty() {
            flights.detach(|key| keys.contains(&key_hash(key)) || namespaces.contains(&name_hash(namespace_of(key))));
        }
    }
}
