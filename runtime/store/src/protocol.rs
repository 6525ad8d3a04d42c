//! The protocol outputs: a run's records and state written as JSON lines in
//! the [Singer] or the [Airbyte] protocol, for another tool to load
//! (`sluice run --output singer|airbyte`). [`ProtocolStore`] is a
//! [`Store`](sluice_core::destination::Store), so the per-database writer
//! holds it like any backend; it implements the *write half* of the
//! [`Destination`] seam on a byte stream (stdout, say) and keeps the whole
//! [`RunLog`] — runs, quarantine, drift, replay bookkeeping, leases,
//! streams, and the state of every commit — in a local SQLite store.
//!
//! # One commit
//! Inside the log's transaction for the commit (after its lease fence, its
//! quarantine and drift rows and its state row), the commit's records are
//! written, then its state line, then the stream is flushed; only then does
//! the transaction commit. So:
//! - a STATE line always comes after every record it covers;
//! - a run whose lease was taken over writes nothing;
//! - a write that fails (the reading process closed the pipe, say) fails
//!   the commit with [`StoreError::Backend`], rolls the log back (its state
//!   never runs ahead of what was delivered), and fails every later commit
//!   of this store: lines after a failed write could follow half a line;
//! - if the log cannot commit after the lines were delivered (a full disk),
//!   the reader has records and a state the log does not: a resume from the
//!   reader's state (a state file) is exact; a resume from the log reads
//!   those records again (at least once; targets upsert by key).
//!
//! The log's write lock is held while the lines are written: a reader that
//! is slow to take them holds up other writers of the local log (another
//! process waits up to [`BUSY_TIMEOUT`](crate::sqlite::BUSY_TIMEOUT)).
//!
//! # Singer (<https://hub.meltano.com/singer/spec>)
//! - `{"type":"SCHEMA","stream":S,"schema":{..},"key_properties":[..]}`
//!   once per stream, before its first record: the stream's JSON Schema as
//!   the connector declared it ([`RunLog::record_streams`]; else as last
//!   recorded in the log; else one made from the table's columns), and its
//!   primary key.
//! - `{"type":"RECORD","stream":S,"record":{..}}` per valid record: the
//!   record's JSON exactly as the connector emitted it (the `_record` of a
//!   database destination), not the flattened columns.
//! - `{"type":"STATE","value":{"bookmarks":{S: B, ..}}}` at the end of
//!   every commit that wrote a record or a state (when some stream has a
//!   state): the bookmark `B` of *every* stream that has one, so the last
//!   STATE line is a complete resume point. A commit without a new state
//!   repeats the last one: its records are covered by reading them again
//!   from it.
//!
//! # Airbyte (<https://docs.airbyte.com/understanding-airbyte/airbyte-protocol>)
//! - `{"type":"RECORD","record":{"stream":S,"data":{..},"emitted_at":MS}}`
//!   per valid record (`emitted_at`: milliseconds since the epoch, when the
//!   commit wrote it).
//! - `{"type":"STATE","state":{"type":"STREAM","stream":{"stream_descriptor":{"name":S},"stream_state":B}}}`
//!   after the records of a commit that carries a state (per-stream state).
//! - `{"type":"TRACE","trace":{"type":"ERROR","emitted_at":MS,"error":{"message":..,"internal_message":..,"failure_type":..}}}`
//!   when the run's end is recorded with a status other than succeeded:
//!   the run's error; `failure_type` is `transient_error` for a cancelled
//!   run, else `system_error`.
//!
//! Stream names are the connector's; destination table names (the
//! instance prefix, `--table`) belong to database destinations: the
//! reader names its own tables.
//!
//! # State values
//! A Sluice state is an opaque string per stream (the SDKs write JSON).
//! Both protocols carry it as a JSON object `B` (Airbyte's `stream_state`
//! must be one):
//! - a state that is a JSON object is `B` itself, byte for byte;
//! - any other JSON value `v` is `{"sluice_state": v}` ([`WRAPPED_STATE_KEY`]);
//! - a state that is not JSON is `{"sluice_text": "<the text>"}` ([`TEXT_STATE_KEY`]).
//!
//! Reading back undoes exactly that, so every state round-trips.
//!
//! # Resume
//! With a state file, [`Destination::get_state`] answers from it, and only
//! from it (a stream it does not name has no state; an empty file, or
//! `/dev/null`, means no state at all): the reader of the output owns the
//! state. It may hold (see [`read_state_file`]):
//! - Singer: the bare state value `{"bookmarks":{..}}` (what target-jsonl
//!   prints when it ends), a STATE message, Meltano's `{"singer_state":{..}}`,
//!   or many of these (JSON lines, or a whole captured Singer stream): the
//!   last one counts. Bookmarks of streams this run does not commit are
//!   carried into every STATE line, so none is lost.
//! - Airbyte: a JSON array of state messages (Airbyte's `read --state`
//!   file), one state message, or AirbyteMessage lines: the last state of
//!   each stream counts. A GLOBAL state's `stream_states` are read (its
//!   `shared_state` is not: Sluice never writes one); LEGACY states are
//!   refused.
//!
//! Without a state file, state comes from the local log, as for a database
//! destination, so repeated runs on one log resume. Either way, every
//! commit's state is recorded in the log too, so `sluice runs` and the
//! log's state stay truthful.
//!
//! # What a stream cannot do
//! Neither protocol lets a source delete rows (Singer has no delete
//! message; Airbyte leaves overwriting to the destination's sync mode), so
//! a full refresh's sweep is not carried out: the stream says nothing about
//! rows a full-refresh run did not see (the reader may overwrite on its
//! side). No table is made or claimed, [`Destination::scan`] finds none,
//! and quarantined records are not replayed into a stream
//! ([`RunLog::apply_replay`] is refused): they stay quarantined in the log.
//!
//! [Singer]: https://hub.meltano.com/singer/spec
//! [Airbyte]: https://docs.airbyte.com/understanding-airbyte/airbyte-protocol

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use sluice_core::destination::{
    CommitRequest, CommitStats, ComponentSeen, Destination, DriftEvent, LeaseHolder, Pending,
    QuarantineEntry, QuarantineFilter, ReplayPlan, RunLog, RunRecord, RunStatus, Scan, StoreError,
    StreamDef,
};
use sluice_core::row::{ColumnKind, StreamTable};

use crate::sqlite::{unix_ms, SqliteStore};

/// The output's write buffer: lines go out in blocks of this size, and
/// every commit ends with a flush.
pub const OUTPUT_BUFFER_BYTES: usize = 64 * 1024;

/// Largest state file read (a state is a few bookmarks; a whole captured
/// Singer stream may be given, and is refused past this).
pub const MAX_STATE_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// The key of the object that carries a state which is JSON but not an
/// object: `{"sluice_state": 42}`.
pub const WRAPPED_STATE_KEY: &str = "sluice_state";

/// The key of the object that carries a state which is not JSON:
/// `{"sluice_text": "..."}`.
pub const TEXT_STATE_KEY: &str = "sluice_text";

/// The key under which Meltano's `meltano state get` shows a Singer state.
pub const MELTANO_STATE_KEY: &str = "singer_state";

/// AirbyteMessage types other than STATE: a state file may be a captured
/// Airbyte stream, whose other lines are passed over.
const AIRBYTE_MESSAGE_TYPES: [&str; 8] = [
    "RECORD",
    "LOG",
    "TRACE",
    "SPEC",
    "CATALOG",
    "CONNECTION_STATUS",
    "CONTROL",
    "DESTINATION_CATALOG",
];

pub use sluice_core::mode::ProtocolFormat;

/// The backend named in an output's errors.
fn backend(format: ProtocolFormat) -> &'static str {
    match format {
        ProtocolFormat::Singer => "singer output",
        ProtocolFormat::Airbyte => "airbyte output",
    }
}

/// The output stream, which stays failed after its first failed write.
struct Output {
    format: ProtocolFormat,
    w: BufWriter<Box<dyn Write + Send>>,
    /// Why an earlier write failed.
    failed: Option<String>,
}

impl Output {
    fn error(&self, message: String) -> StoreError {
        StoreError::Backend {
            backend: backend(self.format),
            message,
        }
    }

    /// Refuse to write after a failed write.
    fn usable(&self) -> Result<(), StoreError> {
        match &self.failed {
            None => Ok(()),
            Some(first) => Err(self.error(format!(
                "an earlier write to the output failed ({first}); nothing more is written to it"
            ))),
        }
    }

    fn fail(&mut self, e: std::io::Error) -> StoreError {
        let why = if e.kind() == std::io::ErrorKind::BrokenPipe {
            "the process reading the output closed it (broken pipe)".to_string()
        } else {
            format!("cannot write to the output: {e}")
        };
        self.failed = Some(why.clone());
        self.error(why)
    }

    /// One message, as one line.
    fn line<T: Serialize>(&mut self, message: &T) -> Result<(), StoreError> {
        self.usable()?;
        let written = serde_json::to_writer(&mut self.w, message)
            .map_err(std::io::Error::from)
            .and_then(|()| self.w.write_all(b"\n"));
        written.map_err(|e| self.fail(e))
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.usable()?;
        self.w.flush().map_err(|e| self.fail(e))
    }
}

/// A [`Store`](sluice_core::destination::Store) whose records and state go
/// to a byte stream as Singer or Airbyte messages, and whose run log is a
/// local SQLite store (see the [module docs](self)).
pub struct ProtocolStore {
    format: ProtocolFormat,
    log: SqliteStore,
    out: Output,
    /// States read from the state file, by stream (`None`: states come
    /// from the log), kept up to date by this run's commits.
    file_states: Option<BTreeMap<String, String>>,
    /// Singer: every stream's latest state as its bookmark, for complete
    /// STATE values.
    bookmarks: BTreeMap<String, Box<RawValue>>,
    /// The instance whose log states are in `bookmarks` (without a state
    /// file, they are read at its first commit).
    bookmarks_of: Option<String>,
    /// Streams whose SCHEMA message was written.
    schemas_sent: HashSet<String>,
    /// Stream declarations of this run, by (instance, stream).
    defs: HashMap<(String, String), StreamDef>,
}

impl ProtocolStore {
    /// An output in `format` to `out`, with its run log (and every
    /// commit's quarantine, drift and state) in `log`, resuming from the
    /// state in `state_file` if given (else from the log): see the
    /// [module docs](self).
    ///
    /// Fails if the state file cannot be read or holds no state this
    /// format knows ([`StoreError::Open`], [`StoreError::Invalid`]).
    pub fn new(
        format: ProtocolFormat,
        log: SqliteStore,
        out: Box<dyn Write + Send>,
        state_file: Option<&Path>,
    ) -> Result<Self, StoreError> {
        let file_states = state_file
            .map(|path| read_state_file(format, path))
            .transpose()?;
        let bookmarks = match &file_states {
            Some(states) => states
                .iter()
                .map(|(stream, state)| Ok((stream.clone(), encode_state(state)?)))
                .collect::<Result<_, StoreError>>()?,
            None => BTreeMap::new(),
        };
        Ok(ProtocolStore {
            format,
            log,
            out: Output {
                format,
                w: BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, out),
                failed: None,
            },
            file_states,
            bookmarks,
            bookmarks_of: None,
            schemas_sent: HashSet::new(),
            defs: HashMap::new(),
        })
    }

    pub fn format(&self) -> ProtocolFormat {
        self.format
    }

    /// The local run log.
    pub fn log(&mut self) -> &mut SqliteStore {
        &mut self.log
    }

    /// Without a state file: put `instance`'s states of its declared
    /// streams from the log into `bookmarks`, once.
    fn load_log_bookmarks(&mut self, instance: &str) -> Result<(), StoreError> {
        if self.file_states.is_some() || self.bookmarks_of.as_deref() == Some(instance) {
            return Ok(());
        }
        let streams: Vec<String> = self
            .defs
            .keys()
            .filter(|(i, _)| i == instance)
            .map(|(_, s)| s.clone())
            .collect();
        for stream in streams {
            if let Some(state) = self.log.get_state(instance, &stream)? {
                self.bookmarks.insert(stream, encode_state(&state)?);
            }
        }
        self.bookmarks_of = Some(instance.to_string());
        Ok(())
    }

    /// The SCHEMA messages (stream, schema, key) of the commit's streams
    /// that have not had one.
    fn schemas_due(&mut self, req: &CommitRequest<'_>) -> Result<Vec<SchemaDue>, StoreError> {
        let mut due: Vec<SchemaDue> = Vec::new();
        for (table, rows) in &req.pending.batches {
            if rows.is_empty()
                || self.schemas_sent.contains(&table.name)
                || due.iter().any(|d| d.stream == table.name)
            {
                continue;
            }
            let key = (req.connector.to_string(), table.name.clone());
            let declared = match self.defs.get(&key) {
                Some(def) => Some(def.json_schema.clone()),
                None => self
                    .log
                    .stream_def(req.connector, &table.name)?
                    .map(|d| d.json_schema),
            };
            let schema = match declared {
                Some(text) => one_line(&text).map_err(|e| {
                    StoreError::Invalid(format!(
                        "stream {:?}: its JSON Schema is not JSON: {e}",
                        table.name
                    ))
                })?,
                None => schema_of_columns(table),
            };
            due.push(SchemaDue {
                stream: table.name.clone(),
                schema,
                key: table
                    .primary_key
                    .iter()
                    .map(|&i| table.columns[i].name.clone())
                    .collect(),
            });
        }
        Ok(due)
    }
}

/// A failed delivery's error, saying what became of the commit.
fn not_recorded(e: StoreError) -> StoreError {
    match e {
        StoreError::Backend { backend, message } => StoreError::Backend {
            backend,
            message: format!(
                "{message}; the commit is not recorded (its lines may have reached the reader in part)"
            ),
        },
        other => other,
    }
}

/// A SCHEMA message to write before a stream's first record.
struct SchemaDue {
    stream: String,
    schema: Box<RawValue>,
    key: Vec<String>,
}

/// JSON text as one line: a line break in valid JSON can only be
/// whitespace between tokens (strings escape theirs), so it becomes a
/// space. Fails if `text` is not JSON.
fn one_line(text: &str) -> Result<Box<RawValue>, serde_json::Error> {
    if text.contains(['\n', '\r']) {
        RawValue::from_string(text.replace(['\n', '\r'], " "))
    } else {
        RawValue::from_string(text.to_string())
    }
}

/// A JSON Schema made from a table's columns (for a stream whose declared
/// schema is not known).
fn schema_of_columns(table: &StreamTable) -> Box<RawValue> {
    let properties: serde_json::Map<String, serde_json::Value> = table
        .columns
        .iter()
        .map(|c| {
            let ty = match c.kind {
                ColumnKind::Integer => Some("integer"),
                ColumnKind::Real => Some("number"),
                ColumnKind::Boolean => Some("boolean"),
                ColumnKind::Text => Some("string"),
                ColumnKind::Json => None,
            };
            let def = match ty {
                Some(t) => serde_json::json!({ "type": [t, "null"] }),
                None => serde_json::json!({}),
            };
            (c.name.clone(), def)
        })
        .collect();
    let schema = serde_json::json!({ "type": "object", "properties": properties });
    RawValue::from_string(schema.to_string()).expect("a serialised value is JSON")
}

/// A Sluice state as the JSON object both protocols carry (see the module
/// docs: an object as it is, other JSON wrapped, other text as a string).
pub fn encode_state(state: &str) -> Result<Box<RawValue>, StoreError> {
    let Ok(raw) = one_line(state) else {
        let wrapped = serde_json::json!({ TEXT_STATE_KEY: state });
        return Ok(RawValue::from_string(wrapped.to_string()).expect("a serialised value is JSON"));
    };
    // An object is carried as it is, unless reading it back would take
    // it for a wrapped state (an object of just `sluice_state` or
    // `sluice_text`): that one is wrapped too.
    if raw.get().starts_with('{') && !is_wrapped(&raw) {
        return Ok(raw);
    }
    #[derive(Serialize)]
    struct Wrapped<'a> {
        sluice_state: &'a RawValue,
    }
    let text = serde_json::to_string(&Wrapped { sluice_state: &raw })
        .map_err(|e| StoreError::Invalid(format!("cannot carry the state {state:?}: {e}")))?;
    Ok(RawValue::from_string(text).expect("a serialised value is JSON"))
}

/// `{"sluice_state": v}`, as read back.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrappedState<'a> {
    #[serde(borrow)]
    sluice_state: &'a RawValue,
}

/// `{"sluice_text": "..."}`, as read back.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextState {
    sluice_text: String,
}

/// Whether `carried` is a wrapped state (which [`decode_state`] unwraps).
fn is_wrapped(carried: &RawValue) -> bool {
    serde_json::from_str::<WrappedState<'_>>(carried.get()).is_ok()
        || serde_json::from_str::<TextState>(carried.get()).is_ok()
}

/// The Sluice state a protocol state object `carried` holds: undoes
/// [`encode_state`].
pub fn decode_state(carried: &RawValue) -> String {
    if let Ok(w) = serde_json::from_str::<WrappedState<'_>>(carried.get()) {
        return w.sluice_state.get().to_string();
    }
    if let Ok(t) = serde_json::from_str::<TextState>(carried.get()) {
        return t.sluice_text;
    }
    carried.get().to_string()
}

/// Read the state in `path` for `format` (see the module docs for the
/// forms accepted): each stream's Sluice state.
pub fn read_state_file(
    format: ProtocolFormat,
    path: &Path,
) -> Result<BTreeMap<String, String>, StoreError> {
    let shown = path.display().to_string();
    let open = |message: String| StoreError::Open {
        path: shown.clone(),
        message,
    };
    let file =
        std::fs::File::open(path).map_err(|e| open(format!("cannot read the state file: {e}")))?;
    let mut text = String::new();
    file.take(MAX_STATE_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| open(format!("cannot read the state file: {e}")))?;
    if text.len() as u64 > MAX_STATE_FILE_BYTES {
        return Err(open(format!(
            "the state file is larger than {MAX_STATE_FILE_BYTES} bytes"
        )));
    }
    let invalid = |message: String| StoreError::Invalid(format!("state file {shown}: {message}"));
    let mut values = Vec::new();
    for value in serde_json::Deserializer::from_str(&text).into_iter::<&RawValue>() {
        values.push(value.map_err(|e| invalid(format!("not JSON: {e}")))?);
    }
    match format {
        ProtocolFormat::Singer => singer_states(&values).map_err(invalid),
        ProtocolFormat::Airbyte => airbyte_states(&values).map_err(invalid),
    }
}

/// The Singer state in `values`: the last state value among them.
fn singer_states(values: &[&RawValue]) -> Result<BTreeMap<String, String>, String> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(rename = "type")]
        kind: Option<String>,
        #[serde(borrow)]
        value: Option<&'a RawValue>,
        #[serde(borrow)]
        singer_state: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct SingerState<'a> {
        #[serde(borrow, default)]
        bookmarks: Option<BTreeMap<String, &'a RawValue>>,
    }
    let mut last: Option<&RawValue> = None;
    for (n, v) in values.iter().enumerate() {
        let probe: Probe<'_> = serde_json::from_str(v.get()).map_err(|e| {
            format!(
                "value {} is not a Singer state, a STATE message or Meltano's \
                 {{\"{MELTANO_STATE_KEY}\": ..}}: {e}",
                n + 1
            )
        })?;
        last = match (probe.kind.as_deref(), probe.value, probe.singer_state) {
            (Some("STATE"), Some(value), _) => Some(value),
            (Some("STATE"), None, _) => {
                return Err(format!("value {}: a STATE message without a value", n + 1))
            }
            // Other messages (a captured Singer stream) carry no state.
            (Some(_), _, _) => last,
            (None, _, Some(meltano)) => Some(meltano),
            (None, _, None) => Some(v),
        };
    }
    let Some(state) = last else {
        return Ok(BTreeMap::new());
    };
    let state: SingerState<'_> = serde_json::from_str(state.get())
        .map_err(|e| format!("a Singer state is {{\"bookmarks\": {{..}}}}: {e}"))?;
    Ok(state
        .bookmarks
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, b)| b.get() != "null")
        .map(|(stream, b)| (stream, decode_state(b)))
        .collect())
}

/// The Airbyte stream states in `values`: the last one of each stream.
fn airbyte_states(values: &[&RawValue]) -> Result<BTreeMap<String, String>, String> {
    #[derive(Deserialize)]
    struct Descriptor {
        name: String,
    }
    #[derive(Deserialize)]
    struct StreamState<'a> {
        stream_descriptor: Descriptor,
        #[serde(borrow, default)]
        stream_state: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct GlobalState<'a> {
        #[serde(borrow)]
        stream_states: Vec<StreamState<'a>>,
    }
    /// An AirbyteStateMessage, or an AirbyteMessage of any type.
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(rename = "type")]
        kind: Option<String>,
        #[serde(borrow)]
        state: Option<&'a RawValue>,
        #[serde(borrow)]
        stream: Option<StreamState<'a>>,
        #[serde(borrow, rename = "global")]
        global: Option<GlobalState<'a>>,
    }
    fn apply(states: &mut BTreeMap<String, String>, message: &RawValue) -> Result<(), String> {
        if message.get().trim_start().starts_with('[') {
            let list: Vec<&RawValue> = serde_json::from_str(message.get())
                .map_err(|e| format!("not a list of state messages: {e}"))?;
            for m in list {
                apply(states, m)?;
            }
            return Ok(());
        }
        let probe: Probe<'_> = serde_json::from_str(message.get())
            .map_err(|e| format!("not an Airbyte state message: {e}"))?;
        let mut put = |s: StreamState<'_>| -> Result<(), String> {
            match s.stream_state.filter(|b| b.get() != "null") {
                Some(b) => {
                    states.insert(s.stream_descriptor.name, decode_state(b));
                }
                None => {
                    states.remove(&s.stream_descriptor.name);
                }
            }
            Ok(())
        };
        match probe.kind.as_deref() {
            // An AirbyteMessage carrying a state message.
            Some("STATE") => match probe.state {
                Some(inner) => apply(states, inner),
                None => Err("a STATE message without a state".into()),
            },
            Some("STREAM") => put(probe.stream.ok_or("a STREAM state without a stream")?),
            Some("GLOBAL") => {
                let global = probe.global.ok_or("a GLOBAL state without `global`")?;
                global.stream_states.into_iter().try_for_each(put)
            }
            Some("LEGACY") => {
                Err("a LEGACY state: Sluice reads per-stream (STREAM) or GLOBAL states".into())
            }
            // Other messages (a captured Airbyte stream) carry no state.
            Some(t) if AIRBYTE_MESSAGE_TYPES.contains(&t) => Ok(()),
            other => Err(format!("not an Airbyte state message (type {other:?})")),
        }
    }
    let mut states = BTreeMap::new();
    for v in values {
        apply(&mut states, v)?;
    }
    Ok(states)
}

// The messages, field by field as the protocols name them.

#[derive(Serialize)]
struct SingerSchema<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    stream: &'a str,
    schema: &'a RawValue,
    key_properties: &'a [String],
}

#[derive(Serialize)]
struct SingerRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    stream: &'a str,
    record: &'a RawValue,
}

#[derive(Serialize)]
struct SingerState<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    value: SingerStateValue<'a>,
}

#[derive(Serialize)]
struct SingerStateValue<'a> {
    bookmarks: &'a BTreeMap<String, Box<RawValue>>,
}

#[derive(Serialize)]
struct AirbyteRecordMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    record: AirbyteRecord<'a>,
}

#[derive(Serialize)]
struct AirbyteRecord<'a> {
    stream: &'a str,
    data: &'a RawValue,
    emitted_at: i64,
}

#[derive(Serialize)]
struct AirbyteStateMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    state: AirbyteState<'a>,
}

#[derive(Serialize)]
struct AirbyteState<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    stream: AirbyteStreamState<'a>,
}

#[derive(Serialize)]
struct AirbyteStreamState<'a> {
    stream_descriptor: AirbyteDescriptor<'a>,
    stream_state: &'a RawValue,
}

#[derive(Serialize)]
struct AirbyteDescriptor<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct AirbyteTraceMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    trace: AirbyteTrace<'a>,
}

#[derive(Serialize)]
struct AirbyteTrace<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    emitted_at: i64,
    error: AirbyteError<'a>,
}

#[derive(Serialize)]
struct AirbyteError<'a> {
    message: &'a str,
    internal_message: String,
    failure_type: &'static str,
}

/// Write a commit's lines: SCHEMA messages due, records, then the state.
struct Delivery<'a> {
    format: ProtocolFormat,
    req: &'a CommitRequest<'a>,
    schemas: &'a [SchemaDue],
    /// The commit's new state (stream, carried object).
    state: Option<(&'a str, &'a RawValue)>,
    /// Singer: every stream's bookmark, the new state's included.
    bookmarks: &'a BTreeMap<String, Box<RawValue>>,
}

impl Delivery<'_> {
    fn write(&self, out: &mut Output) -> Result<u64, StoreError> {
        let mut written = 0u64;
        let emitted_at = unix_ms();
        for (table, rows) in &self.req.pending.batches {
            if let Some(s) = self.schemas.iter().find(|s| s.stream == table.name) {
                if self.format == ProtocolFormat::Singer {
                    out.line(&SingerSchema {
                        kind: "SCHEMA",
                        stream: &s.stream,
                        schema: &s.schema,
                        key_properties: &s.key,
                    })?;
                }
            }
            for row in rows {
                let record = one_line(&row.raw).map_err(|e| {
                    StoreError::Invalid(format!(
                        "stream {:?}: a record is not JSON: {e}",
                        table.name
                    ))
                })?;
                match self.format {
                    ProtocolFormat::Singer => out.line(&SingerRecord {
                        kind: "RECORD",
                        stream: &table.name,
                        record: &record,
                    })?,
                    ProtocolFormat::Airbyte => out.line(&AirbyteRecordMessage {
                        kind: "RECORD",
                        record: AirbyteRecord {
                            stream: &table.name,
                            data: &record,
                            emitted_at,
                        },
                    })?,
                }
                written += 1;
            }
        }
        match self.format {
            ProtocolFormat::Singer => {
                if (written > 0 || self.state.is_some()) && !self.bookmarks.is_empty() {
                    out.line(&SingerState {
                        kind: "STATE",
                        value: SingerStateValue {
                            bookmarks: self.bookmarks,
                        },
                    })?;
                }
            }
            ProtocolFormat::Airbyte => {
                if let Some((stream, carried)) = self.state {
                    out.line(&AirbyteStateMessage {
                        kind: "STATE",
                        state: AirbyteState {
                            kind: "STREAM",
                            stream: AirbyteStreamState {
                                stream_descriptor: AirbyteDescriptor { name: stream },
                                stream_state: carried,
                            },
                        },
                    })?;
                }
            }
        }
        out.flush()?;
        Ok(written)
    }
}

impl Destination for ProtocolStore {
    /// Nothing to make: the reader of the output makes its tables.
    fn ensure_table(&mut self, _table: &StreamTable) -> Result<(), StoreError> {
        Ok(())
    }

    /// Nothing to claim: no table is written.
    fn claim_table(&mut self, _instance: &str, _table: &StreamTable) -> Result<(), StoreError> {
        Ok(())
    }

    fn table_of(&mut self, instance: &str, stream: &str) -> Result<Option<String>, StoreError> {
        self.log.table_of(instance, stream)
    }

    /// From the state file if one was given, else from the log.
    fn get_state(&mut self, connector: &str, stream: &str) -> Result<Option<String>, StoreError> {
        match &self.file_states {
            Some(states) => Ok(states.get(stream).cloned()),
            None => self.log.get_state(connector, stream),
        }
    }

    fn commit(&mut self, req: &CommitRequest<'_>) -> Result<CommitStats, StoreError> {
        self.out.usable()?;
        self.load_log_bookmarks(req.connector)?;
        let schemas = self.schemas_due(req)?;
        let carried = req
            .state
            .map(|(stream, value)| Ok::<_, StoreError>((stream, encode_state(value)?)))
            .transpose()?;
        if !req.sweep.is_empty() {
            tracing::info!(
                output = %self.format,
                tables = ?req.sweep,
                "full refresh: the {} protocol cannot delete rows, so rows this run did not see are not swept",
                self.format
            );
        }
        // The log gets the commit's quarantine, drift and state; the
        // records go to the output.
        let log_pending = Pending {
            batches: Vec::new(),
            quarantine: req.pending.quarantine.clone(),
            drift: req.pending.drift.clone(),
        };
        let log_req = CommitRequest {
            pending: &log_pending,
            sweep: &[],
            ..*req
        };
        // Singer's STATE holds every bookmark, the new one included.
        let previous = carried.as_ref().map(|(stream, b)| {
            let old = self.bookmarks.insert(stream.to_string(), b.clone());
            (stream.to_string(), old)
        });
        let mut written = 0;
        let mut delivered = false;
        let result = {
            let delivery = Delivery {
                format: self.format,
                req,
                schemas: &schemas,
                state: carried.as_ref().map(|(s, b)| (*s, &**b)),
                bookmarks: &self.bookmarks,
            };
            let out = &mut self.out;
            self.log.commit_delivering(&log_req, || {
                written = delivery.write(out).map_err(not_recorded)?;
                delivered = true;
                Ok(())
            })
        };
        let mut stats = match result {
            Ok(stats) => stats,
            Err(e) => {
                // A state that was not delivered is not the output's.
                if let (false, Some((stream, old))) = (delivered, previous) {
                    match old {
                        Some(b) => self.bookmarks.insert(stream, b),
                        None => self.bookmarks.remove(&stream),
                    };
                }
                return Err(e);
            }
        };
        self.schemas_sent
            .extend(schemas.into_iter().map(|s| s.stream));
        if let (Some(states), Some((stream, value))) = (&mut self.file_states, req.state) {
            states.insert(stream.to_string(), value.to_string());
        }
        stats.upserted = written;
        for (table, rows) in &req.pending.batches {
            *stats
                .upserted_by_stream
                .entry(table.name.clone())
                .or_default() += rows.len() as u64;
        }
        Ok(stats)
    }

    /// No table to read back: the output is a stream.
    fn scan(&mut self, _table: &str) -> Result<Option<Scan>, StoreError> {
        Ok(None)
    }
}

impl RunLog for ProtocolStore {
    fn claim_lease(
        &mut self,
        instance: &str,
        run_id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LeaseHolder>, StoreError> {
        self.log.claim_lease(instance, run_id, holder, ttl)
    }

    fn renew_lease(
        &mut self,
        instance: &str,
        run_id: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.log.renew_lease(instance, run_id, ttl)
    }

    fn release_lease(&mut self, instance: &str, run_id: &str) -> Result<(), StoreError> {
        self.log.release_lease(instance, run_id)
    }

    fn note_component(
        &mut self,
        instance: &str,
        hash: &str,
        connector: &str,
        version: &str,
    ) -> Result<Option<ComponentSeen>, StoreError> {
        self.log.note_component(instance, hash, connector, version)
    }

    /// Recorded in the log, and kept for the SCHEMA messages.
    fn record_streams(&mut self, defs: &[StreamDef]) -> Result<(), StoreError> {
        self.log.record_streams(defs)?;
        for d in defs {
            self.defs
                .insert((d.connector.clone(), d.stream.clone()), d.clone());
        }
        Ok(())
    }

    fn stream_def(
        &mut self,
        connector: &str,
        stream: &str,
    ) -> Result<Option<StreamDef>, StoreError> {
        self.log.stream_def(connector, stream)
    }

    fn list_quarantine(
        &mut self,
        filter: &QuarantineFilter,
    ) -> Result<Vec<QuarantineEntry>, StoreError> {
        self.log.list_quarantine(filter)
    }

    fn edit_quarantined(&mut self, id: i64, record: &str) -> Result<(), StoreError> {
        self.log.edit_quarantined(id, record)
    }

    /// Refused: replay writes into a database destination's tables.
    fn apply_replay(
        &mut self,
        _plan: &ReplayPlan,
    ) -> Result<sluice_core::destination::ReplayApplied, StoreError> {
        Err(StoreError::Invalid(format!(
            "quarantined records are not replayed into a {} output: replay them into a \
             database destination (they stay quarantined)",
            self.format
        )))
    }

    fn list_drift(
        &mut self,
        connector: Option<&str>,
        stream: Option<&str>,
    ) -> Result<Vec<DriftEvent>, StoreError> {
        self.log.list_drift(connector, stream)
    }

    fn insert_run(&mut self, run: &RunRecord) -> Result<(), StoreError> {
        self.log.insert_run(run)
    }

    fn mark_crashed(&mut self) -> Result<u64, StoreError> {
        self.log.mark_crashed()
    }

    /// Recorded in the log; an Airbyte output then says how a run that did
    /// not succeed ended (a TRACE of type ERROR).
    fn update_run(&mut self, run: &RunRecord) -> Result<(), StoreError> {
        self.log.update_run(run)?;
        let ended_badly = !matches!(run.status, RunStatus::Running | RunStatus::Succeeded);
        if self.format == ProtocolFormat::Airbyte && ended_badly {
            let message = run
                .error
                .clone()
                .unwrap_or_else(|| format!("the run ended {}", run.status.as_str()));
            let trace = AirbyteTraceMessage {
                kind: "TRACE",
                trace: AirbyteTrace {
                    kind: "ERROR",
                    emitted_at: unix_ms(),
                    error: AirbyteError {
                        message: &message,
                        internal_message: format!(
                            "sluice run {} of instance {} ended with status {}",
                            run.id,
                            run.connector,
                            run.status.as_str()
                        ),
                        failure_type: match run.status {
                            RunStatus::Cancelled => "transient_error",
                            _ => "system_error",
                        },
                    },
                },
            };
            // The run's end is recorded: an output that cannot take the
            // trace (its reader is gone, often why the run failed) is
            // reported, not made the run's error.
            if let Err(e) = self.out.line(&trace).and_then(|()| self.out.flush()) {
                tracing::warn!(run_id = %run.id, error = %e, "could not write the run's error to the Airbyte output");
            }
        }
        Ok(())
    }

    fn list_runs(&mut self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        self.log.list_runs(limit)
    }

    fn query_runs(
        &mut self,
        query: &sluice_core::destination::RunQuery,
    ) -> Result<sluice_core::destination::RunPage, StoreError> {
        self.log.query_runs(query)
    }

    fn get_run(&mut self, id: &str) -> Result<RunRecord, StoreError> {
        self.log.get_run(id)
    }

    fn list_state(
        &mut self,
        instance: &str,
    ) -> Result<Vec<sluice_core::destination::StateEntry>, StoreError> {
        self.log.list_state(instance)
    }

    fn get_schedule(
        &mut self,
        instance: &str,
    ) -> Result<Option<sluice_core::destination::ScheduleEntry>, StoreError> {
        self.log.get_schedule(instance)
    }

    fn insert_run_logs(
        &mut self,
        run_id: &str,
        lines: &[sluice_core::run::LogLine],
    ) -> Result<(), StoreError> {
        self.log.insert_run_logs(run_id, lines)
    }

    fn get_run_logs(&mut self, run_id: &str) -> Result<Vec<sluice_core::run::LogLine>, StoreError> {
        self.log.get_run_logs(run_id)
    }

    fn list_alerts(&mut self) -> Result<Vec<sluice_core::destination::AlertState>, StoreError> {
        self.log.list_alerts()
    }

    fn record_alert(
        &mut self,
        state: &sluice_core::destination::AlertState,
        event: Option<&sluice_core::destination::AlertEvent>,
    ) -> Result<(), StoreError> {
        self.log.record_alert(state, event)
    }

    fn list_alert_events(
        &mut self,
        limit: usize,
    ) -> Result<Vec<sluice_core::destination::AlertEvent>, StoreError> {
        self.log.list_alert_events(limit)
    }

    fn set_schedule(
        &mut self,
        entry: &sluice_core::destination::ScheduleEntry,
    ) -> Result<(), StoreError> {
        self.log.set_schedule(entry)
    }

    fn change_state(
        &mut self,
        change: &sluice_core::destination::StateChange,
    ) -> Result<Vec<sluice_core::destination::StateChangeRecord>, StoreError> {
        self.log.change_state(change)
    }

    fn list_state_changes(
        &mut self,
        instance: Option<&str>,
        limit: usize,
    ) -> Result<Vec<sluice_core::destination::StateChangeRecord>, StoreError> {
        self.log.list_state_changes(instance, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_as_an_object() {
        for state in [
            r#"{"cursor":5}"#,
            r#"{"big":123456789012345678901234567890,"f":1e-7}"#,
            "42",
            r#""2024-01-01""#,
            "[1,2]",
            "null",
            "not json at all",
            "",
            r#"{"sluice_state":1}"#,
            r#"{"sluice_text":"x"}"#,
        ] {
            let carried = encode_state(state).unwrap();
            assert!(carried.get().starts_with('{'), "{state:?} → {carried}");
            assert_eq!(decode_state(&carried), state, "{state:?} → {carried}");
        }
        // An object goes as it is, a line break between tokens as a space.
        assert_eq!(encode_state(r#"{"a":1}"#).unwrap().get(), r#"{"a":1}"#);
        assert_eq!(encode_state("{\n\"a\":1}").unwrap().get(), r#"{ "a":1}"#);
        assert_eq!(encode_state("7").unwrap().get(), r#"{"sluice_state":7}"#);
    }

    fn airbyte(text: &str) -> Result<BTreeMap<String, String>, String> {
        let values: Vec<&RawValue> = serde_json::Deserializer::from_str(text)
            .into_iter::<&RawValue>()
            .collect::<Result<_, _>>()
            .unwrap();
        airbyte_states(&values)
    }

    #[test]
    fn airbyte_state_forms() {
        let stream = |name: &str, state: &str| {
            format!(
                r#"{{"type":"STREAM","stream":{{"stream_descriptor":{{"name":"{name}"}},"stream_state":{state}}}}}"#
            )
        };
        // Later states of a stream replace earlier ones; null resets.
        let lines = format!(
            "{{\"type\":\"STATE\",\"state\":{}}}\n{{\"type\":\"LOG\",\"log\":{{}}}}\n{{\"type\":\"STATE\",\"state\":{}}}\n{{\"type\":\"STATE\",\"state\":{}}}\n",
            stream("a", r#"{"n":1}"#),
            stream("a", r#"{"n":2}"#),
            stream("b", r#"{"sluice_state":"x"}"#),
        );
        let got = airbyte(&lines).unwrap();
        assert_eq!(got["a"], r#"{"n":2}"#);
        assert_eq!(got["b"], r#""x""#);
        let list = format!("[{}, {}]", stream("a", "{}"), stream("a", "null"));
        assert!(airbyte(&list).unwrap().is_empty());
        let global = r#"{"type":"GLOBAL","global":{"shared_state":{},"stream_states":[{"stream_descriptor":{"name":"g"},"stream_state":{"n":3}}]}}"#;
        assert_eq!(airbyte(global).unwrap()["g"], r#"{"n":3}"#);
        let err = airbyte(r#"{"type":"LEGACY","data":{}}"#).unwrap_err();
        assert!(err.contains("LEGACY"), "{err}");
        let err = airbyte(r#"{"type":"RECORDS"}"#).unwrap_err();
        assert!(err.contains("RECORDS"), "{err}");
    }

    #[test]
    fn formats_are_named() {
        for f in [ProtocolFormat::Singer, ProtocolFormat::Airbyte] {
            assert_eq!(ProtocolFormat::parse(f.as_str()), Some(f));
        }
        assert_eq!(ProtocolFormat::parse("csv"), None);
    }
}
