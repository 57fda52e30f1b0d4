//! `peerdelta get`: update a package version from the DP into the cache.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use peerdelta_protocol::fetchplan::RequestLimits;
use peerdelta_protocol::manifest::PackageName;

use crate::config::ConfigFile;
use crate::logging::{self, LogFormat};
use peerdelta_branch::cache::Cache;
use peerdelta_branch::client::{DpClient, RetryPolicy};
use peerdelta_branch::get::{GetOptions, get};
use peerdelta_store::usage;
use peerdelta_store::util::human_bytes;

/// Arguments of `peerdelta get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// The package.
    #[arg(long)]
    package: String,
    /// The version (default: the newest).
    #[arg(long)]
    version: Option<u64>,
    /// The DP's URL (default: `dp` in the config file).
    #[arg(long, env = "PEERDELTA_DP")]
    dp: Option<String>,
    /// The DP's public key: 64 hex digits or a key file (default: `dp_key`).
    #[arg(long, env = "PEERDELTA_DP_KEY")]
    dp_key: Option<String>,
    /// Cache directory (default: `cache` in the config file, else the user cache).
    #[arg(long, env = "PEERDELTA_CACHE")]
    cache: Option<PathBuf>,
    /// Materialise the version into this directory. peerdelta replaces only
    /// what it wrote there itself; a non-empty directory it did not create
    /// is refused (exit 2) unless --force.
    #[arg(long)]
    out: Option<PathBuf>,
    /// With --out: install into a directory peerdelta did not create (its
    /// other files are kept, never overwritten), and replace files changed
    /// since peerdelta wrote them.
    #[arg(long, requires = "out")]
    force: bool,
    /// Materialise with hard links into the cache instead of copies.
    #[arg(long)]
    link: bool,
    /// Configuration file (default: ~/.config/peerdelta/config.toml if present).
    #[arg(long, env = "PEERDELTA_CONFIG")]
    config: Option<PathBuf>,
    /// Cap on DP traffic, e.g. "2 MiB/s" or "20 Mbit/s".
    #[arg(long)]
    max_rate: Option<String>,
    /// Background mode: back off when round-trip time rises (LEDBAT).
    #[arg(long)]
    background: bool,
    /// DP requests in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    concurrency: u32,
    /// Most bytes in one request.
    #[arg(long, default_value_t = 4 << 20)]
    request_bytes: u64,
    /// Give up on an unreachable DP after this many seconds.
    #[arg(long, default_value_t = 60)]
    retry_secs: u64,
    /// Do not send status reports to the DP.
    #[arg(long)]
    no_report: bool,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// Ask the local agent daemon at this address (default: `agent.control`
    /// in the config file) instead of fetching alone; used when `--dp` is not given.
    #[arg(long, env = "PEERDELTA_CONTROL")]
    control: Option<String>,
    /// With the daemon: wait until the transfer is done.
    #[arg(long)]
    wait: bool,
    /// Fetch alone from the DP even if a daemon runs.
    #[arg(long)]
    standalone: bool,
}

/// `peerdelta get` through the local daemon; `None` when no daemon answers.
/// With `--out`, waits for the transfer and materialises the version from
/// the daemon's cache here, as the user who ran `get`.
fn via_daemon(a: &GetArgs) -> anyhow::Result<Option<()>> {
    use peerdelta_branch::subnet::control::{ControlClient, GetRequest};
    if a.standalone || a.dp.is_some() {
        return Ok(None);
    }
    let cfg = ConfigFile::resolve(a.config.as_deref())?;
    let addr = super::agent::control_addr(a.control.as_deref(), a.config.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let c = ControlClient::new(&addr)?;
        if !c.alive().await {
            if a.control.is_some() {
                anyhow::bail!("no agent daemon answers at {addr}");
            }
            return Ok(None);
        }
        let token_file = std::env::var_os("PEERDELTA_CONTROL_TOKEN").map(PathBuf::from);
        let cache_dir = a.cache.clone().or(cfg.cache.clone());
        let c = c
            .with_token(token_file.as_deref(), cache_dir.as_deref())
            .await?;
        let accepted = c
            .get(&GetRequest {
                package: a.package.clone(),
                version: a.version,
            })
            .await?;
        if !a.wait && a.out.is_none() {
            if !a.quiet {
                println!(
                    "{} v{}: transfer started by the agent daemon (peerdelta status shows it)",
                    accepted.package, accepted.version
                );
            }
            return Ok(Some(()));
        }
        loop {
            use peerdelta_branch::subnet::view::Phase;
            let j = c.job(&accepted.package, accepted.version).await?;
            match j.phase {
                Phase::Done => {
                    if let Some(out) = &a.out {
                        let status = c.status().await?;
                        materialize_from_daemon(a, &cfg, &status, &accepted, out)?;
                    }
                    if a.json {
                        println!("{}", serde_json::to_string_pretty(&j)?);
                    } else if !a.quiet {
                        let (dp, lan, reused) = j
                            .summary
                            .as_ref()
                            .map_or((0, 0, 0), |s| (s.dp_bytes, s.lan_bytes, s.reused_bytes));
                        println!(
                            "{} v{}: done as {}; {dp} B from the DP, {lan} B from peers, {reused} B reused locally",
                            accepted.package, accepted.version, j.role
                        );
                    }
                    return Ok(Some(()));
                }
                Phase::Failed => anyhow::bail!(
                    "{} v{}: {}",
                    accepted.package,
                    accepted.version,
                    j.error.as_deref().unwrap_or("failed")
                ),
                _ => tokio::time::sleep(std::time::Duration::from_millis(300)).await,
            }
        }
    })
}

/// `--out` through the daemon: the version from the daemon's cache (its
/// signed manifest checked against the DP key: `--dp-key`, the config's, or
/// the one the daemon pins).
fn materialize_from_daemon(
    a: &GetArgs,
    cfg: &ConfigFile,
    status: &peerdelta_branch::subnet::view::StatusView,
    accepted: &peerdelta_branch::subnet::control::GetAccepted,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let root = status.cache.root.as_str();
    let key = match a.dp_key.as_deref().or(cfg.dp_key.as_deref()) {
        Some(k) => crate::config::load_key(k)?,
        None => crate::config::load_key(&status.dp_key)?,
    };
    let package = PackageName::new(&accepted.package).map_err(|e| usage!("{e}"))?;
    let cache = Cache::open(std::path::Path::new(root))
        .with_context(|| format!("opening the daemon's cache {root}"))?;
    let (m, _) = cache
        .manifest(&package, accepted.version, &key)
        .with_context(|| {
            format!(
                "reading {package} v{} from the daemon's cache",
                accepted.version
            )
        })?;
    peerdelta_branch::materialize::materialize(
        &cache,
        &m,
        out,
        peerdelta_branch::materialize::Options {
            link: a.link,
            force: a.force,
        },
    )?;
    Ok(())
}

/// Runs `peerdelta get` against the DP directly.
pub fn run(a: GetArgs) -> anyhow::Result<()> {
    logging::init(
        LogFormat::Text,
        if a.quiet || a.json { "error" } else { "warn" },
    );
    if via_daemon(&a)?.is_some() {
        return Ok(());
    }
    let cfg = ConfigFile::resolve(a.config.as_deref())?;
    let ends = cfg.endpoints(a.dp.as_deref(), a.dp_key.as_deref(), a.cache.as_deref())?;
    let key = ends.key;
    let package = PackageName::new(&a.package).map_err(|e| usage!("{e}"))?;
    let governor = cfg.governor(a.max_rate.as_deref(), a.background)?;
    let cache = Cache::open(&ends.cache)?;
    let client = DpClient::new(
        &ends.dp,
        governor,
        RetryPolicy {
            give_up_after: std::time::Duration::from_secs(a.retry_secs),
        },
    )?;
    let opts = GetOptions {
        package,
        version: a.version,
        out: a.out.clone(),
        link: a.link,
        force: a.force,
        concurrency: a.concurrency as usize,
        limits: RequestLimits {
            max_ranges: peerdelta_protocol::fetchplan::MAX_RANGES_PER_REQUEST,
            max_bytes: a.request_bytes.max(64 * 1024),
        },
        progress: !a.quiet && !a.json,
        agent: peerdelta_branch::settings::host_name(),
        report: !a.no_report,
        dp_give_up: Some(std::time::Duration::from_secs(a.retry_secs)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let s = rt.block_on(get(&client, &cache, &key, &opts))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else if !a.quiet {
        println!(
            "{} v{}: {} files, {}; {} from the DP, {} reused locally ({} cached, {} from the bundle, {} rebuilt from a needs list, {} by RDC, {} whole) in {:.1} s",
            s.package,
            s.version,
            s.files,
            human_bytes(s.bytes),
            human_bytes(s.dp_bytes),
            human_bytes(s.reused_bytes),
            s.cached_contents,
            s.bundle_contents,
            s.delta_contents,
            s.rdc_contents,
            s.whole_contents,
            s.seconds
        );
    }
    Ok(())
}
