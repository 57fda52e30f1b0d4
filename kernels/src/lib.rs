//! # peerdelta-kernels
//!
//! SIMD inner loops for `peerdelta-protocol`'s MS-RDC chunker. All of the
//! workspace's `unsafe` SIMD code is here (the agent has only a few allowed
//! `libc` calls), so that `protocol` can forbid `unsafe`: the intrinsics that
//! read and write memory take raw pointers, and a `#[target_feature]` function may only be called once the CPU
//! is known to have the feature.
//!
//! Every kernel is reached through a value that can only be built after runtime
//! detection succeeded ([`RollingHash::new`] returns `None` otherwise), so its
//! methods are safe to call; callers keep a portable path for other CPUs.
//!
//! What this crate is **not**: it knows nothing of MS-RDC's tables or
//! parameters beyond what it is given, does no I/O and allocates only scratch
//! space when a kernel is built.

#![warn(missing_docs)]

pub mod md4;
mod rolling;
mod scan;

pub use rolling::{GROUP, Pass, RollingHash};
pub use scan::{max_u32, position_ge_u32};
