//! peerdelta-store: the store both products use, and the plumbing under it.
//!
//! - [`content`]: contents by BLAKE3, entering only verified;
//! - [`fsutil`]: atomic durable writes (one helper, [`fsutil::write_atomic`]),
//!   random-access reading for the RDC core, sparse copies;
//! - [`manifest_file`]: signed manifests read and verified in one place;
//! - [`partial`]: a content being built (data file and journal), written
//!   only with verified runs;
//! - [`pack`]: zstd frames of origin runs and manifests (both directions);
//! - [`signing`]: MS-RDC signatures of files;
//! - plumbing every product shares: [`util`] (clock, formatting, a thread
//!   pool), [`progress`] bars, [`fault`] injection for crash tests, and the
//!   [`Usage`] error (exit code 2).
//!
//! The DP library (`peerdelta-dp`) and the branch cache (`peerdelta-branch`)
//! are two uses of it. It knows files, not networks: no sockets, no async.

pub mod content;
pub mod fault;
pub mod fsutil;
pub mod manifest_file;
pub mod pack;
pub mod partial;
pub mod progress;
pub mod signing;
pub mod usage;
pub mod util;

pub use usage::Usage;
