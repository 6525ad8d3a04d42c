//! A test guest for the runtime's limit and isolation tests. Its config
//! picks a behaviour; every behaviour first emits `committed` records of
//! stream `items` and commits them, then emits `uncommitted` more, then
//! misbehaves:
//!
//! - `ok`: returns normally.
//! - `loop`: spins forever (fuel or deadline must stop it).
//! - `grow`: allocates memory without bound (the memory limit must stop it).
//! - `panic`: panics (a trap).
//! - `http`: GETs `url` (with `headers`) and fails the run with the host's
//!   error, if any, or with the upstream's status if it is not 2xx.
//! - `echo`: GETs `url` (with `headers`), logs the response body at error
//!   level and fails the run with it (an upstream that echoes what it got).
//!
//! With `must_not_see`, `http` and `echo` fail with a fixed message (which
//! does not quote it) if the host hands the guest that text in an error, a
//! response header or a response body: the check that the host never gives a
//! guest a secret's value.
//! - `error`: returns a connector error.
//! - `post`: like `http`, with a POST of `body` (tests/egress.rs: what a
//!   307/308 redirect carries on).
//!
//! Adversarial behaviours (tests/adversarial.rs):
//!
//! - `recurse`: unbounded non-tail recursion (the wasm stack limit).
//! - `recurse_shadow`: unbounded recursion with frames on the guest's own
//!   shadow stack in linear memory (the guest's stack overflows: a trap).
//! - `memgrow`: `memory.grow` in a loop, ignoring `-1` (the memory limit).
//! - `log_spam`: logs forever (the log cap, then fuel).
//! - `state_spam`: reads state forever (a tight host-call loop; the deadline).
//! - `emit_forever`: emits records with a `size`-byte label forever,
//!   committing every `commit_every` records (0: never).
//! - `tiny_emits`: one tiny record per `sink.emit` call forever, committing
//!   every `commit_every` records (0: never).
//! - `giant_record`: emits one record whose label is `size` bytes.
//! - `giant_state`: commits a state value of `size` bytes.
//! - `undeclared_stream`: emits to a stream the connector never declared.
//! - `not_object`: emits a JSON array as a record.
//! - `http_forever`: GETs `url` forever, ignoring errors.
//! - `spin_alu`: like `spin` with nothing but register arithmetic in the
//!   loop (the worst case for fuel metering).
//! - `spin_wide`: like `spin_alu` with four independent chains (bound by
//!   throughput, not latency).
//! - `json_churn`: `size` rounds of serialising and parsing a 50-record
//!   page with serde_json (branchy code, as real connectors run).
//! - `spin`: `size` rounds of integer hashing, then returns normally (a
//!   CPU-bound guest for measuring what fuel metering costs).
//! - `drift_bomb`: `size` batches (0: forever) of 100 `items` records, each
//!   with `fields` (default 500) undeclared fields no other record has,
//!   each batch one `sink.emit` (about 0.7 MB), committing after every
//!   `commit_every` batches (0: never).
//! - `raw`: emits each of `records` (JSON text, as given) to `stream`
//!   (default `items`) in one batch, then commits.
//! - `send_all`: GETs every one of `urls` (with `headers`) with one
//!   `sluice_sdk::http::send_all` (concurrently in a `@0.2.0` build, one
//!   after the other in a `@0.1.0` one), then emits one `loose` record per
//!   answer, in answer order: `k` its index, `v` `{"status", "body"}` or
//!   `{"error"}`, and commits.
//!
//! Whatever the behaviour, `partitions` of any stream are the config's
//! `partitions` (JSON values); `log_line`, if given, is logged (at warn)
//! before anything else; and `fail_with`, if given, fails the run with that
//! text where the behaviour would succeed (the dashboard's hostile-text
//! test: tests/it/dashboard.rs).
//!
//! Besides `items`, the connector declares `loose`: an untyped key `k` and
//! an untyped `v` (full refresh only).

use serde::Deserialize;
use sluice_sdk::{json, Connector, Error, Reader, Spec, Stream};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    behaviour: String,
    #[serde(default)]
    committed: u64,
    #[serde(default)]
    uncommitted: u64,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    must_not_see: Option<String>,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    commit_every: u64,
    #[serde(default)]
    fields: Option<u64>,
    #[serde(default)]
    records: Vec<String>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    partitions: Vec<sluice_sdk::Value>,
    #[serde(default)]
    log_line: Option<String>,
    #[serde(default)]
    fail_with: Option<String>,
}

/// Recurse `depth` frames deep without a tail call, in wasm locals only,
/// so only the wasm stack limit stops it.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    (recurse(depth + 1).wrapping_mul(3)) ^ depth
}

/// Recurse with a 128-byte frame on the guest's own shadow stack (in linear
/// memory), which overflows before the wasm stack does.
#[inline(never)]
fn recurse_shadow(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    let mut frame = [depth; 16];
    frame = std::hint::black_box(frame);
    recurse_shadow(depth + 1).wrapping_add(frame[(depth % 16) as usize])
}

/// Emit records forever through `emit`, committing every `commit_every`.
fn emit_forever(
    config: &Config,
    reader: &mut Reader,
    mut emit: impl FnMut(&mut Reader, u64) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut id = config.committed + config.uncommitted;
    loop {
        emit(reader, id)?;
        id += 1;
        if config.commit_every > 0 && id % config.commit_every == 0 {
            reader.commit("items", &json!({"last": id}))?;
        }
    }
}

const SAW_FORBIDDEN: &str = "misbehave: the host handed the guest the forbidden text";

/// GET `url` with the configured headers, failing if the host hands the
/// guest `must_not_see` anywhere.
fn get(config: &Config) -> Result<sluice_sdk::http::Response, Error> {
    let url = config
        .url
        .as_deref()
        .ok_or_else(|| Error::Config("url required".into()))?;
    send(config, sluice_sdk::http::Request::get(url))
}

/// POST `body` to `url`, as [`get`].
fn post(config: &Config) -> Result<sluice_sdk::http::Response, Error> {
    let url = config
        .url
        .as_deref()
        .ok_or_else(|| Error::Config("url required".into()))?;
    let body = config.body.clone().unwrap_or_default().into_bytes();
    send(config, sluice_sdk::http::Request::post(url, body))
}

/// Send `req` with the configured headers, failing if the host hands the
/// guest `must_not_see` anywhere.
fn send(
    config: &Config,
    mut req: sluice_sdk::http::Request,
) -> Result<sluice_sdk::http::Response, Error> {
    for (name, value) in &config.headers {
        req = req.header(name.clone(), value.clone());
    }
    let seen = |text: &str| {
        config
            .must_not_see
            .as_deref()
            .is_some_and(|f| text.contains(f))
    };
    match req.send() {
        Err(e) if seen(&format!("{e:?} {e}")) => Err(Error::Internal(SAW_FORBIDDEN.into())),
        Err(e) => Err(e),
        Ok(resp) => {
            let in_headers = resp.headers.iter().any(|(k, v)| seen(k) || seen(v));
            if in_headers || seen(&String::from_utf8_lossy(&resp.body)) {
                return Err(Error::Internal(SAW_FORBIDDEN.into()));
            }
            Ok(resp)
        }
    }
}

struct Misbehave;

fn item(id: u64) -> sluice_sdk::Value {
    json!({"id": id, "n": id * 2, "label": format!("item-{id}")})
}

impl Connector for Misbehave {
    type Config = Config;

    fn spec() -> Spec {
        Spec::new("misbehave", "0.1.0")
            .description("misbehaves on request, for tests")
            .config_schema(json!({"type": "object", "required": ["behaviour"]}))
            .stream(
                Stream::new(
                    "items",
                    json!({"type": "object", "properties": {
                        "id": {"type": "integer"},
                        "n": {"type": "integer"},
                        "label": {"type": "string"}
                    }}),
                )
                .primary_key(["id"])
                .incremental("id"),
            )
            .stream(
                Stream::new(
                    "loose",
                    json!({"type": "object", "properties": {"k": {}, "v": {}}}),
                )
                .primary_key(["k"]),
            )
    }

    fn partitions(config: &Config, _stream: &str) -> Result<Vec<sluice_sdk::Value>, Error> {
        Ok(config.partitions.clone())
    }

    fn read(config: &Config, reader: &mut Reader) -> Result<(), Error> {
        if let Some(line) = &config.log_line {
            sluice_sdk::log::warn(line);
        }
        behave(config, reader)?;
        match &config.fail_with {
            Some(text) => Err(Error::Upstream(text.clone())),
            None => Ok(()),
        }
    }
}

/// What `behaviour` asks for.
fn behave(config: &Config, reader: &mut Reader) -> Result<(), Error> {
    for id in 0..config.committed {
        reader.emit("items", &item(id))?;
    }
    if config.committed > 0 {
        reader.commit("items", &json!({"last": config.committed}))?;
    }
    for id in config.committed..config.committed + config.uncommitted {
        reader.emit("items", &item(id))?;
    }
    reader.flush()?;
    match config.behaviour.as_str() {
        "ok" => Ok(()),
        "loop" => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        "grow" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "panic" => panic!("misbehave: deliberate panic"),
        "http" => {
            get(config)?.error_for_status()?;
            Ok(())
        }
        "post" => {
            post(config)?.error_for_status()?;
            Ok(())
        }
        "echo" => {
            let body = String::from_utf8_lossy(&get(config)?.body).into_owned();
            sluice_sdk::log::error(&format!("upstream said: {body}"));
            Err(Error::Upstream(format!("upstream said: {body}")))
        }
        "recurse" => {
            let r = recurse(0);
            Err(Error::Internal(format!("recursion returned {r}")))
        }
        "recurse_shadow" => {
            let r = recurse_shadow(0);
            Err(Error::Internal(format!("recursion returned {r}")))
        }
        "memgrow" => {
            #[cfg(target_arch = "wasm32")]
            loop {
                // Ignore -1 and keep asking: the host must stop this.
                std::hint::black_box(core::arch::wasm32::memory_grow(0, 16));
            }
            #[cfg(not(target_arch = "wasm32"))]
            Err(Error::Internal("memgrow needs wasm32".into()))
        }
        "log_spam" => loop {
            sluice_sdk::log::info("misbehave: spam spam spam spam");
        },
        "state_spam" => loop {
            std::hint::black_box(reader.state::<sluice_sdk::Value>("items")?);
        },
        "emit_forever" => {
            let label = "x".repeat(config.size as usize);
            emit_forever(config, reader, |r, id| {
                r.emit("items", &json!({"id": id, "n": 0, "label": label}))
            })
        }
        "tiny_emits" => emit_forever(config, reader, |r, id| {
            r.emit("items", &json!({"id": id}))?;
            r.flush()
        }),
        "giant_record" => {
            let label = "x".repeat(config.size as usize);
            reader.emit("items", &json!({"id": 0, "n": 0, "label": label}))?;
            reader.commit("items", &json!({"last": 0}))
        }
        "giant_state" => {
            let value = "s".repeat(config.size as usize);
            reader.commit("items", &json!({"last": value}))
        }
        "undeclared_stream" => {
            reader.emit("nope", &json!({"id": 1}))?;
            reader.flush()
        }
        "not_object" => {
            reader.emit("items", &json!([1, 2, 3]))?;
            reader.flush()
        }
        "spin" => {
            let mut x: u64 = 1;
            for i in 0..config.size {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
                x ^= x >> 29;
            }
            sluice_sdk::log::debug(&format!("spin result {x}"));
            Ok(())
        }
        "spin_alu" => {
            let mut x: u64 = std::hint::black_box(1);
            for i in 0..std::hint::black_box(config.size) {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
                x ^= x >> 29;
            }
            sluice_sdk::log::debug(&format!("spin result {}", std::hint::black_box(x)));
            Ok(())
        }
        "spin_wide" => {
            let mut x = std::hint::black_box([1u64, 2, 3, 4]);
            for i in 0..std::hint::black_box(config.size) {
                for (k, v) in x.iter_mut().enumerate() {
                    *v = v
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(i ^ k as u64);
                    *v ^= *v >> 29;
                }
            }
            sluice_sdk::log::debug(&format!("spin result {:?}", std::hint::black_box(x)));
            Ok(())
        }
        "json_churn" => {
            let page: Vec<sluice_sdk::Value> = (0..50).map(item).collect();
            let mut total = 0usize;
            for _ in 0..config.size {
                let text =
                    serde_json::to_string(&page).map_err(|e| Error::Internal(e.to_string()))?;
                let back: Vec<sluice_sdk::Value> =
                    serde_json::from_str(std::hint::black_box(&text))
                        .map_err(|e| Error::Internal(e.to_string()))?;
                total += back.len();
            }
            sluice_sdk::log::debug(&format!("churned {total}"));
            Ok(())
        }
        "drift_bomb" => {
            let fields = config.fields.unwrap_or(500);
            let mut batch = 0u64;
            while config.size == 0 || batch < config.size {
                for r in 0..100 {
                    let id = config.committed + config.uncommitted + batch * 100 + r;
                    let mut text = format!(r#"{{"id":{id},"n":0,"label":"bomb""#);
                    for f in 0..fields {
                        text.push_str(&format!(r#","f{batch}_{r}_{f}":0"#));
                    }
                    text.push('}');
                    reader.emit_raw("items", text)?;
                }
                reader.flush()?;
                batch += 1;
                if config.commit_every > 0 && batch % config.commit_every == 0 {
                    reader.commit("items", &json!({"last": batch}))?;
                }
            }
            Ok(())
        }
        "raw" => {
            let stream = config.stream.as_deref().unwrap_or("items");
            for record in &config.records {
                reader.emit_raw(stream, record.clone())?;
            }
            reader.commit(stream, &json!({"raw": config.records.len()}))
        }
        "send_all" => {
            let requests = config.urls.iter().map(|url| {
                let mut req = sluice_sdk::http::Request::get(url.clone());
                for (name, value) in &config.headers {
                    req = req.header(name.clone(), value.clone());
                }
                req
            });
            let answers = sluice_sdk::http::send_all(requests);
            if answers.len() != config.urls.len() {
                return Err(Error::Internal(format!(
                    "{} answers to {} requests",
                    answers.len(),
                    config.urls.len()
                )));
            }
            for (i, answer) in answers.into_iter().enumerate() {
                let v = match answer {
                    Ok(r) => json!({
                        "status": r.status,
                        "body": String::from_utf8_lossy(&r.body),
                    }),
                    Err(e) => json!({"error": e.to_string()}),
                };
                reader.emit("loose", &json!({"k": i, "v": v}))?;
            }
            reader.commit("loose", &json!({"answers": config.urls.len()}))
        }
        "http_forever" => loop {
            let _ = std::hint::black_box(get(config));
        },
        "error" => Err(Error::Upstream(
            "misbehave: deliberate connector error".into(),
        )),
        other => Err(Error::Config(format!("unknown behaviour {other:?}"))),
    }
}

sluice_sdk::export_connector!(Misbehave);
