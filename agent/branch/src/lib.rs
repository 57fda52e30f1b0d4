//! peerdelta-branch: the branch agent.
//!
//! - [`get`]: updating a package version into the cache, alone or with the
//!   subnet, as cheaply as the DP and the subnet allow;
//! - [`cache`]: the content cache (a use of `peerdelta-store`);
//! - [`client`]: the HTTP client that talks to a DP, under the WAN governor;
//! - [`subnet`]: the daemon (`peerdelta agent run`): elections, transfers
//!   shared over the LAN, the loopback control API;
//! - [`materialize`]: putting a version in a directory without losing a
//!   file peerdelta did not write;
//! - [`settings`]: the `[agent]` settings.
//!
//! Decisions (election, scheduling, plans) are `peerdelta-protocol`'s state
//! machines; this crate drives them with real sockets, files and clocks.

pub mod cache;
pub mod client;
pub mod get;
pub mod materialize;
pub mod settings;
pub mod subnet;
