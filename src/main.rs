//! The `understudy` binary: parse the command line, set up logging, run. Errors are shown
//! once each (`understudy::error::render`) and exit with the code of their kind
//! (`understudy::error::EXIT_CODES`).

use clap::Parser;
use understudy::cli::{Cli, preflight, run};
use understudy::error::{exit_code, kind_of, render};

fn fail(e: &anyhow::Error) -> i32 {
    eprintln!("error: {}", render(e));
    exit_code(kind_of(e))
}

fn main() {
    let cli = Cli::parse();
    let default = if cli.quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal: a log file keeps no escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
    let code = match preflight(&cli) {
        Err(e) => fail(&e),
        Ok(()) => match tokio::runtime::Runtime::new() {
            Err(e) => {
                eprintln!("error: starting runtime: {e}");
                1
            }
            Ok(rt) => match rt.block_on(run(cli)) {
                Ok(c) => c,
                Err(e) => fail(&e),
            },
        },
    };
    std::process::exit(code);
}
