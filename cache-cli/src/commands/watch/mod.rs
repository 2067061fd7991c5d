//! `pg-cached watch`: a live view of the cache, refreshed every `--interval` until Ctrl-C (or `--count`).
//!
//! Each refresh shows operations per second on `cache_entries` (see `sample.rs`), entries per namespace,
//! and the invalidation events heard since the last refresh (see `events.rs`). The first refresh comes at
//! once, after every LISTEN is in place, and has no rates yet. On a terminal the view is redrawn in place;
//! elsewhere each refresh is one plain line, or with `--json` one JSON object per line.
//!
//! Ctrl-C simply ends the process: the view holds nothing that needs restoring, and the server drops the
//! listeners' sessions by itself.

mod events;
mod sample;

use crate::cli::{ConnectionArgs, WatchArgs};
use crate::error::CliError;
use crate::output::{Align, Output, Paint, Render, Styled, Table};
use crate::target::{Target, Tuning};
use crate::units::{self, Timestamp};
use events::{EventCounts, Listeners};
use sample::{Rates, Sample, Sampler};
use serde::Serialize;
use std::collections::VecDeque;
use std::time::Duration;

/// One refresh; its JSON shape (one object per line) is documented in README.md.
#[derive(Debug, Serialize)]
pub struct Tick {
    /// 0 for the first refresh.
    tick: u64,
    /// This machine's clock at the refresh.
    at: Timestamp,
    /// Operations per second since the previous refresh; `null` on the first.
    rates: Option<Rates>,
    namespaces: Vec<NamespaceCount>,
    events: EventCounts,
    #[serde(skip)]
    view: View,
    /// The latest event phrases with the refresh that heard them, newest first (the redrawn view keeps
    /// them on screen; a refresh lasts only an interval).
    #[serde(skip)]
    recent: Vec<(Timestamp, String)>,
}

/// How many past event phrases the redrawn view keeps.
const RECENT_EVENTS: usize = 12;

/// Entries of one namespace, all servers together.
#[derive(Debug, Serialize)]
struct NamespaceCount {
    namespace: String,
    entries: u64,
}

/// How the text is laid out.
#[derive(Debug, Clone)]
struct View {
    /// Redraw the screen (stdout is a terminal) or print one line per refresh.
    redraw: bool,
    /// The servers watched, for the heading.
    source: String,
    interval: Duration,
}

/// Runs `watch`.
///
/// # Errors
/// [`CliError::NotMigrated`], a database error, or a listener that cannot reconnect.
pub async fn run(connection: &ConnectionArgs, args: &WatchArgs, output: Output) -> Result<(), CliError> {
    let target = Target::connect(connection, Tuning::default()).await?;
    let sampler = Sampler::new(&target).await?;
    let mut listeners = Listeners::start(&target).await?;
    let names: Vec<&str> = target.shards.iter().map(|s| s.name.as_str()).collect();
    let view = View { redraw: output.terminal() && !output.json(), source: names.join(", "), interval: args.interval };
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<Sample> = None;
    let mut recent: VecDeque<(Timestamp, String)> = VecDeque::new();
    for tick in 0_u64.. {
        ticker.tick().await;
        let sample = sampler.sample(&target).await?;
        let events = listeners.drain()?;
        let at = Timestamp::now();
        for phrase in events.phrases() {
            recent.push_front((at, phrase));
        }
        recent.truncate(RECENT_EVENTS);
        let report = Tick {
            tick,
            at,
            rates: previous.as_ref().map(|before| Rates::between(before, &sample)),
            namespaces: sample
                .namespaces
                .iter()
                .map(|(ns, n)| NamespaceCount { namespace: ns.clone(), entries: *n })
                .collect(),
            events,
            view: view.clone(),
            recent: if view.redraw { recent.iter().cloned().collect() } else { Vec::new() },
        };
        output.emit_line(&report)?;
        previous = Some(sample);
        if args.count.is_some_and(|count| tick + 1 >= count) {
            break;
        }
    }
    Ok(())
}

impl Render for Tick {
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        if self.view.redraw {
            self.render_screen(out)
        } else {
            out.line(&self.one_line())
        }
    }
}

impl Tick {
    /// The whole screen, redrawn from its top-left corner.
    fn render_screen(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        out.text("\x1b[H\x1b[2J")?;
        let every = units::duration_ms(i64::try_from(self.view.interval.as_millis()).unwrap_or(i64::MAX));
        out.paint(Paint::Heading, &format!("pg-cached watch  {}", self.view.source))?;
        out.line(&format!("  every {every}  {}  (Ctrl-C to stop)", self.at))?;
        out.line("")?;
        out.line(&self.rates_text())?;
        out.line("")?;
        let mut table = Table::new(&[("namespace", Align::Left), ("entries", Align::Right)]);
        for n in &self.namespaces {
            table.row(vec![n.namespace.clone(), units::count(n.entries)]);
        }
        table.render(out)?;
        out.line("")?;
        out.paint(Paint::Heading, "recent events")?;
        out.line("")?;
        if self.recent.is_empty() {
            out.paint(Paint::Dim, "  none since the start")?;
            out.line("")?;
        }
        for (at, phrase) in &self.recent {
            out.line(&format!("  {at}  {phrase}"))?;
        }
        Ok(())
    }

    /// The refresh as one line, for logs and pipes.
    fn one_line(&self) -> String {
        let entries: Vec<String> = self.namespaces.iter().map(|n| format!("{}={}", n.namespace, n.entries)).collect();
        let entries = if entries.is_empty() { "none".to_owned() } else { entries.join(" ") };
        let phrases = self.events.phrases();
        let events = if phrases.is_empty() { "none".to_owned() } else { phrases.join("; ") };
        format!("{}  {}  entries: {entries}  events: {events}", self.at, self.rates_text())
    }

    fn rates_text(&self) -> String {
        match &self.rates {
            Some(r) => format!(
                "rows read/s {:.1}  inserted/s {:.1}  updated/s {:.1}  deleted/s {:.1}",
                r.rows_read, r.inserted, r.updated, r.deleted
            ),
            None => "rows read/s -  inserted/s -  updated/s -  deleted/s -  (rates from the next refresh)".to_owned(),
        }
    }
}
