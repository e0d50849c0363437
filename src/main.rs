//! The `modeld` binary: parse the command line, start logging, dispatch.

use clap::Parser;
use modeld::cli::args::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

use std::io::IsTerminal;
use std::process::ExitCode;

/// The CLI's output is often piped (`modeld list | head`): like other Unix tools it ends
/// quietly when the reader goes away, instead of panicking on a write to a closed pipe (Rust
/// ignores SIGPIPE by default). The server keeps ignoring it: a client hanging up is no reason
/// to stop.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// jemalloc, chosen by measurement (docs/benchmarks.md): tract allocates every intermediate
/// tensor fresh, and glibc's drifting mmap threshold turned that into up to 3,600 page faults
/// per CNN batch-8 call (40% slower), varying from one process to the next. jemalloc removed
/// them for ~5 MiB more memory; mimalloc was as fast but used ~50% more memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        restore_sigpipe();
    }
    let filter = match EnvFilter::try_new(cli.log_filter()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: bad --log filter {:?}: {e}", cli.log_filter());
            return ExitCode::from(modeld::cli::EXIT_USAGE);
        }
    };
    // Colour only for a person at a terminal (and not when NO_COLOR is set).
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    // An engine's panic on a request's inputs becomes that request's error, not a backtrace.
    modeld::model::engine::install_panic_hook();
    // The server's runtime is a setting (measured: one current_thread runtime plus the compute
    // threads beat a multi-thread runtime on small machines); every other command is one
    // short conversation with the database.
    let threads = match &cli.command {
        Command::Serve(config) => config.engine.runtime_threads,
        _ => 1,
    };
    let runtime = match threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(modeld::cli::run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain, without a backtrace: these are messages for people.
            eprintln!("error: {e:#}");
            ExitCode::from(modeld::cli::exit_code(&e))
        }
    }
}
