//! Connector *instances*: the operator's name for one connector run with
//! one config (a `[instances.NAME]` of `sluice.toml`, or `--instance` of
//! `sluice run`). An instance owns its state, its run history, its
//! quarantine, its drift events and its tables. Nothing a component
//! declares about itself (its spec name, its stream names) decides where
//! its data goes, so one component cannot read or replace another's state
//! or rows by declaring the same names.
//!
//! Each instance's tables are named `<instance>__<stream>` unless the
//! operator names a stream's table (`--table STREAM=TABLE`, `tables` in
//! `sluice.toml`). The store records which instance and stream own each
//! table and refuses a run that would write into a table another
//! instance (or nobody it knows of) owns.

use std::path::Path;

use crate::limits::MAX_INSTANCE_NAME_BYTES;

/// Between an instance's prefix and a stream name in a default table name.
pub const TABLE_SEPARATOR: &str = "__";

/// Longest destination table name an operator may choose, in bytes.
pub const MAX_TABLE_NAME_BYTES: usize = 128;

/// Whether `name` is a valid instance name: 1 to
/// [`MAX_INSTANCE_NAME_BYTES`] ASCII letters, digits, `_`, `-` and `.`.
pub fn check_instance_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_INSTANCE_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "instance names are 1 to {MAX_INSTANCE_NAME_BYTES} letters, digits, _ - and . (got {name:?})"
        ))
    }
}

/// The instance `sluice run COMPONENT` uses when `--instance` is not
/// given: the registry name, or the component file's name without its
/// extension (`connectors/items.wasm` is instance `items`). Both are the
/// operator's choice, never the component's.
pub fn default_instance(component: &Path) -> Result<String, String> {
    let stem = component
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    check_instance_name(stem).map_err(|e| {
        format!(
            "no instance name can be made from {}: {e}; pass --instance NAME",
            component.display()
        )
    })?;
    Ok(stem.to_string())
}

/// The table of `stream` for `instance` when the operator names none:
/// `<instance>__<stream>`, with every byte of the instance name that is
/// not a letter, digit or `_` written as `_` (so the name needs no
/// quoting in SQL). Two instances whose names differ only there would
/// share a name; the store's ownership record refuses the second.
pub fn default_table(instance: &str, stream: &str) -> String {
    let prefix: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}{TABLE_SEPARATOR}{stream}")
}

/// Whether `name` may be an operator-chosen table name: an ASCII letter,
/// then letters, digits and `_`, at most [`MAX_TABLE_NAME_BYTES`] bytes.
/// (Sluice's own tables start with `_`, so none can be chosen.)
pub fn check_table_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= MAX_TABLE_NAME_BYTES;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "table names are an ASCII letter, then letters, digits and _, at most {MAX_TABLE_NAME_BYTES} bytes (got {name:?})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_come_from_the_operator() {
        assert_eq!(
            default_instance(Path::new("connectors/items.wasm")).unwrap(),
            "items"
        );
        assert_eq!(
            default_instance(Path::new("open-meteo")).unwrap(),
            "open-meteo"
        );
        assert!(default_instance(Path::new("dir/bad name.wasm")).is_err());
        assert!(check_instance_name("../x").is_err());
        assert!(check_instance_name("").is_err());
        assert!(check_instance_name(&"a".repeat(MAX_INSTANCE_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn default_tables_need_no_quoting() {
        assert_eq!(default_table("items", "items"), "items__items");
        assert_eq!(
            default_table("weather-berlin.v2", "hourly"),
            "weather_berlin_v2__hourly"
        );
        assert!(check_table_name(&default_table("a-b", "s")).is_ok());
        for bad in ["", "_sluice_runs", "1x", "a-b", "a b", "a\"b"] {
            assert!(check_table_name(bad).is_err(), "{bad}");
        }
        assert!(check_table_name(&"t".repeat(MAX_TABLE_NAME_BYTES + 1)).is_err());
    }
}
