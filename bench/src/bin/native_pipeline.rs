//! The sandbox-free baseline of `just bench`: the same fetch → parse →
//! validate → upsert the `items` connector and Sluice's pipeline do, in
//! plain native Rust. HTTP keep-alive (reqwest), serde_json, a compiled
//! JSON Schema (jsonschema, the connector's schema), and SQLite (16 KiB pages, WAL,
//! `synchronous=NORMAL`, a prepared upsert, one transaction per page with
//! the cursor) into the same table layout Sluice writes.
//!
//! `native-pipeline BASE_URL DB [PAGE_SIZE]`; prints `{"rows": N}`.

use std::process::ExitCode;

use serde_json::{json, Value};

/// Page size when none is given (the items connector's default).
const DEFAULT_PAGE_SIZE: usize = 1_000;

fn schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["id", "updated_at", "name"],
        "properties": {
            "id": {"type": "integer"},
            "updated_at": {"type": "string"},
            "name": {"type": "string"},
            "email": {"type": "string"},
            "amount": {"type": "number"},
            "active": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "version": {"type": "integer"},
            "note": {"type": "string"}
        }
    })
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn run(base: &str, db: &str, page_size: usize) -> Result<u64, Box<dyn std::error::Error>> {
    let validator = jsonschema::validator_for(&schema())?;
    let mut conn = rusqlite::Connection::open(db)?;
    conn.execute_batch(
        "PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, updated_at TEXT, name TEXT,
             email TEXT, amount REAL, active INTEGER, tags TEXT, version INTEGER, note TEXT,
             _record TEXT NOT NULL, _run_id TEXT NOT NULL, _synced_at TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT, errors TEXT);
         CREATE TABLE IF NOT EXISTS state (stream TEXT PRIMARY KEY, value TEXT);",
    )?;
    let client = reqwest::Client::new();
    let run_id = format!("native-{}", std::process::id());
    let mut cursor: Option<String> = conn
        .query_row("SELECT value FROM state WHERE stream = 'items'", [], |r| {
            r.get(0)
        })
        .ok();
    let since = cursor.clone();
    let mut token: Option<String> = None;
    let mut rows = 0u64;
    loop {
        let mut url = format!("{}/v1/items?limit={page_size}", base.trim_end_matches('/'));
        if let Some(s) = &since {
            url.push_str(&format!("&updated_since={}", encode(s)));
        }
        if let Some(t) = &token {
            url.push_str(&format!("&page_token={}", encode(t)));
        }
        let body = client
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let page: Value = serde_json::from_slice(&body)?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let now = format!("{:?}", std::time::SystemTime::now());
        let tx = conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO items (id, updated_at, name, email, amount, active, tags, version, note, _record, _run_id, _synced_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT(id) DO UPDATE SET updated_at=excluded.updated_at, name=excluded.name,
                   email=excluded.email, amount=excluded.amount, active=excluded.active, tags=excluded.tags,
                   version=excluded.version, note=excluded.note, _record=excluded._record,
                   _run_id=excluded._run_id, _synced_at=excluded._synced_at",
            )?;
            let mut quarantine =
                tx.prepare_cached("INSERT INTO quarantine (record, errors) VALUES (?1, ?2)")?;
            for item in &items {
                let raw = item.to_string();
                let errors: Vec<String> =
                    validator.iter_errors(item).map(|e| e.to_string()).collect();
                if !errors.is_empty() {
                    quarantine.execute(rusqlite::params![raw, errors.join("; ")])?;
                    continue;
                }
                if let Some(u) = item["updated_at"].as_str() {
                    if cursor.as_deref().is_none_or(|c| u > c) {
                        cursor = Some(u.to_string());
                    }
                }
                upsert.execute(rusqlite::params![
                    item["id"].as_i64(),
                    item["updated_at"].as_str(),
                    item["name"].as_str(),
                    item["email"].as_str(),
                    item["amount"].as_f64(),
                    item["active"].as_bool(),
                    item.get("tags").map(Value::to_string),
                    item["version"].as_i64(),
                    item["note"].as_str(),
                    raw,
                    run_id,
                    now,
                ])?;
                rows += 1;
            }
            tx.execute(
                "INSERT INTO state (stream, value) VALUES ('items', ?1)
                 ON CONFLICT(stream) DO UPDATE SET value = excluded.value",
                [&cursor],
            )?;
        }
        tx.commit()?;
        match page["next_page_token"].as_str() {
            Some(t) if !items.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(rows)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: native-pipeline BASE_URL DB [PAGE_SIZE]");
        return ExitCode::from(2);
    }
    let page_size = args
        .get(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or(DEFAULT_PAGE_SIZE);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(&args[0], &args[1], page_size)) {
        Ok(rows) => {
            println!("{{\"rows\": {rows}}}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
