//! The statements of a key rotation (`PgCache::rekey`) and of the report of entries per key id. The server
//! only moves rows: decrypting and encrypting happen in `cache/rekey.rs`, so no key ever reaches SQL.

use super::{sql, Server};
use crate::error::Result;

/// One stored entry: its key and its data as JSON text.
pub(crate) type StoredRow = (String, String);

impl Server {
    /// Up to `limit` encrypted entries not under `current_id`, after `after` in key order.
    pub(crate) async fn encrypted_not_under(
        &self,
        current_id: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<StoredRow>> {
        let (current_id, after) = (current_id.to_owned(), after.to_owned());
        self.maintenance("rekey", move |conn| {
            let query =
                sqlx::query_as(sql::ENCRYPTED_NOT_UNDER).bind(after.clone()).bind(current_id.clone()).bind(limit);
            Box::pin(query.fetch_all(conn))
        })
        .await
    }

    /// Replaces each row's data by its new form, where it still holds the old one: `(key, old, new)`. Returns
    /// how many were replaced (the others were rewritten or removed meanwhile).
    pub(crate) async fn replace_unchanged(&self, rows: Vec<(String, String, String)>) -> Result<u64> {
        let mut keys = Vec::with_capacity(rows.len());
        let mut olds = Vec::with_capacity(rows.len());
        let mut news = Vec::with_capacity(rows.len());
        for (key, old, new) in rows {
            keys.push(key);
            olds.push(old);
            news.push(new);
        }
        self.maintenance("rekey", move |conn| {
            let query = sqlx::query(sql::REPLACE_UNCHANGED).bind(keys.clone()).bind(olds.clone()).bind(news.clone());
            Box::pin(async move { query.execute(conn).await.map(|done| done.rows_affected()) })
        })
        .await
    }

    /// Encrypted entries per key id.
    pub(crate) async fn entries_by_key_id(&self) -> Result<Vec<(Option<String>, i64)>> {
        self.maintenance("stats", |conn| Box::pin(sqlx::query_as(sql::ENTRIES_BY_KEY_ID).fetch_all(conn))).await
    }
}
