//! Answering peers: signed manifests, DP library files, which contents we
//! hold, the verified ranges of a content, and its bytes. Everything served
//! is immutable and checked by the asker (against the DP's signature, a
//! hash from a signed manifest, or needs-list run hashes), so serving needs
//! no trust in either direction; it needs bounds: a range is at most
//! `wire::MAX_RANGE` bytes, and upload slots are shared per peer
//! (`swarm::busy`).

use std::fs::File;
use std::os::unix::fs::FileExt;

use peerdelta_protocol::ContentHash;
use peerdelta_protocol::manifest::{Manifest, PackageName};
use peerdelta_protocol::wire::Response;

use crate::cache::Cache;

/// The signed manifest of `package` `version` from the cache, if it
/// verifies as that version's.
pub(crate) fn manifest(
    cache: &Cache,
    key: &ed25519_dalek::VerifyingKey,
    package: &PackageName,
    version: u64,
) -> Response {
    match cache.manifest_raw(package, version) {
        Some(raw)
            if peerdelta_store::manifest_file::open_verified(&raw, key, package, version)
                .is_some() =>
        {
            Response::Bytes(raw)
        }
        _ => Response::NotFound,
    }
}

/// A kept library file.
pub(crate) fn file(cache: &Cache, rel: &str) -> Option<Vec<u8>> {
    std::fs::read(cache.library_file(rel)?).ok()
}

/// Which of `contents` we hold whole.
pub(crate) fn has(cache: &Cache, contents: &[ContentHash]) -> Response {
    Response::Has(contents.iter().map(|h| cache.has(h)).collect())
}

/// The verified ranges of a content: all of it when cached, else what its
/// partial's journal records.
pub(crate) fn coverage(cache: &Cache, h: &ContentHash) -> Response {
    if cache.has(h) {
        let len = std::fs::metadata(cache.content_path(h)).map_or(0, |m| m.len());
        Response::Ranges {
            complete: true,
            ranges: vec![(0, len)],
        }
    } else {
        Response::Ranges {
            complete: false,
            ranges: peerdelta_store::partial::coverage(&cache.partial_dir(h), h).0,
        }
    }
}

/// Bytes of a content we hold verified (cached, or journaled in a partial).
pub(crate) fn range(cache: &Cache, content: &ContentHash, offset: u64, len: u64) -> Response {
    let path = if cache.has(content) {
        cache.content_path(content)
    } else {
        let (ranges, data) =
            peerdelta_store::partial::coverage(&cache.partial_dir(content), content);
        let ranges = peerdelta_protocol::rangeset::RangeSet::from_ranges(&ranges);
        if !offset
            .checked_add(len)
            .is_some_and(|end| ranges.covers(offset, end))
        {
            return Response::NotFound;
        }
        data
    };
    let Ok(len) = usize::try_from(len) else {
        return Response::NotFound;
    };
    let mut buf = vec![0u8; len];
    match File::open(&path).and_then(|f| f.read_exact_at(&mut buf, offset)) {
        Ok(()) => {
            if peerdelta_store::fault::active("serve-corrupt")
                && let Some(b) = buf.get_mut(len / 2)
            {
                *b ^= 0x5a;
            }
            Response::Bytes(buf)
        }
        Err(_) => Response::NotFound,
    }
}

/// The hash and length of library file `rel` if manifest `m` lists it.
pub(crate) fn library_entry(m: &Manifest, rel: &str) -> Option<(ContentHash, u64)> {
    use peerdelta_protocol::layout;
    m.files().find_map(|(_, f)| {
        f.needs
            .iter()
            .find(|n| layout::needs(&n.base, &f.hash) == rel)
            .map(|n| (n.file_hash, n.file_len))
            .or_else(|| {
                f.pieces
                    .filter(|_| layout::needs(&ContentHash::EMPTY, &f.hash) == rel)
                    .map(|p| (p.file_hash, p.file_len))
            })
    })
}
