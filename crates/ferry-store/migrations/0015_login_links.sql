-- One-time console login links (`ferry quickstart` prints one): a short-lived, single-use
-- token (stored as its SHA-256 only) that the console exchanges for a session of `username`.
CREATE TABLE login_links (
    token_hash    TEXT    NOT NULL PRIMARY KEY,
    username      TEXT    NOT NULL,
    created_by    TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    used_at_ms    INTEGER
);
