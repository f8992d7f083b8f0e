-- Sessions a day past their expiry are purged by the sweeper (every `opsgate serve`); this
-- index keeps the purge a range scan however many sessions were ever opened.
CREATE INDEX sessions_expiry ON sessions (expires_at)
