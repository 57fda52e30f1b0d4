//! peerdelta-dp: the distribution point.
//!
//! - [`library`]: the library on disk (a tree of static files any web server
//!   can serve) and its private directory (key, lock, status, temporary
//!   files);
//! - [`publish`]: a directory tree becomes the next version: contents by
//!   hash, signatures, needs lists and packs, a signed manifest and index;
//! - [`serve`]: the library over HTTP, status reports, metrics, bounded
//!   against hostile clients;
//! - [`status`]: the bounded, rotating report log;
//! - [`list`], [`maintain`]: what each version costs receivers; verify,
//!   prune, re-sign indexes.

pub mod library;
pub mod list;
pub mod maintain;
pub mod publish;
pub mod serve;
pub mod status;
