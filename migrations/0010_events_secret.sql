-- The events channel's secret: payloads on pg_cached_events are signed with it (HMAC-SHA256, RFC 2104), so
-- that a listener can tell the cache's notifications from anything else sent there. PostgreSQL has no
-- privilege for LISTEN or NOTIFY: any role that can connect may send on the channel, and only a role that can
-- read this table can sign.
--
-- One row, filled once here with 256 bits from the server's strong random source (gen_random_uuid, 122 random
-- bits each, hashed together); never rewritten by a later migration. Beside the secret, the key's inner and
-- outer pads (the 64-byte key XOR 0x36 and XOR 0x5c), so that pg_cached_sign (migrations/functions.sql) costs
-- two sha256() calls and no loop. Nobody but the owner may read it: pg_cached_grant gives SELECT to the roles
-- that use the cache (their listeners verify with it).

CREATE TABLE IF NOT EXISTS cache_events_secret (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    secret    bytea NOT NULL CHECK (octet_length(secret) = 32),
    inner_pad bytea NOT NULL CHECK (octet_length(inner_pad) = 64),
    outer_pad bytea NOT NULL CHECK (octet_length(outer_pad) = 64)
);

REVOKE ALL ON cache_events_secret FROM PUBLIC;

INSERT INTO cache_events_secret (singleton, secret, inner_pad, outer_pad)
SELECT true, s.secret,
       (SELECT decode(string_agg(lpad(to_hex(get_byte(s.padded, i) # 54), 2, '0'), '' ORDER BY i), 'hex')
        FROM generate_series(0, 63) AS i),
       (SELECT decode(string_agg(lpad(to_hex(get_byte(s.padded, i) # 92), 2, '0'), '' ORDER BY i), 'hex')
        FROM generate_series(0, 63) AS i)
FROM (SELECT r.secret, r.secret || decode(repeat('00', 32), 'hex') AS padded
      FROM (SELECT sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text,
                                     'UTF8')) AS secret) AS r) AS s
ON CONFLICT (singleton) DO NOTHING;
