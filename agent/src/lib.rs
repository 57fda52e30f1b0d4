//! peerdelta-agent: the command line of peerdelta (the `peerdelta`
//! binary is a thin shell over [`cmd`]), its configuration file, logging,
//! and [`local`], a DP and a subnet of agent daemons in one process (the
//! demo and the fan-out benchmark).
//!
//! The products are crates of their own beside it: `peerdelta-dp` (the
//! distribution point), `peerdelta-branch` (the branch agent) and
//! `peerdelta-store` (what both keep on disk).

pub mod cmd;
pub mod config;
pub mod local;
pub mod logging;
