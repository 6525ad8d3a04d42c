//! What both backends share about quarantine rows: how an open row is
//! found again when the same record comes back.
//!
//! One open row stands for one distinct record: a connector re-reading a
//! record (an inclusive cursor, a restart after a crash, a full refresh)
//! counts on the row already open for it (`seen_count`, `last_seen_run`,
//! `last_seen_at`) instead of storing it again. "The same record" is the
//! same instance, stream and raw JSON (byte for byte, as the connector
//! emitted it; an operator's edit does not change what the row stands
//! for). Rows are found by `record_hash`, the SHA-256 of that raw JSON
//! (an index on the full text would not do: PostgreSQL's b-tree entries
//! are limited to about 2.7 KB), and the text itself is compared too.

use sha2::{Digest, Sha256};

/// The `record_hash` of a quarantined record's raw JSON: its SHA-256, in
/// lowercase hex.
pub fn record_hash(raw: &str) -> String {
    hex::encode(Sha256::digest(raw.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_the_sha256_of_the_raw_text() {
        assert_eq!(
            record_hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_ne!(record_hash(r#"{"id":1}"#), record_hash(r#"{"id": 1}"#));
    }
}
