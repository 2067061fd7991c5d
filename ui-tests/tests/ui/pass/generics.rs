//! Generic type and const parameters, bounds and a where-clause, also on the companions.
use cache_runtime::pg_cached;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

#[pg_cached(ttl = "1d")]
pub async fn repeat<T, const N: usize>(value: T) -> Vec<T>
where
    T: Serialize + DeserializeOwned + Clone + Debug + Send + Sync,
{
    vec![value; N]
}

#[pg_cached]
async fn parse<T: std::str::FromStr + Serialize + DeserializeOwned>(text: String) -> Option<T> {
    text.parse().ok()
}

pub struct Wrapper<K>(K);

impl<K: Serialize + Sync> Wrapper<K> {
    #[pg_cached]
    async fn with<V: Serialize + Sync>(&self, v: V) -> String
    where
        V: Debug,
    {
        format!("{v:?}")
    }
}

#[tokio::main]
async fn main() {
    assert_eq!(repeat::<_, 2>(1u8).await, [1, 1]);
    assert_eq!(parse::<u32>("12".into()).await, Some(12));
    assert_eq!(Wrapper(1).with("v").await, "\"v\"");
    let key = repeat_cache_key::<u8, 2>(1).unwrap();
    assert_ne!(key, repeat_cache_key::<u16, 2>(1).unwrap());
    assert_ne!(key, repeat_cache_key::<u8, 3>(1).unwrap());
    assert_ne!(parse_cache_key::<u32>("1".into()).unwrap(), parse_cache_key::<i32>("1".into()).unwrap());
}
