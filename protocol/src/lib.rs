//! # peerdelta-protocol
//!
//! The pure core of peerdelta: MS-RDC signatures ([`rdc`]), needs lists and
//! rebuilding plans ([`needs`], [`needsfile`]), the signed manifest and index
//! formats ([`manifest`]), the signature container ([`sigstore`]), the
//! publisher's decisions ([`publish`]), HTTP byte ranges ([`byteranges`])
//! and the transfer journal's format ([`journal`]).
//!
//! What this crate is **not**: it does no I/O, reads no clock, spawns no async
//! tasks and uses no randomness it was not given. Inputs arrive as byte slices,
//! [`rdc::ReadAt`] implementations or events; outputs are values and actions.
//! The `agent` and `simnet` crates drive it with real and simulated worlds.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bundle;
pub mod byteranges;
pub mod election;
pub mod fetchplan;
pub mod getplan;
pub mod governor;
pub mod hash;
pub mod hex;
pub mod journal;
pub mod layout;
pub mod manifest;
pub mod needs;
pub mod needsfile;
pub mod publish;
pub mod rangeset;
pub mod rdc;
pub mod sigstore;
pub mod status;
pub mod swarm;
pub mod time;
pub mod transfer;
pub mod wire;

pub use hash::ContentHash;
