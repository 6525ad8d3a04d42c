//! A stream's destination table: columns from the top-level `properties` of
//! its JSON Schema, the primary key, and turning one JSON record into a
//! [`Row`] of neutral [`Value`](crate::value::Value)s that every destination maps onto its own
//! types (by the column's [`ColumnKind`]).

use serde_json::Value;

use crate::destination::StoreError;
use crate::value::Value as SqlValue;

/// Columns every stream table has besides the declared properties.
pub const META_COLUMNS: [&str; 3] = ["_record", "_run_id", "_synced_at"];

/// Longest stream (table) name.
pub const MAX_STREAM_NAME_LEN: usize = 64;

/// The storage class chosen from a property's JSON Schema `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Integer,
    Real,
    Boolean,
    Text,
    /// Objects, arrays and untyped values, stored as JSON text.
    Json,
}

impl ColumnKind {
    /// The storage class of a property: one JSON type (besides `null`)
    /// gets its own class (`integer` with `number` is `Real`); a property
    /// that allows several types, or any type, is stored as JSON text, so
    /// values of different types (`1`, `"1"`, `true`) stay distinct.
    fn from_schema(prop: &Value) -> Self {
        let types: Vec<&str> = match prop.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect(),
            _ => Vec::new(),
        };
        let has = |t: &str| types.contains(&t);
        match types.len() {
            1 if has("integer") => ColumnKind::Integer,
            1 if has("number") => ColumnKind::Real,
            2 if has("integer") && has("number") => ColumnKind::Real,
            1 if has("boolean") => ColumnKind::Boolean,
            1 if has("string") => ColumnKind::Text,
            _ => ColumnKind::Json,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: ColumnKind,
}

/// A stream's table and how its records map onto it.
#[derive(Debug, Clone)]
pub struct StreamTable {
    /// The stream.
    pub name: String,
    /// The destination table (see [`crate::instance`]: each instance's
    /// tables are its own).
    pub table: String,
    pub columns: Vec<Column>,
    /// Indices into `columns`.
    pub primary_key: Vec<usize>,
}

/// One record ready to write: a value per column, then the raw JSON.
#[derive(Debug, Clone)]
pub struct Row {
    pub values: Vec<SqlValue>,
    pub raw: String,
}

fn valid_stream_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_STREAM_NAME_LEN
}

impl StreamTable {
    /// The table of a stream declared with `json_schema` and `primary_key`.
    pub fn from_spec(
        name: &str,
        json_schema: &str,
        primary_key: &[String],
    ) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidStream {
            stream: name.to_string(),
            reason,
        };
        if !valid_stream_name(name) {
            return Err(invalid(format!(
                "stream names must match [A-Za-z][A-Za-z0-9_]* and be at most {MAX_STREAM_NAME_LEN} bytes"
            )));
        }
        let schema: Value = serde_json::from_str(json_schema)
            .map_err(|e| invalid(format!("JSON Schema is not valid JSON: {e}")))?;
        let props = match schema.get("properties") {
            Some(Value::Object(p)) => p,
            Some(_) => return Err(invalid("schema `properties` is not an object".into())),
            None => return Err(invalid("schema declares no top-level `properties`".into())),
        };
        let mut columns = Vec::with_capacity(props.len());
        for (prop, def) in props {
            if META_COLUMNS.contains(&prop.as_str()) {
                return Err(invalid(format!(
                    "property {prop:?} collides with a column Sluice adds"
                )));
            }
            if prop.is_empty() {
                return Err(invalid("empty property name".into()));
            }
            columns.push(Column {
                name: prop.clone(),
                kind: ColumnKind::from_schema(def),
            });
        }
        // row_from_value merges fields into columns in name order.
        columns.sort_by(|a, b| a.name.cmp(&b.name));
        let mut pk = Vec::with_capacity(primary_key.len());
        for field in primary_key {
            let idx = columns
                .iter()
                .position(|c| &c.name == field)
                .ok_or_else(|| {
                    invalid(format!(
                        "primary-key field {field:?} is not a declared property"
                    ))
                })?;
            if pk.contains(&idx) {
                return Err(invalid(format!(
                    "primary-key field {field:?} is listed twice"
                )));
            }
            pk.push(idx);
        }
        Ok(StreamTable {
            name: name.to_string(),
            table: name.to_string(),
            columns,
            primary_key: pk,
        })
    }

    /// This stream's table, written to the destination table `table`.
    pub fn in_table(mut self, table: String) -> Self {
        self.table = table;
        self
    }

    /// Turn one JSON record (text) into a row, or say why it cannot be one.
    pub fn row(&self, raw: String) -> Result<Row, String> {
        let value: Value =
            serde_json::from_str(&raw).map_err(|e| format!("not valid JSON: {e}"))?;
        self.row_from_value(value, raw)
            .map_err(|(message, _)| message)
    }

    /// Turn a parsed record (and its raw text) into a row.
    /// On failure the reason comes back with `raw`, so callers can
    /// quarantine the record without having cloned it up front.
    pub fn row_from_value(&self, value: Value, raw: String) -> Result<Row, (String, String)> {
        let Value::Object(obj) = value else {
            return Err(("not a JSON object".into(), raw));
        };
        // Columns are sorted by name and a JSON object's fields iterate in
        // key order (serde_json's map is a BTreeMap; a test below keeps it
        // so): one merge pass moves each column's value out, with no
        // per-column lookups or removals.
        let mut values = Vec::with_capacity(self.columns.len());
        let mut fields = obj.into_iter().peekable();
        for (i, col) in self.columns.iter().enumerate() {
            while fields
                .next_if(|(k, _)| k.as_str() < col.name.as_str())
                .is_some()
            {}
            values.push(match fields.next_if(|(k, _)| *k == col.name) {
                None | Some((_, Value::Null)) => SqlValue::Null,
                Some((_, v)) => {
                    if !exact_key(&v) && self.primary_key.contains(&i) {
                        let message = format!(
                            "primary-key field {:?}: the number {v} is too large to be stored exactly",
                            col.name
                        );
                        return Err((message, raw));
                    }
                    match to_sql(col.kind, v) {
                        Ok(v) => v,
                        Err(why) => return Err((format!("field {:?}: {why}", col.name), raw)),
                    }
                }
            });
        }
        for &i in &self.primary_key {
            if values[i] == SqlValue::Null {
                let message = format!(
                    "primary-key field {:?} is missing or null",
                    self.columns[i].name
                );
                return Err((message, raw));
            }
        }
        Ok(Row { values, raw })
    }
}

impl StreamTable {
    /// The primary key of a record that failed its checks (its raw JSON),
    /// as [`StreamTable::encode_key`] writes it, if the record names one:
    /// every key field present and of exactly its column's type (an
    /// `integer` key an exact JSON integer, a `string` key a JSON string,
    /// …), so the key is the one a valid record with these values would
    /// have had. `None` for a stream without a key, or a record whose key
    /// is missing, null, mistyped, or not JSON at all: it identifies no row.
    ///
    /// A record with a repeated field is read as `serde_json` reads it
    /// (the last value wins).
    pub fn record_key(&self, raw: &str) -> Option<String> {
        if self.primary_key.is_empty() {
            return None;
        }
        let value: Value = serde_json::from_str(raw).ok()?;
        let obj = value.as_object()?;
        let mut key = Vec::with_capacity(self.primary_key.len());
        for &i in &self.primary_key {
            let col = &self.columns[i];
            let v = obj.get(&col.name)?;
            if !exact_key(v) {
                return None;
            }
            key.push(match (col.kind, v) {
                (_, Value::Null) => return None,
                (ColumnKind::Integer, Value::Number(n)) => match n.as_i64() {
                    Some(i) => SqlValue::Integer(i),
                    None => match n.as_f64() {
                        Some(f) if exact_integer(f) => SqlValue::Integer(f as i64),
                        _ => return None,
                    },
                },
                (ColumnKind::Real, Value::Number(n)) => SqlValue::Real(n.as_f64()?),
                (ColumnKind::Boolean, Value::Bool(b)) => SqlValue::Integer((*b).into()),
                (ColumnKind::Text, Value::String(s)) => SqlValue::Text(s.clone()),
                (ColumnKind::Json, v) => SqlValue::Text(v.to_string()),
                _ => return None,
            });
        }
        Some(Self::encode_key(&key))
    }

    /// The primary-key values of `row`, in key order.
    pub fn key_values<'a>(&self, row: &'a Row) -> Vec<&'a SqlValue> {
        self.primary_key.iter().map(|&i| &row.values[i]).collect()
    }

    /// Key values as stored beside a quarantined record: a JSON array of
    /// the neutral values (integers and booleans as JSON integers, reals
    /// as numbers, text and JSON columns as strings), so each backend can
    /// take element `i` back into key column `i`.
    pub fn encode_key<'a>(values: impl IntoIterator<Item = &'a SqlValue>) -> String {
        let items: Vec<Value> = values
            .into_iter()
            .map(|v| match v {
                SqlValue::Null => Value::Null,
                SqlValue::Integer(n) => Value::from(*n),
                SqlValue::Real(f) => {
                    serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
                }
                SqlValue::Text(t) => Value::String(t.clone()),
            })
            .collect();
        Value::Array(items).to_string()
    }
}

/// Why a valid JSON value cannot be stored in its column without loss.
fn out_of_range(n: &serde_json::Number) -> String {
    format!(
        "the integer {n} is outside the 64-bit range an integer column stores \
         ({} to {})",
        i64::MIN,
        i64::MAX
    )
}

/// Integers a binary float holds exactly: |f| < 2^53. JSON integers past
/// the i64 range parse as floats (rounded), so a float beyond this cannot
/// be told apart from its neighbours.
pub const MAX_EXACT_FLOAT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Whether the float `f` is an integer it holds exactly (`7.0`).
fn exact_integer(f: f64) -> bool {
    f.fract() == 0.0 && f.abs() < MAX_EXACT_FLOAT_INTEGER
}

/// Whether a key value identifies one record: a number must be an i64, a
/// u64 or a float that is exactly itself (else `2^70` and `2^70 + 1`
/// would be one key).
fn exact_key(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            n.is_i64()
                || n.is_u64()
                || n.as_f64()
                    .is_some_and(|f| f.fract() != 0.0 || exact_integer(f))
        }
        _ => true,
    }
}

/// A field's value in its column. Integer columns take every JSON integer
/// in the i64 range (`7.0` too) and refuse the rest (never a lossy REAL,
/// which a key column would refuse at commit). JSON columns hold the
/// value's JSON text, so `1`, `"1"` and `true` stay distinct.
fn to_sql(kind: ColumnKind, v: Value) -> Result<SqlValue, String> {
    Ok(match (kind, v) {
        (_, Value::Null) => SqlValue::Null,
        (ColumnKind::Json, v @ (Value::Bool(_) | Value::Number(_) | Value::String(_))) => {
            SqlValue::Text(v.to_string())
        }
        (_, Value::Bool(b)) => SqlValue::Integer(b.into()),
        (ColumnKind::Real, Value::Number(n)) => n.as_f64().map_or(SqlValue::Null, SqlValue::Real),
        (ColumnKind::Integer, Value::Number(n)) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => match n.as_f64() {
                Some(f) if exact_integer(f) => SqlValue::Integer(f as i64),
                _ => return Err(out_of_range(&n)),
            },
        },
        (_, Value::Number(n)) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => n.as_f64().map_or(SqlValue::Null, SqlValue::Real),
        },
        (_, Value::String(s)) => SqlValue::Text(s),
        (_, other @ (Value::Array(_) | Value::Object(_))) => SqlValue::Text(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> StreamTable {
        StreamTable::from_spec(
            "t",
            r#"{"type":"object","properties":{"id":{"type":"integer"},"x":{"type":["number","null"]},"tags":{"type":"array"}}}"#,
            &["id".to_string()],
        )
        .unwrap()
    }

    #[test]
    fn maps_records_to_rows() {
        let t = table();
        let row = t
            .row(r#"{"id":7,"x":1,"tags":["a"],"extra":true}"#.into())
            .unwrap();
        // Columns are ordered by name: id, tags, x.
        assert_eq!(
            row.values,
            vec![
                SqlValue::Integer(7),
                SqlValue::Text("[\"a\"]".into()),
                SqlValue::Real(1.0)
            ]
        );
    }

    #[test]
    fn json_objects_iterate_in_key_order() {
        // row_from_value's merge relies on it. serde_json's
        // `preserve_order` feature (turned on by any crate in the build)
        // would break it: this test says so before a wrong row is stored.
        let v: Value = serde_json::from_str(r#"{"b":1,"a":2,"ab":3,"B":4}"#).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["B", "a", "ab", "b"]);
    }

    #[test]
    fn fields_map_to_columns_whatever_their_order_and_extras() {
        let t = StreamTable::from_spec(
            "t",
            r#"{"properties":{"z":{"type":"string"},"a":{"type":"integer"},"m":{"type":"number"},"aa":{"type":"boolean"}}}"#,
            &["a".to_string()],
        )
        .unwrap();
        let names: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "aa", "m", "z"]);
        let row = t
            .row(r#"{"zz":0,"z":"last","_":1,"m":null,"a":5,"ab":"x","aa":true}"#.into())
            .unwrap();
        assert_eq!(
            row.values,
            vec![
                SqlValue::Integer(5),
                SqlValue::Integer(1),
                SqlValue::Null,
                SqlValue::Text("last".into())
            ]
        );
        let row = t.row(r#"{"a":1}"#.into()).unwrap();
        assert_eq!(
            row.values[1..],
            [SqlValue::Null, SqlValue::Null, SqlValue::Null]
        );
    }

    #[test]
    fn integers_past_i64_are_refused_never_stored_as_lossy_reals() {
        let t = table();
        for poison in [
            "9223372036854775808",
            "18446744073709551615",
            "-9223372036854775809",
            "1180591620717411303424",
            "1e300",
        ] {
            let err = t.row(format!(r#"{{"id":{poison}}}"#)).unwrap_err();
            assert!(err.contains("\"id\""), "{poison}: {err}");
        }
        // The ends of the range and an integral float are stored exactly.
        for (text, want) in [
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
            ("7.0", 7),
        ] {
            let row = t.row(format!(r#"{{"id":{text}}}"#)).unwrap();
            assert_eq!(row.values[0], SqlValue::Integer(want), "{text}");
        }
    }

    #[test]
    fn untyped_and_many_typed_columns_keep_values_of_each_type_apart() {
        let t = StreamTable::from_spec(
            "t",
            r#"{"properties":{"k":{},"m":{"type":["string","integer","null"]},"n":{"type":["integer","number"]}}}"#,
            &["k".to_string()],
        )
        .unwrap();
        let kinds: Vec<ColumnKind> = t.columns.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [ColumnKind::Json, ColumnKind::Json, ColumnKind::Real]
        );
        let keys: Vec<SqlValue> = [r#"true"#, "1", r#""1""#, "1.5", r#"[1]"#]
            .iter()
            .map(|k| t.row(format!(r#"{{"k":{k},"m":{k}}}"#)).unwrap().values[0].clone())
            .collect();
        assert_eq!(
            keys,
            ["true", "1", "\"1\"", "1.5", "[1]"].map(|s| SqlValue::Text(s.into()))
        );
        // A key number that no float holds exactly is refused.
        assert!(t
            .row(r#"{"k":1180591620717411303424}"#.into())
            .unwrap_err()
            .contains("primary-key"));
    }

    #[test]
    fn a_quarantined_record_names_a_key_only_of_its_columns_types() {
        let t = StreamTable::from_spec(
            "t",
            r#"{"properties":{"b":{"type":"boolean"},"i":{"type":"integer"},"j":{},"r":{"type":"number"},"s":{"type":"string"}}}"#,
            &["s".to_string(), "i".to_string()],
        )
        .unwrap();
        assert_eq!(
            t.record_key(r#"{"i":7,"s":"a\"b","x":[1]}"#).as_deref(),
            Some(r#"["a\"b",7]"#),
            "in key order, other fields ignored"
        );
        assert_eq!(
            t.record_key(r#"{"i":7.0,"s":"a"}"#).as_deref(),
            Some(r#"["a",7]"#)
        );
        for no_key in [
            r#"{"i":"7","s":"a"}"#,
            r#"{"i":7,"s":1}"#,
            r#"{"i":7}"#,
            r#"{"i":null,"s":"a"}"#,
            r#"{"i":7.5,"s":"a"}"#,
            r#"{"i":1180591620717411303424,"s":"a"}"#,
            "[1]",
            "{",
        ] {
            assert_eq!(t.record_key(no_key), None, "{no_key}");
        }
        let other = |pk: &str| {
            StreamTable::from_spec(
                "t",
                r#"{"properties":{"b":{"type":"boolean"},"j":{},"r":{"type":"number"}}}"#,
                &[pk.to_string()],
            )
            .unwrap()
        };
        assert_eq!(
            other("b").record_key(r#"{"b":true}"#).as_deref(),
            Some("[1]")
        );
        assert_eq!(other("b").record_key(r#"{"b":1}"#), None);
        assert_eq!(
            other("r").record_key(r#"{"r":1.5}"#).as_deref(),
            Some("[1.5]")
        );
        assert_eq!(
            other("j").record_key(r#"{"j":{"a":1}}"#).as_deref(),
            Some(r#"["{\"a\":1}"]"#),
            "a JSON column's value is its JSON text"
        );
        // The key of a row is the one its record names.
        let row = t.row(r#"{"i":7,"s":"a"}"#.into()).unwrap();
        assert_eq!(
            StreamTable::encode_key(t.key_values(&row)),
            t.record_key(r#"{"i":7,"s":"a"}"#).unwrap()
        );
        // No key declared: none.
        assert_eq!(table().record_key(r#"{"id":1}"#).as_deref(), Some("[1]"));
        let keyless = StreamTable::from_spec("t", r#"{"properties":{"id":{}}}"#, &[]).unwrap();
        assert_eq!(keyless.record_key(r#"{"id":1}"#), None);
    }

    #[test]
    fn rejects_bad_records_and_streams() {
        let t = table();
        assert!(t.row("[1]".into()).unwrap_err().contains("object"));
        assert!(t.row("{".into()).unwrap_err().contains("JSON"));
        assert!(t
            .row(r#"{"x":1}"#.into())
            .unwrap_err()
            .contains("primary-key"));
        assert!(StreamTable::from_spec("1bad", "{}", &[]).is_err());
        assert!(StreamTable::from_spec("t", r#"{"properties":{"a":{}}}"#, &["b".into()]).is_err());
        assert!(StreamTable::from_spec("t", r#"{"properties":{"_record":{}}}"#, &[]).is_err());
    }
}
