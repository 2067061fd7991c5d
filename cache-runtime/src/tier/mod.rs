//! What this process holds besides PostgreSQL: the in-process tier of values ([`local`]), the computations
//! in flight ([`flight`]), and the listener that keeps both coherent with every other process
//! ([`events`], LISTEN/NOTIFY). Uses `route/` and `server/` only to open its listener connections.

pub(crate) mod events;
pub(crate) mod flight;
pub(crate) mod local;
