//! The `kpiggybank` server: configuration from the environment, logs, serve
//! until SIGINT or SIGTERM.

use kpiggybank::{Config, Mode};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kpiggybank: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let default_filter = match config.mode {
        Mode::Dev => "info,kpiggybank=debug",
        Mode::Prod => "warn,kpiggybank::server=info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            // An empty RUST_LOG counts as unset, like the other variables.
            std::env::var("RUST_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .and_then(|v| EnvFilter::try_new(v).ok())
                .unwrap_or_else(|| EnvFilter::new(default_filter)),
        )
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
