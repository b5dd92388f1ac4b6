//! The `kxen` command line.
//!
//! Adding a subcommand: one variant in [`Command`] (with its arguments struct) and one
//! `fn cmd_name(args) -> Result<ExitCode>` dispatched in [`run`]. Errors that mean "bad
//! input / kernel refused" are returned as [`Refused`] and exit with status 2 and one line
//! on stderr; anything else is an internal failure (status 1).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kxen::inspect;
use xen_abi::negotiate::LaunchMode;

#[derive(Parser)]
#[command(name = "kxen", version, about = "Run Xen PV guests on Linux KVM")]
struct Cli {
    /// Log level (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogLevel::Warn)]
    log_level: LogLevel,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for tracing::Level {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Show what kxen would do with a kernel: format, Xen notes, features, launch verdicts,
    /// start-of-day layout. Exits 2 if the kernel is refused for the requested mode or the
    /// layout cannot be built with --memory (after printing the report).
    Inspect(InspectArgs),
    /// Measure the round-trip cost of a hypercall, a bounced exception, a bare KVM exit
    /// (the floor) and an in-VM syscall, each in ns per operation and as a ratio to the
    /// floor. Needs /dev/kvm. Prints numbers only; see docs/performance.md.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Operations per measurement.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    iterations: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// The kernel: ELF, bzImage or compressed ELF.
    kernel: PathBuf,
    /// Judge a privileged (dom0-like) launch instead of an unprivileged one.
    #[arg(long)]
    privileged: bool,
    /// Guest memory in MiB, for the layout.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    memory: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// A "bad input / kernel refused" failure: exit status 2, its message on one line.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused(e: impl std::fmt::Display) -> anyhow::Error {
    Refused(e.to_string()).into()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(tracing::Level::from(cli.log_level))
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            if let Some(r) = e.downcast_ref::<Refused>() {
                eprintln!("kxen: {r}");
                ExitCode::from(2)
            } else {
                // One line: the context chain, outermost first.
                eprintln!("kxen: {e:#}");
                ExitCode::from(1)
            }
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Inspect(args) => cmd_inspect(args),
        Command::Bench(args) => cmd_bench(args),
    }
}

fn cmd_inspect(args: InspectArgs) -> Result<ExitCode> {
    let mode = if args.privileged {
        LaunchMode::Privileged
    } else {
        LaunchMode::Unprivileged
    };
    let bytes = std::fs::read(&args.kernel)
        .map_err(|e| refused(format_args!("cannot read {}: {e}", args.kernel.display())))?;
    let report = inspect::inspect(&bytes, mode, args.memory)
        .map_err(|e| refused(format_args!("{}: {e}", args.kernel.display())))?;
    if args.json {
        let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
        println!("{json}");
    } else {
        print!("{report}");
    }
    if let Some(why) = &report.verdict(mode).refusal {
        return Err(refused(format_args!(
            "{}: refused for {} launch: {why}",
            args.kernel.display(),
            inspect::mode_name(mode)
        )));
    }
    if let Some(why) = &report.layout.error {
        return Err(refused(format_args!(
            "{}: cannot build the start-of-day layout with {} MiB: {why}",
            args.kernel.display(),
            args.memory
        )));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_bench(args: BenchArgs) -> Result<ExitCode> {
    if args.iterations == 0 {
        return Err(refused("--iterations must be at least 1"));
    }
    let report = kxen::bench::run(args.iterations).context("kxen bench")?;
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&report).context("serialising the report")?;
        json.push('\n');
        json
    } else {
        report.to_string()
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `kxen bench | head` is fine.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing the report")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}
