//! The fast path of the record check for flat stream schemas.
//!
//! Most streams declare a flat object: top-level `properties` with a `type`
//! each (arrays perhaps with typed `items`), `required`, and annotations.
//! For such a schema [`FlatCheck`] checks a record and builds its row in
//! one pass over the record's JSON text: no `serde_json::Value` tree, no
//! walk of the compiled validator, no second pass to build the row.
//!
//! The fast path only ever *accepts*. A record it cannot vouch for (a wrong
//! type, a missing required field, a null primary key, a repeated key, a
//! float where only `integer` is declared, an integer beyond `i64`, text
//! that is not a JSON object) makes it answer `None`, and the caller runs
//! the full check ([`crate::schema::StreamSchema::check`] and
//! [`StreamTable::row_from_value`]), which decides and explains. So the
//! verdicts, rows and drift are the full check's by construction; a test
//! below compares the two on generated records.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use crate::value::Value as SqlValue;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::row::{ColumnKind, StreamTable};
use crate::schema::{json_type, pointer_escape, sample, DriftKind, DriftObservation, UniqueValue};

/// Keywords that only annotate: they never change a verdict.
const ANNOTATIONS: [&str; 8] = [
    "title",
    "description",
    "$comment",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Keywords a flat schema may carry at its root besides annotations.
const ROOT_KEYWORDS: [&str; 5] = ["$schema", "$id", "type", "required", "properties"];

/// JSON types a property accepts, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Types(u8);

impl Types {
    const NULL: u8 = 1;
    const BOOLEAN: u8 = 2;
    const INTEGER: u8 = 4;
    const NUMBER: u8 = 8;
    const STRING: u8 = 16;
    const ARRAY: u8 = 32;
    const OBJECT: u8 = 64;
    /// No `type` keyword: every value.
    const ANY: Types = Types(127);

    fn from_name(name: &str) -> Option<u8> {
        Some(match name {
            "null" => Self::NULL,
            "boolean" => Self::BOOLEAN,
            "integer" => Self::INTEGER,
            "number" => Self::NUMBER,
            "string" => Self::STRING,
            "array" => Self::ARRAY,
            "object" => Self::OBJECT,
            _ => return None,
        })
    }

    /// The types of a (sub)schema's `type` keyword; `None` if it has a
    /// form this path does not handle.
    fn of(schema: &Map<String, Value>) -> Option<Types> {
        match schema.get("type") {
            None => Some(Types::ANY),
            Some(Value::String(t)) => Self::from_name(t).map(Types),
            Some(Value::Array(ts)) if !ts.is_empty() => ts
                .iter()
                .try_fold(0, |acc, t| Some(acc | Self::from_name(t.as_str()?)?))
                .map(Types),
            Some(_) => None,
        }
    }

    fn has(self, bits: u8) -> bool {
        self.0 & bits != 0
    }
}

/// What a flat schema says of one property (one column).
#[derive(Debug, Clone)]
struct Field {
    kind: ColumnKind,
    types: Types,
    /// For arrays: the types every element must have (`items`; every
    /// type when the schema says nothing).
    items: Types,
    /// A primary-key column: floats are left to the full check (which
    /// refuses a key it cannot store exactly).
    key: bool,
}

/// Whether `schema` holds only `allowed` keywords and annotations.
fn only_keywords(schema: &Map<String, Value>, allowed: &[&str]) -> bool {
    schema
        .keys()
        .all(|k| allowed.contains(&k.as_str()) || ANNOTATIONS.contains(&k.as_str()))
}

impl Field {
    fn from_schema(def: &Value, kind: ColumnKind) -> Option<Field> {
        let def = def.as_object()?;
        if !only_keywords(def, &["type", "items"]) {
            return None;
        }
        let types = Types::of(def)?;
        let items = match def.get("items") {
            None => Types::ANY,
            Some(Value::Object(item)) if only_keywords(item, &["type"]) => Types::of(item)?,
            Some(_) => return None,
        };
        Some(Field {
            kind,
            types,
            items,
            key: false,
        })
    }
}

/// A flat stream schema, ready to check records in one pass (see the
/// module docs). Fields are in the table's column order.
#[derive(Debug, Clone)]
pub struct FlatCheck {
    stream: String,
    /// Column index by name (a fast hash: one lookup per record field).
    columns: HashMap<String, usize, foldhash::fast::FixedState>,
    fields: Vec<Field>,
    required: Vec<usize>,
    primary_key: Vec<usize>,
}

/// Why the fast path stepped aside (never shown: the full check runs).
#[derive(Debug)]
struct StepAside;

impl fmt::Display for StepAside {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("left to the full check")
    }
}

impl FlatCheck {
    /// The fast check of `schema` (the stream's JSON Schema) for `table`
    /// (built from the same schema), or `None` if the schema is not flat.
    pub fn new(stream: &str, schema: &Value, table: &StreamTable) -> Option<FlatCheck> {
        let root = schema.as_object()?;
        if !only_keywords(root, &ROOT_KEYWORDS) {
            return None;
        }
        if Types::of(root)? != Types(Types::OBJECT) && root.contains_key("type") {
            return None;
        }
        let props = root.get("properties")?.as_object()?;
        if props.len() != table.columns.len() {
            return None;
        }
        let mut columns = HashMap::with_capacity_and_hasher(props.len(), Default::default());
        let mut fields = Vec::with_capacity(props.len());
        for (i, col) in table.columns.iter().enumerate() {
            let mut field = Field::from_schema(props.get(&col.name)?, col.kind)?;
            field.key = table.primary_key.contains(&i);
            fields.push(field);
            columns.insert(col.name.clone(), i);
        }
        let required = match root.get("required") {
            None => Vec::new(),
            Some(Value::Array(req)) => req
                .iter()
                .map(|r| columns.get(r.as_str()?).copied())
                .collect::<Option<Vec<usize>>>()?,
            Some(_) => return None,
        };
        Some(FlatCheck {
            stream: stream.to_string(),
            columns,
            fields,
            required,
            primary_key: table.primary_key.clone(),
        })
    }

    /// The row values of `raw` (in column order) and the fields it has
    /// that the schema does not declare, if `raw` is certainly valid;
    /// `None` leaves the record to the full check.
    pub fn check(&self, raw: &str) -> Option<(Vec<SqlValue>, Vec<DriftObservation>)> {
        let mut de = serde_json::Deserializer::from_str(raw);
        let (row, mut extra) = RecordSeed(self).deserialize(&mut de).ok()?;
        de.end().ok()?;
        if self
            .primary_key
            .iter()
            .any(|&i| matches!(row[i], SqlValue::Null))
        {
            return None;
        }
        // The full check reports new fields in key order; a key seen
        // twice is left to it (it refuses the record).
        extra.sort_by(|a, b| a.0.cmp(&b.0));
        if extra.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
        let drift = extra
            .into_iter()
            .map(|(key, v)| DriftObservation {
                stream: self.stream.clone(),
                path: format!("/{}", pointer_escape(&key)),
                kind: DriftKind::NewField,
                observed_type: json_type(&v).to_string(),
                sample: sample(&v),
                count: 1,
            })
            .collect();
        Some((row, drift))
    }

    fn column(&self, key: &str) -> Option<usize> {
        self.columns.get(key).copied()
    }
}

/// A record's values per column and its undeclared fields.
type Parsed = (Vec<SqlValue>, Vec<(String, Value)>);

struct RecordSeed<'p>(&'p FlatCheck);

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = Parsed;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = Parsed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        let plan = self.0;
        let mut values: Vec<Option<SqlValue>> = vec![None; plan.fields.len()];
        let mut extra: Vec<(String, Value)> = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match plan.column(&key) {
                Some(i) => {
                    if values[i].is_some() {
                        return Err(de::Error::custom(StepAside));
                    }
                    values[i] = Some(map.next_value_seed(FieldSeed(&plan.fields[i]))?);
                }
                None => {
                    // A repeated undeclared key is found after the sort
                    // in `check` (no search per field here).
                    let v: Value = map.next_value_seed(UniqueValue::new())?;
                    extra.push((key.into_owned(), v));
                }
            }
        }
        if plan.required.iter().any(|&i| values[i].is_none()) {
            return Err(de::Error::custom(StepAside));
        }
        // An absent optional field is NULL in its column.
        let row = values
            .into_iter()
            .map(|v| v.unwrap_or(SqlValue::Null))
            .collect();
        Ok((row, extra))
    }
}

/// An object key, borrowed from the record text where it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// One declared field's value, checked against its types and turned into
/// its column value the way [`StreamTable::row_from_value`] does.
struct FieldSeed<'f>(&'f Field);

impl FieldSeed<'_> {
    fn admit<E: de::Error>(&self, bits: u8, v: SqlValue) -> Result<SqlValue, E> {
        if self.0.types.has(bits) {
            Ok(v)
        } else {
            Err(E::custom(StepAside))
        }
    }

    /// A scalar: its JSON text in a JSON column (as the full check keeps
    /// it), else `plain`.
    fn scalar<E: de::Error, T: serde::Serialize + ?Sized>(
        &self,
        bits: u8,
        v: &T,
        plain: impl FnOnce() -> SqlValue,
    ) -> Result<SqlValue, E> {
        let value = match self.0.kind {
            ColumnKind::Json => {
                SqlValue::Text(serde_json::to_string(v).map_err(|_| E::custom(StepAside))?)
            }
            _ => plain(),
        };
        self.admit(bits, value)
    }

    /// An object: kept as JSON text (keys in order, as `Value` has them).
    fn object<E: de::Error>(&self, v: Value) -> Result<SqlValue, E> {
        self.admit(Types::OBJECT, SqlValue::Text(v.to_string()))
    }
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = SqlValue;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SqlValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = SqlValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<SqlValue, E> {
        self.admit(Types::NULL, SqlValue::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<SqlValue, E> {
        self.scalar(Types::BOOLEAN, &v, || SqlValue::Integer(v.into()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<SqlValue, E> {
        self.scalar(Types::INTEGER | Types::NUMBER, &v, || match self.0.kind {
            ColumnKind::Real => SqlValue::Real(v as f64),
            _ => SqlValue::Integer(v),
        })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<SqlValue, E> {
        match i64::try_from(v) {
            Ok(i) => self.visit_i64(i),
            Err(_) => Err(E::custom(StepAside)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<SqlValue, E> {
        if self.0.key {
            return Err(E::custom(StepAside));
        }
        self.scalar(Types::NUMBER, &v, || SqlValue::Real(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SqlValue, E> {
        self.scalar(Types::STRING, v, || SqlValue::Text(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<SqlValue, E> {
        match self.0.kind {
            ColumnKind::Json => self.visit_str(&v),
            _ => self.admit(Types::STRING, SqlValue::Text(v)),
        }
    }

    /// An array: re-encoded element by element into the compact JSON text
    /// `Value::to_string` would give (the same serializer), with no `Value`
    /// built for scalar elements.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SqlValue, A::Error> {
        if !self.0.types.has(Types::ARRAY) {
            return Err(de::Error::custom(StepAside));
        }
        let mut out = vec![b'['];
        while seq
            .next_element_seed(ElementSeed {
                out: &mut out,
                items: self.0.items,
            })?
            .is_some()
        {}
        out.push(b']');
        let text = String::from_utf8(out).map_err(|_| de::Error::custom(StepAside))?;
        Ok(SqlValue::Text(text))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SqlValue, A::Error> {
        self.object(UniqueValue::new().visit_map(map)?)
    }
}

/// One array element: checked against `items` and appended to `out` as
/// compact JSON (after a comma unless it is the first).
struct ElementSeed<'o> {
    out: &'o mut Vec<u8>,
    items: Types,
}

impl ElementSeed<'_> {
    fn write<E: de::Error, T: serde::Serialize + ?Sized>(self, bits: u8, v: &T) -> Result<(), E> {
        if !self.items.has(bits) {
            return Err(E::custom(StepAside));
        }
        if self.out.len() > 1 {
            self.out.push(b',');
        }
        serde_json::to_writer(&mut *self.out, v).map_err(|_| E::custom(StepAside))
    }
}

impl<'de> DeserializeSeed<'de> for ElementSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ElementSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.write(Types::NULL, &())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.write(Types::BOOLEAN, &v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.write(Types::INTEGER | Types::NUMBER, &v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        match i64::try_from(v) {
            Ok(i) => self.visit_i64(i),
            Err(_) => Err(E::custom(StepAside)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.write(Types::NUMBER, &v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.write(Types::STRING, v)
    }

    /// Nested arrays and objects go through `Value`, which orders object
    /// keys the way the full check's text has them.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let v = UniqueValue::new().visit_seq(seq)?;
        self.write(Types::ARRAY, &v)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let v = UniqueValue::new().visit_map(map)?;
        self.write(Types::OBJECT, &v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{StreamSchema, Verdict};
    use serde_json::json;

    fn build(schema: &Value, pk: &[&str]) -> (StreamSchema, StreamTable, Option<FlatCheck>) {
        let text = schema.to_string();
        let pk: Vec<String> = pk.iter().map(|s| s.to_string()).collect();
        let table = StreamTable::from_spec("s", &text, &pk).unwrap();
        let compiled = StreamSchema::compile("s", &text).unwrap();
        let flat = FlatCheck::new("s", compiled.schema(), &table);
        (compiled, table, flat)
    }

    /// The full check's row and drift for `raw`, or `None` if it does not
    /// store the record as a row.
    fn full(
        schema: &StreamSchema,
        table: &StreamTable,
        raw: &str,
    ) -> Option<(Vec<SqlValue>, Vec<DriftObservation>)> {
        let value: Value = serde_json::from_str(raw).ok().filter(Value::is_object)?;
        match schema.check(value) {
            Verdict::Valid { record, drift } => table
                .row_from_value(record, raw.to_string())
                .ok()
                .map(|row| (row.values, drift)),
            Verdict::Invalid { .. } => None,
        }
    }

    fn items_schema() -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["id", "updated_at", "name"],
            "properties": {
                "id": {"type": "integer"},
                "updated_at": {"type": "string", "description": "the cursor"},
                "name": {"type": "string"},
                "amount": {"type": "number"},
                "active": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "note": {"type": ["string", "null"]},
            }
        })
    }

    fn mixed_schema() -> Value {
        json!({
            "required": ["k"],
            "properties": {
                "k": {"type": ["integer", "string"]},
                "n": {"type": ["integer", "null"]},
                "r": {"type": ["number", "string"]},
                "any": {},
                "obj": {"type": "object"},
                "arr": {"type": "array"},
                "ints": {"type": "array", "items": {"type": "integer"}},
                "b": {"type": ["boolean", "null"]},
            }
        })
    }

    #[test]
    fn flat_schemas_get_a_fast_check_and_others_do_not() {
        assert!(build(&items_schema(), &["id"]).2.is_some());
        assert!(build(&mixed_schema(), &["k"]).2.is_some());
        let not_flat = [
            json!({"properties": {"a": {"type": "string", "format": "date-time"}}}),
            json!({"properties": {"a": {"type": "integer", "minimum": 0}}}),
            json!({"properties": {"a": {"enum": [1, 2]}}}),
            json!({"additionalProperties": false, "properties": {"a": {}}}),
            json!({"properties": {"a": {"type": "object", "properties": {"b": {}}}}}),
            json!({"properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {}}}),
            json!({"properties": {"a": {"type": "array", "items": {"type": "string", "maxLength": 3}}}}),
            json!({"$schema": "http://json-schema.org/draft-07/schema#",
                   "properties": {"a": {"type": "array", "items": [{"type": "string"}]}}}),
            json!({"required": ["b"], "properties": {"a": {}}}),
            json!({"type": ["object", "null"], "properties": {"a": {}}}),
            json!({"minProperties": 1, "properties": {"a": {}}}),
        ];
        for schema in not_flat {
            assert!(build(&schema, &[]).2.is_none(), "{schema}");
        }
    }

    #[test]
    fn plain_records_take_the_fast_path_with_the_full_checks_result() {
        let (schema, table, flat) = build(&items_schema(), &["id"]);
        let flat = flat.unwrap();
        let raw = r#"{"id":7,"updated_at":"2026-01-01T00:00:00Z","name":"a\"b\u00e9","amount":2,"active":true,"tags":["x","y"],"note":null,"extra":{"z":1,"a":[1.5]},"ex/tra":false}"#;
        let fast = flat.check(raw).expect("a plain record takes the fast path");
        assert_eq!(Some(fast.clone()), full(&schema, &table, raw));
        let (values, drift) = fast;
        // Columns in name order: active, amount, id, name, note, tags, updated_at.
        assert_eq!(values[0], SqlValue::Integer(1));
        assert_eq!(values[1], SqlValue::Real(2.0));
        assert_eq!(values[3], SqlValue::Text("a\"b\u{e9}".into()));
        assert_eq!(values[4], SqlValue::Null);
        assert_eq!(values[5], SqlValue::Text(r#"["x","y"]"#.into()));
        let paths: Vec<&str> = drift.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["/ex~1tra", "/extra"]);
        assert_eq!(drift[1].sample, r#"{"a":[1.5],"z":1}"#);
    }

    #[test]
    fn records_it_cannot_vouch_for_are_left_to_the_full_check() {
        let (_, _, flat) = build(&items_schema(), &["id"]);
        let flat = flat.unwrap();
        let base = r#""updated_at":"t","name":"n""#;
        for raw in [
            format!(r#"{{"id":1.0,{base}}}"#), // float for an integer
            format!(r#"{{"id":18446744073709551615,{base}}}"#), // past i64
            format!(r#"{{"id":"1",{base}}}"#), // wrong type
            format!(r#"{{"id":null,{base}}}"#), // null primary key
            format!(r#"{{"id":1,"id":2,{base}}}"#), // repeated key
            format!(r#"{{"id":1,"\u0069d":2,{base}}}"#), // repeated, escaped
            format!(r#"{{"id":1,"x":1,"x":2,{base}}}"#), // repeated new field
            format!(r#"{{"id":1,"x":{{"a":1,"a":2}},{base}}}"#), // repeated inside a new field
            format!(r#"{{"id":1,"x":[{{"a":1,"a":2}}],{base}}}"#), // … deeper
            r#"{"id":1,"name":"n"}"#.to_string(), // required field missing
            format!(r#"{{"id":1,"tags":["a",2],{base}}}"#), // bad array element
            format!(r#"{{"id":1,{base}}} x"#), // trailing text
            format!(r#"[{{"id":1,{base}}}]"#), // not an object
            "{".to_string(),
        ] {
            assert!(flat.check(&raw).is_none(), "{raw}");
        }
    }

    /// A small deterministic generator (xorshift), so the comparison below
    /// covers the same records on every run.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }

        fn value(&mut self, depth: u32) -> String {
            match self.next(if depth > 1 { 9 } else { 11 }) {
                0 => "null".into(),
                1 => "true".into(),
                2 => (self.next(2000) as i64 - 1000).to_string(),
                3 => format!("{}.{}", self.next(100), self.next(100)),
                4 => [
                    "1.0",
                    "-0",
                    "1e3",
                    "9223372036854775808",
                    "-9223372036854775808",
                ][self.next(5) as usize]
                    .into(),
                5 => r#""plain""#.into(),
                6 => r#""esc\"aped\n\u00e9""#.into(),
                7 => "[]".into(),
                8 => "{}".into(),
                9 => format!("[{},{}]", self.value(depth + 1), self.value(depth + 1)),
                _ => format!(
                    r#"{{"b":{},"a":{}}}"#,
                    self.value(depth + 1),
                    self.value(depth + 1)
                ),
            }
        }

        /// An object with some of `keys`, each with one of its typical
        /// values or, one time in four, any value.
        fn record(&mut self, keys: &[(&str, &[&str])]) -> String {
            let mut fields = Vec::new();
            for (k, typical) in keys {
                if self.next(6) == 0 {
                    continue;
                }
                let v = match self.next(4) {
                    0 => self.value(0),
                    _ => typical[self.next(typical.len() as u64) as usize].to_string(),
                };
                fields.push(format!(r#""{k}":{v}"#));
            }
            format!("{{{}}}", fields.join(","))
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_check_on_generated_records() {
        for (schema, pk, keys) in [
            (
                mixed_schema(),
                "k",
                &[
                    ("k", &["1", r#""k""#][..]),
                    ("n", &["null", "-5"]),
                    ("r", &["2.5", "3", r#""r""#]),
                    ("any", &["1", "[1]", r#"{"y":2,"x":1}"#]),
                    ("obj", &["{}", r#"{"q":[null]}"#]),
                    ("arr", &["[]", r#"[1,"a",{}]"#]),
                    ("ints", &["[1,2]", "[]", "[-3]"]),
                    ("b", &["true", "null"]),
                    ("new", &["1", r#""n""#]),
                    ("n\\u0065w2", &["{}"]),
                    ("b\\u0020", &["false"]),
                ][..],
            ),
            (
                items_schema(),
                "id",
                &[
                    ("id", &["1", "2", "123456789012"][..]),
                    ("updated_at", &[r#""2026-01-01T00:00:00Z""#]),
                    ("name", &[r#""n""#, r#""\u00e9\t""#]),
                    ("amount", &["0.25", "7", "-1e-3"]),
                    ("active", &["true", "false"]),
                    ("tags", &[r#"["a","b"]"#, "[]"]),
                    ("note", &["null", r#""x""#]),
                    ("x", &["1"]),
                ][..],
            ),
        ] {
            let (compiled, table, flat) = build(&schema, &[pk]);
            let flat = flat.unwrap();
            let mut gen = Gen(0x9e37_79b9_7f4a_7c15);
            let (mut fast, mut stored) = (0, 0);
            for _ in 0..20_000 {
                let raw = gen.record(keys);
                let expected = full(&compiled, &table, &raw);
                stored += usize::from(expected.is_some());
                if let Some(got) = flat.check(&raw) {
                    fast += 1;
                    assert_eq!(Some(got), expected, "{raw}");
                }
            }
            // Both outcomes are exercised, and most stored records went
            // the fast way.
            eprintln!("{pk}: {fast} fast of {stored} stored");
            assert!(stored > 1000 && fast > stored / 2, "{fast} of {stored}");
        }
    }
}
