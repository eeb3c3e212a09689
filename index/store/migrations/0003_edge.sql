-- Schema version 3: the trailing-edge descriptor of a photo (index.edge, a WTE1 blob), for the
-- edge_fused scoring mode.

ALTER TABLE images ADD COLUMN edge bytea;
