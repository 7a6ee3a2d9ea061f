//! The `understudy` binary: parse the command line, set up logging, run.

use clap::Parser;
use understudy::cli::{Cli, preflight, run};

fn main() {
    let cli = Cli::parse();
    let default = if cli.quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    let code = match preflight(&cli) {
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
        Ok(()) => match tokio::runtime::Runtime::new() {
            Err(e) => {
                eprintln!("error: starting runtime: {e}");
                1
            }
            Ok(rt) => match rt.block_on(run(cli)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            },
        },
    };
    std::process::exit(code);
}
