//! Explicit and elided lifetimes in arguments, bounds and a where-clause.
use cache_runtime::pg_cached;
use std::borrow::Cow;

#[pg_cached]
async fn longest<'a, 'b: 'a>(a: &'a str, b: &'b str) -> String {
    if a.len() >= b.len() { a } else { b }.to_owned()
}

#[pg_cached]
async fn elided(items: &[&str], name: Cow<'_, str>) -> usize {
    items.len() + name.len()
}

struct Holder<'h> {
    prefix: &'h str,
}

impl<'h> Holder<'h> {
    #[pg_cached]
    async fn prefixed<'x>(&self, x: &'x str) -> String
    where
        'h: 'x,
    {
        format!("{}{x}", self.prefix)
    }
}

#[tokio::main]
async fn main() {
    assert_eq!(longest("ab", "c").await, "ab");
    assert_eq!(elided(&["a"], Cow::Borrowed("bc")).await, 3);
    assert_eq!(Holder { prefix: ">" }.prefixed("x").await, ">x");
}
