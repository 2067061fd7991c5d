//! End-to-end tests of the `pg-cached` binary against a real PostgreSQL, one fresh database per test.

mod diagnostics;
mod grant;
mod reads;
mod secrets;
mod support;
#[cfg(unix)]
mod terminal;
mod usage;
mod writes;
