//! The SQL of [`RunQuery`], shared by the SQLite and Postgres run logs:
//! only the conditions the query has, so each one uses its index (an
//! `(? IS NULL OR connector = ?)` form would scan the whole history).

use sluice_core::destination::{RunQuery, RunStatus};

/// The `WHERE` clause (`""` when it filters nothing) and its text
/// parameters, numbered from `first` with `placeholder` (`?N`, `$N`).
pub(crate) fn run_filter(
    q: &RunQuery,
    first: usize,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<String>) {
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    let mut add = |condition: &str, value: String| {
        conditions.push(format!("{condition} {}", placeholder(first + params.len())));
        params.push(value);
    };
    if let Some(instance) = &q.instance {
        add("connector =", instance.clone());
    }
    if let Some(status) = q.status {
        add("status =", status.as_str().to_string());
    }
    if let Some(exclude) = q.exclude.filter(|e| Some(*e) != q.status) {
        add("status <>", RunStatus::as_str(exclude).to_string());
    }
    if conditions.is_empty() {
        (String::new(), params)
    } else {
        (format!("WHERE {}", conditions.join(" AND ")), params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_conditions_given_are_written() {
        let q = RunQuery::recent("a", 5);
        let (sql, params) = run_filter(&q, 1, |i| format!("${i}"));
        assert_eq!(sql, "WHERE connector = $1 AND status <> $2");
        assert_eq!(params, ["a", "skipped"]);
        let all = RunQuery {
            instance: None,
            status: None,
            exclude: None,
            limit: 5,
            offset: 0,
            counted: true,
        };
        assert_eq!(run_filter(&all, 1, |i| format!("?{i}")).0, "");
        let failed = RunQuery {
            status: Some(RunStatus::Failed),
            ..all
        };
        assert_eq!(
            run_filter(&failed, 3, |i| format!("?{i}")),
            ("WHERE status = ?3".to_string(), vec!["failed".to_string()])
        );
    }
}
