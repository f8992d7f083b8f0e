-- opsgate schema v2: provider secrets (BYOK keys of users, and the platform's own keys).
-- Stored sealed (see control-plane/src/crypto.rs): the secret under its own data key, the
-- data key wrapped under the master key whose id (fingerprint) is in master_key_id. Both
-- are bound to (scope, owner, provider, id). hint is the masked form shown in listings.
CREATE TABLE provider_secrets (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    owner TEXT NOT NULL,
    provider TEXT NOT NULL,
    hint TEXT NOT NULL,
    description TEXT,
    ciphertext TEXT NOT NULL,
    wrapped_key TEXT NOT NULL,
    master_key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    rotated_at BIGINT,
    CHECK (scope IN ('user', 'platform'))
);
CREATE UNIQUE INDEX provider_secrets_owner ON provider_secrets (scope, owner, provider);
CREATE INDEX provider_secrets_master_key ON provider_secrets (master_key_id)
