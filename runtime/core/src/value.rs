//! The neutral column value of a [`Row`](crate::row::Row): the four storage
//! classes every SQL database has. Each destination maps them onto its own
//! types by the column's [`ColumnKind`](crate::row::ColumnKind): a
//! `Boolean` column holds `Integer` 0 or 1, a `Json` column `Text` holding
//! JSON.

/// One column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
}
