//! The routing layer: which server holds a key.
//!
//! A `PgCache` runs over one or more shards ([`Node`]s: a primary [`Server`] and its optional standbys). Per-key operations (reads, writes, deletes, the memoized
//! path, leases) go to the key's shard; operations on many keys at once (namespace purges, sweeps, `keys`,
//! `stats`, health, migrations) go to every shard, in parallel, and their results are merged.
//!
//! **Which shard.** Rendezvous (highest-random-weight) hashing, from the `rendezvous_hash` crate: each shard
//! gets a score per key and the highest wins. A shard is scored by its identity (`source.rs`): the name the
//! operator gave it, or else its database and the set of its hosts (`host:port,host:port/database`, sorted,
//! never credentials), so neither the list nor a URL's hosts depend on their order; adding an (N+1)th shard
//! moves about 1/(N+1) of the keys (all of them to the new shard) and removing one moves only its own keys.
//! Jump consistent hashing is faster but names shards by position, so removing any shard but the last
//! reshuffles everything; Maglev needs a lookup table rebuilt on every change. With a handful of shards,
//! scoring each is a few nanoseconds, and with one shard routing is skipped altogether.
//!
//! The score mixes the shard's name with the key's FNV-1a hash (the one the NOTIFY payloads carry) through
//! a fixed 64-bit finalizer: the same in every process, build and platform, which routing needs (two
//! processes that disagree on a key's shard would each miss the other's writes).

use super::node::Node;
use crate::server::Server;
use rendezvous_hash::{NodeHasher, RendezvousNodes};
use std::hash::{Hash, Hasher};

/// The servers of one cache and the rule that picks one per key.
pub(crate) struct Shards {
    servers: Vec<Node>,
    names: Vec<String>,
    /// Shard indexes, scored by name.
    ring: RendezvousNodes<ShardNode, StableHasher>,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards").field("names", &self.names).field("servers", &self.servers).finish()
    }
}

impl Shards {
    /// `servers` with their names (distinct; see the module docs).
    pub(crate) fn new(servers: Vec<(String, Node)>) -> Shards {
        let mut ring = RendezvousNodes::new(StableHasher);
        let mut names = Vec::with_capacity(servers.len());
        let mut list = Vec::with_capacity(servers.len());
        for (index, (name, server)) in servers.into_iter().enumerate() {
            ring.insert(ShardNode { name_hash: crate::key::key_hash(&name), index });
            names.push(name);
            list.push(server);
        }
        Shards { servers: list, names, ring }
    }

    /// The index of the shard that holds `key`.
    pub(crate) fn index_for(&self, key: &str) -> usize {
        if self.servers.len() == 1 {
            return 0;
        }
        let item = crate::key::key_hash(key);
        self.ring.calc_candidates(&item).next().map_or(0, |node| node.index)
    }

    /// The shard that holds `key`.
    pub(crate) fn for_key(&self, key: &str) -> &Node {
        &self.servers[self.index_for(key)]
    }

    pub(crate) fn all(&self) -> &[Node] {
        &self.servers
    }

    pub(crate) fn first(&self) -> &Node {
        &self.servers[0]
    }

    pub(crate) fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    pub(crate) fn len(&self) -> usize {
        self.servers.len()
    }

    /// `items` split by shard: for each shard, the positions (in `items`) of the keys it holds.
    pub(crate) fn partition<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Vec<Vec<usize>> {
        let mut parts = vec![Vec::new(); self.servers.len()];
        for (position, key) in keys.into_iter().enumerate() {
            parts[self.index_for(key)].push(position);
        }
        parts
    }
}

/// Runs `op` on every shard's primary at once; the results in shard order.
pub(crate) async fn on_every_shard<'a, T, F, Fut>(shards: &'a Shards, op: F) -> Vec<T>
where
    F: Fn(&'a Server) -> Fut,
    Fut: std::future::Future<Output = T> + 'a,
{
    futures_util::future::join_all(shards.all().iter().map(|node| op(node.primary()))).await
}

/// Runs `op` once per shard on the items whose key it holds (all shards at once), and puts the results, one
/// per item, back in the order of `items`.
pub(crate) async fn scatter<'a, I, T, F, Fut>(shards: &'a Shards, items: Vec<I>, key: fn(&I) -> &str, op: F) -> Vec<T>
where
    F: Fn(&'a Node, Vec<I>) -> Fut,
    Fut: std::future::Future<Output = Vec<T>> + 'a,
{
    if shards.len() == 1 {
        return op(shards.first(), items).await;
    }
    let parts = shards.partition(items.iter().map(key));
    let mut slots: Vec<Option<I>> = items.into_iter().map(Some).collect();
    let batches = parts.iter().enumerate().map(|(shard, positions)| {
        let part: Vec<I> = positions.iter().filter_map(|&p| slots[p].take()).collect();
        op(&shards.all()[shard], part)
    });
    let results = futures_util::future::join_all(batches.collect::<Vec<_>>()).await;
    let mut ordered: Vec<Option<T>> = (0..slots.len()).map(|_| None).collect();
    for (positions, values) in parts.iter().zip(results) {
        for (&position, value) in positions.iter().zip(values) {
            ordered[position] = Some(value);
        }
    }
    // Every operation answers each of its items, so nothing is missing here.
    ordered.into_iter().flatten().collect()
}

/// A shard as the ring sees it: its place in the list, scored by the hash of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ShardNode {
    name_hash: u64,
    index: usize,
}

impl rendezvous_hash::Node for ShardNode {
    type NodeId = u64;
    type HashCode = u64;
    fn node_id(&self) -> &u64 {
        &self.name_hash
    }
    fn hash_code<H: NodeHasher<u64>, U: Hash>(&self, hasher: &H, item: &U) -> u64 {
        hasher.hash(&self.name_hash, item)
    }
}

/// A score that depends only on the shard's name and the item's bytes (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
struct StableHasher;

impl NodeHasher<u64> for StableHasher {
    fn hash<T: Hash>(&self, node: &u64, item: &T) -> u64 {
        let mut state = Fold(*node);
        item.hash(&mut state);
        mix(state.0)
    }
}

/// Folds written integers into 64 bits, byte order fixed (little-endian) whatever the platform.
struct Fold(u64);

impl Hasher for Fold {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = mix(self.0 ^ u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.write(&value.to_le_bytes());
    }
}

/// The splitmix64 finalizer: every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(names: &[&str]) -> RendezvousNodes<ShardNode, StableHasher> {
        let mut ring = RendezvousNodes::new(StableHasher);
        for (index, name) in names.iter().enumerate() {
            ring.insert(ShardNode { name_hash: crate::key::key_hash(name), index });
        }
        ring
    }

    fn owner(ring: &RendezvousNodes<ShardNode, StableHasher>, names: &[&str], key: &str) -> String {
        let node = ring.calc_candidates(&crate::key::key_hash(key)).next().expect("a shard");
        names[node.index].to_owned()
    }

    const NAMES: [&str; 4] = ["db1:5432/cache", "db2:5432/cache", "db3:5432/cache", "db4:5432/cache"];

    /// Adding a fourth shard moves about a quarter of 100,000 keys, all to the new shard; keys spread
    /// evenly; reordering the list moves nothing.
    #[test]
    fn adding_a_shard_moves_only_its_share() {
        let three = ring(&NAMES[..3]);
        let four = ring(&NAMES);
        let mut moved = 0;
        let mut per_shard = [0usize; 4];
        for i in 0..100_000 {
            let key = format!("retrieval:{i:08x}");
            let (before, after) = (owner(&three, &NAMES[..3], &key), owner(&four, &NAMES, &key));
            if before != after {
                moved += 1;
                assert_eq!(after, NAMES[3], "a key moved between old shards");
            }
            per_shard[NAMES.iter().position(|n| *n == after).expect("known")] += 1;
        }
        let share = f64::from(moved) / 100_000.0;
        println!("adding a 4th shard moved {moved} of 100,000 keys ({:.2}%); spread {per_shard:?}", share * 100.0);
        assert!((0.22..=0.28).contains(&share), "moved {share}");
        for count in per_shard {
            assert!((23_000..=27_000).contains(&count), "uneven spread {per_shard:?}");
        }
        let reversed: Vec<&str> = NAMES.iter().rev().copied().collect();
        let shuffled = ring(&reversed);
        for i in 0..1_000 {
            let key = format!("k{i}");
            assert_eq!(owner(&four, &NAMES, &key), owner(&shuffled, &reversed, &key));
        }
    }

    /// The route of a key is fixed by its bytes and the shard names: these values must never change, or
    /// processes of different versions would disagree.
    #[test]
    fn routes_are_stable() {
        let four = ring(&NAMES);
        let routes: Vec<String> =
            ["a", "retrieval:rust:5", "answer:42"].iter().map(|k| owner(&four, &NAMES, k)).collect();
        assert_eq!(routes, ROUTES);
    }

    const ROUTES: [&str; 3] = ["db2:5432/cache", "db2:5432/cache", "db3:5432/cache"];
}
