-- whaleid gallery store on PostgreSQL, schema version 1: the same records as the SQLite store.
-- Applied by `whaleid store migrate URL` (index/store/pg_migrate.py), one transaction per file.

CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- The change counter: one row, raised by every committed change. Every write transaction locks this
-- row first (SELECT ... FOR UPDATE), so changes are serialised in the order of their generation.
CREATE TABLE generation (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    value bigint NOT NULL
);
INSERT INTO generation (one, value) VALUES (true, 0);

-- Identity columns draw from sequences, which never hand out a value twice: ids are never reused.
CREATE TABLE identities (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    whale_id   text NOT NULL UNIQUE,
    flipped    boolean NOT NULL DEFAULT false,
    created_at text NOT NULL
);

CREATE TABLE images (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    identity_id    bigint NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
    sha256         text NOT NULL,
    source         text,
    box            text,
    embedding      bytea NOT NULL,
    added_at       text NOT NULL,
    thumbnail      bytea,
    local_features bytea,
    UNIQUE (identity_id, sha256)
);
CREATE INDEX images_sha256 ON images (sha256);
CREATE INDEX images_with_local_features ON images (id) WHERE local_features IS NOT NULL;
