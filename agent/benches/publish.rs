//! `cargo bench -p peerdelta-agent --bench publish`: publishes each series of
//! the benchmark corpus (`../shared/corpus/fetch.sh`, into `target/corpus` or
//! `$PEERDELTA_CORPUS`) version by version into a fresh library, and prints
//! publish throughput next to the single-threaded signature throughput of the
//! RDC core, the share of publish time spent on needs lists, and, per version
//! step, the bytes a receiver holding the previous version downloads against
//! the full size. `PEERDELTA_PACK_LEVEL` sets the packs' zstd level (0: no
//! packs; default 3), `PEERDELTA_SERIES=bin,image` runs only those series.

use peerdelta_protocol::publish::FAR_VERSIONS;
use std::path::{Path, PathBuf};
use std::time::Instant;

use peerdelta_dp::library::Library;
use peerdelta_dp::list::list_package;
use peerdelta_dp::publish::{PublishOptions, publish};
use peerdelta_protocol::manifest::PackageName;
use peerdelta_protocol::rdc::{Chunker, Params, bench::sample_buffer};
use peerdelta_store::util::{cores, human_bytes};

fn corpus_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PEERDELTA_CORPUS") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/corpus")
}

/// Single-threaded level-1 signature throughput in MB/s (best of 3).
fn signature_rate() -> f64 {
    let buf = sample_buffer(128 << 20);
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let mut c = Chunker::new(Params::LEVEL1);
        let mut n = 0u64;
        c.push(&buf, &mut |x| n ^= x.offset);
        c.finish(&mut |x| n ^= x.offset);
        std::hint::black_box(n);
        best = best.max(buf.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    best
}

fn main() -> anyhow::Result<()> {
    let corpus = corpus_dir();
    if !corpus.join("corpus.csv").exists() {
        println!(
            "no corpus in {}: run `bash ../shared/corpus/fetch.sh` from the project root first",
            corpus.display()
        );
        return Ok(());
    }
    let threads = cores();
    let sig = signature_rate();
    println!(
        "RDC level-1 signature, single-threaded: {sig:.0} MB/s; {threads} cores; target publish >= {:.0} MB/s (70%)",
        0.7 * sig * threads as f64
    );
    println!();
    println!(
        "{:<6} {:>4} {:>6} {:>10} {:>10} {:>8} {:>7} {:>6}   {:<9} {:>10} {:>10} {:>7}",
        "series",
        "ver",
        "files",
        "bytes",
        "new",
        "seconds",
        "MB/s",
        "needs%",
        "step",
        "download",
        "full",
        "ratio"
    );
    let work = tempfile::tempdir_in(corpus.parent().unwrap_or(Path::new("/tmp")))?;
    // PEERDELTA_SERIES=bin,image runs only those series.
    let only = std::env::var("PEERDELTA_SERIES").ok();
    for series in ["bin", "js", "tree", "image"] {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|s| s.trim() == series))
        {
            continue;
        }
        let lib = Library::at(&work.path().join(format!("{series}-lib")), None);
        lib.init()?;
        let package = PackageName::new(series)?;
        let mut totals = (0u64, 0f64, 0f64);
        for k in 1..=6 {
            let src = if series == "image" {
                // One image per version: publish a directory holding it.
                let d = work.path().join(format!("image-v{k}"));
                std::fs::create_dir_all(&d)?;
                let img = corpus.join(format!("image/v{k}.img"));
                if std::fs::hard_link(&img, d.join("disk.img")).is_err() {
                    std::fs::copy(&img, d.join("disk.img"))?;
                }
                d
            } else {
                corpus.join(format!("{series}/v{k}"))
            };
            let opts = PublishOptions {
                package: package.clone(),
                source: src,
                min_saving: 16 * 1024,
                threads,
                progress: false,
                pack_level: std::env::var("PEERDELTA_PACK_LEVEL")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(3),
                far_versions: FAR_VERSIONS,
            };
            let s = publish(&lib, &opts)?;
            totals.0 += s.bytes;
            totals.1 += s.seconds;
            totals.2 += s.needs_seconds;
            let (step, download, full, ratio) = if k > 1 {
                let row = list_package(&lib, &package, &lib.public_key()?)?;
                let v = row.versions.last().expect("a version");
                let d = v.from_previous.first().map_or(0, |d| d.bytes);
                (
                    format!("v{}->v{k}", k - 1),
                    human_bytes(d),
                    human_bytes(v.bytes),
                    format!("{:.1}%", 100.0 * d as f64 / v.bytes.max(1) as f64),
                )
            } else {
                ("-".into(), "-".into(), "-".into(), "-".into())
            };
            println!(
                "{:<6} {:>4} {:>6} {:>10} {:>10} {:>8.2} {:>7.0} {:>5.1}%   {:<9} {:>10} {:>10} {:>7}",
                series,
                format!("v{k}"),
                s.files,
                human_bytes(s.bytes),
                human_bytes(s.new_content_bytes),
                s.seconds,
                s.mb_per_s,
                100.0 * s.needs_seconds / s.seconds.max(1e-9),
                step,
                download,
                full,
                ratio
            );
        }
        println!(
            "{:<6} total: {} in {:.2} s = {:.0} MB/s, needs lists {:.1}% of the time",
            series,
            human_bytes(totals.0),
            totals.1,
            totals.0 as f64 / totals.1 / 1e6,
            100.0 * totals.2 / totals.1
        );
    }
    Ok(())
}
