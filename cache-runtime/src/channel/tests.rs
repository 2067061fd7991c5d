use super::*;

/// RFC 4231's HMAC-SHA256 test cases 1, 2 and 6 (a key longer than the block), as (key, message, mac).
const RFC_4231: [(&[u8], &str, &str); 3] = [
    (&[0x0b; 20], "Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", "what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (
        &[0xaa; 131],
        "Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
];

#[test]
fn the_mac_is_rfc_2104_hmac_sha256_truncated_to_16_bytes() {
    for (key, message, mac) in RFC_4231 {
        let signed = Secret::new(key).sign(message);
        assert_eq!(signed, format!("{}|{message}", &mac[..32]), "{message:?}");
    }
}

#[test]
fn what_is_signed_opens_into_what_was_encoded() {
    let secret = Secret::new(b"0123456789abcdef0123456789abcdef");
    let sender = 0x1234;
    let open = |body: &str| secret.open(&secret.sign(body));
    let keys = open(&keys_payload(sender, ["a:1", "a:2"])).expect("authentic").expect("understood");
    assert_eq!(keys, Message { sender, notice: Notice::Keys(vec![key_hash("a:1"), key_hash("a:2")]) });
    let notice = |body: &str| open(body).expect("authentic").map(|m| m.notice);
    assert_eq!(notice(&namespace_payload(sender, "retrieval")), Some(Notice::Namespace(name_hash("retrieval"))));
    assert_eq!(notice(&done_payload(sender, "a:1")), Some(Notice::Done(key_hash("a:1"))));
    assert_eq!(notice(&ping_payload(sender, 3)), Some(Notice::Ping(3)));
    assert_eq!(notice(&keys_payload(sender, [])), Some(Notice::Keys(vec![])));
    assert_eq!(notice("0000000000000000|t|aa818245c677a1df"), Some(Notice::Tag(name_hash("doc:7"))));
    // What pg_cached_queue_invalidation sends (lpad(to_hex(id), 16, '0')).
    assert_eq!(notice("0000000000000000|q|000000000000002a"), Some(Notice::Queued(42)));
    // Signed, but not something this version understands: a newer release's event.
    for newer in ["0000000000000000|z|0000000000000001", "0000000000000000|k|01,02", "0000000000000000|n|"] {
        assert_eq!(open(newer), Ok(None), "{newer:?}");
    }
}

#[test]
fn payloads_not_signed_with_the_secret_are_forged() {
    let secret = Secret::new(b"the cache's");
    let body = "0000000000000000|t|aa818245c677a1df";
    let signed = secret.sign(body);
    let other = Secret::new(b"someone else's").sign(body);
    let tampered = signed.replace("|t|aa", "|t|ab");
    let long = format!("{}|0000000000000000|k|{}", &signed[..32], "0123456789abcdef,".repeat(470));
    let upper = signed.to_uppercase();
    for forged in [
        "",
        body,
        "0000000000000000|t|doc:7",
        &other,
        &tampered,
        &long,
        &upper,
        &format!("{signed}\u{7}"),
        &signed[1..],
    ] {
        assert_eq!(secret.open(forged), Err(Forged), "{forged:?}");
    }
    assert!(long.len() > MAX_PAYLOAD);
}

#[test]
fn names_hash_as_sql_hashes_them() {
    // `SELECT pg_cached_name_hash('doc:7')` on PostgreSQL; the integration tests compare many more.
    assert_eq!(format!("{:016x}", name_hash("doc:7")), "aa818245c677a1df");
}

#[test]
fn the_secret_does_not_show_in_debug() {
    assert_eq!(format!("{:?}", Secret::new(b"hunter2")), "Secret(..)");
}
