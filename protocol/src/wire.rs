//! Messages between agents on a subnet (libp2p request-response, postcard
//! encoded, size-limited both ways).
//!
//! Every agent sends an [`Announce`] to each connected peer once per
//! election heartbeat: who it is, what it holds, its rank and claim in each
//! election it takes part in. Data requests ask for immutable things only
//! (a signed manifest, a DP library file identified by its path and checked
//! by the hash the manifest gives, content byte ranges checked by needs-list
//! run hashes), so a peer is never trusted: everything it sends is verified
//! by the receiver before use.

use serde::{Deserialize, Serialize};

use crate::ContentHash;
use crate::election::Rank;
use crate::manifest::PackageName;

/// The libp2p protocol name; a peer speaking another version fails
/// negotiation, which the agent reports as incompatible.
pub const PROTOCOL: &str = "/peerdelta/subnet/1";

/// Version of these messages (also inside [`Announce`]).
pub const WIRE_VERSION: u32 = 2;

/// Largest request accepted.
pub const MAX_REQUEST: usize = 256 << 10;

/// Largest byte range one request may ask for.
pub const MAX_RANGE: u64 = 4 << 20;

/// Largest response accepted (a range plus framing, or a library file).
pub const MAX_RESPONSE: usize = 64 << 20;

/// Most contents one `Has` request may ask about.
pub const MAX_HAS: usize = 4096;

/// Most ranges the news of one [`Announce`] carries in all; a sender with
/// more news sends what fits, and peers learn the rest when they ask.
pub const MAX_HAVE_RANGES: usize = 1024;

/// An agent's periodic announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// [`WIRE_VERSION`] of the sender.
    pub wire_version: u32,
    /// A name for logs and status (host name, or as configured).
    pub agent: String,
    /// Fingerprint of the DP key the sender pins: peers pinning different
    /// keys do not belong to the same deployment.
    pub dp_key: ContentHash,
    /// Configured election weight (0: never master, never serves).
    pub weight: u32,
    /// The sender's elections.
    pub candidacies: Vec<Candidacy>,
    /// News: what the sender verified since its previous announcement, so
    /// peers waiting for it need not ask ([`MAX_HAVE_RANGES`] in all).
    pub have: Vec<Have>,
}

/// Target ranges of one content the sender newly holds verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Have {
    /// The content.
    pub content: ContentHash,
    /// `(offset, len)` ranges.
    pub ranges: Vec<(u64, u64)>,
}

/// One election the sender takes part in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidacy {
    /// Package.
    pub package: PackageName,
    /// Target version.
    pub version: u64,
    /// The sender's rank.
    pub rank: Rank,
    /// Whether the sender claims the master role.
    pub claims: bool,
}

/// A request to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Heartbeat; answered with [`Response::Ok`] or [`Response::Incompatible`].
    Announce(Announce),
    /// The signed manifest of a version ([`Response::Bytes`]).
    Manifest {
        /// Package.
        package: PackageName,
        /// Version.
        version: u64,
    },
    /// A DP library file the peer fetched and verified (needs list, pieces
    /// file), by its path in the library ([`Response::Bytes`]).
    File {
        /// Path relative to the library root.
        rel: String,
    },
    /// Which of these contents the peer holds whole ([`Response::Has`]).
    Has(Vec<ContentHash>),
    /// The byte ranges of a content the peer holds verified ([`Response::Ranges`]).
    Coverage(ContentHash),
    /// Bytes of a content ([`Response::Bytes`]); at most [`MAX_RANGE`].
    Range {
        /// The content.
        content: ContentHash,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Accepted.
    Ok,
    /// The bytes asked for.
    Bytes(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    /// One flag per content asked about.
    Has(Vec<bool>),
    /// Verified ranges `(offset, len)`, merged and sorted; `complete` when
    /// the peer holds the content whole.
    Ranges {
        /// Holds it whole.
        complete: bool,
        /// Verified ranges.
        ranges: Vec<(u64, u64)>,
    },
    /// Not held (yet).
    NotFound,
    /// The peer does not serve (weight 0, or the request is too large).
    Refused(String),
    /// The peer cannot work with us, and says why.
    Incompatible(String),
    /// All the peer's upload slots are taken: ask another holder, or again later.
    Busy,
}

/// `Vec<u8>` as one length-prefixed byte string (postcard encodes a
/// `Vec<u8>` that way already; this keeps it explicit and stable).
mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let b: &[u8] = <&[u8]>::deserialize(d)?;
        Ok(b.to_vec())
    }
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Larger than the limit.
    #[error("message of {len} bytes is over the limit of {limit}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a valid message.
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
    /// Valid encoding, invalid content.
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// Encodes a request.
pub fn encode_request(r: &Request) -> Vec<u8> {
    postcard::to_stdvec(r).unwrap_or_default()
}

/// Encodes a response.
pub fn encode_response(r: &Response) -> Vec<u8> {
    postcard::to_stdvec(r).unwrap_or_default()
}

/// Decodes and checks a request.
pub fn decode_request(bytes: &[u8]) -> Result<Request, WireError> {
    if bytes.len() > MAX_REQUEST {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            limit: MAX_REQUEST,
        });
    }
    let r: Request = postcard::from_bytes(bytes)?;
    match &r {
        Request::Has(v) if v.len() > MAX_HAS => Err(WireError::Invalid(format!(
            "Has asks about {} contents",
            v.len()
        ))),
        Request::Range { len, offset, .. }
            if *len > MAX_RANGE || offset.checked_add(*len).is_none() =>
        {
            Err(WireError::Invalid(format!(
                "range of {len} bytes at {offset}"
            )))
        }
        Request::File { rel } if !crate::layout::is_library_file(rel) => Err(WireError::Invalid(
            format!("{rel:?} is not a library file path"),
        )),
        _ => Ok(r),
    }
}

/// Decodes a response.
pub fn decode_response(bytes: &[u8]) -> Result<Response, WireError> {
    if bytes.len() > MAX_RESPONSE {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            limit: MAX_RESPONSE,
        });
    }
    Ok(postcard::from_bytes(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let a = Request::Announce(Announce {
            wire_version: WIRE_VERSION,
            agent: "a".into(),
            dp_key: ContentHash::of(b"k"),
            weight: 1,
            candidacies: vec![Candidacy {
                package: PackageName::new("p").unwrap_or_else(|_| unreachable!()),
                version: 2,
                rank: Rank {
                    complete: false,
                    held_permille: 10,
                    has_base: true,
                    weight: 1,
                    free_mib: 9,
                },
                claims: true,
            }],
            have: vec![Have {
                content: ContentHash::of(b"c"),
                ranges: vec![(0, 10), (20, 5)],
            }],
        });
        assert_eq!(decode_request(&encode_request(&a)).ok(), Some(a));
        let r = Response::Bytes(vec![1, 2, 3]);
        assert_eq!(decode_response(&encode_response(&r)).ok(), Some(r));
        let big = Request::Range {
            content: ContentHash::EMPTY,
            offset: 0,
            len: MAX_RANGE + 1,
        };
        assert!(decode_request(&encode_request(&big)).is_err());
        let escape = Request::File {
            rel: "../etc/passwd".into(),
        };
        assert!(decode_request(&encode_request(&escape)).is_err());
        assert!(decode_request(&[0xff; 10]).is_err());
        assert!(decode_request(&vec![0u8; MAX_REQUEST + 1]).is_err());
    }
}
