//! `?` and an early `return` in the body return from the function, with the declared types.
use cache_runtime::pg_cached;

#[derive(Debug)]
pub struct AppError(String);

impl From<std::num::ParseIntError> for AppError {
    fn from(e: std::num::ParseIntError) -> Self {
        AppError(e.to_string())
    }
}

#[pg_cached]
async fn parse_sum(a: String, b: String) -> Result<i64, AppError> {
    if a == "early" {
        return Ok(-1);
    }
    let a: i64 = a.parse()?;
    let b: i64 = b.parse()?;
    Ok(a + b)
}

#[pg_cached]
async fn first_char(s: String) -> Option<char> {
    let c = s.chars().next()?;
    if c == 'x' {
        return None;
    }
    Some(c)
}

#[tokio::main]
async fn main() {
    assert_eq!(parse_sum("1".into(), "2".into()).await.unwrap(), 3);
    assert_eq!(parse_sum("early".into(), "2".into()).await.unwrap(), -1);
    assert!(parse_sum("x".into(), "2".into()).await.is_err());
    assert_eq!(first_char("ab".into()).await, Some('a'));
    assert_eq!(first_char("".into()).await, None);
}
