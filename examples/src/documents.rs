//! The corpus as a real PostgreSQL table, `documents (id, title, body)`, next to the cache.
//!
//! The search index ([`crate::RetrievalEngine`]) is built from the same documents, but answers read the
//! documents' text from this table, as a service reads its source of truth. A trigger installed with
//! [`PgCache::invalidate_on_change`](cache_runtime::PgCache::invalidate_on_change) then ties the cache to the
//! table: changing a document, inside any transaction, removes at its COMMIT every retrieval and answer
//! entry that cited it (their tag `doc:<id>`), and nothing else.

use sqlx::PgPool;

use crate::retrieval::Document;

/// The table that holds the documents.
pub const DOCUMENTS_TABLE: &str = "documents";

/// The prefix of a document's tag: the retrieval of a document `pg-001` tags its entry `doc:pg-001`, and
/// every answer built on it inherits the tag.
pub const DOCUMENT_TAG_PREFIX: &str = "doc:";

/// The tag of document `id`.
pub fn document_tag(id: &str) -> String {
    format!("{DOCUMENT_TAG_PREFIX}{id}")
}

/// Creates the table if it is missing and writes `documents` into it (an existing row with the same id is
/// overwritten). Returns the rows written.
pub async fn load(pool: &PgPool, documents: &[Document]) -> Result<u64, sqlx::Error> {
    sqlx::query("CREATE TABLE IF NOT EXISTS documents (id text PRIMARY KEY, title text NOT NULL, body text NOT NULL)")
        .execute(pool)
        .await?;
    let ids: Vec<&str> = documents.iter().map(|d| d.id.as_str()).collect();
    let titles: Vec<&str> = documents.iter().map(|d| d.title.as_str()).collect();
    let bodies: Vec<&str> = documents.iter().map(|d| d.body.as_str()).collect();
    // Unchanged rows are left alone, so that loading the corpus again does not fire the invalidation trigger
    // for every document.
    let written = sqlx::query(
        "INSERT INTO documents (id, title, body) SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
         ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, body = EXCLUDED.body \
         WHERE (documents.title, documents.body) IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.body)",
    )
    .bind(&ids)
    .bind(&titles)
    .bind(&bodies)
    .execute(pool)
    .await?;
    Ok(written.rows_affected())
}

/// The documents `ids` as the table holds them now, in the order of `ids` (missing ids are skipped).
pub async fn fetch(pool: &PgPool, ids: &[&str]) -> Result<Vec<Document>, sqlx::Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT d.id, d.title, d.body FROM unnest($1::text[]) WITH ORDINALITY AS wanted(id, n) \
         JOIN documents AS d ON d.id = wanted.id ORDER BY wanted.n",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(id, title, body)| Document { id, title, body }).collect())
}
