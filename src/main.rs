//! The `dynkv` command: `serve` runs a node, `ctl` talks to one, `demo`
//! exercises the storage engine on every core.

mod bench;
mod config;
mod ctl;
mod engine_demo;
mod server;

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
    /// Start a node (one shard per core; defaults need no config file).
    Serve(config::ServeArgs),
    /// Drive a node or cluster with a YCSB-style workload and report
    /// throughput and latency.
    Bench(bench::BenchArgs),
    /// Talk to a running node: get, put, del, stats, status.
    Ctl(ctl::CtlArgs),
    /// Run the storage engine alone on every core: write, read, reopen,
    /// and report.
    Demo(engine_demo::DemoArgs),
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => args.resolve().and_then(server::run),
        Command::Ctl(args) => ctl::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => engine_demo::run(args),
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
