//! Static tags are string literals, checked at compile time.
use cache_runtime::pg_cached;

const TAG: &str = "corpus";

#[pg_cached(tags(""))]
async fn empty_tag(id: u32) -> u32 {
    id
}

#[pg_cached(tags("ok", "line\nbreak"))]
async fn control_character(id: u32) -> u32 {
    id
}

#[pg_cached(tags(TAG, format!("doc:{}", 1)))]
async fn not_literals(id: u32) -> u32 {
    id
}

#[pg_cached(tags = "corpus")]
async fn not_parenthesized(id: u32) -> u32 {
    id
}

fn main() {}
