//! Rendering reports: text for people, or JSON for scripts, on stdout.
//!
//! Every command builds one report value that is both `Serialize` (its JSON shape, documented in README.md)
//! and [`Render`] (its text), and hands it to [`Output::emit`]. Commands never print by themselves, so
//! `--json` works the same everywhere and the JSON shapes cannot drift from the code.
//!
//! Colour is used only when stdout is a terminal, `NO_COLOR` is unset (or empty) and `TERM` is not `dumb`;
//! JSON output is never coloured.

use crate::error::CliError;
use serde::Serialize;
use serde_json::Value;
use std::io::{IsTerminal, Write};

/// A report's text for people.
pub trait Render {
    /// Writes the report as text.
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()>;
}

/// How this run prints.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
    color: bool,
    terminal: bool,
}

impl Output {
    /// Decides the format from `--json` and the colour from stdout and the environment.
    pub fn detect(json: bool) -> Output {
        let terminal = std::io::stdout().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        Output { json, color: terminal && !no_color && !dumb && !json, terminal }
    }

    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Whether stdout is a terminal (a live view redraws only there).
    pub fn terminal(&self) -> bool {
        self.terminal
    }

    /// Prints `report` on stdout: pretty JSON with `--json`, its text otherwise.
    pub fn emit<R: Render + Serialize>(&self, report: &R) -> Result<(), CliError> {
        self.write(report, true)
    }

    /// Prints `report` as compact JSON on one line with `--json` (one object per line, for streams), its
    /// text otherwise. Used by `watch`.
    pub fn emit_line<R: Render + Serialize>(&self, report: &R) -> Result<(), CliError> {
        self.write(report, false)
    }

    fn write<R: Render + Serialize>(&self, report: &R, pretty: bool) -> Result<(), CliError> {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        let written = if self.json {
            let json = if pretty {
                serde_json::to_writer_pretty(&mut lock, report)
            } else {
                serde_json::to_writer(&mut lock, report)
            };
            json.map_err(std::io::Error::from).and_then(|()| writeln!(lock))
        } else {
            report.render(&mut Styled::new(&mut lock, self.color))
        };
        written.and_then(|()| lock.flush()).map_err(CliError::io("writing the output"))
    }
}

/// What a piece of text is, for its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    /// Headings and labels.
    Heading,
    /// Something fine (`OK`).
    Good,
    /// Something to look at (`WARN`).
    Warn,
    /// Something broken (`FAIL`).
    Bad,
    /// Secondary details.
    Dim,
    /// JSON object keys.
    JsonKey,
    /// JSON strings.
    JsonString,
    /// JSON numbers.
    JsonNumber,
    /// JSON `true`, `false` and `null`.
    JsonLiteral,
}

impl Paint {
    fn ansi(self) -> &'static str {
        match self {
            Paint::Heading => "\x1b[1m",
            Paint::Good => "\x1b[32m",
            Paint::Warn => "\x1b[33m",
            Paint::Bad => "\x1b[1;31m",
            Paint::Dim => "\x1b[2m",
            Paint::JsonKey => "\x1b[34m",
            Paint::JsonString => "\x1b[32m",
            Paint::JsonNumber => "\x1b[36m",
            Paint::JsonLiteral => "\x1b[35m",
        }
    }
}

/// A text writer that colours only when colour is on.
pub struct Styled<'a> {
    out: &'a mut dyn Write,
    color: bool,
}

impl std::fmt::Debug for Styled<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Styled").field("color", &self.color).finish_non_exhaustive()
    }
}

impl<'a> Styled<'a> {
    /// A writer over `out`; `color` says whether to emit ANSI colours.
    pub fn new(out: &'a mut dyn Write, color: bool) -> Styled<'a> {
        Styled { out, color }
    }

    /// `text` in the colour of `paint` (plain without colour).
    pub fn paint(&mut self, paint: Paint, text: &str) -> std::io::Result<()> {
        if self.color {
            write!(self.out, "{}{text}\x1b[0m", paint.ansi())
        } else {
            self.out.write_all(text.as_bytes())
        }
    }

    /// Plain text.
    pub fn text(&mut self, text: &str) -> std::io::Result<()> {
        self.out.write_all(text.as_bytes())
    }

    /// Plain text and a newline.
    pub fn line(&mut self, text: &str) -> std::io::Result<()> {
        writeln!(self.out, "{text}")
    }

    /// A JSON value, indented by two spaces per level as `serde_json::to_string_pretty` does, coloured by
    /// token kind when colour is on.
    pub fn json(&mut self, value: &Value) -> std::io::Result<()> {
        self.json_at(value, 0)?;
        writeln!(self.out)
    }

    fn json_at(&mut self, value: &Value, depth: usize) -> std::io::Result<()> {
        let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
        match value {
            Value::Null | Value::Bool(_) => self.paint(Paint::JsonLiteral, &value.to_string()),
            Value::Number(n) => self.paint(Paint::JsonNumber, &n.to_string()),
            Value::String(s) => self.paint(Paint::JsonString, &quoted(s)),
            Value::Array(items) if items.is_empty() => self.text("[]"),
            Value::Object(fields) if fields.is_empty() => self.text("{}"),
            Value::Array(items) => self.json_block(('[', ']'), depth, items.iter().map(|v| (None, v))),
            Value::Object(fields) => {
                self.json_block(('{', '}'), depth, fields.iter().map(|(k, v)| (Some(quoted(k)), v)))
            }
        }
    }

    /// The members of an array (no keys) or an object (quoted keys), one per line.
    fn json_block<'v>(
        &mut self,
        (open, close): (char, char),
        depth: usize,
        members: impl Iterator<Item = (Option<String>, &'v Value)>,
    ) -> std::io::Result<()> {
        write!(self.out, "{open}")?;
        for (i, (key, value)) in members.enumerate() {
            let comma = if i == 0 { "" } else { "," };
            write!(self.out, "{comma}\n{:indent$}", "", indent = (depth + 1) * 2)?;
            if let Some(key) = key {
                self.paint(Paint::JsonKey, &key)?;
                self.text(": ")?;
            }
            self.json_at(value, depth + 1)?;
        }
        write!(self.out, "\n{:indent$}{close}", "", indent = depth * 2)
    }
}

/// How a column lines up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Names and times.
    Left,
    /// Numbers.
    Right,
}

/// A text table: a heading line, then one line per row, columns two spaces apart and as wide as their
/// widest cell. The last column is not padded, so lines carry no trailing blanks.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headings.
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table { columns: columns.to_vec(), rows: Vec::new() }
    }

    /// Adds a row (one cell per column).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Writes the table.
    pub fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                let cells = self.rows.iter().filter_map(|row| row.get(i)).map(|cell| cell.chars().count());
                cells.chain([self.columns[i].0.len()]).max().unwrap_or(0)
            })
            .collect();
        let headings: Vec<String> = self.columns.iter().map(|(name, _)| (*name).to_owned()).collect();
        out.paint(Paint::Heading, &self.line(&headings, &widths))?;
        out.line("")?;
        for row in &self.rows {
            out.line(&self.line(row, &widths))?;
        }
        Ok(())
    }

    fn line(&self, cells: &[String], widths: &[usize]) -> String {
        let last = self.columns.len().saturating_sub(1);
        let mut line = String::new();
        for (i, ((_, align), width)) in self.columns.iter().zip(widths).enumerate() {
            let cell = cells.get(i).map_or("", String::as_str);
            let separator = if i == 0 { "" } else { "  " };
            match align {
                Align::Right => line.push_str(&format!("{separator}{cell:>width$}")),
                Align::Left if i == last => line.push_str(&format!("{separator}{cell}")),
                Align::Left => line.push_str(&format!("{separator}{cell:<width$}")),
            }
        }
        line.truncate(line.trim_end().len());
        line
    }
}

/// `text` safe to print to a terminal: control characters (escape sequences, carriage returns, bells) and
/// the Unicode formatting characters that reorder text (bidirectional overrides) are written as Rust escapes
/// (`\u{1b}`, `\r`), and so is the backslash itself, so that an escape in the text cannot pass for one
/// made here. For text that others may have chosen, such as anything heard on the events channel.
pub fn escape(text: &str) -> String {
    let reorders = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || c == '\\' {
            escaped.extend(c.escape_debug());
        } else if reorders(c) {
            escaped.extend(c.escape_unicode());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_text_holds_no_control_character() {
        assert_eq!(escape("plain: doc:7 é"), "plain: doc:7 é");
        assert_eq!(escape("\u{1b}[2J\r\n\u{7}\u{9b}"), "\\u{1b}[2J\\r\\n\\u{7}\\u{9b}");
        assert_eq!(escape("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(escape("a\\u{1b}"), "a\\\\u{1b}", "a backslash in the text is escaped too");
    }

    fn render_json(value: &Value, color: bool) -> String {
        let mut buffer = Vec::new();
        Styled::new(&mut buffer, color).json(value).expect("writing to a Vec");
        String::from_utf8(buffer).expect("UTF-8")
    }

    #[test]
    fn tables_line_up() {
        let mut table = Table::new(&[("name", Align::Left), ("n", Align::Right), ("note", Align::Left)]);
        table.row(vec!["alpha".into(), "1".into(), "x".into()]);
        table.row(vec!["b".into(), "1,000".into(), "".into()]);
        let mut buffer = Vec::new();
        table.render(&mut Styled::new(&mut buffer, false)).expect("writing to a Vec");
        let text = String::from_utf8(buffer).expect("UTF-8");
        assert_eq!(text, "name       n  note\nalpha      1  x\nb      1,000\n");
    }

    #[test]
    fn plain_json_matches_serde_json_pretty() {
        let value = serde_json::json!({"a": [1, 2.5, {"b": null}], "c": "x\"y", "d": {}, "e": [], "f": true});
        let expected = serde_json::to_string_pretty(&value).expect("serializable") + "\n";
        assert_eq!(render_json(&value, false), expected);
    }

    #[test]
    fn coloured_json_has_the_same_text() {
        let value = serde_json::json!({"k": ["s", 1, false]});
        let coloured = render_json(&value, true);
        assert!(coloured.contains("\x1b[34m\"k\"\x1b[0m"), "{coloured:?}");
        let mut parts = coloured.split("\x1b[");
        let first = parts.next().unwrap_or_default().to_owned();
        let stripped = parts.fold(first, |text, part| text + part.split_once('m').map_or(part, |(_, rest)| rest));
        assert_eq!(stripped, render_json(&value, false));
    }
}
