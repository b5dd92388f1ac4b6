//! The `kxen` command line.
//!
//! Adding a subcommand: one variant in [`Command`] (with its arguments struct) and one
//! `fn cmd_name(args) -> Result<ExitCode>` dispatched in [`run`]. Errors that mean "bad
//! input / kernel refused" are returned as [`Refused`] and exit with status 2 and one line
//! on stderr; anything else is an internal failure (status 1).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::{Read, Write};

use kxen::inspect;
use kxen::launch::{Domain, LaunchSpec};
use xen_abi::negotiate::LaunchMode;
use xen_abi::pte::PteAbi;

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
    /// Boot a Xen PV kernel.
    Run(RunArgs),
    /// Boot a domain described by an xl.cfg file (type = "pv").
    Create(CreateArgs),
    /// Boot the built-in demo guest.
    Demo(DemoArgs),
    /// Measure the round-trip cost of a hypercall, a bounced exception, a bare KVM exit
    /// (the floor) and an in-VM syscall, each in ns per operation and as a ratio to the
    /// floor. Needs /dev/kvm. Prints numbers only; see docs/performance.md.
    Bench(BenchArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The kernel: ELF, bzImage or compressed ELF.
    #[arg(long)]
    kernel: PathBuf,
    /// An initrd / first module.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    memory: u64,
    /// vCPUs (vCPU 0 starts; the guest brings up the others).
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Launch privileged (dom0-like).
    #[arg(long)]
    privileged: bool,
    /// Domain name.
    #[arg(long, default_value = "kxen-domu")]
    name: String,
    /// Page-table ABI: `kxen` (every software-available PTE bit is the guest's), `xen` (bit 52
    /// marks kernel mappings, as a Xen release build) or `xen-debug` (also bit 62 on grant
    /// mappings); see docs/pte-abi.md.
    #[arg(long, value_enum, default_value_t = PteAbiArg::Kxen)]
    pte_abi: PteAbiArg,
    /// Do not offer CPUID leaf 0x16 (processor frequency) where the host leaves it empty, as
    /// Xen never does; by default kxen offers it so Linux skips its slow PIT calibration.
    #[arg(long)]
    no_cpuid_freq_leaf: bool,
    #[command(flatten)]
    run: RunOptions,
}

#[derive(Clone, Copy, ValueEnum)]
enum PteAbiArg {
    Kxen,
    Xen,
    XenDebug,
}

impl From<PteAbiArg> for PteAbi {
    fn from(a: PteAbiArg) -> Self {
        match a {
            PteAbiArg::Kxen => PteAbi::Kxen,
            PteAbiArg::Xen => PteAbi::Xen,
            PteAbiArg::XenDebug => PteAbi::XenDebug,
        }
    }
}

#[derive(Args)]
struct CreateArgs {
    /// The xl.cfg file.
    config: PathBuf,
    #[command(flatten)]
    run: RunOptions,
}

#[derive(Args)]
struct DemoArgs {
    /// Launch the demo privileged (dom0-like), to see the other features submap.
    #[arg(long)]
    privileged: bool,
    /// Write the demo kernel (an ELF PV kernel) to PATH instead of running it, e.g. for
    /// `kxen create resources/demo.cfg`.
    #[arg(long, value_name = "PATH")]
    save_kernel: Option<PathBuf>,
    #[command(flatten)]
    run: RunOptions,
}

#[derive(Args, Clone, Copy)]
struct RunOptions {
    /// At the end, print run time, boot-to-first-userspace time, exits by kind, hypercalls
    /// by number and traps by vector.
    #[arg(long)]
    stats: bool,
    /// At the end, print the xenstore tree (`path = "value" (perms)`) to stderr.
    #[arg(long)]
    xenstore_dump: bool,
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
        Command::Run(args) => cmd_run(args),
        Command::Create(args) => cmd_create(args),
        Command::Demo(args) => cmd_demo(args),
        Command::Bench(args) => cmd_bench(args),
    }
}

fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| refused(format_args!("cannot read {what} {}: {e}", path.display())))
}

fn cmd_run(args: RunArgs) -> Result<ExitCode> {
    let spec = LaunchSpec {
        name: args.name,
        kernel: read_file(&args.kernel, "kernel")?,
        initrd: match &args.initrd {
            Some(p) => read_file(p, "initrd")?,
            None => Vec::new(),
        },
        cmdline: args.cmdline,
        memory_mib: args.memory,
        vcpus: args.vcpus,
        privileged: args.privileged,
        pte_abi: args.pte_abi.into(),
        no_cpuid_freq_leaf: args.no_cpuid_freq_leaf,
    };
    launch(&spec, args.run)
}

fn cmd_create(args: CreateArgs) -> Result<ExitCode> {
    let cfg = kxen::config::load_config(&args.config).map_err(refused)?;
    for key in &cfg.unknown {
        tracing::warn!(
            "{}: `{key}` is not supported by kxen and is ignored",
            args.config.display()
        );
    }
    let spec = LaunchSpec {
        name: cfg.name.clone(),
        kernel: read_file(&cfg.kernel, "kernel")?,
        initrd: match &cfg.ramdisk {
            Some(p) => read_file(p, "ramdisk")?,
            None => Vec::new(),
        },
        cmdline: cfg.cmdline.clone(),
        memory_mib: cfg.memory_mib,
        vcpus: cfg.vcpus,
        privileged: cfg.privileged,
        pte_abi: match cfg.pte_abi.as_deref() {
            None => PteAbi::default(),
            Some(name) => PteAbi::from_name(name).ok_or_else(|| {
                refused(format_args!(
                    "{}: unknown pte_abi `{name}`",
                    args.config.display()
                ))
            })?,
        },
        no_cpuid_freq_leaf: !cfg.cpuid_freq_leaf,
    };
    launch(&spec, args.run)
}

fn cmd_demo(args: DemoArgs) -> Result<ExitCode> {
    if let Some(path) = &args.save_kernel {
        std::fs::write(path, kxen::demo_image::DEMO_GUEST)
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let spec = LaunchSpec {
        name: "kxen-demo".into(),
        kernel: kxen::demo_image::DEMO_GUEST.to_vec(),
        initrd: Vec::new(),
        cmdline: "console=hvc0 kxen-demo".into(),
        memory_mib: 64,
        vcpus: 1,
        privileged: args.privileged,
        ..Default::default()
    };
    launch(&spec, args.run)
}

/// Create and run a domain; the exit status names how it ended.
fn launch(spec: &LaunchSpec, opts: RunOptions) -> Result<ExitCode> {
    let mut domain = Domain::create(spec, Box::new(std::io::stdout())).map_err(|e| {
        if e.is_refusal() {
            refused(format_args!("{}: {e}", spec.name))
        } else {
            anyhow::Error::new(e).context(format!("creating domain {}", spec.name))
        }
    })?;
    spawn_stdin_reader(&domain);
    spawn_sigint_watcher(&domain);
    let outcome = domain
        .run()
        .with_context(|| format!("running domain {}", spec.name))?;
    let _ = std::io::stdout().flush();
    if opts.xenstore_dump {
        if let Some(dump) = domain.shared().xenstore_dump() {
            eprint!("{dump}");
        }
    }
    if opts.stats {
        eprintln!("kxen: run time {:.3} s", outcome.run_time.as_secs_f64());
        match outcome.boot_to_user {
            Some(t) => eprintln!(
                "kxen: boot to first userspace {:.3} s (first entry of a vCPU into guest user mode)",
                t.as_secs_f64()
            ),
            None => eprintln!("kxen: boot to first userspace: never (no guest user mode entered)"),
        }
        for (k, v) in domain.stats().snapshot() {
            eprintln!("kxen:   {k:<24} {v}");
        }
    }
    let status = outcome.exit_status();
    if status == 0 {
        tracing::info!("{}: {}", spec.name, outcome.describe());
    } else {
        eprintln!("kxen: {}: {}", spec.name, outcome.describe());
    }
    Ok(ExitCode::from(status))
}

/// Keyboard input for the guest: a thread reads stdin into the domain's console input.
fn spawn_stdin_reader(domain: &Domain) {
    let shared = domain.shared().clone();
    let _ = std::thread::Builder::new()
        .name("kxen-stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            loop {
                match stdin.read(&mut buf) {
                    // Ctrl-C interrupts the read (the SIGINT handler has no SA_RESTART).
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Ok(0) | Err(_) => break,
                    Ok(n) => shared.push_console_input(&buf[..n]),
                }
            }
        });
}

/// SIGINTs seen (the handler only counts; a thread acts on them).
static SIGINTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

extern "C" fn on_sigint(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe: one atomic increment.
    SIGINTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Ctrl-C: the first asks the guest to power off (`control/shutdown`, as `xl shutdown`
/// does), the second stops the domain hard.
fn spawn_sigint_watcher(domain: &Domain) {
    if let Err(e) = vmm_sys_util::signal::register_signal_handler(libc::SIGINT, on_sigint) {
        tracing::warn!("cannot handle Ctrl-C: {e}");
        return;
    }
    let stop = domain.stop_handle();
    let _ = std::thread::Builder::new()
        .name("kxen-sigint".into())
        .spawn(move || {
            let mut seen = 0;
            loop {
                std::thread::sleep(std::time::Duration::from_millis(50));
                let n = SIGINTS.load(std::sync::atomic::Ordering::SeqCst);
                if n == seen {
                    continue;
                }
                if seen == 0 {
                    eprintln!("kxen: asking the guest to power off (Ctrl-C again to stop it)");
                    if let Err(e) = stop.request_shutdown("poweroff") {
                        eprintln!("kxen: {e}");
                    }
                }
                if n >= 2 {
                    stop.stop("interrupted (Ctrl-C twice)");
                    return;
                }
                seen = n;
            }
        });
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
