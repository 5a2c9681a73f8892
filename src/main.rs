//! `rivulet`: the command line of Rivulet. A thin layer over `fs_core`: argument parsing
//! (see `cli`), logging, the runtime, and turning errors into one line and an exit code.

mod bench;
mod cli;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Env};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    let subject = cli.command.subject();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rivulet: {subject}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let env = Env::new(cli.global);
    let result = runtime.block_on(cli::run(&env, cli.command));
    drop(env);
    // Blocking work the command no longer waits for must not keep the process alive: a read of
    // a stdin that stays open (a cp from a pipe stopped by a signal or an error) never ends.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let (code, message) = cli::exit_code_and_message(&subject, &err);
            if let Some(message) = message {
                eprintln!("{message}");
            }
            ExitCode::from(code)
        }
    }
}

/// Logs on stderr: `RUST_LOG` when set, else warnings, and more with each `-v`.
fn init_logging(verbose: u8) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(match verbose {
            // fuser warns when it unmounts a mount that `fusermount3 -u` already removed.
            0 => "warn,aws_config=error,fuser=error",
            1 => "info",
            2 => "info,fs_core=debug,rivulet=debug",
            _ => "debug,fs_core=trace,rivulet=trace",
        })
    });
    // Colours only on a terminal: in a file or a pipe the escape codes are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}
