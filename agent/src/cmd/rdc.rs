//! `peerdelta rdc …`: MS-RDC signatures, needs lists and rebuilding on local
//! files, and the RDC throughput benchmark.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use peerdelta_protocol::hex;
use peerdelta_protocol::needs::{Need, SeedLevels, apply, recursive_needs, summarize};
use peerdelta_protocol::rdc::{self, LevelParams, MAX_LEVELS, Params, depth_for};
use serde::Serialize;

use peerdelta_store::fsutil::{AtomicFile, FileSource, write_atomic};
pub use peerdelta_store::signing::sign_file;
use peerdelta_store::usage;

/// The `rdc` subcommands.
#[derive(Subcommand, Debug)]
pub enum RdcCommand {
    /// Print the chunks of one signature level, one `offset length md4` per line
    /// (offset into that level's input).
    Sig(SigArgs),
    /// Write the signature files of FILE as PREFIX.1 … PREFIX.N.
    Sigfile(SigfileArgs),
    /// Compute the needs list that rebuilds SOURCE from SEED, recursively from the
    /// top signature level, with what each level would cost on the network.
    Needs(NeedsArgs),
    /// Rebuild SOURCE from SEED and a needs list (as printed by `rdc needs`).
    Apply(ApplyArgs),
    /// Measure RDC throughput: MD4 alone, boundaries only, full signature,
    /// parallel signature, on one buffer in one run.
    Bench(BenchArgs),
}

/// FilterMax parameters.
#[derive(Args, Debug, Clone)]
pub struct ParamArgs {
    /// Hash window of level 1 (2..=96).
    #[arg(long, default_value_t = 48)]
    window: u32,
    /// Horizon of level 1 (128..=16383).
    #[arg(long, default_value_t = 1024)]
    horizon: u32,
    /// Hash window of levels 2 and up.
    #[arg(long, default_value_t = 2)]
    window_n: u32,
    /// Horizon of levels 2 and up.
    #[arg(long, default_value_t = 128)]
    horizon_n: u32,
    /// Accept parameters outside the MS-RDC ranges (toy examples only).
    #[arg(long)]
    unchecked: bool,
}

impl ParamArgs {
    fn levels(&self) -> anyhow::Result<LevelParams> {
        let make = |w, h| {
            if self.unchecked {
                Params::new_unchecked(w, h)
            } else {
                Params::new(w, h)
            }
        };
        Ok(LevelParams {
            level1: make(self.window, self.horizon).context("level-1 parameters")?,
            upper: make(self.window_n, self.horizon_n).context("parameters of levels 2 and up")?,
        })
    }
}

/// Arguments of `rdc sig`.
#[derive(Args, Debug)]
pub struct SigArgs {
    /// The file to sign.
    file: PathBuf,
    /// Signature level to print (1 = chunks of the file, 2 = chunks of level 1's file, …).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_LEVELS as i64))]
    level: u32,
    #[command(flatten)]
    params: ParamArgs,
    /// Threads for level 1 (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
}

/// Arguments of `rdc sigfile`.
#[derive(Args, Debug)]
pub struct SigfileArgs {
    /// The file to sign.
    file: PathBuf,
    /// Output prefix: level k is written to PREFIX.k.
    #[arg(short, long)]
    output: PathBuf,
    /// Number of levels (default: as many as the file's size needs).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_LEVELS as i64))]
    levels: Option<u32>,
    #[command(flatten)]
    params: ParamArgs,
    /// Threads for level 1 (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
}

/// Arguments of `rdc needs`.
#[derive(Args, Debug)]
pub struct NeedsArgs {
    /// The old file the receiver holds.
    #[arg(long)]
    seed: PathBuf,
    /// The new file to rebuild.
    #[arg(long)]
    source: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    params: ParamArgs,
    /// Threads for level 1 (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
}

/// Arguments of `rdc apply`.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The old file (seed ranges are read from it).
    #[arg(long)]
    seed: PathBuf,
    /// The new file (source ranges are read from it).
    #[arg(long)]
    source: PathBuf,
    /// The needs list: the text or JSON output of `rdc needs`.
    #[arg(long)]
    needs: PathBuf,
    /// Where to write the rebuilt file (written atomically).
    #[arg(short, long)]
    output: PathBuf,
}

/// Arguments of `rdc bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Benchmark on (the first MiB of) this file instead of generated data.
    file: Option<PathBuf>,
    /// Buffer size in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    mib: u64,
    /// Threads for the parallel signature (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// Rounds per workload; the best is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs an `rdc` subcommand.
pub fn run(cmd: RdcCommand) -> anyhow::Result<()> {
    match cmd {
        RdcCommand::Sig(a) => sig(a),
        RdcCommand::Sigfile(a) => sigfile(a),
        RdcCommand::Needs(a) => needs(a),
        RdcCommand::Apply(a) => apply_cmd(a),
        RdcCommand::Bench(a) => bench(a),
    }
}

fn threads(requested: Option<u32>) -> usize {
    requested.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |t| t as usize,
    )
}

fn sig(a: SigArgs) -> anyhow::Result<()> {
    let params = a.params.levels()?;
    let level = a.level as usize;
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut err = Ok(());
    sign_file(
        &a.file,
        params,
        level,
        threads(a.threads),
        false,
        &mut |l, c| {
            if l == level && err.is_ok() {
                err = writeln!(out, "{} {} {}", c.offset, c.len, hex::encode(&c.md4));
            }
        },
    )?;
    err.context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

fn sigfile(a: SigfileArgs) -> anyhow::Result<()> {
    let params = a.params.levels()?;
    let mut files = sign_file(
        &a.file,
        params,
        MAX_LEVELS,
        threads(a.threads),
        true,
        &mut |_, _| {},
    )?;
    let depth = match a.levels {
        Some(n) => n as usize,
        None => depth_for(&files.sizes()),
    };
    files.files.truncate(depth);
    let mut out = std::io::stdout().lock();
    for (k, file) in files.files.iter().enumerate() {
        let mut name = a.output.clone().into_os_string();
        name.push(format!(".{}", k + 1));
        let path = PathBuf::from(name);
        write_atomic(&path, file)?;
        let records = (file.len() - rdc::sigfile::HEADER_LEN) / rdc::sigfile::RECORD_LEN;
        writeln!(
            out,
            "{}  {} bytes  {} signatures",
            path.display(),
            file.len(),
            records
        )
        .context("writing to stdout")?;
    }
    Ok(())
}

/// The JSON form of `rdc needs`.
#[derive(Serialize)]
struct NeedsReport<'a> {
    /// Always "needs".
    r#type: &'static str,
    seed: &'a Path,
    source: &'a Path,
    seed_bytes: u64,
    source_file_bytes: u64,
    needs: &'a [Need],
    /// Bytes of the target taken from the seed / from the source.
    from_seed_bytes: u64,
    from_source_bytes: u64,
    signature_levels: &'a [peerdelta_protocol::needs::LevelCost],
    signature_bytes: u64,
    /// Source bytes plus signature bytes: what would cross the network.
    network_bytes: u64,
}

fn needs(a: NeedsArgs) -> anyhow::Result<()> {
    let params = a.params.levels()?;
    let t = threads(a.threads);
    let mut source = sign_file(&a.source, params, MAX_LEVELS, t, true, &mut |_, _| {})?;
    source.files.truncate(depth_for(&source.sizes()));
    let seed_files = sign_file(&a.seed, params, MAX_LEVELS, t, true, &mut |_, _| {})?;
    let seed = SeedLevels::from_files(seed_files).context("seed signatures")?;
    let outcome = recursive_needs(&source, &seed, params).context("comparing signatures")?;
    let sum = summarize(&outcome.needs);
    let seed_len = std::fs::metadata(&a.seed).map(|m| m.len()).unwrap_or(0);
    let report = NeedsReport {
        r#type: "needs",
        seed: &a.seed,
        source: &a.source,
        seed_bytes: seed_len,
        source_file_bytes: sum.target_bytes,
        needs: &outcome.needs,
        from_seed_bytes: sum.seed_bytes,
        from_source_bytes: sum.source_bytes,
        signature_levels: &outcome.levels,
        signature_bytes: outcome.signature_bytes(),
        network_bytes: sum.source_bytes + outcome.signature_bytes(),
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    if a.json {
        serde_json::to_writer_pretty(&mut out, &report).context("writing JSON")?;
        writeln!(out)?;
    } else {
        write_needs_text(&mut out, &report)?;
    }
    out.flush().context("writing to stdout")
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn write_needs_text(out: &mut impl Write, r: &NeedsReport<'_>) -> anyhow::Result<()> {
    writeln!(
        out,
        "# needs list: rebuild {} from seed {}",
        r.source.display(),
        r.seed.display()
    )?;
    for n in r.needs {
        match *n {
            Need::Seed { offset, len } => writeln!(out, "seed {offset} {len}")?,
            Need::Source { offset, len } => writeln!(out, "source {offset} {len}")?,
        }
    }
    let t = r.source_file_bytes;
    writeln!(
        out,
        "# target {t} bytes in {} needs: {} from the seed ({:.1}%), {} from the source ({:.1}%)",
        r.needs.len(),
        r.from_seed_bytes,
        pct(r.from_seed_bytes, t),
        r.from_source_bytes,
        pct(r.from_source_bytes, t)
    )?;
    let levels: Vec<String> = r
        .signature_levels
        .iter()
        .map(|l| {
            format!(
                "level {}: {} of {} bytes",
                l.level, l.transferred_bytes, l.file_bytes
            )
        })
        .collect();
    writeln!(out, "# signature bytes per level: {}", levels.join(", "))?;
    writeln!(
        out,
        "# network: {} source + {} signature bytes = {} bytes ({:.2}% of the file)",
        r.from_source_bytes,
        r.signature_bytes,
        r.network_bytes,
        pct(r.network_bytes, t)
    )?;
    Ok(())
}

/// Parses the text or JSON output of `rdc needs`.
fn parse_needs(text: &str, path: &Path) -> anyhow::Result<Vec<Need>> {
    if text.trim_start().starts_with('{') {
        #[derive(serde::Deserialize)]
        struct Doc {
            needs: Vec<Need>,
        }
        let doc: Doc = serde_json::from_str(text)
            .with_context(|| format!("parsing JSON needs list {}", path.display()))?;
        return Ok(doc.needs);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            anyhow::anyhow!(
                "{}:{}: expected `seed|source OFFSET LEN`, found {line:?}",
                path.display(),
                i + 1
            )
        };
        let mut f = line.split_whitespace();
        let (kind, off, len) = (f.next(), f.next(), f.next());
        if f.next().is_some() {
            return Err(bad());
        }
        let offset: u64 = off.and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let len: u64 = len.and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        out.push(match kind {
            Some("seed") => Need::Seed { offset, len },
            Some("source") => Need::Source { offset, len },
            _ => return Err(bad()),
        });
    }
    Ok(out)
}

fn apply_cmd(a: ApplyArgs) -> anyhow::Result<()> {
    let mut text = String::new();
    std::fs::File::open(&a.needs)
        .and_then(|mut f| f.read_to_string(&mut text))
        .with_context(|| format!("reading needs list {}", a.needs.display()))?;
    let needs = parse_needs(&text, &a.needs)?;
    let seed = FileSource::open(&a.seed)?;
    let source = FileSource::open(&a.source)?;
    let mut out = AtomicFile::create(&a.output)?;
    let mut write_err = None;
    apply(&needs, &seed, &source, &mut |bytes| {
        if write_err.is_none()
            && let Err(e) = out.write_all(bytes)
        {
            write_err = Some(e);
        }
    })
    .with_context(|| format!("applying {}", a.needs.display()))?;
    if let Some(e) = write_err {
        return Err(e).with_context(|| format!("writing {}", a.output.display()));
    }
    out.commit()?;
    let sum = summarize(&needs);
    println!(
        "rebuilt {}: {} bytes, {} from the seed, {} from the source",
        a.output.display(),
        sum.target_bytes,
        sum.seed_bytes,
        sum.source_bytes
    );
    Ok(())
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let want = (a.mib << 20) as usize;
    let buf = match &a.file {
        Some(path) => {
            let mut buf = Vec::with_capacity(want.min(1 << 30));
            std::fs::File::open(path)
                .with_context(|| format!("opening {}", path.display()))?
                .take(want as u64)
                .read_to_end(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if buf.is_empty() {
                bail!(usage!("{} is empty", path.display()));
            }
            buf
        }
        None => rdc::bench::sample_buffer(want),
    };
    let report = rdc::bench::run(&buf, threads(a.threads), a.rounds as usize, &mut |work| {
        let t = Instant::now();
        work();
        t.elapsed()
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
