//! The `dynkv` command: `serve` runs a node, `bench` drives one.
//!
//! Until the network server lands (issue #4), `serve` runs the storage
//! engine on every core and exercises it end to end, so the first command in
//! the README already shows the thread-per-core engine at work.

mod engine_demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dynkv",
    version,
    about = "A Dynamo-style key-value store, thread-per-core on io_uring"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node. For now: run the per-shard storage engine demo in the
    /// data directory (writes, reads, reopens and reports).
    Serve(engine_demo::DemoArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => engine_demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dynkv: error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The default data directory, relative to where dynkv runs.
fn default_data_dir() -> PathBuf {
    PathBuf::from("./dynkv-data")
}
