//! The demo's streamed answer: [`Orchestrator::stream_answer`] (`#[pg_cached(stream)]`) printed chunk by
//! chunk as the caller receives it, once generated (pass 1) and once replayed from the cache (pass 2).

use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{fmt_latency, DemoError, Paint};
use crate::generate::AnswerChunk;
use crate::pipeline::{CounterSnapshot, Lookup, Orchestrator, ANSWER_STREAM_NAMESPACE};

/// Where a streamed line wraps.
const LINE_WIDTH: usize = 100;
/// The indentation of the streamed text.
const INDENT: &str = "    ";

/// One streamed answer, as its caller saw it.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    /// The query.
    pub query: String,
    /// What the `answer_stream` namespace did: a miss generated and recorded it, a hit replayed it.
    pub lookup: Lookup,
    /// When the first chunk arrived, after the call.
    pub first_chunk: Option<Duration>,
    /// When the stream ended.
    pub latency: Duration,
    /// The chunks received, in order.
    pub chunks: Vec<AnswerChunk>,
    /// The error that ended the stream, if one did.
    pub error: Option<String>,
}

/// Streams the answer to `query`, printing its text as it arrives, then a line with what the cache did and
/// the times to the first chunk and to the end (`before`: the same query's stream in an earlier pass, to
/// compare with).
pub(super) async fn run_stream(
    out: &mut (dyn Write + Send),
    paint: &Paint,
    pipeline: &Orchestrator,
    query: &str,
    before: Option<&StreamRecord>,
) -> Result<StreamRecord, DemoError> {
    writeln!(out, "  {} {query:?}", paint.dim.apply_to("streamed answer (#[pg_cached(stream)]) to"))?;
    let counters = CounterSnapshot::take(pipeline.cache()).await?;
    let started = Instant::now();
    let (mut first_chunk, mut chunks, mut error) = (None, Vec::new(), None);
    let mut column = 0;
    let mut stream = pipeline.stream_answer(query);
    while let Some(item) = stream.next().await {
        let chunk = match item {
            Ok(chunk) => chunk,
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        };
        first_chunk.get_or_insert_with(|| started.elapsed());
        if let AnswerChunk::Text { text } = &chunk {
            column = print_wrapped(out, text, column)?;
        }
        chunks.push(chunk);
    }
    let latency = started.elapsed();
    drop(stream);
    writeln!(out)?;
    let lookup = CounterSnapshot::take(pipeline.cache()).await?.lookup_since(&counters, ANSWER_STREAM_NAMESPACE);
    let record = StreamRecord { query: query.to_string(), lookup, first_chunk, latency, chunks, error };
    writeln!(out, "{INDENT}{}", paint.dim.apply_to(summary(&record, before)))?;
    Ok(record)
}

/// Prints `text` (a chunk: a word with its leading space) after `column` characters of the current line,
/// starting a new indented line where it would pass [`LINE_WIDTH`], and flushes so that it shows at once.
/// Returns the new column.
fn print_wrapped(out: &mut (dyn Write + Send), text: &str, column: usize) -> std::io::Result<usize> {
    let width = text.chars().count();
    let column = if column == 0 || column + width > LINE_WIDTH {
        if column > 0 {
            writeln!(out)?;
        }
        let word = text.trim_start();
        write!(out, "{INDENT}{word}")?;
        INDENT.len() + word.chars().count()
    } else {
        write!(out, "{text}")?;
        column + width
    };
    out.flush()?;
    Ok(column)
}

/// What the cache did with one streamed answer, and its times.
fn summary(record: &StreamRecord, before: Option<&StreamRecord>) -> String {
    let what = match record.lookup {
        Lookup::Miss => "miss: generated while you read it, and recorded",
        Lookup::Hit => "hit: replayed from the cache",
        Lookup::Error => "cache error: generated, not recorded",
        Lookup::NotConsulted => "not looked up",
    };
    let first = record.first_chunk.map_or_else(|| "-".to_string(), fmt_latency);
    let mut line =
        format!("{what}; first chunk after {first}, {} chunks in {}", record.chunks.len(), fmt_latency(record.latency));
    if let Some(earlier) = before.filter(|_| record.error.is_none()) {
        let ratio = earlier.latency.as_secs_f64() / record.latency.as_secs_f64().max(1e-9);
        line.push_str(&format!(" ({ratio:.0}x faster than pass 1's {})", fmt_latency(earlier.latency)));
    }
    if let Some(error) = &record.error {
        line.push_str(&format!("; ended by an error: {error}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_text_wraps_at_the_line_width_and_keeps_every_word() {
        let words: Vec<String> = (0..60).map(|i| format!(" word{i}")).collect();
        let mut out = Vec::new();
        let mut column = 0;
        for word in &words {
            column = print_wrapped(&mut out, word, column).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        assert!(text.lines().all(|l| l.starts_with(INDENT) && l.chars().count() <= LINE_WIDTH), "{text}");
        let printed: Vec<&str> = text.split_whitespace().collect();
        let expected: Vec<&str> = words.iter().map(|w| w.trim()).collect();
        assert_eq!(printed, expected);
    }
}
