//! How a memoized stream is stored: every chunk, in order, with when it came, as one JSON object
//! (`{"chunks": [...], "ms": [...]}`, `ms` counted from the first chunk), and the recorder that builds it
//! while the stream runs.
//!
//! The recorder gives up (and nothing is stored) when an item is an error, when a chunk cannot be stored as
//! JSONB (see `codec.rs`), or when the whole would pass the cache's `max_value_bytes`; the stream itself goes
//! on unchanged for its caller.

use crate::codec;
use crate::error::CacheError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::Instant;

/// The stored form, as read back.
#[derive(Debug, Deserialize)]
pub(crate) struct Stored {
    chunks: Vec<Box<RawValue>>,
    #[serde(default)]
    ms: Vec<u64>,
}

impl Stored {
    /// Parses a stored entry; `None` for JSON of another shape (an entry written by something else).
    pub(crate) fn parse(json: &str) -> Option<Stored> {
        serde_json::from_str(json).ok()
    }

    /// The chunks, decoded as `C` one at a time, each with its offset from the first.
    pub(crate) fn into_chunks<C: DeserializeOwned>(self) -> impl Iterator<Item = (Result<C, serde_json::Error>, u64)> {
        let ms = self.ms.into_iter().chain(std::iter::repeat(0));
        self.chunks.into_iter().zip(ms).map(|(raw, at)| (serde_json::from_str(raw.get()), at))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.chunks.len()
    }
}

/// Why a recording will not be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spoiled {
    /// An item was an error.
    Failed,
    /// A chunk JSONB cannot hold, or one that does not serialize.
    Unstorable(String),
    /// The chunks passed `max_value_bytes`.
    TooLong,
}

/// The recording of one stream in progress.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// `[c1,c2,...` so far (closed when finished).
    chunks: String,
    ms: Vec<u64>,
    started: Option<Instant>,
    limit: usize,
    spoiled: Option<Spoiled>,
}

impl Recorder {
    /// A recording that may grow to `limit` bytes of JSON.
    pub(crate) fn new(limit: usize) -> Recorder {
        Recorder { chunks: String::from("["), ms: Vec::new(), started: None, limit, spoiled: None }
    }

    /// Records one chunk; its JSON, unless the recording is (now) spoiled.
    pub(crate) fn chunk<C: Serialize>(&mut self, chunk: &C) -> Option<&str> {
        if self.spoiled.is_some() {
            return None;
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        let room = self.limit.saturating_sub(self.chunks.len() + self.ms.len() * 12 + 32);
        match codec::encode(chunk, room) {
            Ok(json) => {
                if !self.ms.is_empty() {
                    self.chunks.push(',');
                }
                let at = self.chunks.len();
                self.chunks.push_str(&json);
                self.ms.push(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
                Some(&self.chunks[at..])
            }
            Err(CacheError::ValueTooLarge { .. }) => {
                self.spoil(Spoiled::TooLong);
                None
            }
            Err(error) => {
                self.spoil(Spoiled::Unstorable(error.to_string()));
                None
            }
        }
    }

    /// An item was an error: nothing will be stored.
    pub(crate) fn failed(&mut self) {
        self.spoil(Spoiled::Failed);
    }

    fn spoil(&mut self, why: Spoiled) {
        if self.spoiled.is_none() {
            self.spoiled = Some(why);
            // What was recorded will not be used: give its memory back now.
            self.chunks = String::new();
            self.ms = Vec::new();
        }
    }

    /// The chunks recorded so far, as a JSON array (for a `cache_if` predicate over them).
    pub(crate) fn chunks_json(&self) -> String {
        format!("{}]", self.chunks)
    }

    /// The stored form of the whole stream, or why there is none.
    pub(crate) fn finish(self) -> Result<String, Spoiled> {
        if let Some(why) = self.spoiled {
            return Err(why);
        }
        let ms: Vec<String> = self.ms.iter().map(u64::to_string).collect();
        Ok(format!("{{\"chunks\":{}],\"ms\":[{}]}}", self.chunks, ms.join(",")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_recorded_reads_back_in_order() {
        let mut recorder = Recorder::new(1 << 20);
        for chunk in ["Post", "gres ", "\"quoted\""] {
            recorder.chunk(&chunk);
        }
        let stored = Stored::parse(&recorder.finish().expect("stored")).expect("parses");
        assert_eq!(stored.len(), 3);
        let chunks: Vec<String> = stored.into_chunks().map(|(c, _)| c.expect("decodes")).collect();
        assert_eq!(chunks, ["Post", "gres ", "\"quoted\""]);
        assert_eq!(Stored::parse(&Recorder::new(100).finish().expect("empty")).map(|s| s.len()), Some(0));
    }

    #[test]
    fn errors_oversized_and_unstorable_chunks_spoil_the_recording() {
        let mut failed = Recorder::new(1 << 20);
        failed.chunk(&"a");
        failed.failed();
        failed.chunk(&"b");
        assert_eq!(failed.finish(), Err(Spoiled::Failed));
        let mut long = Recorder::new(64);
        for _ in 0..10 {
            long.chunk(&"0123456789");
        }
        assert_eq!(long.finish(), Err(Spoiled::TooLong));
        let mut nan = Recorder::new(1 << 20);
        nan.chunk(&f64::NAN);
        assert!(matches!(nan.finish(), Err(Spoiled::Unstorable(_))));
    }
}
