//! `sluice`: the command line. Thin: parse arguments, call the runner
//! (`sluice-runner`), print. Errors print one line and exit non-zero.

mod commands;
mod conformance;
mod scaffold;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    commands::init_logging(&cli.log_level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            // One line: error texts can carry connector text (escaped here).
            eprintln!(
                "error: {}",
                sluice_core::text::escaped(&sluice_core::text::chain_text(e.chain()))
            );
            ExitCode::FAILURE
        }
    }
}
