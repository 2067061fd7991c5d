//! The statements of semantic entries on one server: storing an entry's text and vector beside it, and
//! reading the vectors of one scope written since a transaction id (the catch-up of each process's
//! in-memory index, `tier/vectors.rs`).

use super::exec::DbFuture;
use super::{sql, Server};
use crate::error::Result;
use sqlx::PgConnection;

/// One semantic row as [`Server::semantic_since`] reads it.
#[derive(Debug)]
pub(crate) struct SemanticRow {
    pub(crate) key: String,
    pub(crate) text: String,
    /// The unit vector, little-endian f32.
    pub(crate) embedding: Vec<u8>,
}

/// The rows of a scope written since a watermark, and the next watermark.
#[derive(Debug)]
pub(crate) struct SemanticSince {
    /// The xmin of the reading statement's snapshot, as text (an `xid8`).
    pub(crate) next: String,
    pub(crate) rows: Vec<SemanticRow>,
}

/// The arguments of [`Server::write_semantic`].
#[derive(Debug, Clone)]
pub(crate) struct SemanticWrite {
    pub(crate) key: String,
    pub(crate) scope_hash: i64,
    pub(crate) model_id: String,
    pub(crate) text: String,
    pub(crate) embedding: Vec<u8>,
}

type SinceRow = (String, Option<String>, Option<String>, Option<Vec<u8>>);

fn query_since<'c>(
    conn: &'c mut PgConnection,
    scope_hash: i64,
    model_id: &str,
    since: &str,
) -> DbFuture<'c, Vec<SinceRow>> {
    let query = sqlx::query_as::<_, SinceRow>(sql::SEMANTIC_SINCE)
        .bind(scope_hash)
        .bind(model_id.to_owned())
        .bind(since.to_owned());
    Box::pin(async move { query.fetch_all(conn).await })
}

impl Server {
    /// Stores `write` beside its entry; `false` when the entry is not there (deleted since it was written).
    pub(crate) async fn write_semantic(&self, write: SemanticWrite) -> Result<bool> {
        let result = self
            .op("set_similar", move |conn| {
                let query = sqlx::query_scalar::<_, i64>(sql::WRITE_SEMANTIC)
                    .bind(write.key.clone())
                    .bind(write.scope_hash)
                    .bind(write.model_id.clone())
                    .bind(write.text.clone())
                    .bind(write.embedding.clone());
                Box::pin(async move {
                    match query.fetch_one(conn).await {
                        Ok(n) => Ok(n > 0),
                        // The entry was deleted between the check and the insert: nothing to store.
                        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23503") => Ok(false),
                        Err(e) => Err(e),
                    }
                })
            })
            .await;
        result
    }

    /// The rows of `scope_hash` and `model_id` written at or after transaction `since` (`"0"`: all of them).
    /// A first read of a whole scope may be large, so it runs under the maintenance timeout; later ones,
    /// which read what a few lookups' worth of time wrote, under the operation timeout.
    pub(crate) async fn semantic_since(&self, scope_hash: i64, model_id: &str, since: &str) -> Result<SemanticSince> {
        let (model_id, since) = (model_id.to_owned(), since.to_owned());
        let rows = if since == "0" {
            self.maintenance("get_similar", move |conn| query_since(conn, scope_hash, &model_id, &since)).await?
        } else {
            self.op("get_similar", move |conn| query_since(conn, scope_hash, &model_id, &since)).await?
        };
        let next = rows.first().map(|row| row.0.clone()).unwrap_or_else(|| "0".to_owned());
        let rows = rows
            .into_iter()
            .filter_map(|(_, key, text, embedding)| Some(SemanticRow { key: key?, text: text?, embedding: embedding? }))
            .collect();
        Ok(SemanticSince { next, rows })
    }
}
