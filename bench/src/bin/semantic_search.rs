//! `semantic_search`: the cost of a semantic lookup, embedding excluded, with 1k, 10k and 100k entries in one
//! scope, its recall against an exact search, and a semantic hit next to an exact hit.
//!
//! Each size gets a scope of its own, loaded with one statement: random unit vectors of 384 dimensions (the
//! model's), and for each query a stored vector with noise added (cosine ≈ 0.9 to it, so that it hits). The
//! embedder is a table of those vectors, so no model runs: the figures are the catch-up with the database,
//! the scan, and the read of the matched entry. Recall: the fraction of queries whose hit is the stored
//! text an exact search over all vectors of the scope ranks first (this search is exact too, so anything
//! below 100 % would be a bug or a vector not yet caught up with).
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/pg_cached_bench \
//!     cargo run --release -p bench --bin semantic_search -- --sizes 1000,10000,100000 --queries 500
//! ```

use cache_runtime::semantic::{EmbedFuture, Embedder};
use cache_runtime::test_support::{semantic_scope_hash, similar_key};
use cache_runtime::{CacheError, PgCache};
use clap::Parser;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const DIMS: usize = 384;
const MODEL: &str = "bench-table@1";

#[derive(Debug, Parser)]
#[command(name = "semantic_search")]
struct Cli {
    /// Entries in the scope, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    sizes: Vec<usize>,
    /// Timed lookups per size (after 20 untimed ones).
    #[arg(long, default_value_t = 500)]
    queries: usize,
    /// Also time the alternative, an exact scan in SQL (`real[]` vectors, the dot product by `unnest`), for
    /// sizes up to this many entries.
    #[arg(long, default_value_t = 10_000)]
    sql_scan_max: usize,
}

/// Texts to vectors, from a table: the embedding costs nothing, so only the search is measured.
#[derive(Debug, Default)]
struct Table(HashMap<String, Vec<f32>>);

impl Embedder for Table {
    fn model_id(&self) -> &str {
        MODEL
    }
    fn dimensions(&self) -> usize {
        DIMS
    }
    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        let found: Result<Vec<Vec<f32>>, CacheError> = texts
            .iter()
            .map(|t| {
                self.0.get(*t).cloned().ok_or_else(|| CacheError::Embedding { reason: format!("no vector for {t}") })
            })
            .collect();
        Box::pin(async move { found })
    }
}

/// A small deterministic generator (xorshift64*), so that every run loads the same vectors.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn unit(&mut self) -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIMS).map(|_| self.next()).collect();
        normalize(&mut v);
        v
    }
}

fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("semantic_search: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?;
    let setup = PgCache::builder().database_url(&url).sweep_interval(None).build().await?;
    setup.migrate().await?;
    let pool = setup.single_pool().ok_or("one server only")?.clone();
    sqlx::query("DELETE FROM cache_entries WHERE cache_key LIKE 'semsearch:%'").execute(&pool).await?;
    println!("| entries in the scope | first lookup (loads the scope) | p50 | p90 | p99 | recall vs exact | exact hit p50 | exact hit p99 |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut scans = Vec::new();
    for &size in &cli.sizes {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ size as u64);
        let scope = format!("size-{size}");
        let stored: Vec<Vec<f32>> = (0..size).map(|_| rng.unit()).collect();
        load(&pool, &scope, &stored).await?;
        let mut table = Table::default();
        let mut expected = Vec::new();
        for q in 0..cli.queries + 20 {
            let target = (q * 7919) % size;
            let mut v: Vec<f32> = stored[target].iter().map(|x| x + rng.next() * 0.035).collect();
            normalize(&mut v);
            let best = (0..size).max_by(|&a, &b| dot(&v, &stored[a]).total_cmp(&dot(&v, &stored[b]))).unwrap_or(0);
            expected.push(name("t", best));
            table.0.insert(name("q", q), v);
        }
        let sample: Vec<Vec<f32>> = (0..20).filter_map(|q| table.0.get(&name("q", q)).cloned()).collect();
        let cache = PgCache::builder()
            .database_url(&url)
            .sweep_interval(None)
            .maintenance_timeout(Duration::from_secs(120))
            .embedder(table)
            .similarity_threshold(0.8)
            .build()
            .await?;
        let started = Instant::now();
        cache.get_similar::<i64>("semsearch", &scope, &name("q", 0)).await?;
        let first = started.elapsed();
        let (mut times, mut right) = (Vec::new(), 0);
        for (q, expected) in expected.iter().enumerate() {
            let started = Instant::now();
            let hit = cache.get_similar::<i64>("semsearch", &scope, &name("q", q)).await?;
            if q >= 20 {
                times.push(started.elapsed());
                right += usize::from(hit.is_some_and(|h| &h.text == expected));
            }
        }
        let mut exact = Vec::new();
        for q in 0..cli.queries {
            let started = Instant::now();
            let hit = cache.get_similar::<i64>("semsearch", &scope, &name("t", q % size)).await?;
            exact.push(started.elapsed());
            if hit.is_none_or(|h| h.score != 1.0) {
                return Err("a stored text must be an exact hit".into());
            }
        }
        if size <= cli.sql_scan_max {
            let mut times = sql_scan(&pool, &stored, &sample).await?;
            let p = percentiles(&mut times);
            scans.push(format!("| {size} | {:.1} ms | {:.1} ms |", ms(p[0]), ms(p[2])));
        }
        let (t, e) = (percentiles(&mut times), percentiles(&mut exact));
        println!(
            "| {size} | {:.0} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} % | {:.2} ms | {:.2} ms |",
            ms(first),
            ms(t[0]),
            ms(t[1]),
            ms(t[2]),
            100.0 * right as f64 / cli.queries as f64,
            ms(e[0]),
            ms(e[2])
        );
        sqlx::query("DELETE FROM cache_entries WHERE cache_key LIKE 'semsearch:%'").execute(&pool).await?;
    }
    if !scans.is_empty() {
        println!("\nThe alternative, an exact scan of the scope in SQL (20 queries, p50 and p99):\n");
        println!("| entries | p50 | p99 |\n|---|---|---|");
        scans.iter().for_each(|row| println!("{row}"));
    }
    Ok(())
}

/// Times `queries` as an exact search in SQL over a temporary table of `stored` as `real[]`: the best
/// vector by a dot product computed with `unnest`, the plainest way PostgreSQL without an extension has.
async fn sql_scan(
    pool: &sqlx::PgPool,
    stored: &[Vec<f32>],
    queries: &[Vec<f32>],
) -> Result<Vec<Duration>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::query("DROP TABLE IF EXISTS pg_temp.scan").execute(&mut *conn).await?;
    sqlx::query("CREATE TEMP TABLE scan (id int, v real[])").execute(&mut *conn).await?;
    for (chunk, vectors) in stored.chunks(2000).enumerate() {
        let ids: Vec<i32> = (0..vectors.len()).map(|i| (chunk * 2000 + i) as i32).collect();
        let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
        sqlx::query(
            "INSERT INTO scan SELECT i, ($2::real[])[((n - 1) * $3 + 1)::int : (n * $3)::int] \
             FROM unnest($1::int[]) WITH ORDINALITY AS w(i, n)",
        )
        .bind(&ids)
        .bind(&flat)
        .bind(DIMS as i32)
        .execute(&mut *conn)
        .await?;
    }
    let mut times = Vec::new();
    for query in queries {
        let started = Instant::now();
        sqlx::query(
            "SELECT id FROM scan ORDER BY (SELECT sum(a * b) FROM unnest(v, $1::real[]) AS u(a, b)) DESC LIMIT 1",
        )
        .bind(query)
        .fetch_one(&mut *conn)
        .await?;
        times.push(started.elapsed());
    }
    sqlx::query("DROP TABLE pg_temp.scan").execute(&mut *conn).await?;
    Ok(times)
}

/// Writes the entries and their vectors in batches of 5,000 rows (one statement each): stored text `t{i}`
/// under the key `set_similar` would give it, value `i`.
async fn load(pool: &sqlx::PgPool, scope: &str, stored: &[Vec<f32>]) -> Result<(), sqlx::Error> {
    let hash = semantic_scope_hash("semsearch", scope, MODEL);
    for (chunk, vectors) in stored.chunks(5000).enumerate() {
        let base = chunk * 5000;
        let texts: Vec<String> = (base..base + vectors.len()).map(|i| name("t", i)).collect();
        let keys: Vec<String> = texts.iter().map(|t| similar_key("semsearch", scope, t)).collect();
        let values: Vec<serde_json::Value> = (base..base + vectors.len()).map(|i| serde_json::json!(i)).collect();
        let bytes: Vec<Vec<u8>> = vectors.iter().map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
        sqlx::query(
            "WITH e AS (INSERT INTO cache_entries (cache_key, data, expires_at) \
                 SELECT k, d, now() + interval '1 day' FROM unnest($1::text[], $2::jsonb[]) AS u(k, d)) \
             INSERT INTO cache_semantic (cache_key, scope_hash, model_id, text, embedding) \
             SELECT k, $3, $4, t, b FROM unnest($1::text[], $5::text[], $6::bytea[]) AS u(k, t, b)",
        )
        .bind(&keys)
        .bind(&values)
        .bind(hash)
        .bind(MODEL)
        .bind(&texts)
        .bind(&bytes)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// `prefix` and `n` in letters (`t` 27 is `tbb`): texts with digits would meet the lexical guard's number
/// rule, which refuses a match between texts naming different numbers.
fn name(prefix: &str, mut n: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
        if n == 0 {
            break;
        }
    }
    letters.reverse();
    format!("{prefix}{}", letters.into_iter().collect::<String>())
}

fn percentiles(times: &mut [Duration]) -> [Duration; 3] {
    times.sort();
    let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    [at(0.50), at(0.90), at(0.99)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
