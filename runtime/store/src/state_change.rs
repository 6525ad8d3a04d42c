//! What an operator's state change (`sluice state set|reset`) does, the
//! same on every backend: from the streams' values before, the audit rows
//! to write; each row's `new_value` is the stream's value after (`None`:
//! the stream's state is deleted).

use sluice_core::destination::{StateChange, StateChangeRecord, StoreError};

/// The audit rows of `change`, given each affected stream's value before
/// (`before`: the one stream named, or every stream of the instance for a
/// reset of them all), at time `at`.
pub(crate) fn plan(
    change: &StateChange,
    before: &[(String, String)],
    at: &str,
) -> Result<Vec<StateChangeRecord>, StoreError> {
    let record = |stream: &str, action: &str, old: Option<&String>, new: Option<&String>| {
        StateChangeRecord {
            id: change.id.clone(),
            at: at.to_string(),
            instance: change.instance.clone(),
            stream: stream.to_string(),
            action: action.to_string(),
            old_value: old.cloned(),
            new_value: new.cloned(),
            by: change.by.clone(),
        }
    };
    match (&change.stream, &change.value) {
        (Some(stream), Some(value)) => Ok(vec![record(
            stream,
            "set",
            before.first().map(|b| &b.1),
            Some(value),
        )]),
        (_, None) => Ok(before
            .iter()
            .map(|(stream, old)| record(stream, "reset", Some(old), None))
            .collect()),
        (None, Some(_)) => Err(StoreError::Invalid(
            "a state is set for one stream at a time".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(stream: Option<&str>, value: Option<&str>) -> StateChange {
        StateChange {
            id: "c1".into(),
            instance: "gh".into(),
            stream: stream.map(String::from),
            value: value.map(String::from),
            by: "op".into(),
        }
    }

    #[test]
    fn a_set_is_one_row_with_the_old_and_new_value() {
        let before = [("issues".to_string(), "{\"a\":1}".to_string())];
        let rows = plan(&change(Some("issues"), Some("{\"a\":2}")), &before, "t").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].action, "set");
        assert_eq!(rows[0].old_value.as_deref(), Some("{\"a\":1}"));
        assert_eq!(rows[0].new_value.as_deref(), Some("{\"a\":2}"));
        let rows = plan(&change(Some("issues"), Some("1")), &[], "t").unwrap();
        assert_eq!(rows[0].old_value, None, "a stream without state before");
    }

    #[test]
    fn a_reset_is_a_row_per_stream_that_had_state() {
        let before = [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ];
        let rows = plan(&change(None, None), &before, "t").unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows
            .iter()
            .all(|r| r.action == "reset" && r.new_value.is_none()));
        assert_eq!(rows[1].old_value.as_deref(), Some("2"));
        assert!(plan(&change(None, None), &[], "t").unwrap().is_empty());
    }

    #[test]
    fn a_set_of_every_stream_at_once_is_refused() {
        let e = plan(&change(None, Some("1")), &[], "t").unwrap_err();
        assert!(e.to_string().contains("one stream at a time"), "{e}");
    }
}
