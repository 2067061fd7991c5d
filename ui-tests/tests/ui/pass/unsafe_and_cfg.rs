//! `unsafe` functions, `#[cfg]` (carried to the companions) and attributes on arguments.
use cache_runtime::pg_cached;

/// # Safety
/// `ptr` must be valid for reads.
#[pg_cached(skip(ptr))]
pub async unsafe fn read(ptr: *const u32, tag: u32) -> u32 {
    *ptr + tag
}

#[cfg(any())]
#[pg_cached]
async fn compiled_out(x: NotEvenAType) -> u32 {
    x
}

#[pg_cached]
async fn with_arg_attrs(#[allow(unused_variables)] unused: u32, used: u32) -> u32 {
    used
}

#[tokio::main]
async fn main() {
    let value = 40;
    assert_eq!(unsafe { read(&value, 2) }.await, 42);
    assert_eq!(unsafe { read_refresh(&value, 1) }.await, 41);
    assert!(read_cache_key(1).is_ok());
    assert_eq!(with_arg_attrs(1, 2).await, 2);
}
