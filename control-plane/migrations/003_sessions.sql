-- opsgate schema v3: browser sessions, created by exchanging a valid JWT at the edge.
-- Only the digest of the opaque session token is stored.
CREATE TABLE sessions (
    digest TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX sessions_user ON sessions (user_id)
