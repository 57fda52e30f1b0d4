//! The signature container `sigs/<shard>/<hash>.rdc`: every MS-RDC signature
//! level of one content, with a small header saying where each level is, so a
//! receiver can fetch the top level whole and only ranges of the others.
//!
//! Format: `magic (8) ‖ header length (u32 LE) ‖ postcard(SigHeader) ‖ level 1
//! file ‖ level 2 file ‖ …`, each level file being a standard MS-RDC signature
//! file (24-byte header, 18-byte records).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::rdc::{LevelParams, MAX_LEVELS, SignatureFiles, sigfile};

/// Magic of a signature container.
pub const SIG_MAGIC: [u8; 8] = *b"PDRDCSG1";
/// Largest header accepted.
pub const MAX_HEADER: usize = 4096;
/// Bytes a receiver fetches to be sure to get the header.
pub const HEADER_FETCH: u64 = 512;

/// What the container holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigHeader {
    /// Parameters the levels were computed with.
    pub params: LevelParams,
    /// Size of the content they describe.
    pub content_len: u64,
    /// Size of each level file, level 1 first.
    pub levels: Vec<u64>,
}

/// Why a container was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigStoreError {
    /// More bytes are needed to read the header.
    #[error("incomplete signature container header")]
    Incomplete,
    /// Not a container, or inconsistent.
    #[error("bad signature container: {0}")]
    Format(String),
}

impl SigHeader {
    /// Byte range of level `level` (1-based) in the container whose data
    /// starts at `data_start`.
    pub fn level_range(&self, data_start: u64, level: usize) -> Option<Range<u64>> {
        let i = level.checked_sub(1)?;
        let len = *self.levels.get(i)?;
        let before = self
            .levels
            .get(..i)?
            .iter()
            .try_fold(0u64, |a, &l| a.checked_add(l))?;
        let start = data_start.checked_add(before)?;
        Some(start..start.checked_add(len)?)
    }

    /// Checks the header against what the signed manifest says of this
    /// container (`sig`), the content (`content_len`) and the parameters
    /// (`params`): a container whose header disagrees is not used, whatever
    /// its bytes, and every level range it gives lies inside the container.
    pub fn check_against(
        &self,
        data_start: u64,
        sig: &crate::manifest::SigRef,
        params: &LevelParams,
        content_len: u64,
    ) -> Result<(), SigStoreError> {
        let bad = |what: String| Err(SigStoreError::Format(what));
        if self.params != *params {
            return bad("parameters other than the manifest's".into());
        }
        if self.content_len != content_len {
            return bad(format!(
                "describes {} bytes, the manifest {content_len}",
                self.content_len
            ));
        }
        if self.depth() != usize::from(sig.depth) {
            return bad(format!(
                "{} levels, the manifest {}",
                self.depth(),
                sig.depth
            ));
        }
        let total = self
            .levels
            .iter()
            .try_fold(data_start, |a, &l| a.checked_add(l));
        if total != Some(sig.len) {
            return bad(format!(
                "levels end at {total:?}, the container is {} bytes",
                sig.len
            ));
        }
        Ok(())
    }

    /// Number of levels.
    pub fn depth(&self) -> usize {
        self.levels.len()
    }
}

/// Encodes a container.
pub fn encode(params: LevelParams, content_len: u64, files: &SignatureFiles) -> Vec<u8> {
    let header = SigHeader {
        params,
        content_len,
        levels: files.files.iter().map(|f| f.len() as u64).collect(),
    };
    let h = postcard::to_allocvec(&header).expect("serialising owned data into a Vec cannot fail");
    let mut out = SIG_MAGIC.to_vec();
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    for f in &files.files {
        out.extend_from_slice(f);
    }
    out
}

/// Reads the header from the start of a container; returns it and the offset
/// where the level data starts.
pub fn decode_header(prefix: &[u8]) -> Result<(SigHeader, u64), SigStoreError> {
    if prefix.len() < 12 {
        return Err(SigStoreError::Incomplete);
    }
    if prefix[..8] != SIG_MAGIC {
        return Err(SigStoreError::Format("bad magic".into()));
    }
    let len = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize;
    if len > MAX_HEADER {
        return Err(SigStoreError::Format(format!("header of {len} bytes")));
    }
    let body = prefix.get(12..12 + len).ok_or(SigStoreError::Incomplete)?;
    let (header, rest): (SigHeader, _) =
        postcard::take_from_bytes(body).map_err(|e| SigStoreError::Format(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SigStoreError::Format(format!(
            "{} bytes after the header",
            rest.len()
        )));
    }
    if header.levels.is_empty() || header.levels.len() > MAX_LEVELS {
        return Err(SigStoreError::Format(format!(
            "{} levels",
            header.levels.len()
        )));
    }
    for &l in &header.levels {
        if l < sigfile::HEADER_LEN as u64
            || !(l - sigfile::HEADER_LEN as u64).is_multiple_of(sigfile::RECORD_LEN as u64)
        {
            return Err(SigStoreError::Format(format!("level of {l} bytes")));
        }
    }
    Ok((header, 12 + len as u64))
}

/// Decodes a whole container.
pub fn decode(bytes: &[u8]) -> Result<(SigHeader, SignatureFiles), SigStoreError> {
    let (header, start) = decode_header(bytes)?;
    let total = header
        .levels
        .iter()
        .try_fold(start, |a, &l| a.checked_add(l));
    if total != Some(bytes.len() as u64) {
        return Err(SigStoreError::Format(format!(
            "{} bytes, header says {total:?}",
            bytes.len()
        )));
    }
    let mut files = Vec::with_capacity(header.depth());
    for level in 1..=header.depth() {
        let r = header
            .level_range(start, level)
            .ok_or_else(|| SigStoreError::Format("level".into()))?;
        let file = &bytes[r.start as usize..r.end as usize];
        sigfile::records(file).map_err(|e| SigStoreError::Format(format!("level {level}: {e}")))?;
        files.push(file.to_vec());
    }
    Ok((header, SignatureFiles { files }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdc::signature_files;

    #[test]
    fn round_trip_and_ranges() {
        let data: Vec<u8> = (0..5_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        let files = signature_files(&data, LevelParams::default());
        assert!(files.depth() >= 2);
        let c = encode(LevelParams::default(), data.len() as u64, &files);
        let (h, start) = decode_header(&c[..HEADER_FETCH as usize]).unwrap();
        assert_eq!(h.content_len, data.len() as u64);
        for level in 1..=h.depth() {
            let r = h.level_range(start, level).unwrap();
            assert_eq!(
                &c[r.start as usize..r.end as usize],
                &files.files[level - 1][..]
            );
        }
        assert_eq!(decode(&c).unwrap().1, files);
        assert_eq!(decode_header(&c[..5]), Err(SigStoreError::Incomplete));
        assert!(decode(&c[..c.len() - 1]).is_err());
        // Checked against what a manifest says.
        let sig = crate::manifest::SigRef {
            len: c.len() as u64,
            depth: h.depth() as u8,
            hash: crate::ContentHash::of(&c),
        };
        let p = LevelParams::default();
        let n = data.len() as u64;
        assert!(h.check_against(start, &sig, &p, n).is_ok());
        assert!(h.check_against(start, &sig, &p, n + 1).is_err());
        let shallow = crate::manifest::SigRef { depth: 1, ..sig };
        assert!(h.check_against(start, &shallow, &p, n).is_err());
        let short = crate::manifest::SigRef {
            len: sig.len - 1,
            ..sig
        };
        assert!(h.check_against(start, &short, &p, n).is_err());
        let mut other = p;
        other.level1 = crate::rdc::Params::new(32, 1024).unwrap();
        assert!(h.check_against(start, &sig, &other, n).is_err());
    }

    #[test]
    fn hostile_level_sizes_do_not_overflow() {
        let h = SigHeader {
            params: LevelParams::default(),
            content_len: 10,
            levels: vec![u64::MAX - 10, 24, 24],
        };
        assert_eq!(h.level_range(100, 2), None);
        assert_eq!(h.level_range(100, 3), None);
        assert!(h.level_range(100, 1).is_none());
        let sig = crate::manifest::SigRef {
            len: 1000,
            depth: 3,
            hash: crate::ContentHash::EMPTY,
        };
        assert!(
            h.check_against(100, &sig, &LevelParams::default(), 10)
                .is_err()
        );
    }
}
