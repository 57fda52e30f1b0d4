//! The update's content as the scheduler sees it: the target's units (the
//! runs of its needs list, each a seed run buildable from the base or an
//! origin run only the DP has), from a real pair of files (signatures and
//! needs list computed by `protocol`, as the DP's publish does) or
//! synthetic (size, changed fraction, regions).

use std::path::Path;

use peerdelta_protocol::ContentHash;
use peerdelta_protocol::needs;
use peerdelta_protocol::needsfile::{self, RunSource};
use peerdelta_protocol::rdc::{Chunker, Params, Signature};
use peerdelta_protocol::swarm::Unit;

use crate::scenario::Package;

/// The content of the update.
#[derive(Debug, Clone)]
pub struct Content {
    /// Target size.
    pub size: u64,
    /// Its units, in target order.
    pub units: Vec<Unit>,
    /// Bytes only the DP has (origin runs).
    pub origin_bytes: u64,
    /// Signed manifest bytes (WAN, once per master).
    pub manifest_bytes: u64,
    /// Needs-list bytes (WAN, once per master).
    pub needs_bytes: u64,
    /// Fraction of the file an agent 6+ versions behind lacks.
    pub behind_changed: f64,
}

/// Why content could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// A content file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl Content {
    /// The package's content, synthetic (drawn with `seed`) or from its files.
    pub fn of(p: &Package, seed: u64) -> Result<Content, ContentError> {
        match (&p.old, &p.new) {
            (Some(old), Some(new)) => Content::from_files(old, new, p),
            _ => Ok(Content::synthetic(p, seed)),
        }
    }

    /// `regions` changed regions over a file of `size_mib`, `changed` of it
    /// in all; runs split at `unit_kib` (origin) and `seed_unit_kib`.
    pub fn synthetic(p: &Package, seed: u64) -> Content {
        let size = (p.size_mib.unwrap_or(1.0) * 1048576.0) as u64;
        let max = p.unit_kib << 10;
        let regions = p.regions.max(1) as usize;
        let origin_total = (size as f64 * p.changed) as u64;
        // Changed regions and the unchanged stretches between them: equal,
        // or (the default) exponentially distributed sizes, as edits are.
        let mut rng = crate::rng::Rng::new(seed ^ 0xC0_FFEE);
        let mut weights = |n: usize| -> Vec<f64> {
            (0..n)
                .map(|_| {
                    if p.uniform {
                        1.0
                    } else {
                        -(1.0 - rng.unit()).ln()
                    }
                })
                .collect()
        };
        let split = |total: u64, w: &[f64]| -> Vec<u64> {
            let sum: f64 = w.iter().sum::<f64>().max(f64::MIN_POSITIVE);
            let mut out: Vec<u64> = w.iter().map(|x| (total as f64 * x / sum) as u64).collect();
            let given: u64 = out.iter().sum();
            if let Some(last) = out.last_mut() {
                *last += total - given.min(total);
            }
            out
        };
        let origin = split(origin_total, &weights(regions));
        let gaps = split(size - origin_total, &weights(regions + 1));
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        let mut at = 0u64;
        for (k, gap) in gaps.iter().enumerate() {
            if *gap > 0 {
                runs.push((at, *gap, true));
                at += gap;
            }
            if let Some(&o) = origin.get(k)
                && o > 0
            {
                runs.push((at, o, false));
                at += o;
            }
        }
        Content::from_runs(size, &runs, (max, p.seed_unit_kib << 10), p)
    }

    /// The needs list of `new` against `old`, computed as the DP does.
    pub fn from_files(old: &Path, new: &Path, p: &Package) -> Result<Content, ContentError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| ContentError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        let (old_bytes, new_bytes) = (read(old)?, read(new)?);
        let sigs = |data: &[u8]| {
            let mut out = Vec::new();
            let mut c = Chunker::new(Params::default_for_level(1));
            c.push(data, &mut |ch| out.push(Signature::from(&ch)));
            c.finish(&mut |ch| out.push(Signature::from(&ch)));
            out
        };
        let list = needs::compare(&sigs(&new_bytes), &sigs(&old_bytes));
        let nf = needsfile::build(
            ContentHash::of(&old_bytes),
            old_bytes.len() as u64,
            ContentHash::of(&new_bytes),
            &list,
            new_bytes.as_slice(),
        )
        .unwrap_or_else(|e: std::convert::Infallible| match e {});
        let runs: Vec<(u64, u64, bool)> = nf
            .placed()
            .map(|r| {
                (
                    r.target_offset,
                    u64::from(r.run.len),
                    matches!(r.run.source, RunSource::Seed { .. }),
                )
            })
            .collect();
        let max = p.unit_kib << 10;
        let mut c = Content::from_runs(new_bytes.len() as u64, &runs, (max, max), p);
        c.needs_bytes = nf.encode().len() as u64;
        Ok(c)
    }

    /// Units from runs `(offset, len, seed?)`, split at `max` (origin, seed).
    fn from_runs(size: u64, runs: &[(u64, u64, bool)], max: (u64, u64), p: &Package) -> Content {
        let mut units = Vec::new();
        let mut origin_bytes = 0;
        for &(offset, len, seed) in runs {
            let mut done = 0;
            while done < len {
                let cap = if seed { max.1 } else { max.0 };
                let n = (len - done).min(cap.max(1));
                units.push(Unit {
                    offset: offset + done,
                    len: n,
                    seed_offset: seed.then_some(offset + done),
                });
                if !seed {
                    origin_bytes += n;
                }
                done += n;
            }
        }
        Content {
            size,
            units,
            origin_bytes,
            manifest_bytes: p.manifest_bytes,
            needs_bytes: p.needs_bytes,
            behind_changed: p.behind_changed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    #[test]
    fn synthetic_units_tile_the_file() {
        let s = Scenario::parse(
            "name = \"x\"\n[package]\nsize_mib = 64\nchanged = 0.05\nregions = 10\nunit_kib = 1024\n[[branches]]\nagents = 1\n",
        )
        .unwrap();
        let c = Content::synthetic(&s.package, 1);
        assert!(c.units.iter().filter(|u| u.seed_offset.is_none()).count() >= 10);
        let mut at = 0;
        for u in &c.units {
            assert_eq!(u.offset, at);
            let cap = if u.seed_offset.is_some() {
                16 << 20
            } else {
                1 << 20
            };
            assert!(u.len <= cap && u.len > 0);
            at += u.len;
        }
        assert_eq!(at, c.size);
        let expect = (64.0 * 1048576.0 * 0.05) as u64;
        assert_eq!(c.origin_bytes, expect);
    }

    #[test]
    fn real_files_give_the_needs_list_origin_bytes() {
        let dir = std::env::temp_dir().join(format!("simnet-content-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut x = 7u64;
        let mut old = vec![0u8; 4 << 20];
        for b in old.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut new = old.clone();
        for b in &mut new[1 << 20..(1 << 20) + 100_000] {
            *b ^= 0x55;
        }
        std::fs::write(dir.join("old"), &old).unwrap();
        std::fs::write(dir.join("new"), &new).unwrap();
        let s = Scenario::parse(
            "name = \"x\"\n[package]\nold = \"a\"\nnew = \"b\"\n[[branches]]\nagents = 1\n",
        )
        .unwrap();
        let c = Content::from_files(&dir.join("old"), &dir.join("new"), &s.package).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(c.size, 4 << 20);
        // The changed 100 kB plus the chunks around its edges.
        assert!(
            (100_000..200_000).contains(&c.origin_bytes),
            "{}",
            c.origin_bytes
        );
        assert!(c.needs_bytes > 0);
    }
}
