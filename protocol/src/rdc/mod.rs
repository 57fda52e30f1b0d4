//! MS-RDC: the H3 rolling hash, FilterMax chunking, MD4 signatures, the
//! signature file format, recursive signatures and similarity traits, exactly
//! as `spec/ms-rdc.md` describes them.
//!
//! - [`Chunker`]: streaming, bounded-memory chunking and signing of one level.
//! - [`sign_parallel`]: the same chunks from several threads.
//! - [`SignatureBuilder`] / [`signature_files`]: every level in one pass.
//! - [`sigfile`]: the 24-byte header and 18-byte records.
//! - [`similarity`]: the 16 traits.
//! - [`reference`]: the slow literal rule, a test oracle.

pub mod bench;
mod chunker;
mod filtermax;
pub mod h3;
mod kernel;
mod levels;
mod md4;
mod parallel;
mod params;
pub mod reference;
pub mod sigfile;
mod traits;

pub use chunker::{Chunk, Chunker, all_equal};
pub use levels::{
    LevelParams, MAX_LEVELS, SignatureBuilder, SignatureFiles, TOP_LEVEL_MAX, chunks, depth_for,
    signature_files,
};
pub use parallel::{DEFAULT_PIECE_LEN, ParallelOptions, ReadAt, sign_parallel};
pub use params::{
    EdgeRules, EndRule, MAX_CHUNK_LEN, MAX_HORIZON, MAX_WINDOW, MIN_HORIZON, MIN_WINDOW,
    ParamError, Params, StartRule,
};
pub use sigfile::Signature;
pub use traits::{TRAIT_COUNT, Traits, similarity};
