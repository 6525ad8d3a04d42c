//! `sluice-bench`: Sluice against its peers on one fixture API, side by
//! side in one run (so the ratios hold on a noisy machine).
//!
//! The items fixture (`sluice_fixture::items`: ~200-byte records, 1,000 per
//! page, ids and an `updated_at` cursor) serves N records on 127.0.0.1;
//! each contestant runs as a child process into its own fresh SQLite file;
//! the harness checks every table holds N rows and prints seconds,
//! records/s, peak RSS (wait4) and the ratio to Sluice. Then: warm start
//! in-process and as a whole `sluice spec` process, optionally peak RSS of
//! a 1M- vs a 4M-record run (`--rss`), and N concurrent sandboxed runs in
//! one `sluice sync` process (`--concurrency N`).
//!
//! Run it through `just bench` (scripts/bench.sh builds the release
//! binaries and installs the Python peers). No assertions: figures only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_core::limits::Limits;
use sluice_fixture::items::{self, router, ItemsConfig};
use sluice_fixture::Running;
use sluice_runner::pipeline;
use sluice_wasm::{Runtime, RuntimeOptions};

/// Records served when `--records` is not given: the whole default run
/// (all four contestants) takes a few minutes on 2 cores.
const DEFAULT_RECORDS: u64 = 100_000;
/// Concurrent sandboxed runs in one process (`--concurrency`).
const DEFAULT_CONCURRENCY: usize = 200;
/// Records each concurrent run reads.
const CONCURRENT_RECORDS: u64 = 2_000;
/// Page size every contestant asks for (the issue's 1,000 per page).
const PAGE_SIZE: u32 = 1_000;
/// Fuel for the big runs (the default, 20 G, covers ~600k items records).
const BENCH_FUEL: u64 = 1_000_000_000_000;
/// Rounds of the main comparison (`--rounds`); each contestant's median
/// run is shown.
const DEFAULT_ROUNDS: usize = 3;
/// Times a short measurement is repeated (the median is shown).
const REPEATS: usize = 21;
/// The RSS comparison's two sizes (`--rss`).
const RSS_SMALL: u64 = 1_000_000;
const RSS_LARGE: u64 = 4_000_000;

struct Args {
    records: u64,
    python: bool,
    rss: bool,
    concurrency: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        records: DEFAULT_RECORDS,
        python: true,
        rss: false,
        concurrency: DEFAULT_CONCURRENCY,
        rounds: DEFAULT_ROUNDS,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |what: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .ok_or(format!("{what} takes a number"))
        };
        match arg.as_str() {
            "--records" => a.records = num("--records")?,
            "--concurrency" => a.concurrency = num("--concurrency")? as usize,
            "--no-python" => a.python = false,
            "--rss" => a.rss = true,
            "--rounds" => a.rounds = (num("--rounds")? as usize).max(1),
            "-h" | "--help" => {
                return Err("usage: sluice-bench [--records N] [--rounds N] [--no-python] [--rss] [--concurrency N (0: skip)]".into())
            }
            other => return Err(format!("unknown argument {other} (try --help)")),
        }
    }
    Ok(a)
}

/// The repository root (this crate is `bench/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary built beside this one (same profile).
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .expect("current exe")
        .with_file_name(name)
}

/// What one child process did.
struct Measured {
    seconds: f64,
    max_rss_kib: i64,
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Environment variable through which [`measure`] tells its helper where
/// to write the child's figures.
const RUSAGE_OUT_ENV: &str = "SLUICE_BENCH_RUSAGE_OUT";
/// First argument that makes this binary the measuring helper.
const RUSAGE_HELPER_ARG: &str = "--rusage-of";

/// Run `cmd` to the end; wall time and peak RSS.
///
/// Linux carries a process's peak RSS (`ru_maxrss`) across `exec`, and a
/// child spawned straight from this process would start from *this*
/// process's peak (which holds the fixture's pre-rendered pages). So a
/// fresh, small copy of this binary (`--rusage-of`) spawns the command,
/// reaps it with wait4 and writes its wall time and peak RSS to a file:
/// the command's figures are its own.
fn measure(cmd: &mut Command) -> Measured {
    let out_file = tempfile::NamedTempFile::new().expect("rusage file");
    let mut helper = Command::new(std::env::current_exe().expect("current exe"));
    helper
        .arg(RUSAGE_HELPER_ARG)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env(RUSAGE_OUT_ENV, out_file.path());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => helper.env(k, v),
            None => helper.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        helper.current_dir(dir);
    }
    let out = helper
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let figures = std::fs::read_to_string(out_file.path()).unwrap_or_default();
    let mut f = figures.split_whitespace();
    let seconds = f.next().and_then(|x| x.parse().ok()).unwrap_or(f64::NAN);
    let max_rss_kib = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    Measured {
        seconds,
        max_rss_kib,
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `--rusage-of PROGRAM ARGS…` helper: run the program with this
/// process's stdio, then write "seconds max_rss_kib" to the file named by
/// [`RUSAGE_OUT_ENV`] and exit with the program's status.
// The child is reaped by wait4 (which also gives its rusage), not Child::wait.
#[allow(clippy::zombie_processes)]
fn rusage_helper(program: &str, args: &[String]) -> ! {
    let out = std::env::var_os(RUSAGE_OUT_ENV).expect("helper started by measure()");
    let start = Instant::now();
    let child = Command::new(program)
        .args(args)
        .env_remove(RUSAGE_OUT_ENV)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child's; status and usage point at live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = start.elapsed().as_secs_f64();
    std::fs::write(&out, format!("{seconds} {}", usage.ru_maxrss)).expect("rusage file");
    let ok = r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    std::process::exit(if ok { 0 } else { 1 })
}

/// Sluice's table of the items stream: `sluice run items.wasm` is instance
/// `items`, whose tables are `items__<stream>`.
const SLUICE_TABLE: &str = "items__items";

fn count_rows(db: &Path, table: &str) -> Option<i64> {
    let conn = rusqlite::Connection::open(db).ok()?;
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .ok()
}

struct Row {
    name: &'static str,
    records: Option<i64>,
    m: Measured,
}

fn serve(records: u64) -> Running {
    serve_with(records, false)
}

/// The fixture serving `records` items; with `prerender`, every page of a
/// full read is rendered before the server starts, so the upstream (which
/// shares the 2 cores with the contestant) costs as little as a remote one.
fn serve_with(records: u64, prerender: bool) -> Running {
    let (r, state) = router(ItemsConfig {
        total: records,
        ..Default::default()
    });
    if prerender {
        items::prerender(&state, PAGE_SIZE as usize);
    }
    Running::start(r, 0).expect("fixture")
}

fn items_wasm() -> PathBuf {
    repo().join("connectors/target/wasm32-unknown-unknown/release/items.wasm")
}

/// `sluice run` of the items connector against `fx` into `db`.
fn sluice_run(fx: &Running, dir: &Path, db: &Path, cache: &Path) -> Measured {
    let cfg = dir.join("items.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"base_url": "{}", "page_size": {PAGE_SIZE}}}"#,
            fx.base_url()
        ),
    )
    .expect("config");
    measure(
        Command::new(sibling("sluice"))
            .arg("run")
            .arg(items_wasm())
            .arg("--config")
            .arg(&cfg)
            .arg("--db")
            .arg(db)
            .arg("--allow-host")
            .arg(format!("127.0.0.1:{}", fx.addr.port()))
            .arg("--fuel")
            .arg(BENCH_FUEL.to_string())
            .arg("--json")
            .env("SLUICE_CACHE_DIR", cache),
    )
}

fn mib(kib: i64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(RUSAGE_HELPER_ARG) && argv.len() > 2 {
        rusage_helper(&argv[2], &argv[3..]);
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2)
        }
    };
    for p in [sibling("sluice"), sibling("native-pipeline"), items_wasm()] {
        if !p.exists() {
            eprintln!(
                "error: {} is missing: run through `just bench`",
                p.display()
            );
            std::process::exit(1);
        }
    }
    let scratch = tempfile::tempdir().expect("scratch dir");
    let dir = scratch.path();
    let cache = dir.join("cache");
    // Warm the compile cache (Sluice's steady state).
    let warm = measure(
        Command::new(sibling("sluice"))
            .arg("spec")
            .arg(items_wasm())
            .env("SLUICE_CACHE_DIR", &cache),
    );
    assert!(warm.ok, "sluice spec failed: {}", warm.stderr);

    println!(
        "sluice-bench: {} records of ~200 bytes, {PAGE_SIZE} per page, fixture on 127.0.0.1 (pages pre-rendered), {} cores",
        args.records,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let fx = serve_with(args.records, true);
    let url = fx.base_url();
    let python = repo().join(".tools/bench-venv/bin/python");
    let with_python = args.python && python.exists();
    if !args.python {
        println!("(Python peers skipped: --no-python)");
    } else if !with_python {
        println!(
            "(Python peers skipped: {} is missing; scripts/bench.sh installs them)",
            python.display()
        );
    }
    // Each contestant: its name, and how to run it once into a directory
    // (its figures and the rows it stored).
    type Contestant<'a> = (
        &'static str,
        Box<dyn Fn(&Path) -> (Measured, Option<i64>) + 'a>,
    );
    let mut contestants: Vec<Contestant> = vec![
        (
            "sluice (items.wasm in the sandbox)",
            Box::new(|d: &Path| {
                let db = d.join("sluice.db");
                let m = sluice_run(&fx, d, &db, &cache);
                (m, count_rows(&db, SLUICE_TABLE))
            }),
        ),
        (
            "native Rust pipeline (no sandbox)",
            Box::new(|d: &Path| {
                let db = d.join("native.db");
                let m = measure(
                    Command::new(sibling("native-pipeline"))
                        .arg(&url)
                        .arg(&db)
                        .arg(PAGE_SIZE.to_string()),
                );
                (m, count_rows(&db, "items"))
            }),
        ),
    ];
    if with_python {
        contestants.push((
            "dlt rest_api → sqlalchemy/SQLite",
            Box::new(|d: &Path| {
                let m = measure(
                    Command::new(&python)
                        .arg(repo().join("bench/peers/dlt_pipeline.py"))
                        .arg(&url)
                        .arg(d.join("dlt.db"))
                        .arg(d.join("dlt-work"))
                        .arg(PAGE_SIZE.to_string())
                        .env("PYTHONWARNINGS", "ignore"),
                );
                // dlt's sqlalchemy destination keeps each dataset in its own file.
                (m, count_rows(&d.join("dlt__bench.db"), "items"))
            }),
        ));
        contestants.push((
            "seed-style Python (requests+pydantic+SQLAlchemy)",
            Box::new(|d: &Path| {
                let db = d.join("seed.db");
                let m = measure(
                    Command::new(&python)
                        .arg(repo().join("bench/peers/seed_pipeline.py"))
                        .arg(&url)
                        .arg(&db)
                        .arg(PAGE_SIZE.to_string()),
                );
                (m, count_rows(&db, "items"))
            }),
        ));
    }
    // Rounds interleave the contestants, so a load that comes and goes
    // falls on all of them; each run starts from an empty database.
    let mut runs: Vec<Vec<(Measured, Option<i64>)>> =
        contestants.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for (i, (_, run)) in contestants.iter().enumerate() {
            let d = dir.join(format!("round{round}-{i}"));
            std::fs::create_dir_all(&d).expect("round dir");
            runs[i].push(run(&d));
            let _ = std::fs::remove_dir_all(&d);
        }
    }
    let rows: Vec<Row> = contestants
        .iter()
        .zip(runs)
        .map(|((name, _), mut r)| {
            // The median run by time; RSS is the largest of all runs; a
            // failed run or a wrong row count in any round shows.
            let failed = r
                .iter()
                .position(|(m, n)| !m.ok || *n != Some(args.records as i64));
            let max_rss_kib = r.iter().map(|(m, _)| m.max_rss_kib).max().unwrap_or(0);
            let (mut m, records) = match failed {
                Some(i) => r.swap_remove(i),
                None => {
                    r.sort_by(|a, b| a.0.seconds.total_cmp(&b.0.seconds));
                    let mid = r.len() / 2;
                    r.swap_remove(mid)
                }
            };
            m.max_rss_kib = max_rss_kib;
            Row { name, records, m }
        })
        .collect();

    let sluice_rps = rows[0].records.unwrap_or(0) as f64 / rows[0].m.seconds;
    println!();
    println!(
        "median of {} interleaved rounds (peak RSS: the largest of them)",
        args.rounds
    );
    println!(
        "{:<50} {:>9} {:>9} {:>11} {:>9} {:>14}",
        "contestant", "records", "seconds", "records/s", "RSS MiB", "sluice ÷ this"
    );
    for r in &rows {
        let rps = r.records.unwrap_or(0) as f64 / r.m.seconds;
        let verdict = match r.records {
            Some(n) if r.m.ok && n as u64 == args.records => String::new(),
            _ => format!(
                "  <- FAILED or wrong row count: {}",
                r.m.stderr.lines().last().unwrap_or("")
            ),
        };
        println!(
            "{:<50} {:>9} {:>9.2} {:>11.0} {:>9} {:>13.2}×{verdict}",
            r.name,
            r.records.map_or("-".into(), |n| n.to_string()),
            r.m.seconds,
            rps,
            mib(r.m.max_rss_kib),
            sluice_rps / rps.max(f64::MIN_POSITIVE),
        );
    }
    drop(contestants);
    drop(fx);

    // Warm start, in-process: a Runtime over the warm disk cache.
    let rt_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let (first, warm_spec) = rt_runtime.block_on(async {
        // A new Runtime each time: engine, linker, component from the disk
        // cache, instantiation, spec.
        let mut firsts = Vec::new();
        let mut rt = None;
        for _ in 0..REPEATS {
            let start = Instant::now();
            let fresh = Runtime::new(RuntimeOptions {
                cache_dir: Some(cache.clone()),
            })
            .expect("runtime");
            pipeline::spec(&fresh, &items_wasm(), &Limits::default())
                .await
                .expect("spec");
            firsts.push(start.elapsed());
            rt = Some(fresh);
        }
        let first = median(firsts);
        let rt = rt.expect("a runtime");
        let mut times = Vec::new();
        for _ in 0..REPEATS {
            let t = Instant::now();
            pipeline::spec(&rt, &items_wasm(), &Limits::default())
                .await
                .expect("spec");
            times.push(t.elapsed());
        }
        (first, median(times))
    });
    let mut procs = Vec::new();
    for _ in 0..REPEATS {
        let m = measure(
            Command::new(sibling("sluice"))
                .arg("spec")
                .arg(items_wasm())
                .env("SLUICE_CACHE_DIR", &cache),
        );
        procs.push(Duration::from_secs_f64(m.seconds));
    }
    println!();
    println!("warm start (items.wasm, compile cache warm):");
    println!(
        "  in-process, new Runtime + component from the disk cache + spec answered: {:.2} ms (median of {REPEATS})",
        first.as_secs_f64() * 1e3
    );
    println!(
        "  in-process, component already loaded (InstancePre) → spec answered:     {:.2} ms (median of {REPEATS})",
        warm_spec.as_secs_f64() * 1e3
    );
    println!(
        "  whole `sluice spec` process:                                             {:.1} ms (median of {REPEATS})",
        median(procs).as_secs_f64() * 1e3
    );

    if args.rss {
        println!();
        println!("peak RSS of one sluice run by size:");
        let mut seen = Vec::new();
        for n in [RSS_SMALL, RSS_LARGE] {
            let fx = serve(n);
            let db = dir.join(format!("rss-{n}.db"));
            let m = sluice_run(&fx, dir, &db, &cache);
            let rows = count_rows(&db, SLUICE_TABLE).unwrap_or(0);
            println!(
                "  {n:>9} records: {} MiB peak RSS, {:.1} s ({:.0} records/s){}",
                mib(m.max_rss_kib),
                m.seconds,
                rows as f64 / m.seconds,
                if m.ok && rows as u64 == n {
                    ""
                } else {
                    "  <- FAILED"
                }
            );
            seen.push(m.max_rss_kib);
            let _ = std::fs::remove_file(&db);
        }
        println!(
            "  4M vs 1M: {:+.1} %",
            (seen[1] as f64 / seen[0] as f64 - 1.0) * 100.0
        );
    }

    if args.concurrency > 0 {
        concurrent(dir, &cache, args.concurrency);
    }
}

/// `n` instances of the items connector in one `sluice sync` process, all
/// at once, each into its own database.
fn concurrent(dir: &Path, cache: &Path, n: usize) {
    let fx = serve(CONCURRENT_RECORDS);
    let mut toml = String::from("db = \"dbs/default.db\"\n");
    for i in 0..n {
        toml.push_str(&format!(
            "\n[instances.run{i:03}]\ncomponent = \"{}\"\ndb = \"dbs/run{i:03}.db\"\nallow_hosts = [\"127.0.0.1:{}\"]\nconfig = {{ base_url = \"{}\", page_size = {PAGE_SIZE} }}\n",
            items_wasm().display(),
            fx.addr.port(),
            fx.base_url()
        ));
    }
    std::fs::create_dir_all(dir.join("dbs")).expect("dbs");
    let file = dir.join("sluice.toml");
    std::fs::write(&file, toml).expect("sluice.toml");
    let m = measure(
        Command::new(sibling("sluice"))
            .arg("sync")
            .arg("--config-file")
            .arg(&file)
            .arg("--concurrency")
            .arg(n.to_string())
            .arg("--json")
            .env("SLUICE_CACHE_DIR", cache),
    );
    let outcomes: Vec<serde_json::Value> = serde_json::from_str(&m.stdout).unwrap_or_default();
    let ok = outcomes
        .iter()
        .filter(|o| o["status"] == "succeeded")
        .count();
    let records: u64 = outcomes
        .iter()
        .filter_map(|o| o["records_upserted"].as_u64())
        .sum();
    println!();
    println!(
        "{n} concurrent sandboxed runs in one process (`sluice sync --concurrency {n}`, {CONCURRENT_RECORDS} records each):"
    );
    println!(
        "  {ok} of {n} succeeded, {records} records in {:.1} s ({:.0} records/s), peak RSS {} MiB",
        m.seconds,
        records as f64 / m.seconds,
        mib(m.max_rss_kib)
    );
    if ok < n {
        let first_error = outcomes
            .iter()
            .find(|o| o["status"] != "succeeded")
            .map(|o| o["error"].to_string())
            .unwrap_or_else(|| m.stderr.lines().last().unwrap_or("").to_string());
        println!("  first failure: {first_error}");
    }
}
