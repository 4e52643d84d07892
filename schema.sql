-- kcache: the PostgreSQL cache schema, the same objects Kinto 26.5 creates
-- (kinto/core/cache/postgresql/schema.sql), so that a database migrated by either tool is
-- accepted by the other. kcache embeds this file; a DBA may also apply it by hand:
--
--     psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -1 -f schema.sql
--
-- Every statement is idempotent. `kcache migrate` runs only the ones whose object is missing
-- from the connection's own schema, in one transaction, under an advisory lock.

-- The cache table: one row per prefixed key, the value as Kinto's JSON text, and the absolute
-- expiry as a local timestamp of the session's time zone (NULL: no expiry).
CREATE TABLE IF NOT EXISTS cache (
    key VARCHAR(256) PRIMARY KEY,
    value TEXT NOT NULL,
    ttl TIMESTAMP DEFAULT NULL
);

-- Purging expired rows looks them up by expiry.
CREATE INDEX IF NOT EXISTS idx_cache_ttl ON cache(ttl);

-- Turns a TTL in seconds into the absolute expiry both Kinto and kcache store.
CREATE OR REPLACE FUNCTION sec2ttl(seconds FLOAT)
RETURNS TIMESTAMP AS $$
BEGIN
    IF seconds IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN now() + (seconds || ' SECOND')::INTERVAL;
END;
$$ LANGUAGE plpgsql;
