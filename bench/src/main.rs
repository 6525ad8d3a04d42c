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
//! With PostgreSQL installed (`scripts/setup-postgres.sh`), one throwaway
//! cluster (`scripts/pg-cluster.sh`, stopped at the end, a panic's too)
//! adds Sluice → Postgres and dlt → Postgres, each run into a fresh
//! schema, and a breakdown of where Sluice → Postgres spends its time
//! (`--no-postgres` skips them).
//!
//! Run it through `just bench` (scripts/bench.sh builds the release
//! binaries and installs the Python peers). No assertions: figures only.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_core::limits::Limits;
use sluice_fixture::items::{self, router, ItemsConfig};
use sluice_fixture::postgres::{Cluster, StartError};
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
/// The log filter of the breakdown's extra Sluice → Postgres run: the
/// store's per-commit `commit timings` events (debug level).
const TIMINGS_LOG: &str = "warn,sluice_store::postgres=debug";
/// The message of those events (runtime/store/src/postgres.rs).
const TIMINGS_EVENT: &str = "commit timings";
/// How long to wait for a finished run's server backend to exit (and be
/// reaped by the postmaster, whose children's CPU time then includes it).
const BACKEND_EXIT_WAIT: Duration = Duration::from_secs(5);
/// How often to look while waiting for it.
const BACKEND_EXIT_POLL: Duration = Duration::from_millis(10);

struct Args {
    records: u64,
    python: bool,
    rss: bool,
    concurrency: usize,
    rounds: usize,
    postgres: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        records: DEFAULT_RECORDS,
        python: true,
        rss: false,
        concurrency: DEFAULT_CONCURRENCY,
        rounds: DEFAULT_ROUNDS,
        postgres: true,
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
            "--no-postgres" => a.postgres = false,
            "--rss" => a.rss = true,
            "--rounds" => a.rounds = (num("--rounds")? as usize).max(1),
            "-h" | "--help" => {
                return Err("usage: sluice-bench [--records N] [--rounds N] [--no-python] [--no-postgres] [--rss] [--concurrency N (0: skip)]".into())
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
    /// User + system CPU time of the process (and its reaped children).
    cpu_seconds: f64,
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
    let cpu_seconds = f.next().and_then(|x| x.parse().ok()).unwrap_or(f64::NAN);
    Measured {
        seconds,
        cpu_seconds,
        max_rss_kib,
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `--rusage-of PROGRAM ARGS…` helper: run the program with this
/// process's stdio, then write "seconds max_rss_kib" to the file named by
/// [`RUSAGE_OUT_ENV`] and exit with the program's status.
/// (A third figure follows: its user + system CPU seconds.)
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
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    std::fs::write(&out, format!("{seconds} {} {cpu}", usage.ru_maxrss)).expect("rusage file");
    let ok = r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    std::process::exit(if ok { 0 } else { 1 })
}

/// The Sluice → Postgres contestant's name.
const SLUICE_PG: &str = "sluice → postgres (binary COPY + upsert)";

/// Where one more Sluice → Postgres run spends its time: the writer
/// thread's commits, step by step (the store's debug-level `commit
/// timings` events: wall time on the writer thread, each step's server
/// work and round trips included), against the run's wall time, the
/// Sluice process's CPU time and the server backend's (the postmaster's
/// reaped children's CPU time before and after).
fn breakdown(pg: &Cluster, fx: &Running, dir: &Path, cache: &Path, records: u64, schema: &str) {
    let d = dir.join("timings");
    std::fs::create_dir_all(&d).expect("timings dir");
    let postmaster = pg.postmaster_pid();
    let server_before = postmaster.and_then(reaped_children_cpu);
    let m = sluice_run_into(fx, &d, pg.url_in(schema).as_ref(), cache, Some(TIMINGS_LOG));
    wait_for_backends(&pg.url);
    let server_after = postmaster.and_then(reaped_children_cpu);
    let stored = pg_count(&pg.url, schema, SLUICE_TABLE);
    let _ = std::fs::remove_dir_all(&d);
    // Sum each `key_us=N` field of the events, in the order first seen.
    let mut sums: Vec<(String, u64)> = Vec::new();
    let mut commits = 0u64;
    for line in m.stderr.lines().filter(|l| l.contains(TIMINGS_EVENT)) {
        commits += 1;
        for field in line.split_whitespace() {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            let Some(v) = v.parse::<u64>().ok() else {
                continue;
            };
            match sums.iter_mut().find(|(name, _)| name == k) {
                Some((_, sum)) => *sum += v,
                None => sums.push((k.to_string(), v)),
            }
        }
    }
    let sum = |k: &str| sums.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
    println!();
    println!("where the time goes, Sluice → Postgres (one more run, SLUICE_LOG={TIMINGS_LOG}):");
    if !m.ok || stored != Some(records as i64) || commits == 0 {
        println!(
            "  <- FAILED, wrong row count or no timings ({commits} events): {}",
            m.stderr.lines().last().unwrap_or("")
        );
        return;
    }
    let wall = m.seconds;
    let ms = |us: u64| us as f64 / 1e3;
    println!(
        "  {records} records in {:.2} s wall ({:.0} records/s); CPU: the sluice process {:.2} s, the Postgres backend {}",
        wall,
        records as f64 / wall,
        m.cpu_seconds,
        match (server_before, server_after) {
            (Some(a), Some(b)) => format!("{:.2} s", b - a),
            _ => "unknown".into(),
        }
    );
    let total = sum("total_us");
    println!(
        "  the writer thread in {commits} commits: {:.0} ms ({:.0} % of the wall time; {:.2} ms a commit) — the rest of the run overlaps with them (guest, HTTP, record checks):",
        ms(total),
        ms(total) / (wall * 1e3) * 100.0,
        ms(total) / commits as f64
    );
    for (key, what) in [
        ("fence_us", "BEGIN + the lease fence (SELECT … FOR SHARE)"),
        ("staging_us", "CREATE TEMPORARY TABLE (staging)"),
        ("copy_us", "encode rows + binary COPY into staging"),
        ("upsert_us", "INSERT … SELECT DISTINCT ON … ON CONFLICT"),
        ("rest_us", "state (+ quarantine, drift, sweeps)"),
        ("commit_us", "COMMIT"),
    ] {
        let v = sum(key);
        println!(
            "    {what:<48} {:>8.1} ms {:>5.1} %",
            ms(v),
            ms(v) / ms(total).max(f64::MIN_POSITIVE) * 100.0
        );
    }
}

/// Sluice's table of the items stream: `sluice run items.wasm` is instance
/// `items`, whose tables are `items__<stream>`.
const SLUICE_TABLE: &str = "items__items";

fn count_rows(db: &Path, table: &str) -> Option<i64> {
    let conn = rusqlite::Connection::open(db).ok()?;
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .ok()
}

/// Rows of `schema.table` in the cluster at `url`.
fn pg_count(url: &str, schema: &str, table: &str) -> Option<i64> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).ok()?;
    let n = c
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".\"{table}\""),
            &[],
        )
        .ok()?
        .try_get(0)
        .ok();
    // Keep the cluster small across rounds.
    let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
    n
}

/// CPU seconds of the postmaster's reaped children (the backends of
/// finished connections): `cutime + cstime` of `/proc/PID/stat`.
fn reaped_children_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3, cutime 16, cstime 17.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(13)?.parse::<f64>().ok()? + f.get(14)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// Wait until no client backend but this one is connected to `url`, then
/// for this one to go too (so the postmaster has reaped them all).
fn wait_for_backends(url: &str) {
    let start = Instant::now();
    if let Ok(mut c) = postgres::Client::connect(url, postgres::NoTls) {
        while start.elapsed() < BACKEND_EXIT_WAIT {
            let others: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
                     AND pid <> pg_backend_pid()",
                    &[],
                )
                .and_then(|r| r.try_get(0))
                .unwrap_or(0);
            if others == 0 {
                break;
            }
            std::thread::sleep(BACKEND_EXIT_POLL);
        }
    }
    std::thread::sleep(BACKEND_EXIT_POLL * 10);
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
    sluice_run_into(fx, dir, db.as_os_str(), cache, None)
}

/// The same into `db` (a file or a `postgres://` URL), with `log` as its
/// `SLUICE_LOG` if given.
fn sluice_run_into(
    fx: &Running,
    dir: &Path,
    db: &std::ffi::OsStr,
    cache: &Path,
    log: Option<&str>,
) -> Measured {
    let cfg = dir.join("items.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"base_url": "{}", "page_size": {PAGE_SIZE}}}"#,
            fx.base_url()
        ),
    )
    .expect("config");
    let mut cmd = Command::new(sibling("sluice"));
    if let Some(filter) = log {
        cmd.env("SLUICE_LOG", filter);
    }
    measure(
        cmd.arg("run")
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
    // One throwaway cluster for the Postgres contestants; dropped (so
    // stopped) when main returns or unwinds.
    let cluster = if !args.postgres {
        println!("(Postgres contestants skipped: --no-postgres)");
        None
    } else {
        match Cluster::try_start() {
            Ok(c) => Some(c),
            Err(StartError::NotInstalled(_)) => {
                println!(
                    "(Postgres contestants skipped: PostgreSQL is not installed; scripts/setup-postgres.sh installs it)"
                );
                None
            }
            Err(StartError::Failed(why)) => {
                println!(
                    "(Postgres contestants skipped: the throwaway cluster did not start: {why})"
                );
                None
            }
        }
    };
    // Every Postgres run writes into a schema of its own.
    let schemas = Cell::new(0usize);
    let fresh_schema = |who: &str| {
        let n = schemas.get();
        schemas.set(n + 1);
        format!("bench_{who}_{n}")
    };
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
    if let Some(pg) = &cluster {
        contestants.push((
            SLUICE_PG,
            Box::new(|d: &Path| {
                let schema = fresh_schema("sluice");
                let m = sluice_run_into(&fx, d, pg.url_in(&schema).as_ref(), &cache, None);
                (m, pg_count(&pg.url, &schema, SLUICE_TABLE))
            }),
        ));
    }
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
        if let Some(pg) = &cluster {
            contestants.push((
                "dlt rest_api → postgres (psycopg2)",
                Box::new(|d: &Path| {
                    let schema = fresh_schema("dlt");
                    // Trust authentication: dlt wants a password, any will do.
                    let pg_url = pg.url.replacen("://sluice@", "://sluice:unused@", 1);
                    let m = measure(
                        Command::new(&python)
                            .arg(repo().join("bench/peers/dlt_pipeline.py"))
                            .arg(&url)
                            .arg(&pg_url)
                            .arg(d.join("dlt-work"))
                            .arg(PAGE_SIZE.to_string())
                            .arg(&schema)
                            .env("PYTHONWARNINGS", "ignore"),
                    );
                    (m, pg_count(&pg.url, &schema, "items"))
                }),
            ));
        }
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

    let rps_of = |r: &Row| r.records.unwrap_or(0) as f64 / r.m.seconds;
    let sluice_rps = rps_of(&rows[0]);
    // The second ratio column: Sluice → Postgres against each.
    let pg_rps = rows.iter().find(|r| r.name == SLUICE_PG).map(rps_of);
    println!();
    println!(
        "median of {} interleaved rounds (peak RSS: the largest of them)",
        args.rounds
    );
    println!(
        "{:<50} {:>9} {:>9} {:>11} {:>9} {:>14}{}",
        "contestant",
        "records",
        "seconds",
        "records/s",
        "RSS MiB",
        "sluice ÷ this",
        if pg_rps.is_some() {
            format!(" {:>14}", "sluice→pg ÷ this")
        } else {
            String::new()
        }
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
        let pg_ratio = pg_rps.map_or(String::new(), |p| {
            format!(" {:>15.2}×", p / rps.max(f64::MIN_POSITIVE))
        });
        println!(
            "{:<50} {:>9} {:>9.2} {:>11.0} {:>9} {:>13.2}×{pg_ratio}{verdict}",
            r.name,
            r.records.map_or("-".into(), |n| n.to_string()),
            r.m.seconds,
            rps,
            mib(r.m.max_rss_kib),
            sluice_rps / rps.max(f64::MIN_POSITIVE),
        );
    }
    if let Some(pg) = &cluster {
        breakdown(pg, &fx, dir, &cache, args.records, &fresh_schema("timings"));
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
