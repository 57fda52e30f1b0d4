//! `cargo bench -p peerdelta-agent --bench wan`: WAN bytes per update step on
//! the benchmark corpus (`../shared/corpus/fetch.sh`, into `target/corpus` or
//! `$PEERDELTA_CORPUS`), for peerdelta and the tools it is measured against.
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
    let zstd_level = if have("zstd") {
        env_num("PEERDELTA_BENCH_ZSTD", 19)
    } else {
        0
    };
    let with_rsync = have("rsync");
    if !with_rsync {
        println!("rsync is not installed: its columns show '-' (apt-get install rsync)");
    }
    let pack_level = env_num("PEERDELTA_PACK_LEVEL", 9);
    let only = std::env::var("PEERDELTA_BENCH_SERIES").ok();
    let work = tempfile::tempdir_in(corpus.parent().unwrap_or(Path::new("/tmp")))?;
    println!(
        "WAN bytes per update step (pack level {pack_level}, zstd --patch-from -{zstd_level}); \
         receiver methods: c cached, b bundle, d needs list, r client-side RDC, w whole"
    );
    let mut summary = Vec::new();
    for series in ["bin", "js", "tree", "image"] {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|s| s == series))
        {
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
            "{:<6} {:<8} {:>11} {:>11} {:>8} {:>11} {:>11} {:>11} {:>7}  methods",
            series, "step", "full", "peerdelta", "of full", "rsync", "rsync -z", "zstd", "pd/rz",
        );
        let one = Receiver {
            cache: Cache::open(&work.path().join(format!("{series}-cache")))?,
            key,
        };
        let (first, how) = step(&url, &one, &count, &package, 1).await?;
        let full1 = tree_bytes(&dirs[0]);
        println!(
            "{:<6} {:<8} {:>11} {:>11} {:>8} {:>11} {:>11} {:>11} {:>7}  {how}",
            "",
            "-> v1",
            human_bytes(full1),
            human_bytes(first),
            pct(first, full1),
            "",
            "",
            "",
            ""
        );
        let mut totals = [0u64; 5];
        let mut rows: Vec<(String, [u64; 5], String)> = Vec::new();
        for k in 2..=6 {
            let (pd, how) = step(&url, &one, &count, &package, k as u64).await?;
            let (old, new) = (&dirs[k - 2], &dirs[k - 1]);
            let cols = [
                tree_bytes(new),
                pd,
                if with_rsync {
                    rsync(old, new, work.path(), false)?
                } else {
                    0
                },
                if with_rsync {
                    rsync(old, new, work.path(), true)?
                } else {
                    0
                },
                if zstd_level > 0 {
                    zstd_patch(old, new, zstd_level)?
                } else {
                    0
                },
            ];
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
        let far_cols = [
            tree_bytes(&dirs[5]),
            pd,
            if with_rsync {
                rsync(&dirs[0], &dirs[5], work.path(), false)?
            } else {
                0
            },
            if with_rsync {
                rsync(&dirs[0], &dirs[5], work.path(), true)?
            } else {
                0
            },
            if zstd_level > 0 {
                zstd_patch(&dirs[0], &dirs[5], zstd_level)?
            } else {
                0
            },
        ];
        let show = |v: u64, on: bool| if on { human_bytes(v) } else { "-".into() };
        for (name, c, how) in rows
            .iter()
            .map(|(n, c, h)| (n.as_str(), *c, h.as_str()))
            .chain([("total", totals, ""), ("v1->v6", far_cols, how.as_str())])
        {
            println!(
                "{:<6} {:<8} {:>11} {:>11} {:>8} {:>11} {:>11} {:>11} {:>7}  {how}",
                "",
                name,
                human_bytes(c[0]),
                human_bytes(c[1]),
                pct(c[1], c[0]),
                show(c[2], with_rsync),
                show(c[3], with_rsync),
                show(c[4], zstd_level > 0),
                if with_rsync {
                    format!("{:.2}", c[1] as f64 / c[3].max(1) as f64)
                } else {
                    "-".into()
                },
            );
        }
        summary.push((series, totals));
    }
    println!();
    for (series, t) in summary {
        println!(
            "{series:<6} steps v1->v6: peerdelta {} = {} of full; rsync -z {}; zstd --patch-from {}; \
             peerdelta/rsync -z {:.2}, peerdelta/zstd {:.2}",
            human_bytes(t[1]),
            pct(t[1], t[0]),
            human_bytes(t[3]),
            human_bytes(t[4]),
            t[1] as f64 / t[3].max(1) as f64,
            t[1] as f64 / t[4].max(1) as f64
        );
    }
    Ok(())
}
