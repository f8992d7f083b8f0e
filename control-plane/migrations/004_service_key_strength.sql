-- Whether a service key was guessable when it was bound (its random part too short): only
-- digests are stored, so the strength is recorded at that moment for the start-up warning
-- and the listing. Keys bound before this migration are not known to be strong.
ALTER TABLE service_keys ADD COLUMN guessable BIGINT NOT NULL DEFAULT 1
