//! The `kpiggybank` server: configuration from the environment (or the
//! command line; `--help` lists it), logs, serve until SIGINT or SIGTERM.

use kpiggybank::{Startup, StartupError};

fn main() -> std::process::ExitCode {
    let Startup { config, log_filter } = match Startup::from_args(std::env::args_os()) {
        Ok(startup) => startup,
        // --help and --version land here too: clap prints them and exits 0;
        // an argument it refuses exits 2, before anything is created.
        Err(StartupError::Args(e)) => e.exit(),
        Err(StartupError::Config(e)) => {
            eprintln!("kpiggybank: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(log_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let served = runtime.block_on(async {
        // Handlers go in before the start-up line: a signal sent as soon as
        // the server says it listens must stop it gracefully, not kill it.
        let stop = stop_signal().expect("signal handlers install");
        kpiggybank::run(config, stop).await
    });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("kpiggybank: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now; the future resolves on either.
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
