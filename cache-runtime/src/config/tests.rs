//! Every bounded setting at, just past and far past its bounds.

use super::*;

/// `Config::default()` changed by `change`, then checked.
fn checked(change: impl FnOnce(&mut Config)) -> Result<Config, CacheError> {
    let mut config = Config::default();
    change(&mut config);
    config.checked()
}

type Change = fn(&mut Config);

/// Each change, and what the refusal must say: the setting, the value given, and the bound where there is
/// one above.
const REFUSED: &[(Change, &[&str])] = &[
    (|c| c.op_timeout = Duration::MAX, &["op_timeout", "2147483.647s", "18446744073709551615.999999999s"]),
    (|c| c.op_timeout = Duration::from_secs(25 * 86_400), &["op_timeout", "2160000s", "lock_timeout"]),
    (|c| c.op_timeout = MAX_SERVER_TIMEOUT + Duration::from_millis(1), &["op_timeout", "2147483.648s"]),
    (|c| c.op_timeout = Duration::ZERO, &["op_timeout", "more than zero", "0ns"]),
    (|c| c.maintenance_timeout = Duration::MAX, &["maintenance_timeout", "2147483.647s", "statement_timeout"]),
    (|c| c.maintenance_timeout = Duration::from_secs(25 * 86_400), &["maintenance_timeout", "2160000s"]),
    (|c| c.maintenance_timeout = Duration::ZERO, &["maintenance_timeout", "more than zero"]),
    (|c| c.lease = Duration::MAX, &["lease_duration", "315360000000s", "10,000 years"]),
    (|c| c.lease = Duration::ZERO, &["lease_duration", "more than zero"]),
    (|c| c.max_replica_lag = Duration::MAX, &["max_lag", "315360000000s"]),
    (|c| c.max_replica_lag = Duration::ZERO, &["max_lag", "more than zero"]),
    (|c| c.sweep_interval = Some(Duration::MAX), &["sweep_interval", "315360000000s", "None turns the sweeper off"]),
    (|c| c.default_ttl = Ttl::After(Duration::MAX), &["default_ttl", "315360000000s", "Ttl::Never"]),
    (|c| c.default_ttl = Ttl::After(MAX_TTL + Duration::from_secs(1)), &["default_ttl", "315360000001s"]),
    (|c| c.default_ttl = Ttl::After(Duration::ZERO), &["default_ttl", "more than zero"]),
    (|c| c.local_tier = Some((0, Duration::from_secs(60))), &["local_tier's capacity", "got 0"]),
    (|c| c.local_tier = Some((10, Duration::ZERO)), &["local_tier's max_age", "more than zero"]),
    (|c| c.max_entries = Some(0), &["max_entries", "got 0", "None means no limit"]),
    (|c| c.max_value_bytes = 0, &["max_value_bytes", "got 0"]),
    (|c| c.batch_size = 0, &["batch_size", "got 0"]),
    (|c| c.coalesce_max_keys = 0, &["coalesce_max_keys", "got 0"]),
    (|c| c.coalesce_in_flight = 0, &["coalesce_in_flight", "got 0"]),
];

#[test]
fn settings_out_of_bounds_are_refused_by_name_value_and_bound() {
    for (i, (change, says)) in REFUSED.iter().enumerate() {
        match checked(change) {
            Err(CacheError::Config(message)) => {
                for part in *says {
                    assert!(message.contains(part), "case {i}: {message:?} does not say {part:?}");
                }
            }
            other => panic!("case {i} ({says:?}) was not refused: {other:?}"),
        }
    }
}

#[test]
fn settings_at_their_bounds_are_kept() {
    let config = checked(|c| {
        c.op_timeout = MAX_SERVER_TIMEOUT;
        c.maintenance_timeout = MAX_SERVER_TIMEOUT;
        c.lease = MAX_DURATION;
        c.max_replica_lag = MAX_DURATION;
        c.sweep_interval = Some(MAX_DURATION);
        c.default_ttl = Ttl::After(MAX_TTL);
        c.local_tier = Some((u64::MAX, Duration::MAX));
        c.max_entries = Some(u64::MAX);
        c.max_value_bytes = usize::MAX;
        c.batch_size = i64::from(u32::MAX);
        c.coalesce_max_keys = usize::MAX;
        c.coalesce_in_flight = usize::MAX;
    })
    .expect("every value at its bound is accepted");
    assert_eq!((config.op_timeout, config.maintenance_timeout), (MAX_SERVER_TIMEOUT, MAX_SERVER_TIMEOUT));
    assert_eq!(
        (config.lease, config.max_replica_lag, config.sweep_interval),
        (MAX_DURATION, MAX_DURATION, Some(MAX_DURATION))
    );
    assert_eq!(config.default_ttl, Ttl::After(MAX_TTL));
    assert_eq!(config.local_tier, Some((u64::MAX, Duration::MAX)));
    let never = checked(|c| {
        c.default_ttl = Ttl::Never;
        c.sweep_interval = None;
        c.max_entries = None;
    });
    assert!(never.is_ok(), "{never:?}");
}

/// Values under the server's resolution are raised to it, not refused.
#[test]
fn values_under_the_resolution_are_raised_to_it() {
    let config = checked(|c| {
        c.op_timeout = Duration::from_nanos(1);
        c.maintenance_timeout = Duration::from_micros(300);
        c.lease = Duration::from_millis(1);
    })
    .expect("small but not zero");
    assert_eq!((config.op_timeout, config.maintenance_timeout), (Duration::from_millis(1), Duration::from_millis(1)));
    assert_eq!(config.lease, Duration::from_millis(10));
    let default = Config::default();
    let again = default.clone().checked().expect("the defaults are within bounds");
    assert_eq!(format!("{again:?}"), format!("{default:?}"), "checking the defaults changes nothing");
}

#[test]
fn pool_sizes_are_bounded_by_the_server_limit() {
    assert!(check_max_connections(None).is_ok());
    assert!(check_max_connections(Some(1)).is_ok());
    assert!(check_max_connections(Some(MAX_CONNECTIONS)).is_ok());
    for n in [0, MAX_CONNECTIONS + 1, u32::MAX] {
        match check_max_connections(Some(n)) {
            Err(CacheError::Config(message)) => {
                assert!(message.contains("max_connections") && message.contains(&n.to_string()), "{message}");
            }
            other => panic!("max_connections({n}) was not refused: {other:?}"),
        }
    }
}
