use cache_runtime::pg_cached;

/// An error type of the caller's own, with no `From` conversions (so the expected output does not depend on
/// which crates in the build add `From` impls to a standard type).
struct LookupError;

#[pg_cached]
async fn lookup(id: u32) -> Result<u32, LookupError> {
    let parsed: u32 = "1".parse()?;
    Ok(id + parsed)
}

fn main() {}
