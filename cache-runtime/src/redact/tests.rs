//! Every URL form a password can take, and what is left of it once redacted.

use super::*;

/// An input, the secrets that must not survive, and (when it is certain) the exact redaction.
type Case = (&'static str, &'static [&'static str], Option<&'static str>);

const WITH_PASSWORDS: &[Case] = &[
    ("postgres://app:Pw1secret@db:5432/cache", &["Pw1secret"], Some("postgres://app:***@db:5432/cache")),
    ("postgresql://app:Pw1secret@db/cache", &["Pw1secret"], Some("postgresql://app:***@db/cache")),
    // Characters that break a URL when they are not percent-encoded.
    ("postgres://app:Pw1/sec/ret@db/cache", &["Pw1", "sec", "ret@db"], Some("postgres://app:***@db/cache")),
    ("postgres://app:Pw1@sec@ret@db/cache", &["Pw1", "sec"], Some("postgres://app:***@db/cache")),
    ("postgres://app:Pw1?secret@db/cache", &["Pw1", "secret"], Some("postgres://app:***@db/cache")),
    ("postgres://app:Pw1#secret@db/cache", &["Pw1", "secret"], Some("postgres://app:***@db/cache")),
    ("postgres://app:Pw1:secret@db/cache", &["Pw1", "secret"], Some("postgres://app:***@db/cache")),
    ("postgres://app:Pw1 secret@db/cache", &["Pw1", "secret"], Some("postgres://app:***@db/cache")),
    ("postgres://app:Pw1%2Fsec%40ret@db/cache", &["Pw1", "sec", "%40ret"], Some("postgres://app:***@db/cache")),
    ("postgres://app:Pw1se%ZZcret@db/cache", &["Pw1se", "cret"], Some("postgres://app:***@db/cache")),
    ("postgres://app:p\u{e4}ssw\u{f6}rd\u{20ac}@db/cache", &["p\u{e4}ssw"], Some("postgres://app:***@db/cache")),
    ("postgres://app:@db/cache", &[], Some("postgres://app:***@db/cache")),
    // Several hosts, an IPv6 host, a truncated URL.
    (
        "postgres://app:Pw1secret@h1:5432,h2:5433/cache?target_session_attrs=read-write",
        &["Pw1secret"],
        Some("postgres://app:***@h1:5432,h2:5433/cache?target_session_attrs=read-write"),
    ),
    ("postgres://app:Pw1secret@[::1]:5432/cache", &["Pw1secret"], Some("postgres://app:***@[::1]:5432/cache")),
    ("postgres://app:Pw1secret@", &["Pw1secret"], Some("postgres://app:***@")),
    // The query string, first, last, percent-encoded key, keys sqlx does not read (it would log them).
    ("postgres://app@db/cache?password=Pw1secret", &["Pw1secret"], Some("postgres://app@db/cache?password=***")),
    (
        "postgres://app@db/cache?password=Pw1secret&sslmode=require",
        &["Pw1secret"],
        Some("postgres://app@db/cache?password=***&sslmode=require"),
    ),
    (
        "postgres://db/cache?sslmode=require&password=Pw1secret",
        &["Pw1secret"],
        Some("postgres://db/cache?sslmode=require&password=***"),
    ),
    ("postgres://db/cache?pass%77ord=Pw1secret", &["Pw1secret"], Some("postgres://db/cache?pass%77ord=***")),
    ("postgres://db/cache?PASSWORD=Pw1secret", &["Pw1secret"], Some("postgres://db/cache?PASSWORD=***")),
    ("postgres://db/cache?sslpassword=Pw1secret", &["Pw1secret"], Some("postgres://db/cache?sslpassword=***")),
    ("postgres://h1,h2/cache?password=Pw1secret", &["Pw1secret"], Some("postgres://h1,h2/cache?password=***")),
    // Unencoded `&`, `#` and `@` inside a query-string password.
    ("postgres://db/cache?password=Pw1&secret", &["Pw1", "secret"], Some("postgres://db/cache?password=***")),
    ("postgres://db/cache?password=Pw1#secret", &["Pw1", "secret"], Some("postgres://db/cache?password=***")),
    ("postgres://db/cache?password=Pw1%26secret", &["Pw1", "secret"], Some("postgres://db/cache?password=***")),
    ("postgres://app:Pw1secret@db/cache?password=Pw2secret", &["Pw1secret", "Pw2secret"], None),
    ("postgres://app:Pw1secret@db/cache?password=Pw2x@yz", &["Pw1secret", "Pw2x", "yz"], None),
    ("postgres://app:Pw1?x@db/cache?password=Pw2secret", &["Pw1", "Pw2secret"], None),
    // libpq key=value strings (not accepted, but echoed in the error if given).
    (
        "host=db user=app password=Pw1secret dbname=cache",
        &["Pw1secret"],
        Some("host=db user=app password=*** dbname=cache"),
    ),
    (
        "host=db password = 'Pw1 se\\'cr et' dbname=cache",
        &["Pw1", "se", "cr et"],
        Some("host=db password = *** dbname=cache"),
    ),
    ("password=Pw1secret", &["Pw1secret"], Some("password=***")),
    ("host=db PASSWORD='Pw1secret", &["Pw1secret"], Some("host=db PASSWORD=***")),
    // No `://`: a mistyped scheme, or none.
    ("postgres:/app:Pw1secret@db/cache", &["Pw1secret"], None),
    ("app:Pw1secret@db/cache", &["Pw1secret"], Some("app:***@db/cache")),
];

const WITHOUT_PASSWORDS: &[&str] = &[
    "postgres://app@db:5432/cache",
    "postgres://db/cache?sslmode=require&application_name=x",
    "postgres://app@h1:5432,h2:5433/cache?target_session_attrs=read-write",
    "postgres://[::1]:5432/cache",
    "host=db user=app dbname=cache",
    "not a url",
    "",
];

#[test]
fn no_form_of_password_survives() {
    for (input, secrets, expected) in WITH_PASSWORDS {
        let shown = redact_url(input);
        for secret in *secrets {
            assert!(!shown.contains(secret), "{input:?} became {shown:?}, which shows {secret:?}");
        }
        if let Some(expected) = expected {
            assert_eq!(&shown, expected, "{input:?}");
        }
    }
}

#[test]
fn text_without_a_password_is_left_alone() {
    for input in WITHOUT_PASSWORDS {
        assert_eq!(redact_url(input), *input);
    }
}

#[test]
fn secret_keys_are_recognised_decoded() {
    for key in ["password", "PASSWORD", "pass%77ord", "sslpassword", "pwd", "client_secret"] {
        assert!(is_secret_key(key), "{key}");
    }
    for key in ["user", "sslmode", "application_name", "options", "host"] {
        assert!(!is_secret_key(key), "{key}");
    }
}
