//! Record validation at the boundary: each stream's JSON Schema compiled
//! once per run (the `jsonschema` crate, no remote `$ref` resolution), every
//! emitted record checked against it, and schema drift observed: unknown
//! fields (tolerated), changed types and vanished required fields (both
//! quarantined).

use std::collections::BTreeMap;

use jsonschema::error::ValidationErrorKind;
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

/// Merge observations with the same (stream, path, kind, type), summing
/// counts and keeping the first sample.
pub fn aggregate(
    into: &mut Vec<DriftObservation>,
    more: impl IntoIterator<Item = DriftObservation>,
) {
    for d in more {
        match into.iter_mut().find(|e| {
            e.stream == d.stream
                && e.path == d.path
                && e.kind == d.kind
                && e.observed_type == d.observed_type
        }) {
            Some(e) => e.count += d.count,
            None => into.push(d),
        }
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
    crate::host::log::truncate(&text, MAX_DRIFT_SAMPLE_BYTES).to_string()
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

/// Drift seen in one run, for the summary: distinct paths per (stream, kind).
pub type DriftSummary = BTreeMap<(String, DriftKind), std::collections::BTreeSet<String>>;

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn bad_schemas_do_not_compile() {
        assert!(StreamSchema::compile("s", "{").is_err());
        assert!(StreamSchema::compile("s", r#"{"type": 12}"#).is_err());
    }
}
