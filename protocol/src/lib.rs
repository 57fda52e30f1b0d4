//! # peerdelta-protocol
//!
//! The pure core of peerdelta: MS-RDC signatures ([`rdc`]), needs lists and
//! rebuilding plans ([`needs`]), and (in later modules) the on-disk and wire
//! formats and the sans-IO state machines for election and block scheduling.
//!
//! What this crate is **not**: it does no I/O, reads no clock, spawns no async
//! tasks and uses no randomness it was not given. Inputs arrive as byte slices,
//! [`rdc::ReadAt`] implementations or events; outputs are values and actions.
//! The `agent` and `simnet` crates drive it with real and simulated worlds.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod hex;
pub mod needs;
pub mod rdc;
