//! The MS-RDC signature file: a 24-byte FileHeader and 18-byte records
//! (MS-RDC 2.2.1.2, 2.2.2; `spec/ms-rdc.md` §4).

use super::chunker::Chunk;

/// Size of the FileHeader.
pub const HEADER_LEN: usize = 24;
/// Size of one signature record: 16-byte MD4 then `u16` little-endian length.
pub const RECORD_LEN: usize = 18;
/// The FileHeader every signature file starts with.
pub const HEADER: [u8; HEADER_LEN] = [
    0x18, 0, 0, 0, // HeaderSize = 24
    1, 0, 1, 0, // Version: RdcVersion 1.1
    1, 0, 1, 0, // MinVersionRequired
    0, 0, 0, 0, // Padding
    1, 0, 0, 0, 0, 0, 0, 0, // FileType = 1 (signature file)
];

/// One signature record: what is known of a chunk without its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signature {
    /// MD4 of the chunk's bytes.
    pub md4: [u8; 16],
    /// Chunk length, `1..=65535`.
    pub len: u16,
}

impl From<&Chunk> for Signature {
    fn from(c: &Chunk) -> Self {
        Signature {
            md4: c.md4,
            len: c.len,
        }
    }
}

impl Signature {
    /// Appends the 18-byte record.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.md4);
        out.extend_from_slice(&self.len.to_le_bytes());
    }

    /// The 18-byte record as an array.
    pub fn to_bytes(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[..16].copy_from_slice(&self.md4);
        b[16..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    fn decode(rec: &[u8; RECORD_LEN]) -> Self {
        let mut md4 = [0u8; 16];
        md4.copy_from_slice(&rec[..16]);
        Signature {
            md4,
            len: u16::from_le_bytes([rec[16], rec[17]]),
        }
    }
}

/// Why a signature file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigFileError {
    /// Fewer than 24 bytes, or a header other than RDC 1.1 signature file.
    #[error("not an MS-RDC signature file (bad or missing 24-byte header)")]
    BadHeader,
    /// The records do not divide into 18-byte records.
    #[error("signature file has {0} bytes after the header, not a multiple of 18")]
    Truncated(usize),
    /// A record has length 0.
    #[error("signature record {index} has length 0")]
    ZeroLength {
        /// Record index.
        index: usize,
    },
    /// The file is larger than the caller's limit.
    #[error("signature file of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Size of the input.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// Encodes a whole signature file (header and records).
pub fn encode(sigs: &[Signature]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + sigs.len() * RECORD_LEN);
    out.extend_from_slice(&HEADER);
    for s in sigs {
        s.encode(&mut out);
    }
    out
}

/// Decodes a whole signature file, refusing anything over `limit` bytes.
pub fn decode(bytes: &[u8], limit: usize) -> Result<Vec<Signature>, SigFileError> {
    if bytes.len() > limit {
        return Err(SigFileError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let records = records(bytes)?;
    let mut out = Vec::with_capacity(records.len() / RECORD_LEN);
    for (index, rec) in records.chunks_exact(RECORD_LEN).enumerate() {
        let mut r = [0u8; RECORD_LEN];
        r.copy_from_slice(rec);
        let sig = Signature::decode(&r);
        if sig.len == 0 {
            return Err(SigFileError::ZeroLength { index });
        }
        out.push(sig);
    }
    Ok(out)
}

/// Checks the header and returns the record bytes.
pub fn records(bytes: &[u8]) -> Result<&[u8], SigFileError> {
    let (header, rest) = bytes
        .split_at_checked(HEADER_LEN)
        .ok_or(SigFileError::BadHeader)?;
    if header != HEADER {
        return Err(SigFileError::BadHeader);
    }
    if rest.len() % RECORD_LEN != 0 {
        return Err(SigFileError::Truncated(rest.len()));
    }
    Ok(rest)
}

/// Size of the signature file holding `records` records.
pub fn file_len(records: u64) -> u64 {
    HEADER_LEN as u64 + records * RECORD_LEN as u64
}
