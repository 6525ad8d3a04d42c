//! `sluice serve`, through the real binary on a free loopback port: runs
//! on a schedule and on demand through the HTTP API, one run per instance
//! at a time (409), cross-site requests refused, next run times that
//! survive a restart, and SIGTERM that lets the running run stop at its
//! next commit. Every upstream is a loopback fixture the test starts.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{guest, sluice, Scratch};
use serde_json::Value;
use sluice_fixture::items::{self, ItemsConfig};
use sluice_fixture::Running;

/// How long a poll waits before the test fails (generous: the machine may
/// be busy; nothing here asserts how long anything took).
const DEADLINE: Duration = Duration::from_secs(120);

fn start_items(total: u64) -> Running {
    let (router, _) = items::router(ItemsConfig {
        total,
        ..Default::default()
    });
    Running::start(router, 0).unwrap()
}

/// An `items` instance against `fx`, with `extra` lines.
fn items_instance(name: &str, fx: &Running, extra: &str) -> String {
    format!(
        "\n[instances.{name}]\ncomponent = \"{}\"\nallow_hosts = [\"127.0.0.1:{}\"]\n\
         config = {{ base_url = \"{}\" }}\n{extra}\n",
        guest("items").display(),
        fx.addr.port(),
        fx.base_url()
    )
}

/// A running `sluice serve` and what it printed so far.
struct Server {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(config_file: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("serve")
            .arg("--config-file")
            .arg(config_file)
            .args(["--listen", "127.0.0.1:0"])
            .env("SLUICE_CACHE_DIR", common::cache_dir())
            .env("SLUICE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("sluice serve: listening on http://") {
                    let _ = tx.send(addr.to_string());
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "sluice serve did not say where it listens: {}",
                    stderr.lock().unwrap()
                );
            }
        };
        let server = Server {
            child,
            addr,
            stderr,
        };
        server.poll("/healthz is up", || server.get("/healthz").0 == 200);
        server
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `METHOD path` with `headers`: (status, JSON body).
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n",
            self.addr
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
        let body = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        (status, body)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, &[])
    }

    fn post(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        self.request("POST", path, headers)
    }

    /// Wait until `done` holds (or fail, with the server's log).
    fn poll(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "waited in vain for {what}; server log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The runs of `instance` with `status`.
    fn runs(&self, instance: &str, status: &str) -> Vec<Value> {
        let filter = if status.is_empty() {
            String::new()
        } else {
            format!("&status={status}")
        };
        let (code, body) = self.get(&format!(
            "/api/v1/runs?instance={instance}{filter}&limit=1000"
        ));
        assert_eq!(code, 200, "{body}");
        body["runs"].as_array().unwrap().clone()
    }

    fn instance(&self, name: &str) -> Value {
        let (code, body) = self.get("/api/v1/instances");
        assert_eq!(code, 200, "{body}");
        body["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("no instance {name} in {body}"))
            .clone()
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.log());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sluice serve did not stop after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn scheduled_and_triggered_runs_and_the_next_run_survives_a_restart() {
    let s = Scratch::new();
    let fx = start_items(7);
    let mut toml = String::from("db = \"sluice.db\"\nmax_concurrent_runs = 2\n");
    toml.push_str(&items_instance("tick", &fx, "every = \"1s\""));
    toml.push_str(&items_instance("hourly", &fx, "every = \"1h\""));
    toml.push_str(&items_instance("cron", &fx, "schedule = \"* * * * * *\""));
    toml.push_str(&items_instance("manual", &fx, ""));
    // One that cannot run (its secret's variable is unset) does not keep
    // the server from serving the others.
    toml.push_str(&items_instance(
        "broken",
        &fx,
        "secrets = { TOKEN = \"env:SLUICE_TEST_SURELY_UNSET\" }",
    ));
    let config_file = s.write("sluice.toml", &toml);

    let server = Server::start(&config_file);
    let (code, ready) = server.get("/readyz");
    assert_eq!(code, 200, "{ready}");
    let manual = server.instance("manual");
    assert_eq!(manual["next_run_at"], Value::Null, "{manual}");
    assert_eq!(manual["every"], Value::Null);
    assert_eq!(server.instance("tick")["every"], "1s");
    assert_eq!(server.instance("cron")["schedule"], "* * * * * *");

    // Scheduled instances run on their own: an interval (a new one runs at
    // once, then every second) and a cron expression with seconds.
    server.poll("two scheduled runs of tick", || {
        server.runs("tick", "succeeded").len() >= 2
    });
    server.poll("a scheduled run of cron", || {
        !server.runs("cron", "succeeded").is_empty()
    });
    server.poll("the first run of hourly", || {
        server.runs("hourly", "succeeded").len() == 1
    });
    assert!(server.runs("manual", "succeeded").is_empty());
    // The first run read everything; later ones resume from its state.
    let first = server.runs("tick", "succeeded").last().unwrap().clone();
    assert_eq!(first["records_upserted"], 7, "{first}");

    // On demand.
    let (code, body) = server.post("/api/v1/instances/manual/runs", &[]);
    assert_eq!(code, 202, "{body}");
    let id = body["run_id"].as_str().unwrap().to_string();
    server.poll("the triggered run to succeed", || {
        let (code, run) = server.get(&format!("/api/v1/runs/{id}"));
        code == 200 && run["status"] == "succeeded"
    });
    let (_, run) = server.get(&format!("/api/v1/runs/{id}"));
    assert_eq!(run["connector"], "manual", "{run}");
    assert_eq!(run["records_upserted"], 7, "{run}");
    server.poll("the last run of manual in its listing", || {
        server.instance("manual")["health"] == "ok"
    });
    // Its own origin may post; another site may not.
    let own = format!("http://{}", server.addr);
    let (code, body) = server.post("/api/v1/instances/manual/runs", &[("Origin", &own)]);
    assert!(code == 202 || code == 409, "{code} {body}");
    let (code, body) = server.post(
        "/api/v1/instances/manual/runs",
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(code, 403, "{body}");
    let (code, body) = server.post(
        "/api/v1/instances/manual/runs",
        &[("Sec-Fetch-Site", "cross-site")],
    );
    assert_eq!(code, 403, "{body}");
    let (code, body) = server.post("/api/v1/instances/broken/runs", &[]);
    assert_eq!(code, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("SLUICE_TEST_SURELY_UNSET"),
        "{body}"
    );
    assert_eq!(
        server.instance("broken")["last_run"]["status"],
        "not_started"
    );
    // Unknown things.
    let (code, body) = server.post("/api/v1/instances/nope/runs", &[]);
    assert_eq!(code, 404, "{body}");
    let (code, _) = server.get("/api/v1/runs/no-such-run");
    assert_eq!(code, 404);
    let (code, _) = server.get("/api/v1/runs?instance=nope");
    assert_eq!(code, 404);
    // Paging: newest first, `limit` and `offset` over the filtered list.
    let (_, all) = server.get("/api/v1/runs?instance=tick&limit=1000");
    let (_, page) = server.get("/api/v1/runs?instance=tick&limit=1&offset=1");
    assert_eq!(page["runs"].as_array().unwrap().len(), 1);
    assert_eq!(page["runs"][0]["id"], all["runs"][1]["id"]);

    let hourly_next = server.instance("hourly")["next_run_at"].clone();
    assert!(hourly_next.is_string(), "{hourly_next}");
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");

    // Restarted: the persisted next run of hourly is kept (no second run
    // at start), while tick goes on.
    let ticks_before = {
        let conn = common::db(&s.path("sluice.db"));
        common::count(
            &conn,
            "SELECT count(*) FROM _sluice_runs WHERE connector = 'tick'",
        )
    };
    let server = Server::start(&config_file);
    assert_eq!(server.instance("hourly")["next_run_at"], hourly_next);
    server.poll("tick to run twice more after the restart", || {
        server.runs("tick", "succeeded").len() as i64 >= ticks_before + 2
    });
    assert_eq!(
        server.runs("hourly", "").len(),
        1,
        "hourly ran again at restart"
    );
    assert_eq!(server.instance("hourly")["next_run_at"], hourly_next);
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn a_second_trigger_while_running_is_409_and_sigterm_lets_the_run_stop_at_a_commit() {
    let s = Scratch::new();
    let toml = format!(
        "db = \"sluice.db\"\n\n[instances.slow]\ncomponent = \"{}\"\n\
         config = {{ behaviour = \"emit_forever\", size = 10, commit_every = 100 }}\n\
         limits = {{ max_emit_bytes = \"10GiB\", timeout = \"10m\" }}\n",
        guest("misbehave").display()
    );
    let config_file = s.write("sluice.toml", &toml);
    let server = Server::start(&config_file);
    let (code, body) = server.post("/api/v1/instances/slow/runs", &[]);
    assert_eq!(code, 202, "{body}");
    let id = body["run_id"].as_str().unwrap().to_string();
    server.poll("the slow run to have committed", || {
        let (code, run) = server.get(&format!("/api/v1/runs/{id}"));
        code == 200
            && run["status"] == "running"
            && rusqlite::Connection::open(s.path("sluice.db"))
                .and_then(|c| c.query_row("SELECT count(*) FROM slow__items", [], |r| r.get(0)))
                .unwrap_or(0i64)
                >= 300
    });
    let (code, body) = server.post("/api/v1/instances/slow/runs", &[]);
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["running"], id.as_str());
    let slow = server.instance("slow");
    assert_eq!(slow["running"], id.as_str(), "{slow}");
    assert_eq!(slow["health"], "running");

    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    let conn = common::db(&s.path("sluice.db"));
    let (status, upserted): (String, i64) = conn
        .query_row(
            "SELECT status, records_upserted FROM _sluice_runs WHERE id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "cancelled", "{log}");
    let rows = common::count(&conn, "SELECT count(*) FROM slow__items");
    assert_eq!(upserted, rows, "the record counts what was committed");
    assert!(rows > 0 && rows % 100 == 0, "{rows}");
}

#[test]
fn serve_refuses_a_non_loopback_address_and_a_bad_schedule() {
    let s = Scratch::new();
    let fx = start_items(1);
    let config_file = s.write(
        "sluice.toml",
        format!("db = \"sluice.db\"\n{}", items_instance("a", &fx, "")),
    );
    let out = sluice([
        "serve".as_ref(),
        "--config-file".as_ref(),
        config_file.as_os_str(),
        "--listen".as_ref(),
        "0.0.0.0:0".as_ref(),
    ]);
    assert!(!out.ok, "{out:?}");
    assert!(out.stderr.contains("not a loopback address"), "{out:?}");
    assert!(out.stderr.contains("authentication"), "{out:?}");

    for (line, expected) in [
        (
            "every = \"soon\"",
            "instance \"a\": `every`: \"soon\" is not a duration",
        ),
        (
            "schedule = \"61 * * * *\"",
            "instance \"a\": `schedule`: \"61 * * * *\" is not a cron expression",
        ),
        (
            "every = \"1m\"\nschedule = \"* * * * *\"",
            "instance \"a\": set `schedule` or `every`, not both",
        ),
        ("catch_up = \"twice\"", "catch_up"),
    ] {
        let config_file = s.write(
            "bad.toml",
            format!("db = \"sluice.db\"\n{}", items_instance("a", &fx, line)),
        );
        let out = sluice([
            "serve".as_ref(),
            "--config-file".as_ref(),
            config_file.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ]);
        assert!(!out.ok, "{line}: {out:?}");
        assert!(out.stderr.contains(expected), "{line}: {out:?}");
    }
}

#[test]
fn a_run_missed_while_down_runs_once_or_is_skipped_as_configured() {
    let s = Scratch::new();
    let fx = start_items(3);
    let mut toml = String::from("db = \"sluice.db\"\n");
    toml.push_str(&items_instance("tick", &fx, "every = \"1s\""));
    toml.push_str(&items_instance(
        "once",
        &fx,
        "every = \"1h\"\ncatch_up = \"once\"",
    ));
    toml.push_str(&items_instance(
        "skip",
        &fx,
        "every = \"1h\"\ncatch_up = \"skip\"",
    ));
    let config_file = s.write("sluice.toml", &toml);
    // As a server that stopped long ago left them: both were due 3 hours
    // ago (so three runs each were missed).
    let missed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3 * 3_600_000;
    let conn = common::db(&s.path("sluice.db"));
    conn.execute_batch(
        "CREATE TABLE _sluice_schedule (instance TEXT PRIMARY KEY, schedule TEXT NOT NULL, \
         next_run_at INTEGER NOT NULL, updated_at TEXT NOT NULL)",
    )
    .unwrap();
    for name in ["once", "skip"] {
        conn.execute(
            "INSERT INTO _sluice_schedule VALUES (?1, 'every:1h', ?2, 'then')",
            rusqlite::params![name, missed],
        )
        .unwrap();
    }
    drop(conn);

    let server = Server::start(&config_file);
    server.poll("the missed run of once", || {
        server.runs("once", "succeeded").len() == 1
    });
    let ticks = server.runs("tick", "succeeded").len();
    server.poll("tick to run twice more", || {
        server.runs("tick", "succeeded").len() >= ticks + 2
    });
    assert_eq!(server.runs("once", "").len(), 1, "once ran more than once");
    assert_eq!(server.runs("skip", "").len(), 0, "skip ran its missed run");
    let conn = common::db(&s.path("sluice.db"));
    let next: i64 = conn
        .query_row(
            "SELECT next_run_at FROM _sluice_schedule WHERE instance = 'skip'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        next > missed + 3 * 3_600_000,
        "skip's next run is from now: {next}"
    );
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}
