//! `pg-cached get KEY`: one entry, its JSON and its metadata.
//!
//! One statement on the key's server reads the value and its metadata together, so they describe the same
//! version of the entry. An expired entry is reported as such (exit 1), the way the cache itself treats it:
//! no service would be served it.

use crate::cli::{ConnectionArgs, GetArgs};
use crate::error::CliError;
use crate::input;
use crate::output::{Output, Paint, Render, Styled};
use crate::sql;
use crate::target::{self, Target, Tuning};
use crate::units::{self, Micros, Timestamp};
use serde::Serialize;
use serde_json::Value;

/// The `get` report; its JSON shape is documented in README.md.
#[derive(Debug, Serialize)]
pub struct Entry {
    key: String,
    shard: String,
    value: Value,
    created: Option<Timestamp>,
    expires: Option<Timestamp>,
    /// Milliseconds left; `null` when it never expires.
    ttl_ms: Option<i64>,
    /// Stored size of the value (`pg_column_size`: after compression).
    bytes: u64,
    /// The entry's tags, sorted (as cache-runtime stores them); empty when it has none.
    tags: Vec<String>,
    /// How long the computation that produced the value took, in ms (µs precision); `null` when not
    /// recorded (a plain `set`, or a row from before migration 5).
    compute_ms: Option<Micros>,
}

/// Runs `get`.
///
/// # Errors
/// [`CliError::Usage`] for a bad key; [`CliError::NotFound`] or [`CliError::Expired`]; a database error.
pub async fn run(connection: &ConnectionArgs, args: &GetArgs, output: Output) -> Result<(), CliError> {
    input::check_key(&args.key)?;
    let target = Target::connect(connection, Tuning::default()).await?;
    let shard = target.shard_for(&args.key);
    type Row = (String, i32, Option<i64>, Option<i64>, Option<i64>, bool, Option<Vec<String>>, Option<i64>);
    let read = async {
        let query = sqlx::query_as::<_, Row>(sql::ENTRY).bind(&args.key);
        query.fetch_optional(&shard.pool).await.map_err(shard.error())
    };
    let row = target::bounded(shard, "get", read).await?;
    let (json, bytes, ttl_ms, created, expires, live, tags, compute_us) =
        row.ok_or_else(|| CliError::NotFound(args.key.clone()))?;
    if !live {
        let ago = ttl_ms.map_or_else(|| "some time".to_owned(), units::duration_ms);
        return Err(CliError::Expired { key: args.key.clone(), ago });
    }
    output.emit(&Entry {
        key: args.key.clone(),
        shard: shard.name.clone(),
        value: parse(json),
        created: created.map(Timestamp),
        expires: expires.map(Timestamp),
        ttl_ms,
        bytes: bytes.unsigned_abs().into(),
        tags: tags.unwrap_or_default(),
        compute_ms: compute_us.map(|us| Micros(us.unsigned_abs())),
    })
}

/// The stored JSON as a value. JSONB holds numbers serde_json cannot (beyond f64's range, written by hand);
/// such a document is shown as its text rather than refused.
fn parse(json: String) -> Value {
    serde_json::from_str(&json).unwrap_or(Value::String(json))
}

impl Render for Entry {
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        let created = units::when(self.created);
        let expires = self.expires.map_or_else(|| "never".to_owned(), |at| at.to_string());
        let tags = if self.tags.is_empty() { "(none)".to_owned() } else { self.tags.join(", ") };
        let compute = self.compute_ms.map_or_else(|| "not recorded".to_owned(), |us| us.to_string());
        let fields = [
            ("key", self.key.clone()),
            ("created", created),
            ("expires", expires),
            ("ttl", units::ttl(self.ttl_ms)),
            ("bytes", units::count(self.bytes)),
            ("tags", tags),
            ("compute", compute),
        ];
        for (label, value) in fields {
            out.paint(Paint::Heading, &format!("{label:<9}"))?;
            out.line(&value)?;
        }
        out.json(&self.value)
    }
}
