//! peerdelta-agent: everything of peerdelta that touches the world: the
//! distribution point (publisher, HTTP origin), the branch agent, the content
//! cache, the HTTP client and the command-line interface built on them.
//! The `peerdelta` binary (`src/main.rs`) is a thin shell over this library.

pub mod cache;
pub mod client;
pub mod cmd;
pub mod config;
pub mod dp;
pub mod fault;
pub mod fsutil;
pub mod get;
pub mod journal;
pub mod local;
pub mod logging;
pub mod materialize;
pub mod pack;
pub mod progress;
pub mod signing;
pub mod subnet;
pub mod usage;
pub mod util;

pub use usage::Usage;
