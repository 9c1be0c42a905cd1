//! The `hound` binary: parse flags, start, wait for SIGTERM or SIGINT, shut down, exit.

use std::process::ExitCode;

use hound_dog::config::{self, USAGE};
use hound_dog::describe_routes;
use hound_dog::{App, Invocation};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let args = std::env::args_os().skip(1).collect();
    let config = match config::parse(args, |name| std::env::var(name).ok()) {
        Ok(Invocation::Run(config)) => *config,
        Ok(Invocation::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Version) => {
            println!("hound {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Routes) => {
            print!("{}", describe_routes());
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("hound: {err}");
            return ExitCode::from(2);
        }
    };
    hound_dog::logging::init(config.log_level, config.log_format);

    // Register for the signals before any thread starts, so none is missed.
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("hound: cannot handle signals: {err}");
            return ExitCode::FAILURE;
        }
    };
    let app = match App::start(&config) {
        Ok(app) => app,
        Err(err) => {
            // One plain line, whatever the log format: the operator reads it at start-up.
            eprintln!("hound: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(signal) = signals.forever().next() {
        log::info!("received signal {signal}");
    }
    app.shutdown();
    ExitCode::SUCCESS
}
