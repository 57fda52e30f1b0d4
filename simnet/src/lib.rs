//! peerdelta-simnet: a deterministic discrete-event simulator of branch
//! subnets that runs the agent's own state machines, `protocol::election`
//! and `protocol::transfer`, over simulated WAN links, LANs and faults, so
//! what a rollout costs the WAN, how long it takes and what crashes, DP
//! outages and lying peers do is measured before it happens.
//!
//! Layers, each using only those above it:
//!
//! - [`scenario`]: the TOML a scenario is written in; [`rng`]: the seeded
//!   generator; [`content`]: the update's units (synthetic or from real
//!   files);
//! - [`link`]: DP, WAN and LAN links as FIFO servers; [`agent`]: one
//!   agent's state;
//! - [`sim`]: the event loop that drives the state machines;
//!   [`faults`]: crashes, outages and rogue peers ([`rogue`]: their answers);
//! - [`report`]: the JSON report; [`plot`]: its SVG plots.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod content;
pub mod faults;
pub mod link;
pub mod plot;
pub mod report;
pub mod rng;
pub mod rogue;
pub mod scenario;
pub mod sim;

use std::time::Instant;

use content::{Content, ContentError};
use report::{Report, RunFigures, RunResult};
use scenario::Scenario;
use sim::{Outcome, Sim};

/// Runs `scenario` with `seed` (or its own); returns the report and the
/// outcome (time series for plots).
pub fn run(scenario: &Scenario, seed: Option<u64>) -> Result<(Report, Outcome), ContentError> {
    let seed = seed.unwrap_or(scenario.seed);
    let content = Content::of(&scenario.package, seed)?;
    let started = Instant::now();
    let outcome = Sim::new(scenario, &content, seed).run();
    let wall = started.elapsed().as_secs_f64();
    let result = RunResult::of(&scenario.name, seed, &outcome);
    let report = Report {
        run: RunFigures {
            wall_seconds: wall,
            events_per_s: result.events as f64 / wall.max(1e-9),
            peak_rss_bytes: report::peak_rss(),
        },
        result,
    };
    Ok((report, outcome))
}
