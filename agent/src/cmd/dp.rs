//! `peerdelta dp …`: the distribution point's commands.

use peerdelta_protocol::publish::FAR_VERSIONS;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use peerdelta_protocol::manifest::PackageName;

use crate::logging::{self, LogFormat};
use peerdelta_dp::library::Library;
use peerdelta_dp::{list, maintain, publish, serve, status};
use peerdelta_store::usage;
use peerdelta_store::util::{cores, human_bytes};

/// The `dp` subcommands.
#[derive(Subcommand, Debug)]
pub enum DpCommand {
    /// Create a library and the DP's ed25519 key pair.
    Init(LibArgs),
    /// Publish a directory tree as the next version of a package; prints the version.
    Publish(PublishArgs),
    /// Serve the library over HTTP (Range, multi-range, ETag), accept status
    /// reports (POST /status) and expose Prometheus metrics (/metrics).
    Serve(ServeArgs),
    /// List the status reports receivers sent.
    Status(StatusArgs),
    /// List packages and versions, with what a receiver holding each of the
    /// previous versions downloads.
    List(ListArgs),
    /// Remove signatures that no package's newest five versions use.
    Prune(PruneArgs),
    /// Check every manifest and the files it names.
    Verify(VerifyArgs),
    /// Re-sign package indexes as a new generation (run from cron more often
    /// than --valid-days, so receivers see a frozen mirror, not a live DP, expire).
    RefreshIndex(RefreshArgs),
}

/// How long new indexes stay valid.
#[derive(Args, Debug, Clone)]
pub struct ValidityArgs {
    /// Receivers refuse an index this many days after it was signed (a
    /// stale or frozen mirror is noticed); kept for later publishes and
    /// refreshes. 0: indexes never expire (the default).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=36_500))]
    index_valid_days: Option<u64>,
}

impl ValidityArgs {
    fn apply(&self, lib: &Library) -> anyhow::Result<()> {
        match self.index_valid_days {
            Some(d) => lib.set_index_validity_secs((d > 0).then_some(d * 86_400)),
            None => Ok(()),
        }
    }
}

/// Arguments of `dp refresh-index`.
#[derive(Args, Debug)]
pub struct RefreshArgs {
    #[command(flatten)]
    lib: LibArgs,
    /// Only this package (default: every package).
    #[arg(long)]
    package: Option<String>,
    #[command(flatten)]
    validity: ValidityArgs,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// Where the library is.
#[derive(Args, Debug, Clone)]
pub struct LibArgs {
    /// The library directory (the tree a web server serves).
    #[arg(long, env = "PEERDELTA_LIBRARY")]
    library: PathBuf,
    /// The private directory (key, lock, status reports); default `<LIBRARY>.private`.
    #[arg(long, env = "PEERDELTA_PRIVATE")]
    private: Option<PathBuf>,
}

impl LibArgs {
    fn library(&self) -> Library {
        Library::at(&self.library, self.private.as_deref())
    }
}

/// Arguments of `dp publish`.
#[derive(Args, Debug)]
pub struct PublishArgs {
    #[command(flatten)]
    lib: LibArgs,
    /// The package name (A-Z a-z 0-9 . _ -).
    #[arg(long)]
    package: String,
    /// The directory tree to publish.
    source: PathBuf,
    /// Print a JSON summary instead of the version number.
    #[arg(long)]
    json: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// A needs list is written only if it saves at least this many bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    min_saving: u64,
    /// Worker threads (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// zstd level of the compressed origin runs (packs) of needs lists,
    /// compressed against the base; 0 disables packs.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(i32).range(0..=22))]
    pack_level: i32,
    /// Versions back that get needs lists for files of at most 256 MiB
    /// (at least the 4 of the window): a receiver that far behind gets one
    /// delta instead of client-side RDC, at some publish time per version.
    #[arg(long, default_value_t = FAR_VERSIONS as u16, value_parser = clap::value_parser!(u16).range(4..=64))]
    far_versions: u16,
    #[command(flatten)]
    validity: ValidityArgs,
}

/// Arguments of `dp serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    lib: LibArgs,
    /// Address to listen on (port 0 picks a free port, printed on stdout).
    #[arg(long, env = "PEERDELTA_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "PEERDELTA_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(flatten)]
    limits: ServeLimitArgs,
}

/// The bounds `dp serve` puts on clients (see `dp::serve::conn`).
#[derive(Args, Debug)]
pub struct ServeLimitArgs {
    /// Connections at once; more are closed at once.
    #[arg(long, default_value_t = 1024, env = "PEERDELTA_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Connections at once from one client address.
    #[arg(long, default_value_t = 64, env = "PEERDELTA_MAX_CONNECTIONS_PER_CLIENT",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_client: u32,
    /// Seconds a request header may take to arrive (also the keep-alive idle time).
    #[arg(long, default_value_t = 20, env = "PEERDELTA_HEADER_TIMEOUT_SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_secs: u64,
    /// Seconds a client may leave a response unread before it is dropped.
    #[arg(long, default_value_t = 60, env = "PEERDELTA_STALL_TIMEOUT_SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    stall_timeout_secs: u64,
    /// Status reports accepted per client address and minute (also the burst).
    #[arg(long, default_value_t = 60, env = "PEERDELTA_STATUS_PER_MINUTE",
          value_parser = clap::value_parser!(u32).range(1..))]
    status_per_minute: u32,
    /// MiB of status log before it rotates (the log keeps one rotated file).
    #[arg(long, default_value_t = 64, env = "PEERDELTA_STATUS_LOG_MIB",
          value_parser = clap::value_parser!(u64).range(1..))]
    status_log_mib: u64,
}

impl ServeLimitArgs {
    fn limits(&self) -> serve::conn::ServeLimits {
        use std::time::Duration;
        serve::conn::ServeLimits {
            max_connections: self.max_connections as usize,
            max_connections_per_client: self.max_connections_per_client as usize,
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            body_timeout: Duration::from_secs(self.header_timeout_secs),
            stall_timeout: Duration::from_secs(self.stall_timeout_secs),
            status_per_minute: self.status_per_minute,
            status_log_bytes: self.status_log_mib << 20,
            ..Default::default()
        }
    }
}

/// Arguments of `dp status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    lib: LibArgs,
    /// Only reports about this package.
    #[arg(long)]
    package: Option<String>,
    /// JSON output (an array of reports, streamed).
    #[arg(long)]
    json: bool,
}

/// Arguments of `dp list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    lib: LibArgs,
    /// Only this package.
    #[arg(long)]
    package: Option<String>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// Arguments of `dp prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    lib: LibArgs,
    /// Report what would be removed without removing it.
    #[arg(long)]
    dry_run: bool,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// Arguments of `dp verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    lib: LibArgs,
    /// Also re-hash every file (slow on a large library).
    #[arg(long)]
    full: bool,
}

fn package(name: &str) -> anyhow::Result<PackageName> {
    PackageName::new(name).map_err(|e| usage!("{e}"))
}

/// Runs a `dp` subcommand.
pub fn run(cmd: DpCommand) -> anyhow::Result<()> {
    match cmd {
        DpCommand::Init(a) => {
            logging::init(LogFormat::Text, "warn");
            let lib = a.library();
            let key = lib.init()?;
            println!(
                "created library {} (private files in {})",
                lib.root.display(),
                lib.private.display()
            );
            println!(
                "DP public key: {}",
                peerdelta_protocol::hex::encode(key.as_bytes())
            );
            Ok(())
        }
        DpCommand::Publish(a) => {
            logging::init(
                LogFormat::Text,
                if a.quiet || a.json { "warn" } else { "info" },
            );
            let lib = a.lib.library();
            a.validity.apply(&lib)?;
            let opts = publish::PublishOptions {
                package: package(&a.package)?,
                source: a.source.clone(),
                min_saving: a.min_saving,
                threads: a.threads.map_or_else(cores, |t| t as usize),
                progress: !a.quiet && !a.json,
                pack_level: a.pack_level,
                far_versions: usize::from(a.far_versions),
            };
            let s = publish::publish(&lib, &opts)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("{}", s.version);
                if !a.quiet {
                    eprintln!(
                        "published {} version {}: {} files, {}, {} new content ({}), {} needs lists written, {} reused, in {:.1} s ({:.0} MB/s)",
                        s.package,
                        s.version,
                        s.files,
                        human_bytes(s.bytes),
                        s.new_contents,
                        human_bytes(s.new_content_bytes),
                        s.needs_lists_written,
                        s.needs_lists_reused,
                        s.seconds,
                        s.mb_per_s
                    );
                }
            }
            Ok(())
        }
        DpCommand::Serve(a) => {
            logging::init(a.log_format, "info");
            let lib = a.lib.library();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(serve::serve(lib, a.listen, a.limits.limits()))
        }
        DpCommand::Status(a) => {
            let lib = a.lib.library();
            lib.check()?;
            let filter = a.package.as_deref().map(package).transpose()?;
            print_status(&lib, filter.as_ref(), a.json)
        }
        DpCommand::List(a) => {
            let lib = a.lib.library();
            let key = lib.public_key()?;
            let packages = match &a.package {
                Some(p) => vec![package(p)?],
                None => lib.packages()?,
            };
            let rows = packages
                .iter()
                .map(|p| list::list_package(&lib, p, &key))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut out = std::io::stdout().lock();
            if a.json {
                serde_json::to_writer_pretty(&mut out, &rows)?;
                writeln!(out)?;
                return Ok(());
            }
            for p in &rows {
                writeln!(out, "{}", p.package)?;
                for v in &p.versions {
                    let deltas: Vec<String> = v
                        .from_previous
                        .iter()
                        .map(|d| {
                            format!(
                                "from v{}: {} ({:.1}%)",
                                d.from,
                                human_bytes(d.bytes),
                                100.0 * d.bytes as f64 / v.bytes.max(1) as f64
                            )
                        })
                        .collect();
                    writeln!(
                        out,
                        "  v{:<5} {:>6} files {:>10}   {}",
                        v.version,
                        v.files,
                        human_bytes(v.bytes),
                        if deltas.is_empty() {
                            "(first version)".to_owned()
                        } else {
                            deltas.join(", ")
                        }
                    )?;
                }
            }
            Ok(())
        }
        DpCommand::Prune(a) => {
            let lib = a.lib.library();
            let key = lib.public_key()?;
            let s = maintain::prune(&lib, &key, a.dry_run)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "{} {} signature containers ({}), kept {}",
                    if s.dry_run { "would remove" } else { "removed" },
                    s.removed,
                    human_bytes(s.removed_bytes),
                    s.kept
                );
            }
            Ok(())
        }
        DpCommand::RefreshIndex(a) => {
            logging::init(LogFormat::Text, "warn");
            let lib = a.lib.library();
            let key = lib.public_key()?;
            a.validity.apply(&lib)?;
            let only = a.package.as_deref().map(package).transpose()?;
            let s = maintain::refresh_index(&lib, &key, only.as_ref())?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                for (p, g) in &s.packages {
                    println!(
                        "{p}: index generation {g}, {}",
                        s.expires_ms.map_or("never expires".to_owned(), |e| format!(
                            "expires {}",
                            peerdelta_store::util::utc(e)
                        ))
                    );
                }
            }
            Ok(())
        }
        DpCommand::Verify(a) => {
            let lib = a.lib.library();
            let key = lib.public_key()?;
            let (versions, problems) = maintain::verify(&lib, &key, a.full)?;
            for p in &problems {
                println!("{} v{}: {}", p.package, p.version, p.problem);
            }
            if problems.is_empty() {
                println!("{versions} versions verified");
                Ok(())
            } else {
                anyhow::bail!("{} problems in {versions} versions", problems.len())
            }
        }
    }
}

/// `dp status`: streams the report log, oldest first; fields from the
/// network are printed with their control characters escaped.
fn print_status(lib: &Library, filter: Option<&PackageName>, json: bool) -> anyhow::Result<()> {
    use peerdelta_protocol::status::StatusEvent;
    use status::escape_controls as esc;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut first = true;
    if json {
        write!(out, "[")?;
    } else {
        writeln!(
            out,
            "{:<20} {:<20} {:<16} {:>7}  {:<13} details",
            "received (UTC)", "agent", "package", "version", "event"
        )?;
    }
    let stats = status::for_each(lib, |r| {
        if filter.is_some_and(|p| r.report.package != *p) {
            return Ok(());
        }
        if json {
            write!(out, "{}\n  ", if first { "" } else { "," })?;
            serde_json::to_writer(&mut out, &r)?;
            first = false;
            return Ok(());
        }
        let details = match &r.report.event {
            StatusEvent::Completed {
                wan_bytes,
                lan_bytes,
                reused_bytes,
            } => format!("wan {wan_bytes} B, lan {lan_bytes} B, reused {reused_bytes} B"),
            StatusEvent::HashFailure {
                content,
                source,
                detail,
            } => format!("content {content} from {}: {}", esc(source), esc(detail)),
            StatusEvent::Held { versions } => format!("holds {versions:?}"),
        };
        writeln!(
            out,
            "{:<20} {:<20} {:<16} {:>7}  {:<13} {details}",
            peerdelta_store::util::utc(r.received_ms),
            esc(&r.report.agent),
            r.report.package,
            r.report.version,
            r.report.kind()
        )?;
        Ok(())
    })?;
    if json {
        writeln!(out, "{}]", if first { "" } else { "\n" })?;
    }
    out.flush()?;
    if stats.bad_lines > 0 {
        eprintln!(
            "peerdelta: warning: {} unreadable lines in the status log",
            stats.bad_lines
        );
    }
    if stats.dropped > 0 {
        eprintln!(
            "peerdelta: {} older reports were dropped when the status log rotated",
            stats.dropped
        );
    }
    Ok(())
}
