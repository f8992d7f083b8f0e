-- opsgate schema v1. Money is integer milli-credits, time is unix seconds.
CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    plan TEXT NOT NULL,
    credits_total BIGINT NOT NULL DEFAULT 0,
    credits_used BIGINT NOT NULL DEFAULT 0,
    credits_held BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    CHECK (credits_used >= 0 AND credits_held >= 0 AND credits_used + credits_held <= credits_total)
);
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations(id),
    plan TEXT NOT NULL,
    kind TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'member',
    email TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE allocations (
    org_id TEXT NOT NULL REFERENCES organizations(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    allocated BIGINT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    held BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, user_id),
    CHECK (used >= 0 AND held >= 0 AND used + held <= allocated)
);
CREATE TABLE service_keys (
    digest TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users(id),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users(id),
    prefix TEXT NOT NULL,
    name TEXT,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);
CREATE TABLE holds (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    amount BIGINT NOT NULL,
    charged BIGINT,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    rate TEXT NOT NULL,
    byok BIGINT NOT NULL DEFAULT 0,
    has_allocation BIGINT NOT NULL DEFAULT 0,
    day_start BIGINT,
    period_start BIGINT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    settled_at BIGINT
);
CREATE INDEX holds_open ON holds (status, expires_at);
CREATE TABLE quota_usage (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    reserved BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, kind, window_start),
    CHECK (used >= 0 AND reserved >= 0)
);
CREATE TABLE ledger (
    seq $SERIAL,
    org_id TEXT NOT NULL,
    user_id TEXT,
    kind TEXT NOT NULL,
    amount BIGINT NOT NULL,
    hold_id TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX ledger_org ON ledger (org_id);
CREATE TABLE usage_logs (
    hold_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    images BIGINT NOT NULL,
    cost BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    upstream_status BIGINT NOT NULL,
    latency_ms BIGINT NOT NULL,
    byok BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX usage_user_time ON usage_logs (user_id, created_at);
CREATE TABLE audit_log (
    seq $SERIAL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    at BIGINT NOT NULL
)
