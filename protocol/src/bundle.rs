//! Bundles: every small changed content of a version, as zstd patches
//! against the same file in one earlier version, in one file.
//!
//! A receiver that holds version `from` and asks for version `to` needs, for
//! each content that changed, the bytes `zstd --patch-from` would send; what
//! costs more than those bytes on packages of many small files is the rest:
//! a needs list per content (a header and a hash per run), and one request
//! per file (HTTP headers, a round trip). The DP therefore publishes, with
//! each version, one bundle per earlier version (up to [`BUNDLE_VERSIONS`]
//! back, further than the needs lists' window: a far receiver gets one
//! transfer too) holding every content of at most [`MAX_TARGET`] bytes that
//! version lacks, each patched against its base there (the same path, or
//! the file it moved from) or compressed alone, whichever is smaller. The
//! manifest names the bundles by hash ([`crate::manifest::BundleRef`]), so a
//! bundle is verified before it is parsed, comes from a peer as readily as
//! from the DP, and every content it yields is verified again against its
//! own hash. Larger contents keep their needs lists, packs and pieces.
//!
//! Format: `magic (8) ‖ postcard(Bundle)`; [`decode`] bounds everything.

use serde::{Deserialize, Serialize};

use crate::hash::ContentHash;

/// Magic of a bundle file.
pub const BUNDLE_MAGIC: [u8; 8] = *b"PDBUNDL1";
/// Earlier versions a version gets bundles against.
pub const BUNDLE_VERSIONS: usize = 16;
/// Largest content a bundle holds: one run ([`crate::needsfile::MAX_RUN`]).
/// A larger content keeps what a bundle entry cannot give: a download
/// verified run by run, resumed without refetching, shared by peers run
/// by run (its needs lists and packs).
pub const MAX_TARGET: u64 = crate::needsfile::MAX_RUN;
/// Largest base an entry is patched against: a receiver holds it in memory
/// while it applies the entry.
pub const MAX_BASE: u64 = 16 << 20;
/// Largest bundle file: a bundle is fetched and verified whole, so it is
/// kept small enough to fetch again (the publisher leaves out the largest
/// entries past it; they come their usual way).
pub const MAX_BUNDLE: usize = 8 << 20;
/// Most entries in one bundle.
pub const MAX_ENTRIES: usize = 1 << 20;

/// One bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// The version the bases are in.
    pub from: u64,
    /// The version the targets are in.
    pub to: u64,
    /// Entries, by target hash.
    pub entries: Vec<BundleEntry>,
}

/// One content of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleEntry {
    /// The content it yields.
    pub target: ContentHash,
    /// Its size.
    pub target_len: u64,
    /// The content it is patched against (a zstd prefix), with its size;
    /// `None`: compressed alone.
    pub base: Option<(ContentHash, u64)>,
    /// The zstd frame.
    pub data: Vec<u8>,
}

/// A bad bundle file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    /// Larger than [`MAX_BUNDLE`].
    #[error("a bundle of {0} bytes (at most {MAX_BUNDLE})")]
    TooLarge(usize),
    /// Not a bundle.
    #[error("not a bundle file")]
    Magic,
    /// Undecodable.
    #[error("a malformed bundle: {0}")]
    Malformed(String),
    /// Decodable, but breaks a rule.
    #[error("an invalid bundle: {0}")]
    Invalid(String),
}

impl Bundle {
    /// The file bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = BUNDLE_MAGIC.to_vec();
        out.extend(
            postcard::to_allocvec(self).expect("serialising owned data into a Vec cannot fail"),
        );
        out
    }

    /// Checks the rules [`decode`] enforces.
    pub fn validate(&self) -> Result<(), BundleError> {
        if self.from >= self.to {
            return Err(BundleError::Invalid(format!(
                "from version {} to version {}",
                self.from, self.to
            )));
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(BundleError::Invalid(format!(
                "{} entries",
                self.entries.len()
            )));
        }
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 && self.entries[i - 1].target >= e.target {
                return Err(BundleError::Invalid(format!("entries not sorted at {i}")));
            }
            if e.target_len > MAX_TARGET || e.base.is_some_and(|(_, len)| len > MAX_BASE) {
                return Err(BundleError::Invalid(format!(
                    "entry {i} or its base is too large"
                )));
            }
            if e.base.is_some_and(|(b, _)| b == e.target) {
                return Err(BundleError::Invalid(format!("entry {i} patches itself")));
            }
        }
        Ok(())
    }
}

/// Decodes and validates a bundle file.
pub fn decode(bytes: &[u8]) -> Result<Bundle, BundleError> {
    if bytes.len() > MAX_BUNDLE {
        return Err(BundleError::TooLarge(bytes.len()));
    }
    let body = bytes
        .strip_prefix(&BUNDLE_MAGIC)
        .ok_or(BundleError::Magic)?;
    let (b, rest): (Bundle, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| BundleError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(BundleError::Malformed(format!(
            "{} bytes after the end",
            rest.len()
        )));
    }
    b.validate()?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        let mut entries = vec![
            BundleEntry {
                target: ContentHash::of(b"a"),
                target_len: 1,
                base: Some((ContentHash::of(b"b"), 1)),
                data: vec![1, 2, 3],
            },
            BundleEntry {
                target: ContentHash::of(b"c"),
                target_len: 1,
                base: None,
                data: vec![4],
            },
        ];
        entries.sort_by_key(|e| e.target);
        Bundle {
            from: 1,
            to: 3,
            entries,
        }
    }

    #[test]
    fn round_trip() {
        let b = sample();
        assert_eq!(decode(&b.encode()), Ok(b));
    }

    #[test]
    fn refuses_what_breaks_a_rule() {
        let mut b = sample();
        b.entries.reverse();
        assert!(matches!(decode(&b.encode()), Err(BundleError::Invalid(_))));
        let mut b = sample();
        b.from = 3;
        assert!(matches!(decode(&b.encode()), Err(BundleError::Invalid(_))));
        let mut b = sample();
        b.entries[0].target_len = MAX_TARGET + 1;
        assert!(matches!(decode(&b.encode()), Err(BundleError::Invalid(_))));
        let mut bytes = sample().encode();
        bytes.push(0);
        assert!(matches!(decode(&bytes), Err(BundleError::Malformed(_))));
        assert_eq!(decode(b"PDNEEDS1"), Err(BundleError::Magic));
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(
                decode(&bytes[..n]).is_err(),
                "a truncated bundle ({n} bytes)"
            );
        }
    }
}
