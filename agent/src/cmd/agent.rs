//! `peerdelta agent run` (the daemon) and `peerdelta status`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::ConfigFile;
use crate::logging::{self, LogFormat};
use peerdelta_branch::cache::Cache;
use peerdelta_branch::client::{DpClient, RetryPolicy};
use peerdelta_branch::subnet::control::{self, ControlClient};
use peerdelta_branch::subnet::{Daemon, DaemonConfig};
use peerdelta_store::usage;

/// `peerdelta agent …`.
#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Run the branch agent daemon: discover peers, elect masters, share transfers.
    Run(RunArgs),
}

/// Arguments of `peerdelta agent run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Configuration file (default: ~/.config/peerdelta/config.toml if present).
    #[arg(long, env = "PEERDELTA_CONFIG")]
    config: Option<PathBuf>,
    /// Cache directory (default: `cache` in the config file, else the user cache).
    #[arg(long, env = "PEERDELTA_CACHE")]
    cache: Option<PathBuf>,
    /// The DP's URL (default: `dp` in the config file).
    #[arg(long, env = "PEERDELTA_DP")]
    dp: Option<String>,
    /// The DP's public key (default: `dp_key` in the config file).
    #[arg(long, env = "PEERDELTA_DP_KEY")]
    dp_key: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Runs an `agent` subcommand.
pub fn run(c: AgentCommand) -> anyhow::Result<()> {
    match c {
        AgentCommand::Run(a) => run_daemon(a),
    }
}

fn run_daemon(a: RunArgs) -> anyhow::Result<()> {
    logging::init(a.log_format, "info");
    let cfg = ConfigFile::resolve(a.config.as_deref())?;
    let ends = cfg.endpoints(a.dp.as_deref(), a.dp_key.as_deref(), a.cache.as_deref())?;
    let key = ends.key;
    let cache = Cache::open(&ends.cache)?;
    let governor = cfg.governor(None, false)?;
    let client = DpClient::new(
        &ends.dp,
        governor,
        RetryPolicy {
            give_up_after: Duration::from_secs(60),
        },
    )?;
    let control_addr: std::net::SocketAddr = cfg
        .agent
        .control
        .parse()
        .map_err(|e| usage!("agent.control {:?}: {e}", cfg.agent.control))?;
    let name = cfg
        .agent
        .name
        .clone()
        .unwrap_or_else(peerdelta_branch::settings::host_name);
    let get = peerdelta_branch::settings::transfer_options(&cfg.agent, &name)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let d = Daemon::start(DaemonConfig {
            name,
            cache,
            key,
            client,
            agent: cfg.agent.clone(),
            get,
        })?;
        let token = control::write_token(d.cache_root())?;
        let server = tokio::spawn(control::serve(d.clone(), control_addr, token));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = server => match r {
                Ok(r) => r?,
                Err(e) => anyhow::bail!("the control API stopped: {e}"),
            },
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
        }
        // Every write is a synced file plus a journal record, and blocking
        // writes finish before their task yields: dropping the tasks now
        // leaves nothing half-recorded, and a restart resumes.
        Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

/// Arguments of `peerdelta status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The daemon's control address (default: `agent.control` in the config file).
    #[arg(long, env = "PEERDELTA_CONTROL")]
    control: Option<String>,
    /// Configuration file.
    #[arg(long, env = "PEERDELTA_CONFIG")]
    config: Option<PathBuf>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// The control address from a flag or the configuration.
pub fn control_addr(
    flag: Option<&str>,
    config: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    match flag {
        Some(a) => Ok(a.to_owned()),
        None => Ok(ConfigFile::resolve(config)?.agent.control),
    }
}

/// Runs `peerdelta status`.
pub fn status(a: StatusArgs) -> anyhow::Result<()> {
    logging::init(LogFormat::Text, "warn");
    let addr = control_addr(a.control.as_deref(), a.config.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let s = rt.block_on(async { ControlClient::new(&addr)?.status().await })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("agent {} ({})", s.agent, s.peer_id);
    println!(
        "WAN {} B, LAN in {} B, out {} B; {} elections ({} re-elections), {} bans",
        s.wan_bytes, s.lan_bytes_in, s.lan_bytes_out, s.elections, s.reelections, s.bans
    );
    println!("peers:");
    for p in &s.peers {
        let inc = p
            .incompatible
            .as_deref()
            .map(|w| format!("  INCOMPATIBLE: {w}"))
            .unwrap_or_default();
        println!("  {:<20} weight {:<3} {}{inc}", p.name, p.weight, p.id);
    }
    println!("transfers:");
    for j in &s.jobs {
        println!(
            "  {} v{}: {} ({}), master {}, {}/{} bytes held{}{}",
            j.package,
            j.version,
            j.phase,
            j.role,
            j.master.as_deref().unwrap_or("none"),
            j.held_bytes,
            j.total_bytes,
            j.error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default(),
            if j.banned.is_empty() {
                String::new()
            } else {
                format!("; banned: {}", j.banned.join("; "))
            }
        );
    }
    println!("cache ({}):", s.cache.root);
    for v in &s.cache.versions {
        println!("  {v}");
    }
    Ok(())
}
