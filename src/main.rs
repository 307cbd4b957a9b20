//! The `copyist` binary: parses arguments, sets up logging and hands over to [`copyist::cli`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = copyist::cli::Cli::parse();
    init_tracing();
    // The crash points of the crash tests, armed by FAILPOINTS=name=return (src/lib.rs lists
    // them). Without the `failpoints` feature this line and every `fail_point!` are not compiled.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("copyist: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(copyist::cli::run(cli))
}

/// Human-readable text on a terminal, JSON lines otherwise (for journald and log shippers).
/// The filter comes from `COPYIST_LOG` (e.g. `debug`, `copyist=trace`), default `info`.
fn init_tracing() {
    let filter = EnvFilter::try_from_env("COPYIST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}
