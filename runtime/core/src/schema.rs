//! Record validation at the boundary: each stream's JSON Schema compiled
//! once per run (the `jsonschema` crate, no remote `$ref` resolution), every
//! emitted record checked against it, and schema drift observed: unknown
//! fields (tolerated), changed types and vanished required fields (both
//! quarantined).

use std::collections::BTreeMap;

use jsonschema::error::ValidationErrorKind;
use serde::de::DeserializeSeed;
use serde::Serialize;
use serde_json::Value;

/// Longest sample value kept for a drift event, in bytes of JSON.
pub const MAX_DRIFT_SAMPLE_BYTES: usize = 256;

/// Most validation errors kept per quarantined record.
pub const MAX_ERRORS_PER_RECORD: usize = 32;

/// A schema that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("stream {stream:?}: invalid JSON Schema: {reason}")]
pub struct SchemaError {
    pub stream: String,
    pub reason: String,
}

/// One reason a record failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RecordError {
    /// JSON Pointer into the record (`""` = the record itself).
    pub path: String,
    pub message: String,
}

/// The error of a record holding the NUL character (`\u0000`) in a
/// string or a field name, for a destination that cannot store it (see
/// `Destination::stores_nul`); `None` if it holds none. Cheap for the
/// records that do not: only a record whose text has the escape is parsed.
pub fn nul_error(raw: &str) -> Option<RecordError> {
    if !raw.contains("\\u0000") {
        return None;
    }
    fn find(v: &serde_json::Value, path: &mut String) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                let found = find(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            serde_json::Value::Object(fields) => fields.iter().any(|(k, item)| {
                let len = path.len();
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                let found = k.contains('\0') || find(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let value: serde_json::Value = serde_json::from_str(raw).ok()?;
    let mut path = String::new();
    find(&value, &mut path).then(|| RecordError {
        path,
        message: "holds the NUL character (\\u0000), which this destination cannot store in text"
            .into(),
    })
}

/// What kind of drift was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// A field the schema does not declare (record kept).
    NewField,
    /// A declared field with a value of another type (record quarantined).
    TypeChanged,
    /// A required field that is missing (record quarantined).
    MissingRequired,
}

impl DriftKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::NewField => "new_field",
            DriftKind::TypeChanged => "type_changed",
            DriftKind::MissingRequired => "missing_required",
        }
    }
}

/// One drift observation (aggregated into `_sluice_drift` at commit).
#[derive(Debug, Clone, PartialEq)]
pub struct DriftObservation {
    pub stream: String,
    pub path: String,
    pub kind: DriftKind,
    /// JSON type seen (`string`, `number`, …; `missing` for a vanished field).
    pub observed_type: String,
    /// A sample value, JSON text, cut to [`MAX_DRIFT_SAMPLE_BYTES`].
    pub sample: String,
    /// Records this observation stands for.
    pub count: u64,
}

/// Distinct drift paths (stream, kind, path) one run records. Observations
/// of further paths are counted in the run record, not stored: a record
/// with thousands of invented fields cannot grow the drift table (or the
/// host's memory) without bound.
pub const MAX_DRIFT_PATHS_PER_RUN: usize = 1_000;

/// What identifies one aggregated drift observation.
type DriftKey = (String, String, DriftKind, String);

/// Drift observations merged by (stream, path, kind, observed type):
/// counts summed, the first sample kept, first-seen order kept. Adding one
/// observation costs one hash lookup, so a batch's drift aggregates in
/// linear time however many distinct paths it has.
#[derive(Debug, Default, Clone)]
pub struct DriftBatch {
    index: std::collections::HashMap<DriftKey, usize>,
    items: Vec<DriftObservation>,
}

impl DriftBatch {
    /// Merge one observation.
    pub fn add(&mut self, d: DriftObservation) {
        let key = (
            d.stream.clone(),
            d.path.clone(),
            d.kind,
            d.observed_type.clone(),
        );
        match self.index.get(&key) {
            Some(&i) => self.items[i].count += d.count,
            None => {
                self.index.insert(key, self.items.len());
                self.items.push(d);
            }
        }
    }

    /// Merge every observation of `more`.
    pub fn extend(&mut self, more: impl IntoIterator<Item = DriftObservation>) {
        for d in more {
            self.add(d);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The aggregated observations, in first-seen order.
    pub fn iter(&self) -> std::slice::Iter<'_, DriftObservation> {
        self.items.iter()
    }
}

impl FromIterator<DriftObservation> for DriftBatch {
    fn from_iter<I: IntoIterator<Item = DriftObservation>>(iter: I) -> Self {
        let mut batch = DriftBatch::default();
        batch.extend(iter);
        batch
    }
}

impl IntoIterator for DriftBatch {
    type Item = DriftObservation;
    type IntoIter = std::vec::IntoIter<DriftObservation>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl<'a> IntoIterator for &'a DriftBatch {
    type Item = &'a DriftObservation;
    type IntoIter = std::slice::Iter<'a, DriftObservation>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// Why a record's text is not a record.
#[derive(Debug)]
pub enum ParseFailure {
    /// Not JSON, or not a JSON object: the connector broke the contract.
    NotARecord(String),
    /// A key repeated within one object (at `path`): parsers disagree on
    /// which value wins (RFC 8259 §4), so the record's columns and its
    /// `_record` text could say different things. It is quarantined.
    DuplicateKey(RecordError),
}

/// Parse one record's JSON text into a value, refusing a key that repeats
/// within any object.
pub fn parse_record(raw: &str) -> Result<Value, ParseFailure> {
    let mut ctx = ParseCtx::default();
    let mut de = serde_json::Deserializer::from_str(raw);
    let parsed = UniqueValue(Some(&mut ctx))
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match (parsed, ctx.duplicate) {
        (_, Some(path)) => Err(ParseFailure::DuplicateKey(RecordError {
            message: format!("the key at {path} appears more than once in its object"),
            path,
        })),
        (Ok(v @ Value::Object(_)), None) => Ok(v),
        (Ok(_), None) => Err(ParseFailure::NotARecord("not a JSON object".into())),
        (Err(e), None) => Err(ParseFailure::NotARecord(format!("not valid JSON: {e}"))),
    }
}

/// The repeated key [`parse_record`] met, if any: its pointer, built as
/// the error unwinds (each enclosing object or array puts its own step in
/// front), so parsing a good record tracks no path at all.
#[derive(Default)]
pub(crate) struct ParseCtx {
    duplicate: Option<String>,
}

impl ParseCtx {
    /// On the way out of an error: `step` goes in front of the pointer.
    fn unwind(&mut self, step: std::fmt::Arguments<'_>) {
        if let Some(path) = &mut self.duplicate {
            path.insert_str(0, &format!("/{step}"));
        }
    }
}

/// A JSON value, built as `serde_json::Value` is, but failing on a
/// repeated object key.
/// With a context, it says where the repeated key is.
pub(crate) struct UniqueValue<'c>(Option<&'c mut ParseCtx>);

impl UniqueValue<'static> {
    /// A seed that only needs to know *whether* a key repeats (the fast
    /// check steps aside then), not where.
    pub(crate) fn new() -> Self {
        UniqueValue(None)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for UniqueValue<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        loop {
            match seq.next_element_seed(UniqueValue(self.0.as_deref_mut())) {
                Ok(Some(v)) => items.push(v),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    if let Some(ctx) = self.0.as_deref_mut() {
                        ctx.unwind(format_args!("{}", items.len()));
                    }
                    return Err(e);
                }
            }
        }
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = match map.next_value_seed(UniqueValue(self.0.as_deref_mut())) {
                Ok(v) => v,
                Err(e) => {
                    if let Some(ctx) = self.0.as_deref_mut() {
                        ctx.unwind(format_args!("{}", pointer_escape(&key)));
                    }
                    return Err(e);
                }
            };
            match obj.entry(key) {
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                serde_json::map::Entry::Occupied(seen) => {
                    if let Some(ctx) = self.0.as_deref_mut() {
                        ctx.duplicate = Some(format!("/{}", pointer_escape(seen.key())));
                    }
                    return Err(serde::de::Error::custom("duplicate key"));
                }
            }
        }
        Ok(Value::Object(obj))
    }
}

/// The verdict on one record.
#[derive(Debug)]
pub enum Verdict {
    Valid {
        record: Value,
        drift: Vec<DriftObservation>,
    },
    Invalid {
        errors: Vec<RecordError>,
        drift: Vec<DriftObservation>,
    },
}

/// A stream's compiled schema.
pub struct StreamSchema {
    stream: String,
    schema: Value,
    validator: jsonschema::Validator,
}

/// JSON type name of `v`.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub(crate) fn sample(v: &Value) -> String {
    let text = v.to_string();
    crate::text::truncate(&text, MAX_DRIFT_SAMPLE_BYTES).to_string()
}

pub(crate) fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl StreamSchema {
    /// Compile `schema_text` (JSON) for `stream`.
    pub fn compile(stream: &str, schema_text: &str) -> Result<Self, SchemaError> {
        let err = |reason: String| SchemaError {
            stream: stream.to_string(),
            reason,
        };
        let schema: Value =
            serde_json::from_str(schema_text).map_err(|e| err(format!("not JSON: {e}")))?;
        let validator = jsonschema::validator_for(&schema).map_err(|e| err(e.to_string()))?;
        Ok(StreamSchema {
            stream: stream.to_string(),
            schema,
            validator,
        })
    }

    /// The schema, parsed.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Fields of `record` the schema does not declare, as drift.
    fn observe_new_fields(&self, record: &Value, drift: &mut Vec<DriftObservation>) {
        new_fields(
            &self.schema,
            record,
            &mut String::new(),
            &self.stream,
            drift,
        );
    }

    /// Validate one record (already parsed) and observe drift.
    pub fn check(&self, record: Value) -> Verdict {
        let mut drift = Vec::new();
        if self.validator.is_valid(&record) {
            // The common case: no error to collect (is_valid stops early and
            // builds no error values), only new fields to look for.
            self.observe_new_fields(&record, &mut drift);
            return Verdict::Valid { record, drift };
        }
        let mut errors = Vec::new();
        for e in self.validator.iter_errors(&record) {
            let path = e.instance_path().to_string();
            match e.kind() {
                ValidationErrorKind::Type { .. } => drift.push(DriftObservation {
                    stream: self.stream.clone(),
                    path: path.clone(),
                    kind: DriftKind::TypeChanged,
                    observed_type: json_type(e.instance()).to_string(),
                    sample: sample(e.instance()),
                    count: 1,
                }),
                ValidationErrorKind::Required { property } => {
                    let name = property
                        .as_str()
                        .map_or_else(|| property.to_string(), str::to_string);
                    drift.push(DriftObservation {
                        stream: self.stream.clone(),
                        path: format!("{path}/{}", pointer_escape(&name)),
                        kind: DriftKind::MissingRequired,
                        observed_type: "missing".into(),
                        sample: "null".into(),
                        count: 1,
                    });
                }
                _ => {}
            }
            if errors.len() < MAX_ERRORS_PER_RECORD {
                errors.push(RecordError {
                    path,
                    message: e.to_string(),
                });
            }
        }
        self.observe_new_fields(&record, &mut drift);
        if errors.is_empty() {
            Verdict::Valid { record, drift }
        } else {
            Verdict::Invalid { errors, drift }
        }
    }
}

/// Fields of `value` that `schema` does not declare, at any depth where the
/// schema declares `properties`.
fn new_fields(
    schema: &Value,
    value: &Value,
    path: &mut String,
    stream: &str,
    out: &mut Vec<DriftObservation>,
) {
    let (Some(Value::Object(props)), Value::Object(obj)) = (schema.get("properties"), value) else {
        return;
    };
    for (key, v) in obj {
        // The path is built only where it is needed: for a new field, or to
        // descend into a declared object (no allocation per declared field).
        let descend = |sub: &Value| v.is_object() && sub.get("properties").is_some();
        match props.get(key) {
            Some(sub) if !descend(sub) => {}
            found => {
                let len = path.len();
                path.push('/');
                path.push_str(&pointer_escape(key));
                match found {
                    Some(sub) => new_fields(sub, v, path, stream, out),
                    None => out.push(DriftObservation {
                        stream: stream.to_string(),
                        path: path.clone(),
                        kind: DriftKind::NewField,
                        observed_type: json_type(v).to_string(),
                        sample: sample(v),
                        count: 1,
                    }),
                }
                path.truncate(len);
            }
        }
    }
}

/// Drift seen in one run, for the summary: distinct paths per (stream,
/// kind), at most [`MAX_DRIFT_PATHS_PER_RUN`] in all. Observations of
/// further paths are counted in `unrecorded` and not stored.
#[derive(Debug, Default, Clone)]
pub struct DriftSummary {
    pub paths: BTreeMap<(String, DriftKind), std::collections::BTreeSet<String>>,
    distinct: usize,
    /// Observations (records) of paths past the cap.
    pub unrecorded: u64,
}

impl DriftSummary {
    /// Whether `d` is recorded: its path is known to the run already, or
    /// the run has room for one more path. Otherwise it is counted.
    pub fn admit(&mut self, d: &DriftObservation) -> bool {
        let key = (d.stream.clone(), d.kind);
        if self.paths.get(&key).is_some_and(|p| p.contains(&d.path)) {
            return true;
        }
        if self.distinct >= MAX_DRIFT_PATHS_PER_RUN {
            self.unrecorded += d.count;
            return false;
        }
        self.paths.entry(key).or_default().insert(d.path.clone());
        self.distinct += 1;
        true
    }

    /// Keep the observations of `batch` the run records.
    pub fn admit_all(&mut self, batch: DriftBatch) -> DriftBatch {
        batch.into_iter().filter(|d| self.admit(d)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_found_in_values_and_names_and_only_there() {
        assert_eq!(nul_error(r#"{"a": "x"}"#), None);
        // An escaped backslash then `u0000` is no NUL.
        assert_eq!(nul_error(r#"{"a": "\\u0000"}"#), None);
        let e = nul_error(r#"{"a": {"b": ["ok", "x\u0000y"]}}"#).unwrap();
        assert_eq!(e.path, "/a/b/1");
        assert!(e.message.contains("NUL"), "{}", e.message);
        assert_eq!(nul_error(r#"{"k\u0000": 1}"#).unwrap().path, "/k\u{0}");
    }
    use serde_json::json;

    fn schema() -> StreamSchema {
        StreamSchema::compile(
            "s",
            &json!({"type": "object", "required": ["id", "name"], "properties": {
                "id": {"type": "integer"}, "name": {"type": "string"},
                "meta": {"type": "object", "properties": {"a": {"type": "number"}}}
            }})
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn valid_records_pass_and_new_fields_are_drift() {
        let Verdict::Valid { drift, .. } = schema()
            .check(json!({"id": 1, "name": "x", "extra": true, "meta": {"a": 1, "b/c": "y"}}))
        else {
            panic!("should be valid");
        };
        let paths: Vec<_> = drift
            .iter()
            .map(|d| (d.path.as_str(), d.kind, d.observed_type.as_str()))
            .collect();
        assert_eq!(
            paths,
            [
                ("/extra", DriftKind::NewField, "boolean"),
                ("/meta/b~1c", DriftKind::NewField, "string")
            ]
        );
    }

    #[test]
    fn wrong_types_and_missing_required_fields_are_invalid_and_drift() {
        let Verdict::Invalid { errors, drift } = schema().check(json!({"id": "7"})) else {
            panic!("should be invalid");
        };
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().any(|e| e.path == "/id"));
        let kinds: Vec<_> = drift.iter().map(|d| (d.path.as_str(), d.kind)).collect();
        assert!(kinds.contains(&("/id", DriftKind::TypeChanged)));
        assert!(kinds.contains(&("/name", DriftKind::MissingRequired)));
    }

    fn observation(path: &str, ty: &str, count: u64) -> DriftObservation {
        DriftObservation {
            stream: "s".into(),
            path: path.into(),
            kind: DriftKind::NewField,
            observed_type: ty.into(),
            sample: format!("{count}"),
            count,
        }
    }

    #[test]
    fn drift_batches_merge_by_path_kind_and_type_keeping_the_first_sample() {
        let mut batch: DriftBatch = [
            observation("/a", "string", 1),
            observation("/b", "string", 2),
            observation("/a", "string", 3),
            observation("/a", "integer", 4),
        ]
        .into_iter()
        .collect();
        batch.extend([observation("/b", "string", 5)]);
        let got: Vec<_> = batch
            .iter()
            .map(|d| {
                (
                    d.path.as_str(),
                    d.observed_type.as_str(),
                    d.count,
                    d.sample.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("/a", "string", 4, "1"),
                ("/b", "string", 7, "2"),
                ("/a", "integer", 4, "4")
            ]
        );
    }

    #[test]
    fn a_run_records_at_most_the_cap_of_distinct_drift_paths_and_counts_the_rest() {
        let mut summary = DriftSummary::default();
        let batch: DriftBatch = (0..MAX_DRIFT_PATHS_PER_RUN + 10)
            .map(|i| observation(&format!("/f{i}"), "string", 2))
            .collect();
        let kept = summary.admit_all(batch);
        assert_eq!(kept.len(), MAX_DRIFT_PATHS_PER_RUN);
        assert_eq!(summary.unrecorded, 20);
        // A path the run already records is still recorded (its count
        // grows); a new one is not.
        let again = summary.admit_all(
            [
                observation("/f0", "integer", 1),
                observation("/new", "string", 1),
            ]
            .into_iter()
            .collect(),
        );
        assert_eq!(
            again.iter().map(|d| d.path.as_str()).collect::<Vec<_>>(),
            ["/f0"]
        );
        assert_eq!(summary.unrecorded, 21);
        let distinct: usize = summary.paths.values().map(|p| p.len()).sum();
        assert_eq!(distinct, MAX_DRIFT_PATHS_PER_RUN);
    }

    #[test]
    fn records_with_a_repeated_key_anywhere_are_refused_with_its_path() {
        let dup = |raw: &str| match parse_record(raw) {
            Err(ParseFailure::DuplicateKey(e)) => e.path,
            other => panic!("{raw}: {other:?}"),
        };
        assert_eq!(dup(r#"{"a":1,"a":2}"#), "/a");
        assert_eq!(
            dup(r#"{"id":1,"m":{"x":1,"y":[0,{"z/~":1,"z/~":2}]}}"#),
            "/m/y/1/z~1~0"
        );
        // An escaped spelling of the same key is the same key.
        assert_eq!(dup(r#"{"a":1,"\u0061":2}"#), "/a");
        assert_eq!(
            parse_record(r#"{"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]}"#).unwrap(),
            json!({"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]})
        );
        assert!(matches!(
            parse_record("[1]"),
            Err(ParseFailure::NotARecord(_))
        ));
        assert!(matches!(
            parse_record("{"),
            Err(ParseFailure::NotARecord(_))
        ));
        assert!(matches!(
            parse_record("{} x"),
            Err(ParseFailure::NotARecord(_))
        ));
    }

    #[test]
    fn bad_schemas_do_not_compile() {
        assert!(StreamSchema::compile("s", "{").is_err());
        assert!(StreamSchema::compile("s", r#"{"type": 12}"#).is_err());
    }
}
