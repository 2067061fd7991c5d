//! What this process holds besides PostgreSQL: the in-process tier of values ([`local`]), the computations
//! in flight ([`flight`]), the vectors of semantic entries ([`vectors`], kept current by reading the database),
//! and the listener that keeps the first two coherent with every other process ([`events`], LISTEN/NOTIFY;
//! [`listening`], its connection and registration). Uses `route/` and `server/` only to open its listener
//! connections.

pub(crate) mod events;
pub(crate) mod flight;
mod listening;
pub(crate) mod local;
mod quant;
pub(crate) mod vectors;
