//! Which server an operation goes to: the shard that holds a key ([`shards`]), a read replica within its
//! lag bound ([`replicas`]), the host that is primary now ([`failover`]), and where the connections come
//! from in the first place ([`source`]). Uses `server/` below it; knows nothing of tiers or memoization.

pub(crate) mod failover;
pub(crate) mod node;
pub(crate) mod replicas;
pub(crate) mod shards;
pub(crate) mod source;
