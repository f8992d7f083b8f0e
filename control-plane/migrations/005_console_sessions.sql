-- opsgate schema v5: admin console sessions (/console/), opened by signing in with the admin
-- token or an admin JWT verified at the edge. Only the digest of the opaque token is stored.
-- `actor` is who signed in (admin-token or jwt:<subject>); `credential` is the digest of the
-- admin token a session was opened with (empty for JWT sessions), so rotating the admin
-- token ends the sessions it opened.
CREATE TABLE console_sessions (
    digest TEXT PRIMARY KEY,
    actor TEXT NOT NULL,
    credential TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at)
