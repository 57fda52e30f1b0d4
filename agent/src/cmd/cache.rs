//! `peerdelta cache list | verify | gc`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::config::{ConfigFile, default_cache_dir, load_key, parse_rate};
use peerdelta_branch::cache::Cache;
use peerdelta_store::usage;
use peerdelta_store::util::{human_bytes, utc};

/// The `cache` subcommands.
#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List cached package versions.
    List(CacheArgs),
    /// Re-hash every cached content, quarantine damaged ones, and drop
    /// versions that are no longer complete.
    Verify(CacheArgs),
    /// Evict least recently used versions until the cache fits in a size.
    Gc(GcArgs),
}

/// Where the cache is.
#[derive(Args, Debug)]
pub struct CacheArgs {
    /// Cache directory.
    #[arg(long, env = "PEERDELTA_CACHE")]
    cache: Option<PathBuf>,
    /// The DP's public key (manifests in the cache are verified with it).
    #[arg(long, env = "PEERDELTA_DP_KEY")]
    dp_key: Option<String>,
    /// Configuration file.
    #[arg(long, env = "PEERDELTA_CONFIG")]
    config: Option<PathBuf>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// Arguments of `cache gc`.
#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    common: CacheArgs,
    /// Target size, e.g. "10 GiB".
    #[arg(long)]
    max_size: String,
    /// Evict the newest version of a package too.
    #[arg(long)]
    include_newest: bool,
}

fn open(a: &CacheArgs) -> anyhow::Result<(Cache, ed25519_dalek::VerifyingKey)> {
    let cfg = ConfigFile::resolve(a.config.as_deref())?;
    let key_spec = a
        .dp_key
        .clone()
        .or(cfg.dp_key.clone())
        .ok_or_else(|| usage!("no DP key: give --dp-key or set dp_key"))?;
    let key = load_key(&key_spec)?;
    let dir = a
        .cache
        .clone()
        .or(cfg.cache.clone())
        .unwrap_or_else(default_cache_dir);
    Ok((Cache::open(&dir)?, key))
}

/// Runs a `cache` subcommand.
pub fn run(cmd: CacheCommand) -> anyhow::Result<()> {
    crate::logging::init(crate::logging::LogFormat::Text, "warn");
    match cmd {
        CacheCommand::List(a) => {
            let (cache, key) = open(&a)?;
            let list = cache.list(&key)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for v in &list {
                    println!(
                        "{:<20} v{:<6} {:>6} files {:>10}  last used {}{}",
                        v.package,
                        v.version,
                        v.files,
                        human_bytes(v.bytes),
                        utc(v.last_used_ms),
                        if v.incomplete { "  (incomplete)" } else { "" }
                    );
                }
            }
            Ok(())
        }
        CacheCommand::Verify(a) => {
            let (cache, key) = open(&a)?;
            let r = cache.verify(&key)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "checked {} contents: {} quarantined, {} versions dropped",
                    r.checked,
                    r.quarantined.len(),
                    r.dropped_versions.len()
                );
                for v in &r.dropped_versions {
                    println!("  dropped {v} (get it again)");
                }
            }
            if r.quarantined.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("{} damaged contents quarantined", r.quarantined.len())
            }
        }
        CacheCommand::Gc(a) => {
            let (cache, key) = open(&a.common)?;
            let max = parse_rate(&a.max_size)
                .ok()
                .flatten()
                .ok_or_else(|| usage!("--max-size {:?} is not a size", a.max_size))?;
            let r = cache.gc(&key, max, a.include_newest)?;
            if a.common.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} -> {}; evicted {}",
                    human_bytes(r.bytes_before),
                    human_bytes(r.bytes_after),
                    if r.evicted.is_empty() {
                        "nothing".into()
                    } else {
                        r.evicted.join(", ")
                    }
                );
                for k in &r.kept {
                    println!("  kept {k}");
                }
            }
            Ok(())
        }
    }
}
