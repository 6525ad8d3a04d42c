//! `sluice serve`, through the real binary on a free loopback port: runs
//! on a schedule and on demand through the HTTP API, one run per instance
//! at a time (409), cross-site requests refused, next run times that
//! survive a restart, SIGTERM that lets the running run stop at its next
//! commit, cancelling one run, bearer tokens, quarantine and drift
//! through the API, and Prometheus `/metrics` parsed by a text-format
//! parser. Every upstream is a loopback fixture the test starts.

use crate::common;

mod dashboard;

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

/// 30 items, every 5th with a string amount (quarantined), ids from 20
/// on with a new field (drift).
fn start_flawed_items() -> Running {
    let (router, _) = items::router(ItemsConfig {
        total: 30,
        wrong_type_every: Some(5),
        drift_from: Some(20),
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
    /// The `Authorization` header every request carries, if any.
    auth: Option<String>,
}

/// A good API token for the tests.
const TOKEN: &str = "test-token-0123456789";

impl Server {
    fn start(config_file: &Path) -> Server {
        Self::start_with(config_file, "127.0.0.1:0", &[])
    }

    /// Started on `listen`, with `env` added to its environment.
    fn start_with(config_file: &Path, listen: &str, env: &[(&str, &str)]) -> Server {
        Self::start_args(config_file, listen, env, &[])
    }

    /// ... and `args` added to its command line.
    fn start_args(config_file: &Path, listen: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("serve")
            .arg("--config-file")
            .arg(config_file)
            .args(["--listen", listen])
            .args(args)
            .envs(env.iter().copied())
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
        // A server on every address is reached through loopback.
        let addr = addr.replace("0.0.0.0", "127.0.0.1");
        let server = Server {
            child,
            addr,
            stderr,
            auth: env
                .iter()
                .find(|(k, _)| *k == "SLUICE_API_TOKEN")
                .map(|(_, v)| format!("Bearer {v}")),
        };
        server.poll("/healthz is up", || server.get("/healthz").0 == 200);
        server
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `METHOD path` with `headers` and `body`: (status, head, body).
    /// Carries the server's token unless `headers` has an
    /// `Authorization` of its own.
    fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String, String) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        let own_auth = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if let (Some(auth), false) = (&self.auth, own_auth) {
            req.push_str(&format!("Authorization: {auth}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        stream.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
        (status, head.to_string(), body.to_string())
    }

    /// `METHOD path` with `headers`: (status, JSON body).
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        self.request_body(method, path, headers, "")
    }

    fn request_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        let (status, _, text) = self.raw(method, path, headers, body);
        let body = serde_json::from_str(&text)
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

    /// Wait until run `id` has ended with `status` and the server is done
    /// with it (its instance no longer lists it as running, so its metrics
    /// and alerts are counted: the run log holds the run's end a moment
    /// before that); then the run.
    fn await_run(&self, id: &str, status: &str) -> Value {
        let mut run = Value::Null;
        self.poll(&format!("run {id} to end {status}"), || {
            run = self.get(&format!("/api/v1/runs/{id}")).1;
            run["status"] == status && {
                let name = run["connector"].as_str().unwrap_or_default();
                self.instance(name)["running"] != id
            }
        });
        run
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
    assert!(out.stderr.contains("SLUICE_API_TOKEN"), "{out:?}");

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

/// The samples of a scrape of `/metrics`, parsed by the reference
/// OpenMetrics parser (`None` only where the test peers' venv is missing
/// and `SLUICE_SKIP_PROTOCOL_PEERS` is set).
fn scrape(server: &Server) -> Option<Vec<Value>> {
    let (code, head, body) = server.raw("GET", "/metrics", &[], "");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let venv = sluice_fixture::peers::venv()?;
    Some(sluice_fixture::peers::openmetrics_samples(&venv, &body))
}

/// The value of the sample `name` with (at least) `labels`.
fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
}

#[test]
fn metrics_count_runs_records_and_http_and_quarantine_and_drift_are_served() {
    let s = Scratch::new();
    let fx = start_flawed_items();
    let toml = format!(
        "db = \"sluice.db\"\nconnectors_dir = \"{}\"\n{}",
        guest("items").parent().unwrap().display(),
        items_instance("shop", &fx, "")
    );
    let config_file = s.write("sluice.toml", &toml);
    let server = Server::start(&config_file);

    if let Some(before) = scrape(&server) {
        assert_eq!(sample(&before, "sluice_running_runs", &[]), Some(0.0));
        assert_eq!(
            sample(&before, "sluice_runs_total", &[("instance", "shop")]),
            None,
            "no run yet"
        );
    }

    let (code, body) = server.post("/api/v1/instances/shop/runs", &[]);
    assert_eq!(code, 202, "{body}");
    let id = body["run_id"].as_str().unwrap().to_string();
    let run = server.await_run(&id, "succeeded");
    // The runs API pages and filters in the store; an unknown status is
    // refused.
    let (code, page) = server.get("/api/v1/runs?instance=shop&status=succeeded&limit=1");
    assert_eq!(code, 200, "{page}");
    assert_eq!(
        (page["total"].as_u64(), page["runs"][0]["id"].as_str()),
        (Some(1), Some(id.as_str()))
    );
    let (_, page) = server.get("/api/v1/runs?instance=shop&limit=1&offset=1");
    assert_eq!(
        (
            page["total"].as_u64(),
            page["runs"].as_array().map(Vec::len)
        ),
        (Some(1), Some(0))
    );
    let (code, body) = server.get("/api/v1/runs?status=sideways");
    assert_eq!(code, 400, "{body}");
    if let Some(m) = scrape(&server) {
        let shop = ("instance", "shop");
        assert_eq!(
            sample(&m, "sluice_runs_total", &[shop, ("status", "succeeded")]),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &m,
                "sluice_records_emitted_total",
                &[shop, ("stream", "items")]
            ),
            Some(30.0)
        );
        assert_eq!(
            sample(
                &m,
                "sluice_records_quarantined_total",
                &[shop, ("stream", "items")]
            ),
            Some(6.0)
        );
        assert_eq!(
            sample(
                &m,
                "sluice_records_upserted_total",
                &[shop, ("stream", "items")]
            ),
            run["records_upserted"].as_f64()
        );
        assert_eq!(
            sample(&m, "sluice_http_requests_total", &[shop, ("outcome", "ok")]),
            run["http_requests"].as_f64()
        );
        assert_eq!(
            sample(&m, "sluice_run_duration_seconds_count", &[shop]),
            Some(1.0)
        );
        let last = sample(&m, "sluice_last_success_timestamp_seconds", &[shop]).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(last > now - 3600.0 && last <= now + 1.0, "{last} vs {now}");
        assert_eq!(sample(&m, "sluice_running_runs", &[]), Some(0.0));
        assert!(
            !m.iter().any(|x| x["labels"]
                .as_object()
                .unwrap()
                .values()
                .any(|v| v.as_str().unwrap().contains(&id))),
            "a run id became a label"
        );
        let counter = m.iter().find(|x| x["name"] == "sluice_runs_total").unwrap();
        assert_eq!(counter["type"], "counter", "{counter}");
        let duration = m
            .iter()
            .find(|x| x["name"] == "sluice_run_duration_seconds_count")
            .unwrap();
        assert_eq!(duration["type"], "histogram", "{duration}");
        assert_eq!(duration["unit"], "seconds", "{duration}");
    }

    // Quarantine through the API: list, show, edit, replay.
    let (code, q) = server.get("/api/v1/instances/shop/quarantine");
    assert_eq!(code, 200, "{q}");
    let entries = q["quarantine"].as_array().unwrap();
    assert_eq!(entries.len(), 6, "{q}");
    let first = &entries[0];
    let qid = first["id"].as_i64().unwrap();
    let (code, shown) = server.get(&format!("/api/v1/instances/shop/quarantine/{qid}"));
    assert_eq!(code, 200, "{shown}");
    assert_eq!(shown["record"], first["record"]);
    let mut fixed: Value = serde_json::from_str(first["record"].as_str().unwrap()).unwrap();
    fixed["amount"] = serde_json::json!(1.5);
    let path = format!("/api/v1/instances/shop/quarantine/{qid}");
    let (code, body) = server.request_body("PUT", &path, &[], "[1, 2]");
    assert_eq!(code, 400, "not an object: {body}");
    let (code, body) = server.request_body(
        "PUT",
        &path,
        &[("Origin", "http://evil.example")],
        &fixed.to_string(),
    );
    assert_eq!(code, 403, "a cross-site edit: {body}");
    let (code, edited) = server.request_body("PUT", &path, &[], &fixed.to_string());
    assert_eq!(code, 200, "{edited}");
    assert_eq!(edited["original_record"], first["record"], "{edited}");
    let (code, body) =
        server.request_body("PUT", "/api/v1/instances/shop/quarantine/999999", &[], "{}");
    assert_eq!(code, 404, "{body}");
    let (code, summary) = server.request_body(
        "POST",
        "/api/v1/instances/shop/quarantine/replay",
        &[],
        &format!("{{\"ids\": [{qid}]}}"),
    );
    assert_eq!(code, 200, "{summary}");
    assert_eq!(summary["replayed"], 1, "{summary}");
    let (_, q) = server.get("/api/v1/instances/shop/quarantine");
    assert_eq!(q["quarantine"].as_array().unwrap().len(), 5, "{q}");
    let (_, q) = server.get("/api/v1/instances/shop/quarantine?all=true&limit=2");
    assert_eq!(q["quarantine"].as_array().unwrap().len(), 2, "{q}");
    let (code, _) = server.get("/api/v1/instances/nope/quarantine");
    assert_eq!(code, 404);

    // Drift and the registry.
    let (code, drift) = server.get("/api/v1/drift?instance=shop");
    assert_eq!(code, 200, "{drift}");
    let events = drift["drift"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["path"].as_str().unwrap_or("").contains("region")),
        "{drift}"
    );
    let (code, _) = server.get("/api/v1/drift?instance=nope");
    assert_eq!(code, 404);
    let (code, reg) = server.get("/api/v1/connectors");
    assert_eq!(code, 200, "{reg}");
    assert_eq!(reg["entries"]["items"]["name"], "items", "{reg}");

    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn sigterm_stops_a_run_that_never_commits_after_the_grace_given() {
    let s = Scratch::new();
    // 100 records committed, then a spin that never commits again.
    let toml = format!(
        "db = \"sluice.db\"\n\n[instances.spin]\ncomponent = \"{}\"\n\
         config = {{ behaviour = \"loop\", committed = 100 }}\n\
         limits = {{ fuel = 1000000000000, timeout = \"10m\" }}\n",
        guest("misbehave").display()
    );
    let config_file = s.write("sluice.toml", &toml);
    let refused = sluice([
        "serve",
        "--config-file",
        config_file.to_str().unwrap(),
        "--grace",
        "2h",
    ]);
    assert!(!refused.ok);
    assert!(refused.stderr.contains("at most 1h"), "{}", refused.stderr);

    let server = Server::start_args(&config_file, "127.0.0.1:0", &[], &["--grace", "1s"]);
    let (_, body) = server.post("/api/v1/instances/spin/runs", &[]);
    let id = body["run_id"].as_str().unwrap().to_string();
    let db = s.path("sluice.db");
    server.poll("the first commit", || {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM spin__items", [], |r| r.get(0)))
            .unwrap_or(0i64)
            == 100
    });
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("or within 1s"), "{log}");
    let shown = sluice(["runs", "show", &id, "--json", "--db", db.to_str().unwrap()]);
    let run: Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(run["status"], "cancelled", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("no commit within the 1s grace period"),
        "{run}"
    );
    assert_eq!(run["records_upserted"], 100, "{run}");
}

#[test]
fn one_run_is_cancelled_through_the_api_and_the_server_goes_on() {
    let s = Scratch::new();
    let toml = format!(
        "db = \"sluice.db\"\n\n[instances.slow]\ncomponent = \"{}\"\n\
         config = {{ behaviour = \"emit_forever\", size = 10, commit_every = 100 }}\n\
         limits = {{ max_emit_bytes = \"10GiB\", timeout = \"10m\" }}\n",
        guest("misbehave").display()
    );
    let config_file = s.write("sluice.toml", &toml);
    let server = Server::start(&config_file);
    let rows = || {
        rusqlite::Connection::open(s.path("sluice.db"))
            .and_then(|c| c.query_row("SELECT count(*) FROM slow__items", [], |r| r.get(0)))
            .unwrap_or(0i64)
    };
    let (code, body) = server.post("/api/v1/instances/slow/runs", &[]);
    assert_eq!(code, 202, "{body}");
    let id = body["run_id"].as_str().unwrap().to_string();
    server.poll("the slow run to have committed", || rows() >= 300);
    let cancel = format!("/api/v1/runs/{id}/cancel");
    let (code, body) = server.post(&cancel, &[("Origin", "http://evil.example")]);
    assert_eq!(code, 403, "a cross-site cancel: {body}");
    let (code, body) = server.post(&cancel, &[]);
    assert_eq!(code, 202, "{body}");
    let run = server.await_run(&id, "cancelled");
    let committed = rows();
    assert_eq!(run["records_upserted"].as_i64(), Some(committed), "{run}");
    assert!(
        committed > 0 && committed % 100 == 0,
        "stopped at a commit: {committed}"
    );
    let (code, body) = server.post(&cancel, &[]);
    assert_eq!(code, 409, "it has ended: {body}");
    assert!(
        body["error"].as_str().unwrap().contains("cancelled"),
        "{body}"
    );
    let (code, _) = server.post("/api/v1/runs/no-such-run/cancel", &[]);
    assert_eq!(code, 404);

    // The server still serves: another run starts, and is stopped at once.
    let (code, body) = server.post("/api/v1/instances/slow/runs", &[]);
    assert_eq!(code, 202, "the server stopped with the run: {body}");
    let id2 = body["run_id"].as_str().unwrap().to_string();
    server.poll("the second run to commit", || rows() >= committed + 300);
    let (code, body) = server.post(&format!("/api/v1/runs/{id2}/cancel?now=true"), &[]);
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["cancel"], "now");
    server.await_run(&id2, "cancelled");
    if let Some(m) = scrape(&server) {
        let cancelled = [("instance", "slow"), ("status", "cancelled")];
        assert_eq!(sample(&m, "sluice_runs_total", &cancelled), Some(2.0));
    }
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn a_token_guards_every_endpoint_but_the_health_checks() {
    let s = Scratch::new();
    let fx = start_items(3);
    let config_file = s.write(
        "sluice.toml",
        format!("db = \"sluice.db\"\n{}", items_instance("a", &fx, "")),
    );
    // A token is what lets the server listen beyond loopback.
    let server = Server::start_with(&config_file, "0.0.0.0:0", &[("SLUICE_API_TOKEN", TOKEN)]);
    for path in ["/healthz", "/readyz"] {
        let (code, _, _) = server.raw("GET", path, &[("Authorization", "")], "");
        assert_eq!(code, 200, "{path} needs no token");
    }
    for (method, path) in [
        ("GET", "/api/v1/instances"),
        ("GET", "/api/v1/runs"),
        ("GET", "/metrics"),
        ("POST", "/api/v1/instances/a/runs"),
        ("GET", "/api/v1/no-such-endpoint"),
    ] {
        for bad in ["", "Bearer wrong-token-0123456789", "Basic dGVzdA==", TOKEN] {
            let (code, head, body) = server.raw(method, path, &[("Authorization", bad)], "");
            assert_eq!(code, 401, "{method} {path} with {bad:?}: {body}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{head}"
            );
            assert!(!body.contains(TOKEN), "{body}");
        }
    }
    let (code, body) = server.get("/api/v1/instances");
    assert_eq!(code, 200, "with the token: {body}");
    let (code, body) = server.post("/api/v1/instances/a/runs", &[]);
    assert_eq!(code, 202, "{body}");
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains(TOKEN), "the token reached the log: {log}");

    // From the file, as a reference; a short token is refused.
    let token_file = s.write("token", format!("{TOKEN}\n"));
    let config_file = s.write(
        "sluice.toml",
        format!(
            "db = \"sluice.db\"\napi_token = \"file:{}\"\n{}",
            token_file.display(),
            items_instance("a", &fx, "")
        ),
    );
    let server = Server::start_with(&config_file, "127.0.0.1:0", &[]);
    let (code, _, _) = server.raw("GET", "/api/v1/instances", &[], "");
    assert_eq!(code, 401, "the file's token is required on loopback too");
    let bearer = format!("Bearer {TOKEN}");
    let (code, _, body) = server.raw(
        "GET",
        "/api/v1/instances",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(code, 200, "{body}");
    drop(server);
    let out = common::sluice_env(
        [
            "serve".as_ref(),
            "--config-file".as_ref(),
            config_file.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ],
        &[("SLUICE_API_TOKEN", "short")],
    );
    assert!(!out.ok, "{out:?}");
    assert!(out.stderr.contains("shorter than 16 characters"), "{out:?}");
}

/// Send `signal` to the server.
fn signal(server: &Server, signal: &str) {
    let ok = Command::new("kill")
        .args([signal, &server.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {signal}");
}

#[test]
fn sighup_reloads_the_config_and_a_bad_file_keeps_the_old_one() {
    let s = Scratch::new();
    let fx = start_items(4);
    let head = "db = \"sluice.db\"\n";
    let config_file = s.write(
        "sluice.toml",
        format!(
            "{head}{}{}",
            items_instance("kept", &fx, "every = \"1h\""),
            items_instance("dropped", &fx, "")
        ),
    );
    let server = Server::start(&config_file);
    let kept_next = server.instance("kept")["next_run_at"].clone();
    assert!(kept_next.is_string(), "{kept_next}");

    // Added, removed, rescheduled (cron in a time zone, with jitter).
    s.write(
        "sluice.toml",
        format!(
            "{head}{}{}",
            items_instance(
                "kept",
                &fx,
                "schedule = \"0 0 9 * * *\"\ntimezone = \"Europe/Berlin\"\njitter = \"10s\""
            ),
            items_instance("added", &fx, "every = \"1s\"")
        ),
    );
    signal(&server, "-HUP");
    server.poll("the added instance to run", || {
        server.get("/api/v1/instances").1["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "added")
            && !server.runs("added", "succeeded").is_empty()
    });
    let (_, list) = server.get("/api/v1/instances");
    let names: Vec<&str> = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["added", "kept"], "{list}");
    let kept = server.instance("kept");
    assert_eq!(kept["schedule"], "0 0 9 * * *", "{kept}");
    assert_eq!(kept["timezone"], "Europe/Berlin", "{kept}");
    assert_eq!(kept["jitter"], "10s", "{kept}");
    assert_ne!(kept["next_run_at"], kept_next, "rescheduled: {kept}");
    let (code, _) = server.post("/api/v1/instances/dropped/runs", &[]);
    assert_eq!(code, 404, "a removed instance is gone");
    assert!(
        server.log().contains("configuration reloaded"),
        "{}",
        server.log()
    );

    // A bad file: one clear error, nothing changes, the server goes on.
    s.write(
        "sluice.toml",
        format!("{head}{}", items_instance("kept", &fx, "every = \"soon\"")),
    );
    signal(&server, "-HUP");
    server.poll("the reload error", || {
        server
            .log()
            .contains("failed, keeping the old configuration")
    });
    let log = server.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("keeping the old configuration"))
        .collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("\"soon\" is not a duration"), "{log}");
    let (_, after) = server.get("/api/v1/instances");
    assert_eq!(after["instances"].as_array().unwrap().len(), 2, "{after}");
    let ran = server.runs("added", "succeeded").len();
    server.poll("added to go on running", || {
        server.runs("added", "succeeded").len() > ran
    });
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn a_due_run_while_the_last_is_going_is_recorded_as_skipped() {
    let s = Scratch::new();
    let toml = format!(
        "db = \"sluice.db\"\n\n[instances.slow]\ncomponent = \"{}\"\nevery = \"1s\"\n\
         config = {{ behaviour = \"emit_forever\", size = 10, commit_every = 100 }}\n\
         limits = {{ max_emit_bytes = \"10GiB\", timeout = \"10m\" }}\n",
        guest("misbehave").display()
    );
    let config_file = s.write("sluice.toml", &toml);
    let server = Server::start(&config_file);
    server.poll("a skipped run in the run log", || {
        !server.runs("slow", "skipped").is_empty()
    });
    let skipped = server.runs("slow", "skipped")[0].clone();
    let running = server.runs("slow", "running");
    assert_eq!(running.len(), 1, "{running:?}");
    let reason = skipped["error"].as_str().unwrap();
    assert!(
        reason.contains("still going") && reason.contains(running[0]["id"].as_str().unwrap()),
        "{skipped}"
    );
    assert_eq!(skipped["records_emitted"], 0);
    let slow = server.instance("slow");
    assert_eq!(slow["health"], "running", "{slow}");
    assert!(slow["skipped_runs"].as_u64().unwrap() >= 1, "{slow}");
    if let Some(m) = scrape(&server) {
        assert!(
            sample(&m, "sluice_runs_skipped_total", &[("instance", "slow")]).unwrap() >= 1.0,
            "{m:?}"
        );
    }
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    let out = sluice([
        "runs".as_ref(),
        "--db".as_ref(),
        s.path("sluice.db").as_os_str(),
    ]);
    assert!(out.ok, "{out:?}");
    assert!(
        out.stdout.contains("skipped"),
        "`sluice runs` shows it: {out:?}"
    );
}

#[test]
fn alert_rules_fire_once_resolve_and_reach_webhooks_with_retries() {
    use sluice_fixture::webhook;
    let s = Scratch::new();
    let fx = start_items(3);
    // The JSON hook refuses its first request: the server retries.
    let (router, json_seen) = webhook::router(1);
    let json_hook = Running::start(router, 0).unwrap();
    let (router, slack_seen) = webhook::router(0);
    let slack_hook = Running::start(router, 0).unwrap();
    let toml = format!(
        "db = \"sluice.db\"\n\
         [alerts]\nevaluate_every = \"1s\"\nrepeat_interval = \"1h\"\n\
         [[alerts.webhooks]]\nurl = \"{}/hook\"\n\
         [[alerts.webhooks]]\nurl = \"env:SLUICE_TEST_SLACK_URL\"\nformat = \"slack\"\n\
         [[alerts.rules]]\nname = \"failing\"\nkind = \"failure_rate\"\nwindow = \"1h\"\n\
         threshold = 0.5\ninstances = [\"broken\"]\n\
         [[alerts.rules]]\nname = \"stale\"\nkind = \"staleness\"\nafter = \"2s\"\n\
         instances = [\"fresh\"]\n\
         \n[instances.broken]\ncomponent = \"{}\"\nconfig = {{ behaviour = \"error\" }}\n{}",
        json_hook.base_url(),
        guest("misbehave").display(),
        items_instance("fresh", &fx, "")
    );
    let config_file = s.write("sluice.toml", &toml);
    let slack_url = format!("{}/hook", slack_hook.base_url());
    let env = [("SLUICE_TEST_SLACK_URL", slack_url.as_str())];
    let server = Server::start_with(&config_file, "127.0.0.1:0", &env);
    let bodies_of = |rule: &str, state: &str| -> Vec<Value> {
        json_seen
            .bodies()
            .into_iter()
            .filter(|b| b["rule"] == rule && b["state"] == state)
            .collect()
    };

    // `fresh` never succeeded: stale after 2 s (the timer finds it).
    server.poll("the staleness alert", || {
        !bodies_of("stale", "firing").is_empty()
    });
    assert_eq!(
        json_seen.refused(),
        1,
        "the refused first attempt was retried"
    );
    let fired = &bodies_of("stale", "firing")[0];
    assert_eq!(fired["instance"], "fresh", "{fired}");
    assert_eq!(fired["kind"], "staleness", "{fired}");
    assert!(
        fired["message"]
            .as_str()
            .unwrap()
            .contains("without a successful run"),
        "{fired}"
    );
    server.poll("the Slack-format copy", || {
        slack_seen.bodies().iter().any(|b| {
            b["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("[FIRING] stale (staleness) on instance fresh"))
        })
    });
    // A successful run resolves it.
    let (code, body) = server.post("/api/v1/instances/fresh/runs", &[]);
    assert_eq!(code, 202, "{body}");
    server.poll("stale to resolve", || {
        !bodies_of("stale", "resolved").is_empty()
    });

    // Two failed runs: one alert, not two.
    for _ in 0..2 {
        let (code, body) = server.post("/api/v1/instances/broken/runs", &[]);
        assert_eq!(code, 202, "{body}");
        let id = body["run_id"].as_str().unwrap().to_string();
        server.await_run(&id, "failed");
    }
    server.poll("the failure-rate alert", || {
        !bodies_of("failing", "firing").is_empty()
    });
    let evaluations = |server: &Server| {
        server.get("/api/v1/alerts").1["evaluations"]
            .as_u64()
            .unwrap()
    };
    let now = evaluations(&server);
    server.poll("two more evaluations", || evaluations(&server) >= now + 2);
    assert_eq!(
        bodies_of("failing", "firing").len(),
        1,
        "re-sent before the repeat interval"
    );
    let (code, alerts) = server.get("/api/v1/alerts");
    assert_eq!(code, 200, "{alerts}");
    let firing: Vec<&str> = alerts["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["rule"].as_str().unwrap())
        .collect();
    assert_eq!(firing, ["failing"], "{alerts}");
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");

    // Kept in the run log: `sluice alerts` lists it, and a restarted
    // server does not send it again.
    let out = sluice([
        "alerts".as_ref(),
        "--config-file".as_ref(),
        config_file.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(out.ok, "{out:?}");
    let listed: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(listed["firing"][0]["rule"], "failing", "{listed}");
    assert_eq!(listed["firing"].as_array().unwrap().len(), 1, "{listed}");
    let events: Vec<(&str, &str, bool)> = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["rule"].as_str().unwrap(),
                e["event"].as_str().unwrap(),
                e["delivered"].as_bool().unwrap(),
            )
        })
        .collect();
    let of = |rule: &str| -> Vec<(&str, bool)> {
        let mut v: Vec<(&str, bool)> = events
            .iter()
            .filter(|e| e.0 == rule)
            .map(|e| (e.1, e.2))
            .collect();
        v.reverse();
        v
    };
    assert_eq!(of("failing"), [("firing", true)], "{listed}");
    // Stale fired, resolved (and may have fired again since: 2 s after
    // the success).
    assert_eq!(
        of("stale")[..2],
        [("firing", true), ("resolved", true)],
        "{listed}"
    );
    let text = sluice([
        "alerts".as_ref(),
        "--config-file".as_ref(),
        config_file.as_os_str(),
    ]);
    assert!(text.ok && text.stdout.contains("firing:"), "{text:?}");
    let server = Server::start_with(&config_file, "127.0.0.1:0", &env);
    let now = evaluations(&server);
    server.poll("two evaluations after the restart", || {
        evaluations(&server) >= now + 2
    });
    assert_eq!(
        bodies_of("failing", "firing").len(),
        1,
        "re-sent after a restart"
    );
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn a_run_is_served_with_its_guest_log_lines() {
    let s = Scratch::new();
    let (router, _) = sluice_fixture::latency::router(Duration::ZERO);
    let fx = Running::start(router, 0).unwrap();
    let toml = format!(
        "db = \"sluice.db\"\n\n[instances.echo]\ncomponent = \"{guest}\"\n\
         allow_hosts = [\"127.0.0.1:{port}\"]\n\
         config = {{ behaviour = \"echo\", url = \"{base}/pages/3\" }}\n\
         \n[instances.spam]\ncomponent = \"{guest}\"\nconfig = {{ behaviour = \"log_spam\" }}\n\
         limits = {{ fuel = 300000000 }}\n",
        guest = guest("misbehave").display(),
        port = fx.addr.port(),
        base = fx.base_url(),
    );
    let config_file = s.write("sluice.toml", &toml);
    let server = Server::start(&config_file);
    let run = |name: &str| {
        let (code, body) = server.post(&format!("/api/v1/instances/{name}/runs"), &[]);
        assert_eq!(code, 202, "{body}");
        let id = body["run_id"].as_str().unwrap().to_string();
        server.poll("the run to end", || {
            let st = server.get(&format!("/api/v1/runs/{id}")).1["status"].clone();
            st != "running" && st != Value::Null
        });
        server.get(&format!("/api/v1/runs/{id}")).1
    };
    let echo = run("echo");
    assert_eq!(echo["status"], "failed", "{echo}");
    let log = echo["log"].as_array().unwrap();
    assert!(
        log.iter()
            .any(|l| l["level"] == "error" && l["message"] == "upstream said: page-3"),
        "{echo}"
    );
    // `sluice runs show` prints them too (and `--json` carries them).
    let db = s.path("sluice.db");
    let id = echo["id"].as_str().unwrap();
    let shown = sluice(["runs", "show", id, "--db", db.to_str().unwrap()]);
    assert!(shown.ok, "{}", shown.stderr);
    assert!(
        shown
            .stdout
            .lines()
            .any(|l| l.contains("error") && l.ends_with("upstream said: page-3")),
        "{}",
        shown.stdout
    );
    let shown = sluice(["runs", "show", id, "--json", "--db", db.to_str().unwrap()]);
    let json: Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(json["log"], echo["log"], "{json}");
    let spam = run("spam");
    assert_eq!(spam["status"], "fuel_exhausted", "{spam}");
    let log = spam["log"].as_array().unwrap();
    assert_eq!(log.len(), 1000, "the first MAX_KEPT_LOG_LINES are kept");
    assert_eq!(log[999]["seq"], 999);
    assert!(log
        .iter()
        .all(|l| l["message"] == "misbehave: spam spam spam spam"));
    let (status, log) = server.stop();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    assert_eq!(status.code(), Some(0), "{tail:?}");
}
