-- Schema version 2: photo metadata, perceptual hash and original bytes; the audit log of changes
-- (the identity operations: rename, merge, move photos, edit metadata).

ALTER TABLE images ADD COLUMN metadata jsonb;
ALTER TABLE images ADD COLUMN phash text;
ALTER TABLE images ADD COLUMN original bytea;

CREATE TABLE audit (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        text NOT NULL,
    operation text NOT NULL,
    actor     text,
    details   jsonb NOT NULL
);
