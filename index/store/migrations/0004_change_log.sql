-- Schema version 4: the change log. Which identities each generation touched (written by triggers on
-- identities and images, inside the change's own transaction), so a replica catches up by re-reading
-- only those identities instead of the whole catalogue. Rows older than the last 100,000 generations
-- are pruned (index/store/postgres.py); a replica further behind rebuilds from the store.

CREATE TABLE changed_identities (
    generation  bigint NOT NULL,
    identity_id bigint NOT NULL,
    PRIMARY KEY (generation, identity_id)
);

-- Every change holds the generation row's lock and raises it just before committing, so the
-- generation it commits as is the current value + 1.
CREATE FUNCTION whaleid_image_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO changed_identities SELECT value + 1, OLD.identity_id FROM generation ON CONFLICT DO NOTHING;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO changed_identities SELECT value + 1, NEW.identity_id FROM generation ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION whaleid_identity_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO changed_identities SELECT value + 1, OLD.id FROM generation ON CONFLICT DO NOTHING;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO changed_identities SELECT value + 1, NEW.id FROM generation ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER images_changed AFTER INSERT OR UPDATE OR DELETE ON images
    FOR EACH ROW EXECUTE FUNCTION whaleid_image_changed();
CREATE TRIGGER identities_changed AFTER INSERT OR UPDATE OR DELETE ON identities
    FOR EACH ROW EXECUTE FUNCTION whaleid_identity_changed();
