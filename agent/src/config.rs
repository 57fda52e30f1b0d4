//! The agent's configuration file (TOML) and the values it holds: where the
//! cache is, which DP and key to use, and the WAN governor (cap, hourly
//! schedule per weekday, background mode). Command-line flags override it.
//!
//! ```toml
//! cache = "/var/cache/peerdelta"
//! dp = "http://dp.example.com:8080"
//! dp_key = "/etc/peerdelta/dp.pub"      # a key file, or the 64 hex digits
//!
//! [governor]
//! max_rate = "4 MiB/s"                  # also "20 Mbit/s", "500000" (bytes/s)
//! background = true                     # back off when RTT rises (LEDBAT)
//!
//! [governor.schedule]                   # local time; unlisted hours: no cap
//! weekdays = "8-18: 512 KiB/s"
//! sat = "0-24: unlimited"
//! fri = "12-14: pause, 14-18: 1 MiB/s"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use peerdelta_protocol::governor::{GovernorConfig, Schedule};
use serde::Deserialize;

use peerdelta_store::usage;

/// The configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Cache directory.
    pub cache: Option<PathBuf>,
    /// DP URL.
    pub dp: Option<String>,
    /// DP public key: a file or 64 hex digits.
    pub dp_key: Option<String>,
    /// WAN governor.
    #[serde(default)]
    pub governor: GovernorFile,
    /// Branch agent daemon settings.
    #[serde(default)]
    pub agent: peerdelta_branch::settings::AgentFile,
}

/// The `[governor]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernorFile {
    /// Hard cap, e.g. "4 MiB/s".
    pub max_rate: Option<String>,
    /// Back off when round-trip time rises.
    pub background: Option<bool>,
    /// Caps by weekday and hour.
    pub schedule: Option<BTreeMap<String, String>>,
}

impl ConfigFile {
    /// Reads `path`; a missing file is an error only if `required`.
    pub fn load(path: &Path, required: bool) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| usage!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(ConfigFile::default())
            }
            Err(e) => Err(usage!("reading {}: {e}", path.display())),
        }
    }

    /// The default location (`~/.config/peerdelta/config.toml` or the
    /// platform's equivalent).
    pub fn default_path() -> Option<PathBuf> {
        directories::ProjectDirs::from("org", "peerdelta", "peerdelta")
            .map(|d| d.config_dir().join("config.toml"))
    }

    /// Loads `--config FILE` (required) or the default file (optional).
    pub fn resolve(explicit: Option<&Path>) -> anyhow::Result<Self> {
        match explicit {
            Some(p) => Self::load(p, true),
            None => match Self::default_path() {
                Some(p) => Self::load(&p, false),
                None => Ok(ConfigFile::default()),
            },
        }
    }

    /// The governor settings, with command-line overrides.
    pub fn governor(
        &self,
        max_rate: Option<&str>,
        background: bool,
    ) -> anyhow::Result<GovernorConfig> {
        let rate = match max_rate.or(self.governor.max_rate.as_deref()) {
            Some(r) => parse_rate(r).map_err(|e| usage!("max_rate: {e}"))?,
            None => None,
        };
        let schedule = match &self.governor.schedule {
            Some(s) => Some(parse_schedule(s).map_err(|e| usage!("governor.schedule: {e}"))?),
            None => None,
        };
        Ok(GovernorConfig {
            max_rate_bps: rate,
            schedule,
            background: background || self.governor.background.unwrap_or(false),
        })
    }
}

/// The default cache directory.
/// Where an agent gets packages from and keeps them.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The DP's URL.
    pub dp: String,
    /// The pinned DP key.
    pub key: VerifyingKey,
    /// The cache directory.
    pub cache: PathBuf,
}

impl ConfigFile {
    /// The DP, its key and the cache: the command line's values first, then
    /// the config file's; the cache defaults to the user cache directory.
    pub fn endpoints(
        &self,
        dp: Option<&str>,
        key: Option<&str>,
        cache: Option<&Path>,
    ) -> anyhow::Result<Endpoints> {
        let dp = dp
            .map(str::to_owned)
            .or(self.dp.clone())
            .ok_or_else(|| usage!("no DP: give --dp URL or set dp in the config file"))?;
        let key = key
            .map(str::to_owned)
            .or(self.dp_key.clone())
            .ok_or_else(|| usage!("no DP key: give --dp-key or set dp_key in the config file"))?;
        Ok(Endpoints {
            dp,
            key: load_key(&key)?,
            cache: cache
                .map(Path::to_owned)
                .or(self.cache.clone())
                .unwrap_or_else(default_cache_dir),
        })
    }
}

pub fn default_cache_dir() -> PathBuf {
    directories::ProjectDirs::from("org", "peerdelta", "peerdelta")
        .map(|d| d.cache_dir().to_owned())
        .unwrap_or_else(|| PathBuf::from(".peerdelta-cache"))
}

/// Reads a DP public key given as 64 hex digits or as a key file.
pub fn load_key(spec: &str) -> anyhow::Result<VerifyingKey> {
    if let Some(k) = peerdelta_protocol::manifest::parse_public_key(spec) {
        return Ok(k);
    }
    let text = std::fs::read_to_string(spec)
        .map_err(|e| usage!("DP key {spec}: not 64 hex digits, and not a readable file: {e}"))?;
    peerdelta_protocol::manifest::parse_public_key(&text)
        .with_context(|| format!("{spec} is not a DP public key"))
}

/// Parses a rate: a number of bytes per second, or a number with a unit
/// (B, kB, KiB, MB, MiB, GB, GiB, kbit, Mbit, Gbit), optionally "/s";
/// "unlimited" means no cap (`None`), "pause" means 0.
pub fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("/s").unwrap_or(&t).trim();
    match t {
        "unlimited" | "none" | "-" => return Ok(None),
        "pause" | "paused" | "0" => return Ok(Some(0)),
        _ => {}
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (try \"4 MiB/s\" or \"20 Mbit/s\")"))?;
    let mult = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "kbit" | "kbps" => 1e3 / 8.0,
        "mbit" | "mbps" => 1e6 / 8.0,
        "gbit" | "gbps" => 1e9 / 8.0,
        other => return Err(format!("unknown unit {other:?} in {s:?}")),
    };
    Ok(Some((n * mult).round() as u64))
}

/// Parses the schedule table: keys are days (`mon` … `sun`, `weekdays`,
/// `weekend`, `all`), values are comma-separated `FROM-TO: RATE` hour ranges.
pub fn parse_schedule(table: &BTreeMap<String, String>) -> Result<Schedule, String> {
    let mut s = Schedule::default();
    // Broad keys first so that a specific day overrides them.
    let mut keys: Vec<(&String, &String)> = table.iter().collect();
    keys.sort_by_key(|(k, _)| match k.as_str() {
        "all" => 0,
        "weekdays" | "weekend" => 1,
        _ => 2,
    });
    for (day, spec) in keys {
        let days: Vec<usize> = match day.as_str() {
            "all" => (0..7).collect(),
            "weekdays" => (0..5).collect(),
            "weekend" => vec![5, 6],
            d => vec![
                ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                    .iter()
                    .position(|x| *x == d)
                    .ok_or(format!("unknown day {d:?}"))?,
            ],
        };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (hours, rate) = part
                .split_once(':')
                .ok_or(format!("{part:?}: expected FROM-TO: RATE"))?;
            let (a, b) = hours
                .trim()
                .split_once('-')
                .ok_or(format!("{hours:?}: expected FROM-TO"))?;
            let (a, b): (usize, usize) = (
                a.trim().parse().map_err(|_| format!("bad hour {a:?}"))?,
                b.trim().parse().map_err(|_| format!("bad hour {b:?}"))?,
            );
            if a >= b || b > 24 {
                return Err(format!("{hours:?}: hours go from 0 to 24, FROM < TO"));
            }
            let rate = parse_rate(rate)?;
            for d in &days {
                for h in a..b {
                    s.days[*d][h] = rate;
                }
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("4 MiB/s"), Ok(Some(4 << 20)));
        assert_eq!(parse_rate("20 Mbit/s"), Ok(Some(2_500_000)));
        assert_eq!(parse_rate("500000"), Ok(Some(500_000)));
        assert_eq!(parse_rate("1.5MB"), Ok(Some(1_500_000)));
        assert_eq!(parse_rate("unlimited"), Ok(None));
        assert_eq!(parse_rate("pause"), Ok(Some(0)));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("3 parsecs").is_err());
    }

    #[test]
    fn schedules() {
        let mut t = BTreeMap::new();
        t.insert("weekdays".to_owned(), "8-18: 512 KiB/s".to_owned());
        t.insert("fri".to_owned(), "12-14: pause, 14-18: 1 MiB/s".to_owned());
        let s = parse_schedule(&t).unwrap();
        assert_eq!(s.days[0][9], Some(512 * 1024));
        assert_eq!(s.days[0][18], None);
        assert_eq!(s.days[4][12], Some(0));
        assert_eq!(s.days[4][15], Some(1 << 20));
        assert_eq!(s.days[4][9], Some(512 * 1024));
        assert_eq!(s.days[5][9], None);
        t.insert("funday".to_owned(), "1-2: 1".to_owned());
        assert!(parse_schedule(&t).is_err());
        let mut bad = BTreeMap::new();
        bad.insert("mon".to_owned(), "18-8: 1".to_owned());
        assert!(parse_schedule(&bad).is_err());
    }

    #[test]
    fn config_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "cache = \"/x\"\n[governor]\nmax_rate = \"1 MB/s\"\nbackground = true\n",
        )
        .unwrap();
        let c = ConfigFile::load(&p, true).unwrap();
        assert_eq!(c.cache.as_deref(), Some(Path::new("/x")));
        let g = c.governor(None, false).unwrap();
        assert_eq!(g.max_rate_bps, Some(1_000_000));
        assert!(g.background);
        assert_eq!(
            c.governor(Some("2 MB/s"), false).unwrap().max_rate_bps,
            Some(2_000_000)
        );
        std::fs::write(&p, "cahce = 1\n").unwrap();
        assert!(ConfigFile::load(&p, true).is_err());
        assert!(ConfigFile::load(&dir.path().join("missing"), true).is_err());
        assert!(ConfigFile::load(&dir.path().join("missing"), false).is_ok());
    }
}
