//! `rename-export IN OUT FROM=TO…`: rename top-level exports of a component.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: rename-export IN.wasm OUT.wasm FROM=TO...";
    if args.len() < 3 {
        eprintln!("{usage}");
        return ExitCode::from(2);
    }
    let mut renames = Vec::new();
    for r in &args[2..] {
        match r.split_once('=') {
            Some((from, to)) if !from.is_empty() && !to.is_empty() => {
                renames.push((from.to_string(), to.to_string()))
            }
            _ => {
                eprintln!("{usage}");
                return ExitCode::from(2);
            }
        }
    }
    let input = match std::fs::read(&args[0]) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", args[0]);
            return ExitCode::FAILURE;
        }
    };
    match rename_export::rename_exports(&input, &renames) {
        Ok(bytes) => match std::fs::write(&args[1], bytes) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", args[1]);
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {}: {e}", args[0]);
            ExitCode::FAILURE
        }
    }
}
