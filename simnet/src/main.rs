//! `peerdelta-simnet run SCENARIO [--seed S] [--out DIR]`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use peerdelta_simnet::scenario::Scenario;

#[derive(Parser, Debug)]
#[command(
    name = "peerdelta-simnet",
    version,
    about = "Simulate peerdelta rollouts over thousands of branch subnets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a scenario: print a summary, write report.json and SVG plots.
    Run {
        /// The scenario (TOML; see simnet/scenarios/).
        scenario: PathBuf,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Where to write report.json and the plots (default: out/<scenario name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the JSON report on stdout instead of the summary.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("peerdelta-simnet: {e:#}");
            ExitCode::from(
                if e.downcast_ref::<peerdelta_simnet::scenario::ScenarioError>()
                    .is_some()
                {
                    2
                } else {
                    1
                },
            )
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let Cli {
        command:
            Command::Run {
                scenario,
                seed,
                out,
                json,
            },
    } = Cli::parse();
    let sc = Scenario::load(&scenario)?;
    let (report, outcome) = peerdelta_simnet::run(&sc, seed)?;
    let out = out.unwrap_or_else(|| {
        PathBuf::from("out").join(
            scenario
                .file_stem()
                .map_or_else(|| "scenario".into(), |s| s.to_string_lossy().into_owned()),
        )
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(out.join("report.json"), &text)
        .with_context(|| format!("writing {}", out.join("report.json").display()))?;
    peerdelta_simnet::plot::all(&outcome, &report.result, &out)
        .with_context(|| format!("plotting into {}", out.display()))?;
    if json {
        println!("{text}");
    } else {
        println!("{}", report.result.summary());
        println!(
            "ran in {:.2} s wall, {:.0} events/s, peak memory {}; report and plots in {}",
            report.run.wall_seconds,
            report.run.events_per_s,
            report
                .run
                .peak_rss_bytes
                .map_or("?".into(), |b| format!("{:.0} MiB", b as f64 / 1048576.0)),
            out.display()
        );
    }
    for v in &report.result.violations {
        eprintln!("INVARIANT BROKEN: {v}");
    }
    Ok(if report.result.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
