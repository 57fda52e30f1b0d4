//! `cargo bench -p peerdelta-agent --bench wan`: WAN bytes per update step on
//! the benchmark corpus (`../shared/corpus/fetch.sh`, into `target/corpus` or
//! `$PEERDELTA_CORPUS`, plus the `ts` series of `agent/benches/corpus-ts.sh`),
//! for peerdelta and the tools it is measured against. A series not there
//! is skipped, saying so.
//!
//! For each series, v1 … v6 are published into a fresh library and served by
//! `dp serve` behind a TCP proxy that counts every byte both ways (HTTP
//! headers included). One receiver gets v1, then each next version; another
//! holds v1 only and gets v6 (client-side RDC: v1 is outside v6's window).
//! Per step the table shows:
//!
//! - `full`: the new version's bytes;
//! - `peerdelta`: bytes through the proxy;
//! - `rsync`: `rsync -a --delete --checksum` over a local pipe (a remote shell
//!   that runs the server locally), bytes sent plus received from `--stats`;
//! - `rsync -z`: the same with compression;
//! - `zstd`: `zstd -19 --patch-from=OLD NEW` per changed path (new paths
//!   compressed alone), summed: a practical lower bound.
//!
//! `PEERDELTA_PACK_LEVEL` sets the publisher's pack level (default 9),
//! `PEERDELTA_BENCH_ZSTD` the zstd level (default 19; 0 skips the column),
//! `PEERDELTA_BENCH_SERIES` a comma-separated subset of series.

use peerdelta_protocol::publish::FAR_VERSIONS;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use peerdelta_branch::cache::Cache;
use peerdelta_branch::client::{DpClient, RetryPolicy};
use peerdelta_branch::get::{GetOptions, get};
use peerdelta_dp::library::Library;
use peerdelta_dp::publish::{PublishOptions, publish};
use peerdelta_protocol::fetchplan::RequestLimits;
use peerdelta_protocol::governor::GovernorConfig;
use peerdelta_protocol::manifest::PackageName;
use peerdelta_store::util::{cores, human_bytes};

fn corpus_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PEERDELTA_CORPUS") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/corpus")
}

fn env_num(name: &str, default: i32) -> i32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A TCP proxy to `target` counting the bytes that cross it, both ways.
async fn proxy(target: SocketAddr, count: Arc<AtomicU64>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::join!(pump(ri, wo, count.clone()), pump(ro, wi, count));
            });
        }
    });
    Ok(addr)
}

/// Copies one direction of a connection, counting as it goes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// The directory holding version `k` of a series (the image series gets a
/// directory with its image hard-linked in).
fn version_dir(corpus: &Path, work: &Path, series: &str, k: usize) -> anyhow::Result<PathBuf> {
    if series != "image" {
        return Ok(corpus.join(format!("{series}/v{k}")));
    }
    let d = work.join(format!("image-v{k}"));
    if !d.exists() {
        std::fs::create_dir_all(&d)?;
        let img = corpus.join(format!("image/v{k}.img"));
        if std::fs::hard_link(&img, d.join("disk.img")).is_err() {
            std::fs::copy(&img, d.join("disk.img"))?;
        }
    }
    Ok(d)
}

/// Regular files under `dir`: relative path -> (size, path).
fn files(dir: &Path) -> BTreeMap<String, (u64, PathBuf)> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, (u64, PathBuf)>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                walk(root, &p, out);
            } else if m.is_file() {
                let rel = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, (m.len(), p));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn tree_bytes(dir: &Path) -> u64 {
    files(dir).values().map(|f| f.0).sum()
}

/// WAN bytes of `rsync` bringing a copy of `old` up to `new` over a pipe.
fn rsync(old: &Path, new: &Path, work: &Path, compress: bool) -> anyhow::Result<u64> {
    let shell = work.join("pipe-shell.sh");
    if !shell.exists() {
        std::fs::write(
            &shell,
            "#!/bin/sh\n# rsync's remote shell: drop the host, run the server locally\nshift\nexec \"$@\"\n",
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shell, std::fs::Permissions::from_mode(0o755))?;
    }
    let dest = work.join("rsync-dest");
    let _ = std::fs::remove_dir_all(&dest);
    let st = Command::new("cp").arg("-a").arg(old).arg(&dest).status()?;
    anyhow::ensure!(st.success(), "copying {}", old.display());
    let mut cmd = Command::new("rsync");
    cmd.args(["-a", "--delete", "--checksum", "--stats"]);
    if compress {
        cmd.arg("-z");
    }
    let out = cmd
        .arg("-e")
        .arg(&shell)
        .arg(format!("{}/", new.display()))
        .arg(format!("localhost:{}/", dest.display()))
        .output()
        .context("running rsync")?;
    anyhow::ensure!(
        out.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let stat = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name:?} in rsync --stats"))?;
        let digits: String = line[name.len()..]
            .chars()
            .take_while(|c| *c != '(')
            .filter(char::is_ascii_digit)
            .collect();
        Ok(digits.parse()?)
    };
    let total = stat("Total bytes sent:")? + stat("Total bytes received:")?;
    let _ = std::fs::remove_dir_all(&dest);
    Ok(total)
}

/// WAN bytes of `casync extract --seed=OLD` of `new`: its index, plus the
/// compressed chunks of `new`'s store that `old`'s chunking does not hold
/// (what the seed cannot give; casync's default chunk sizes).
fn casync(old: &Path, new: &Path, work: &Path) -> anyhow::Result<u64> {
    let make = |dir: &Path, name: &str| -> anyhow::Result<(PathBuf, PathBuf)> {
        let store = work.join(format!("casync-{name}.castr"));
        let index = work.join(format!("casync-{name}.caidx"));
        let _ = std::fs::remove_dir_all(&store);
        let _ = std::fs::remove_file(&index);
        let out = Command::new("casync")
            .arg(format!("--store={}", store.display()))
            .arg("make")
            .arg(&index)
            .arg(dir)
            .output()
            .context("running casync")?;
        anyhow::ensure!(
            out.status.success(),
            "casync make failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((store, index))
    };
    let (old_store, _) = make(old, "old")?;
    let (new_store, new_index) = make(new, "new")?;
    let held: std::collections::HashSet<std::ffi::OsString> = files(&old_store)
        .values()
        .filter_map(|(_, p)| p.file_name().map(|n| n.to_owned()))
        .collect();
    let chunks: u64 = files(&new_store)
        .values()
        .filter(|(_, p)| p.file_name().is_some_and(|n| !held.contains(n)))
        .map(|(len, _)| *len)
        .sum();
    let total = chunks + std::fs::metadata(&new_index)?.len();
    for p in [old_store, new_store] {
        let _ = std::fs::remove_dir_all(p);
    }
    Ok(total)
}

/// Sum over the paths of `new` of `zstd --patch-from` against the same path in
/// `old` (0 if identical, compressed alone if new).
fn zstd_patch(old: &Path, new: &Path, level: i32) -> anyhow::Result<u64> {
    let (old_files, new_files) = (files(old), files(new));
    let mut total = 0u64;
    for (rel, (size, path)) in &new_files {
        let mut cmd = Command::new("zstd");
        cmd.args(["-q", "-c", &format!("-{level}")]);
        if level > 19 {
            cmd.arg("--ultra");
        }
        match old_files.get(rel) {
            Some((osize, opath)) => {
                if osize == size && std::fs::read(opath)? == std::fs::read(path)? {
                    continue;
                }
                if (*osize).max(*size) > 64 << 20 {
                    cmd.arg("--long=30");
                }
                cmd.arg(format!("--patch-from={}", opath.display()));
            }
            None if *size == 0 => continue,
            None => {}
        }
        let out = cmd.arg(path).output().context("running zstd")?;
        if !out.status.success() {
            bail!(
                "zstd failed on {rel}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        total += out.stdout.len() as u64;
    }
    Ok(total)
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The tools compared, and whether each is installed.
struct Tools {
    rsync: bool,
    casync: bool,
    /// zstd level (0: not measured).
    zstd: i32,
}

/// Columns of one step: full, peerdelta, rsync, rsync -z, casync, zstd.
type Cols = [u64; 6];

impl Tools {
    fn columns(&self, old: &Path, new: &Path, pd: u64, work: &Path) -> anyhow::Result<Cols> {
        Ok([
            tree_bytes(new),
            pd,
            if self.rsync {
                rsync(old, new, work, false)?
            } else {
                0
            },
            if self.rsync {
                rsync(old, new, work, true)?
            } else {
                0
            },
            if self.casync {
                casync(old, new, work)?
            } else {
                0
            },
            if self.zstd > 0 {
                zstd_patch(old, new, self.zstd)?
            } else {
                0
            },
        ])
    }

    /// The fewest bytes among the delta tools peerdelta must match
    /// (rsync -z, casync), if any is installed.
    fn best(&self, c: &Cols) -> Option<u64> {
        [(self.rsync, c[3]), (self.casync, c[4])]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, v)| v)
            .min()
    }
}

/// Bytes allowed per step for learning which files changed, over the
/// `zstd --patch-from` figure (issue 18's target: a series' steps within
/// 1.25 x (zstd + this per step)).
const PER_STEP_ALLOWANCE: u64 = 15_000;

struct Receiver {
    cache: Cache,
    key: ed25519_dalek::VerifyingKey,
}

async fn step(
    url: &str,
    r: &Receiver,
    count: &AtomicU64,
    package: &PackageName,
    version: u64,
) -> anyhow::Result<(u64, String)> {
    let client = DpClient::new(url, GovernorConfig::default(), RetryPolicy::default())?;
    let opts = GetOptions {
        package: package.clone(),
        version: Some(version),
        out: None,
        link: false,
        force: false,
        concurrency: 4,
        limits: RequestLimits::default(),
        progress: false,
        agent: "bench".into(),
        report: false,
        dp_give_up: None,
    };
    let before = count.load(Ordering::Relaxed);
    let s = get(&client, &r.cache, &r.key, &opts).await?;
    drop(client);
    let after = count.load(Ordering::Relaxed);
    let how = format!(
        "{}c {}b {}d {}r {}w",
        s.cached_contents, s.bundle_contents, s.delta_contents, s.rdc_contents, s.whole_contents
    );
    Ok((after - before, how))
}

fn pct(a: u64, b: u64) -> String {
    format!("{:.2}%", 100.0 * a as f64 / b.max(1) as f64)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let corpus = corpus_dir();
    if !corpus.join("corpus.csv").exists() {
        println!(
            "no corpus in {}: run `bash ../shared/corpus/fetch.sh` from the project root first",
            corpus.display()
        );
        return Ok(());
    }
    let tools = Tools {
        rsync: have("rsync"),
        casync: have("casync"),
        zstd: if have("zstd") {
            env_num("PEERDELTA_BENCH_ZSTD", 19)
        } else {
            0
        },
    };
    let zstd_level = tools.zstd;
    for (tool, on) in [("rsync", tools.rsync), ("casync", tools.casync)] {
        if !on {
            println!("{tool} is not installed: its column shows '-' (apt-get install {tool})");
        }
    }
    let pack_level = env_num("PEERDELTA_PACK_LEVEL", 9);
    let only = std::env::var("PEERDELTA_BENCH_SERIES").ok();
    let work = tempfile::tempdir_in(corpus.parent().unwrap_or(Path::new("/tmp")))?;
    println!(
        "WAN bytes per update step (pack level {pack_level}, zstd --patch-from -{zstd_level}); \
         receiver methods: c cached, b bundle, d needs list, r client-side RDC, w whole"
    );
    let mut summary = Vec::new();
    for series in ["bin", "js", "ts", "tree", "image"] {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|s| s == series))
        {
            continue;
        }
        let first = match series {
            "image" => corpus.join("image/v1.img"),
            _ => corpus.join(format!("{series}/v1")),
        };
        if !first.exists() {
            println!(
                "\n{series}: not in {} (ts: `bash agent/benches/corpus-ts.sh`), skipped",
                corpus.display()
            );
            continue;
        }
        let lib = Library::at(&work.path().join(format!("{series}-lib")), None);
        let key = lib.init()?;
        let package = PackageName::new(series)?;
        let mut dirs = Vec::new();
        for k in 1..=6 {
            let src = version_dir(&corpus, work.path(), series, k)?;
            let opts = PublishOptions {
                package: package.clone(),
                source: src.clone(),
                min_saving: 16 * 1024,
                threads: cores(),
                progress: false,
                pack_level,
                far_versions: FAR_VERSIONS,
            };
            let lib2 = Library::at(&lib.root, None);
            tokio::task::spawn_blocking(move || publish(&lib2, &opts)).await??;
            dirs.push(src);
        }
        // dp serve behind a counting proxy.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let serve_lib = Library::at(&lib.root, None);
        tokio::spawn(async move {
            if let Err(e) = peerdelta_dp::serve::serve(serve_lib, port, Default::default()).await {
                eprintln!("dp serve: {e:#}");
            }
        });
        let count = Arc::new(AtomicU64::new(0));
        let mut ready = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(port).await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        anyhow::ensure!(ready, "dp serve did not start");
        let url = format!("http://{}", proxy(port, count.clone()).await?);

        println!();
        println!(
            "{:<6} {:<8} {:>11} {:>11} {:>8} {:>11} {:>11} {:>11} {:>11} {:>8}  methods",
            series,
            "step",
            "full",
            "peerdelta",
            "of full",
            "rsync",
            "rsync -z",
            "casync",
            "zstd",
            "pd/best",
        );
        let one = Receiver {
            cache: Cache::open(&work.path().join(format!("{series}-cache")))?,
            key,
        };
        let (first, how) = step(&url, &one, &count, &package, 1).await?;
        let full1 = tree_bytes(&dirs[0]);
        println!(
            "{:<6} {:<8} {:>11} {:>11} {:>8} {:>11} {:>11} {:>11} {:>11} {:>8}  {how}",
            "",
            "-> v1",
            human_bytes(full1),
            human_bytes(first),
            pct(first, full1),
            "",
            "",
            "",
            "",
            ""
        );
        let mut totals: Cols = [0; 6];
        let mut rows: Vec<(String, Cols, String)> = Vec::new();
        for k in 2..=6 {
            let (pd, how) = step(&url, &one, &count, &package, k as u64).await?;
            let (old, new) = (&dirs[k - 2], &dirs[k - 1]);
            let cols = tools.columns(old, new, pd, work.path())?;
            for (t, c) in totals.iter_mut().zip(cols) {
                *t += c;
            }
            rows.push((format!("v{}->v{k}", k - 1), cols, how));
        }
        // v1 -> v6 directly.
        let far = Receiver {
            cache: Cache::open(&work.path().join(format!("{series}-far")))?,
            key,
        };
        step(&url, &far, &count, &package, 1).await?;
        let (pd, how) = step(&url, &far, &count, &package, 6).await?;
        let far_cols = tools.columns(&dirs[0], &dirs[5], pd, work.path())?;
        let show = |v: u64, on: bool| if on { human_bytes(v) } else { "-".into() };
        let mut beaten = Vec::new();
        for (name, c, how) in rows
            .iter()
            .map(|(n, c, h)| (n.as_str(), *c, h.as_str()))
            .chain([("total", totals, ""), ("v1->v6", far_cols, how.as_str())])
        {
            let best = tools.best(&c);
            if name != "total" && best.is_some_and(|b| c[1] > b) {
                beaten.push(name.to_owned());
            }
            println!(
                "{:<6} {:<8} {:>11} {:>11} {:>8} {:>11} {:>11} {:>11} {:>11} {:>8}  {how}",
                "",
                name,
                human_bytes(c[0]),
                human_bytes(c[1]),
                pct(c[1], c[0]),
                show(c[2], tools.rsync),
                show(c[3], tools.rsync),
                show(c[4], tools.casync),
                show(c[5], tools.zstd > 0),
                best.map_or("-".into(), |b| format!(
                    "{:.2}",
                    c[1] as f64 / b.max(1) as f64
                )),
            );
        }
        summary.push((series, totals, beaten));
    }
    println!();
    for (series, t, beaten) in summary {
        let bound = (t[5] + 5 * PER_STEP_ALLOWANCE) as f64 * 1.25;
        println!(
            "{series:<6} steps v1->v6: peerdelta {} = {} of full; rsync -z {}; casync {}; \
             zstd --patch-from {}; peerdelta/(zstd + 15 kB a step) {:.2} (target 1.25: {}); \
             pairs where a delta tool sent less: {}",
            human_bytes(t[1]),
            pct(t[1], t[0]),
            human_bytes(t[3]),
            human_bytes(t[4]),
            human_bytes(t[5]),
            t[1] as f64 * 1.25 / bound.max(1.0),
            if tools.zstd == 0 {
                "not measured"
            } else if t[1] as f64 <= bound {
                "met"
            } else {
                "MISSED"
            },
            if beaten.is_empty() {
                "none".to_owned()
            } else {
                beaten.join(", ")
            },
        );
    }
    Ok(())
}
