//! `sluice sync`'s progress display: on a terminal, a live line per running
//! instance (indicatif); otherwise one plain line when an instance starts
//! and one when it finishes; nothing with `--json`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_core::text::escaped;
use sluice_runner::pipeline::RunProgress;
use sluice_runner::sync::{Observer, SyncEvent, SyncOutcome};

/// How often live lines are redrawn with the records so far.
const REFRESH: Duration = Duration::from_millis(100);

/// Live lines: the bar and counters of each running instance.
type Live = Arc<Mutex<BTreeMap<String, (ProgressBar, Arc<RunProgress>)>>>;

enum Mode {
    Bars {
        multi: MultiProgress,
        live: Live,
        refresher: tokio::task::JoinHandle<()>,
    },
    Lines,
    Quiet,
}

pub struct Display {
    mode: Arc<Mode>,
}

impl Display {
    /// Bars on a terminal, plain lines otherwise, nothing if `quiet`.
    pub fn new(quiet: bool) -> Display {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stdout().is_terminal() {
            let live: Live = Arc::default();
            let refresher = {
                let live = live.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(REFRESH);
                    loop {
                        tick.tick().await;
                        for (bar, progress) in
                            live.lock().unwrap_or_else(|e| e.into_inner()).values()
                        {
                            let (emitted, upserted) = progress.get();
                            bar.set_message(format!("{emitted} records read, {upserted} written"));
                        }
                    }
                })
            };
            Mode::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
                live,
                refresher,
            }
        } else {
            Mode::Lines
        };
        Display {
            mode: Arc::new(mode),
        }
    }

    /// The callback for `sync::run_all`.
    pub fn observer(&self) -> Observer {
        let mode = self.mode.clone();
        Arc::new(move |event| match (&*mode, event) {
            (Mode::Quiet, _) => {}
            (Mode::Lines, SyncEvent::Started { instance, .. }) => {
                println!("start {}", escaped(instance))
            }
            (Mode::Lines, SyncEvent::Finished(o)) => println!("done  {}", finished(o)),
            (Mode::Bars { multi, live, .. }, SyncEvent::Started { instance, progress }) => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix:<24} {msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(escaped(instance).to_string());
                bar.set_message("starting");
                bar.enable_steady_tick(REFRESH);
                live.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(instance.to_string(), (bar, progress.clone()));
            }
            (Mode::Bars { multi, live, .. }, SyncEvent::Finished(o)) => {
                let running = live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&o.instance);
                if let Some((bar, _)) = running {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                let _ = multi.println(format!("done  {}", finished(o)));
            }
        })
    }

    /// Stop redrawing (after every run finished).
    pub async fn finish(self) {
        if let Mode::Bars {
            multi, refresher, ..
        } = &*self.mode
        {
            refresher.abort();
            let _ = multi.clear();
        }
    }
}

/// `NAME STATUS, N records in S s` (or the error that kept it from running).
fn finished(o: &SyncOutcome) -> String {
    let secs = o.duration.as_secs_f64();
    match &o.result {
        Ok(r) => format!(
            "{} {}, {} records in {secs:.2} s",
            escaped(&o.instance),
            r.record.status,
            r.record.records_upserted
        ),
        Err(e) => format!(
            "{} error: {}",
            escaped(&o.instance),
            escaped(&e.to_string())
        ),
    }
}
