//! `serve-pages`: how fast `sluice serve` answers its dashboard pages and
//! its runs API over a long run history (`just bench-serve`).
//!
//! Seeds one SQLite run log with `--runs` runs (default 100,000) spread
//! over `--instances` instances (default 10), the way the server records
//! them, then starts the release `sluice serve` on it (127.0.0.1, any free
//! port) and times each page `--repeats` times one after the other (p50,
//! p99, max), then the runs API under `--clients` concurrent clients (p50,
//! p99 and requests/s). No assertions: figures only (docs/benchmarks.md).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs seeded when `--runs` is not given (the issue's 100,000).
const DEFAULT_RUNS: u64 = 100_000;
/// Instances they are spread over.
const DEFAULT_INSTANCES: u64 = 10;
/// Times each page is fetched, one after the other.
const DEFAULT_REPEATS: usize = 200;
/// Concurrent API clients (the issue's 50).
const DEFAULT_CLIENTS: usize = 50;
/// Requests each concurrent client makes.
const REQUESTS_PER_CLIENT: usize = 40;

/// Minutes the scheduled-instances figure runs (`--minutes`).
const DEFAULT_MINUTES: u64 = 10;
/// How often each scheduled instance falls due.
const SCHEDULED_EVERY_SECS: u64 = 60;
/// Seconds a due run is given before the end to count as due.
const SETTLE_SECS: u64 = 10;
/// How often the server's RSS is sampled.
const RSS_EVERY: Duration = Duration::from_secs(2);

struct Args {
    runs: u64,
    instances: u64,
    repeats: usize,
    clients: usize,
    /// Scheduled instances for the second figure (0: skip it).
    scheduled: u64,
    minutes: u64,
}

fn args() -> Args {
    let mut a = Args {
        runs: DEFAULT_RUNS,
        instances: DEFAULT_INSTANCES,
        repeats: DEFAULT_REPEATS,
        clients: DEFAULT_CLIENTS,
        scheduled: 0,
        minutes: DEFAULT_MINUTES,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--runs" => a.runs = value(),
            "--instances" => a.instances = value().max(1),
            "--repeats" => a.repeats = value().max(1) as usize,
            "--clients" => a.clients = value().max(1) as usize,
            "--scheduled" => a.scheduled = value(),
            "--minutes" => a.minutes = value().max(1),
            other => panic!(
                "unknown flag {other} (--runs N --instances N --repeats N --clients N \
                 --scheduled N --minutes N)"
            ),
        }
    }
    a
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `sluice serve` on `config`; its address once it listens.
fn serve(config: &Path) -> (Child, String) {
    let mut child = Command::new(repo().join("target/release/sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config-file"])
        .arg(config)
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run target/release/sluice (just bench-serve builds it)");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(a) = line.strip_prefix("sluice serve: listening on http://") {
                    break a.to_string();
                }
            }
            _ => panic!("sluice serve ended before it listened"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// `n` runs of `instances` instances, one a second, into the run log
/// `sluice serve` made.
fn seed(db: &Path, runs: u64, instances: u64) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO _sluice_runs (id, connector, connector_version, component_hash, \
                 started_at, ended_at, duration_ms, status, records_emitted, records_valid, \
                 records_upserted, stream_counts, commits, http_requests, fuel_used, \
                 peak_memory_bytes, error) \
                 VALUES (?1, ?2, '0.1.0', 'seeded', ?3, ?3, ?4, ?5, ?6, ?6, ?6, ?7, 1, ?8, ?9, ?10, ?11)",
            )
            .unwrap();
        let base = 1_700_000_000i64;
        for i in 0..runs {
            let instance = format!("i{}", i % instances);
            let at = chrono_like(base + i as i64);
            let failed = i % 17 == 0;
            let records = 1000 + (i % 300) as i64;
            insert
                .execute(rusqlite::params![
                    format!("seed-{i:08}"),
                    instance,
                    at,
                    200 + (i % 900) as i64,
                    if failed { "failed" } else { "succeeded" },
                    records,
                    format!(
                        r#"{{"items":{{"emitted":{records},"valid":{records},"quarantined":0,"upserted":{records}}}}}"#
                    ),
                    records / 100,
                    records * 40_000,
                    48 << 20,
                    failed.then_some("upstream: 503 Service Unavailable"),
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Unix seconds as RFC 3339 (UTC, milliseconds), as the run log keeps.
fn chrono_like(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    if a.runs > 0 {
        pages(&a, &rt, &client);
    }
    if a.scheduled > 0 {
        scheduled(&a, &rt, &client);
    }
}

/// The pages and the runs API over `--runs` seeded runs.
fn pages(a: &Args, rt: &tokio::runtime::Runtime, client: &reqwest::Client) {
    let dir = tempfile::tempdir().unwrap();
    let misbehave = repo().join("connectors/target/wasm32-unknown-unknown/release/misbehave.wasm");
    let mut toml = format!("db = \"{}\"\n", dir.path().join("runs.db").display());
    for i in 0..a.instances {
        toml.push_str(&format!(
            "[instances.i{i}]\ncomponent = \"{}\"\nconfig = {{ behaviour = \"ok\" }}\n",
            misbehave.display()
        ));
    }
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, toml).unwrap();
    // The server makes the run log; the runs go in while it is down.
    let (child, _) = serve(&config);
    stop(child);
    let t = Instant::now();
    seed(&dir.path().join("runs.db"), a.runs, a.instances);
    println!(
        "seeded {} runs over {} instances in {:.1} s",
        a.runs,
        a.instances,
        t.elapsed().as_secs_f64()
    );
    let (child, addr) = serve(&config);
    let base = format!("http://{addr}");
    let per_instance = a.runs / a.instances;
    let last_page = per_instance.div_ceil(50);
    let pages = [
        ("overview", "/".to_string()),
        ("instance, page 1", "/instances/i0".to_string()),
        (
            "instance, middle page",
            format!("/instances/i0?page={}", last_page / 2),
        ),
        (
            "instance, last page",
            format!("/instances/i0?page={last_page}"),
        ),
        (
            "instance, failed runs",
            "/instances/i0?status=failed".to_string(),
        ),
        ("a run", format!("/runs/seed-{:08}", a.runs / 2)),
        ("drift", "/drift".to_string()),
        ("alerts", "/alerts".to_string()),
        ("API runs, newest 50", "/api/v1/runs?limit=50".to_string()),
        (
            "API runs of one instance, deep page",
            format!(
                "/api/v1/runs?instance=i0&limit=50&offset={}",
                per_instance.saturating_sub(50)
            ),
        ),
        ("API instances", "/api/v1/instances".to_string()),
    ];
    println!(
        "\n{:<38} {:>8} {:>8} {:>8}  ({} fetches each, one at a time)",
        "page", "p50 ms", "p99 ms", "max ms", a.repeats
    );
    for (name, path) in &pages {
        let url = format!("{base}{path}");
        let mut times = Vec::with_capacity(a.repeats);
        rt.block_on(async {
            for _ in 0..a.repeats {
                let t = Instant::now();
                let resp = client.get(&url).send().await.unwrap();
                assert!(resp.status().is_success(), "{url}: {}", resp.status());
                resp.bytes().await.unwrap();
                times.push(t.elapsed());
            }
        });
        times.sort();
        println!(
            "{name:<38} {:>8} {:>8} {:>8}",
            ms(quantile(&times, 0.5)),
            ms(quantile(&times, 0.99)),
            ms(*times.last().unwrap())
        );
    }
    // The runs API under concurrent clients.
    let url = format!("{base}/api/v1/runs?instance=i1&limit=50&offset=1000");
    let (p50, p99, rps) = load(rt, client, &url, a.clients);
    println!(
        "\nAPI runs page under {} concurrent clients: p50 {p50} ms, p99 {p99} ms, {rps:.0} requests/s",
        a.clients
    );
    stop(child);
}

/// `clients` concurrent clients fetching `url` [`REQUESTS_PER_CLIENT`]
/// times each: p50 and p99 (ms) and requests/s.
fn load(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &str,
    clients: usize,
) -> (String, String, f64) {
    let t = Instant::now();
    let mut times: Vec<Duration> = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let client = client.clone();
            let url = url.to_string();
            tasks.push(tokio::spawn(async move {
                let mut times = Vec::new();
                for _ in 0..REQUESTS_PER_CLIENT {
                    let t = Instant::now();
                    let resp = client.get(&url).send().await.unwrap();
                    assert!(resp.status().is_success());
                    resp.bytes().await.unwrap();
                    times.push(t.elapsed());
                }
                times
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let wall = t.elapsed();
    times.sort();
    (
        ms(quantile(&times, 0.5)),
        ms(quantile(&times, 0.99)),
        times.len() as f64 / wall.as_secs_f64(),
    )
}

/// kB of a `/proc/PID/status` field.
fn proc_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)?
                    .trim()
                    .strip_suffix("kB")
                    .map(str::trim)
                    .map(String::from)
            })
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The upper bound (s) of the histogram bucket holding quantile `q` of
/// `sluice_schedule_lag_seconds` in a scrape.
fn lag_quantile(metrics: &str, q: f64) -> String {
    let buckets: Vec<(String, f64)> = metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("sluice_schedule_lag_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.to_string(), count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |(_, c)| *c);
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map_or("-".to_string(), |(le, _)| le.clone())
}

/// `--scheduled N` instances, each due every minute, on one server for
/// `--minutes`: schedule lag, runs done vs due, RSS, and the API under
/// load while they run.
fn scheduled(a: &Args, rt: &tokio::runtime::Runtime, client: &reqwest::Client) {
    let dir = tempfile::tempdir().unwrap();
    let misbehave = repo().join("connectors/target/wasm32-unknown-unknown/release/misbehave.wasm");
    let mut toml = format!("db = \"{}\"\n", dir.path().join("runs.db").display());
    for i in 0..a.scheduled {
        toml.push_str(&format!(
            "[instances.s{i}]\ncomponent = \"{}\"\nevery = \"{SCHEDULED_EVERY_SECS}s\"\n\
             config = {{ behaviour = \"ok\", committed = 10 }}\n",
            misbehave.display()
        ));
    }
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, toml).unwrap();
    let (child, addr) = serve(&config);
    let base = format!("http://{addr}");
    let pid = child.id();
    let started = Instant::now();
    let length = Duration::from_secs(a.minutes * 60);
    let mut rss_max = 0;
    let mut api = None;
    while started.elapsed() < length {
        std::thread::sleep(RSS_EVERY);
        rss_max = rss_max.max(proc_kb(pid, "VmRSS:"));
        // Halfway through, the API under load while runs go on.
        if api.is_none() && started.elapsed() > length / 2 {
            api = Some(load(
                rt,
                client,
                &format!("{base}/api/v1/runs?limit=50"),
                a.clients,
            ));
        }
    }
    let elapsed = started.elapsed().as_secs();
    let get = |path: &str| -> String {
        rt.block_on(async {
            let resp = client.get(format!("{base}{path}")).send().await.unwrap();
            resp.text().await.unwrap()
        })
    };
    let metrics = get("/metrics");
    let runs: serde_json::Value =
        serde_json::from_str(&get("/api/v1/runs?status=succeeded&limit=1")).unwrap();
    let hwm = proc_kb(pid, "VmHWM:");
    stop(child);
    // Runs that fell due at least SETTLE_SECS before the end (a run due
    // just now has not had its chance).
    let due = a.scheduled * (elapsed.saturating_sub(SETTLE_SECS) / SCHEDULED_EVERY_SECS + 1);
    println!(
        "\n{} instances due every {SCHEDULED_EVERY_SECS} s, {} min on one server:",
        a.scheduled, a.minutes
    );
    println!(
        "  schedule lag p50 <= {} s, p99 <= {} s (histogram bucket bounds)",
        lag_quantile(&metrics, 0.5),
        lag_quantile(&metrics, 0.99)
    );
    println!(
        "  runs succeeded {} ({due} fell due {SETTLE_SECS} s or more before the end)",
        runs["total"]
    );
    println!(
        "  RSS peak {:.0} MiB (sampled max {:.0} MiB)",
        hwm as f64 / 1024.0,
        rss_max as f64 / 1024.0
    );
    if let Some((p50, p99, rps)) = api {
        println!(
            "  API runs page under {} clients meanwhile: p50 {p50} ms, p99 {p99} ms, {rps:.0} requests/s",
            a.clients
        );
    }
}
