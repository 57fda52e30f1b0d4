//! Package manifests and package indexes, and their signed envelope.
//!
//! A manifest describes one version of a package: every entry's relative path,
//! mode, size and content hash, where its RDC signatures are, and which needs
//! lists exist to build it from older contents. The DP signs it with its
//! ed25519 key; agents pin the DP's public key and refuse anything else.
//!
//! # Envelope
//!
//! `magic (8) ‖ body length (u32 LE) ‖ body (postcard) ‖ ed25519 signature (64)`,
//! the signature covering `magic ‖ body`. [`open`] checks the size limit, the
//! magic and the signature *before* it parses the body, so nothing
//! unauthenticated is ever decoded, and it rejects trailing bytes.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::hash::ContentHash;
use crate::rdc::LevelParams;

/// Magic of a signed manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"PDMANIF2";
/// Magic of a signed package index.
pub const INDEX_MAGIC: [u8; 8] = *b"PDINDEX2";
/// Magic of the package index before generations and expiry (read by the DP
/// only, to upgrade a library).
pub const LEGACY_INDEX_MAGIC: [u8; 8] = *b"PDINDEX1";
/// Largest signed document accepted.
pub const MAX_SIGNED_LEN: usize = 256 << 20;
/// Largest relative path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Largest path component, in bytes.
pub const MAX_COMPONENT_LEN: usize = 255;

/// Why a name or path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// A package name outside `[A-Za-z0-9._-]{1,128}`, or starting with a dot.
    #[error("invalid package name {0:?}: use 1-128 of A-Z a-z 0-9 . _ - , not starting with '.'")]
    Package(String),
    /// A relative path that is empty, absolute, or has an empty, `.` or `..`
    /// component, a NUL or a backslash, or is too long.
    #[error("invalid path {path:?}: {reason}")]
    Path {
        /// The path (lossy).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A validated package name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PackageName(String);

impl PackageName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let ok = (1..=128).contains(&name.len())
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if ok {
            Ok(PackageName(name.to_owned()))
        } else {
            Err(NameError::Package(name.chars().take(200).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> Deserialize<'de> for PackageName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PackageName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A validated relative path inside a package: `/`-separated components, none
/// empty, `.` or `..`, no NUL or backslash, so that it can never escape the
/// directory it is materialised in, on Unix or Windows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RelPath(String);

impl RelPath {
    /// Validates `path`.
    pub fn new(path: &str) -> Result<Self, NameError> {
        let bad = |reason| {
            Err(NameError::Path {
                path: path.chars().take(300).collect(),
                reason,
            })
        };
        if path.is_empty() {
            return bad("empty");
        }
        if path.len() > MAX_PATH_LEN {
            return bad("longer than 4096 bytes");
        }
        if path.starts_with('/') {
            return bad("absolute");
        }
        if path.contains('\0') {
            return bad("contains NUL");
        }
        if path.contains('\\') {
            return bad("contains a backslash");
        }
        for c in path.split('/') {
            match c {
                "" => return bad("empty component"),
                "." | ".." => return bad("'.' or '..' component"),
                c if c.len() > MAX_COMPONENT_LEN => return bad("component longer than 255 bytes"),
                _ => {}
            }
        }
        Ok(RelPath(path.to_owned()))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelPath::new(&s).map_err(serde::de::Error::custom)
    }
}

/// One version of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The package.
    pub package: PackageName,
    /// Version number, from 1.
    pub version: u64,
    /// When the DP published it (ms since the Unix epoch, the DP's clock).
    pub published_ms: u64,
    /// RDC parameters of every signature in this manifest.
    pub params: LevelParams,
    /// Entries, sorted by path; parents before children.
    pub entries: Vec<Entry>,
    /// Bundles of this version's small changed contents against earlier
    /// versions ([`crate::bundle`]), oldest first.
    pub bundles: Vec<BundleRef>,
}

/// A bundle of a version's small contents patched against an earlier
/// version, `needs/<shard>/<hash>.bundle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRef {
    /// The earlier version.
    pub from: u64,
    /// BLAKE3 of the bundle file.
    pub hash: ContentHash,
    /// Its size.
    pub len: u64,
}

/// One entry of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the package root.
    pub path: RelPath,
    /// Unix permission bits (`0o7777` at most).
    pub mode: u32,
    /// A file or a directory.
    pub kind: EntryKind,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A directory (listed so that empty ones are kept).
    Dir,
    /// A regular file.
    File(FileEntry),
}

/// A regular file of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the content; the content is `content/<shard>/<hash>`.
    pub hash: ContentHash,
    /// The RDC signatures, `sigs/<shard>/<hash>.rdc`.
    pub sig: SigRef,
    /// Needs lists that build this content from older contents.
    pub needs: Vec<NeedsRef>,
    /// For a content of more than one run: its pieces file (a needs list
    /// from nothing, `base` = [`ContentHash::EMPTY`]), so that a whole
    /// download is verified run by run and can resume and be shared by peers.
    pub pieces: Option<PiecesRef>,
    /// For a content of one run: the size of its zstd-compressed copy
    /// (`protocol::layout::content_zst`), if the DP keeps one.
    pub zst_len: Option<u64>,
}

/// A content's pieces file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PiecesRef {
    /// BLAKE3 of the file.
    pub file_hash: ContentHash,
    /// Its size.
    pub file_len: u64,
    /// Size of its pack (the whole content compressed), if there is one.
    pub pack_len: Option<u64>,
}

/// Where a content's signature container is and how deep it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigRef {
    /// Size of the `.rdc` container.
    pub len: u64,
    /// Signature levels in it.
    pub depth: u8,
    /// BLAKE3 of the container, to verify it.
    pub hash: ContentHash,
}

/// A needs list from an older content to this one,
/// `needs/<base>-<target>.needs.bin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedsRef {
    /// The older content it starts from.
    pub base: ContentHash,
    /// Versions (among the previous ones) that hold `base` for this entry.
    pub base_versions: Vec<u64>,
    /// BLAKE3 of the needs file, to verify it before use.
    pub file_hash: ContentHash,
    /// Size of the needs file.
    pub file_len: u64,
    /// Bytes of the target that must come from the origin with this list.
    pub origin_bytes: u64,
    /// Size of the pack holding those bytes compressed, if there is one.
    pub pack_len: Option<u64>,
}

impl NeedsRef {
    /// Bytes a receiver downloads to use this list (the list, then the
    /// compressed pack or the raw origin runs).
    pub fn download_bytes(&self) -> u64 {
        self.file_len + self.pack_len.unwrap_or(self.origin_bytes)
    }
}

impl Manifest {
    /// The file entries.
    pub fn files(&self) -> impl Iterator<Item = (&Entry, &FileEntry)> {
        self.entries.iter().filter_map(|e| match &e.kind {
            EntryKind::File(f) => Some((e, f)),
            EntryKind::Dir => None,
        })
    }

    /// The file at `path`.
    pub fn file(&self, path: &RelPath) -> Option<&FileEntry> {
        let i = self.entries.binary_search_by(|e| e.path.cmp(path)).ok()?;
        match &self.entries[i].kind {
            EntryKind::File(f) => Some(f),
            EntryKind::Dir => None,
        }
    }

    /// Total bytes of the files.
    pub fn total_bytes(&self) -> u64 {
        self.files().map(|(_, f)| f.size).sum()
    }

    /// Checks the invariants a DP guarantees: entries sorted and unique,
    /// parents listed before (as directories), modes within `0o7777`.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let mut dirs = std::collections::HashSet::new();
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 && self.entries[i - 1].path >= e.path {
                return Err(ManifestError::Invalid(format!(
                    "entries not sorted at {}",
                    e.path
                )));
            }
            if e.mode > 0o7777 {
                return Err(ManifestError::Invalid(format!(
                    "mode {:o} of {}",
                    e.mode, e.path
                )));
            }
            if let Some((parent, _)) = e.path.as_str().rsplit_once('/')
                && !dirs.contains(parent)
            {
                return Err(ManifestError::Invalid(format!(
                    "{} listed before its directory",
                    e.path
                )));
            }
            if matches!(e.kind, EntryKind::Dir) {
                dirs.insert(e.path.as_str().to_owned());
            }
        }
        if self.bundles.len() > crate::bundle::BUNDLE_VERSIONS
            || self.bundles.iter().any(|b| b.from >= self.version)
            || self.bundles.windows(2).any(|w| w[0].from >= w[1].from)
        {
            return Err(ManifestError::Invalid(
                "bundles not from distinct earlier versions, oldest first".into(),
            ));
        }
        Ok(())
    }

    /// The smallest bundle from a version `held` says the receiver has.
    pub fn bundle_from(&self, held: impl Fn(u64) -> bool) -> Option<&BundleRef> {
        self.bundles
            .iter()
            .filter(|b| held(b.from))
            .min_by_key(|b| b.len)
    }
}

/// The list of versions of a package.
///
/// Receivers keep the newest index they verified for each package and never
/// accept one of a lower [`generation`](Self::generation): a stale mirror or
/// an attacker replaying an old, validly signed index cannot move them back
/// ([`PackageIndex::check_fresh`]). An index may expire, so that a mirror
/// that stopped updating (frozen) is noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageIndex {
    /// The package.
    pub package: PackageName,
    /// Counts the indexes the DP signed for this package: each new one has
    /// a higher generation.
    pub generation: u64,
    /// When the DP signed it (ms since the Unix epoch, the DP's clock).
    pub signed_ms: u64,
    /// After this (ms since the Unix epoch), receivers refuse the index; the
    /// DP re-signs it before (`dp refresh-index`). `None`: never expires.
    pub expires_ms: Option<u64>,
    /// Versions, ascending.
    pub versions: Vec<IndexEntry>,
}

/// A package index before generations (`PDINDEX1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyIndex {
    /// The package.
    pub package: PackageName,
    /// Versions, ascending.
    pub versions: Vec<IndexEntry>,
}

/// What a receiver last verified of a package's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSeen {
    /// Its generation.
    pub generation: u64,
    /// Its newest version.
    pub latest: u64,
}

/// Why an index was refused as stale.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StaleIndex {
    /// Older than one verified before.
    #[error(
        "the index of {package} is older than one this agent verified before (generation \
         {got}, newest {got_latest}; seen generation {seen}, newest {seen_latest}): a stale \
         mirror or proxy, or a replay; refusing to go back"
    )]
    Rollback {
        /// The package.
        package: PackageName,
        /// Its generation.
        got: u64,
        /// Its newest version.
        got_latest: u64,
        /// The generation seen before.
        seen: u64,
        /// The newest version seen before.
        seen_latest: u64,
    },
    /// Past its expiry.
    #[error(
        "the index of {package} expired {ago_s} s ago: the DP, or a mirror between it and \
         this agent, has stopped updating it (frozen); refusing it until the DP re-signs it \
         (`peerdelta dp refresh-index`)"
    )]
    Expired {
        /// The package.
        package: PackageName,
        /// Seconds since it expired.
        ago_s: u64,
    },
}

/// An index that may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Fresh.
    Fresh,
    /// Usable, but it expires in `left_s` seconds, within the last quarter
    /// of its validity: the DP should have re-signed it by now.
    ExpiresSoon {
        /// Seconds left.
        left_s: u64,
    },
}

impl PackageIndex {
    /// Whether a receiver that verified `seen` before may use this index at
    /// `now_ms` (its own clock).
    pub fn check_fresh(
        &self,
        seen: Option<IndexSeen>,
        now_ms: u64,
    ) -> Result<Freshness, StaleIndex> {
        let latest = self.latest().map_or(0, |e| e.version);
        if let Some(s) = seen
            && (self.generation < s.generation || latest < s.latest)
        {
            return Err(StaleIndex::Rollback {
                package: self.package.clone(),
                got: self.generation,
                got_latest: latest,
                seen: s.generation,
                seen_latest: s.latest,
            });
        }
        let Some(expires) = self.expires_ms else {
            return Ok(Freshness::Fresh);
        };
        if now_ms >= expires {
            return Err(StaleIndex::Expired {
                package: self.package.clone(),
                ago_s: (now_ms - expires) / 1000,
            });
        }
        let validity = expires.saturating_sub(self.signed_ms);
        let left = expires - now_ms;
        if left <= validity / 4 {
            Ok(Freshness::ExpiresSoon {
                left_s: left / 1000,
            })
        } else {
            Ok(Freshness::Fresh)
        }
    }

    /// What a receiver remembers of this index.
    pub fn seen(&self) -> IndexSeen {
        IndexSeen {
            generation: self.generation,
            latest: self.latest().map_or(0, |e| e.version),
        }
    }
}

/// One version in a package index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Version number.
    pub version: u64,
    /// BLAKE3 of the signed manifest file.
    pub manifest_hash: ContentHash,
    /// Size of the signed manifest file.
    pub manifest_len: u64,
    /// When it was published (ms since the Unix epoch).
    pub published_ms: u64,
    /// Files in the version.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Size of the manifest compressed alone (`layout::manifest_zst`), if kept.
    pub manifest_zst_len: Option<u64>,
    /// The manifest compressed against earlier versions' manifests
    /// (`layout::manifest_delta`): a receiver holding one fetches a few
    /// kilobytes instead of a manifest of one entry per file.
    pub manifest_deltas: Vec<ManifestDelta>,
}

/// The manifest of a version compressed against the manifest of `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDelta {
    /// The earlier version whose signed manifest is the reference.
    pub from: u64,
    /// Size of the delta file.
    pub len: u64,
}

/// How a receiver gets a version's signed manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFetch {
    /// It holds it already (same hash): nothing to fetch.
    Held,
    /// Against the manifest of `from`, which it holds.
    Delta(ManifestDelta),
    /// Compressed alone.
    Compressed(u64),
    /// As is.
    Plain(u64),
}

impl ManifestFetch {
    /// Bytes it downloads.
    pub fn len(&self) -> u64 {
        match self {
            ManifestFetch::Held => 0,
            ManifestFetch::Delta(d) => d.len,
            ManifestFetch::Compressed(n) | ManifestFetch::Plain(n) => *n,
        }
    }

    /// Whether it downloads nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IndexEntry {
    /// The cheapest way to get this manifest for a receiver holding the
    /// manifests of the versions for which `held` is true.
    pub fn manifest_fetch(&self, held: impl Fn(u64) -> bool) -> ManifestFetch {
        if held(self.version) {
            return ManifestFetch::Held;
        }
        let delta = self
            .manifest_deltas
            .iter()
            .filter(|d| held(d.from))
            .min_by_key(|d| d.len)
            .copied();
        let whole = match self.manifest_zst_len {
            Some(z) if z < self.manifest_len => ManifestFetch::Compressed(z),
            _ => ManifestFetch::Plain(self.manifest_len),
        };
        match delta {
            Some(d) if d.len < whole.len() => ManifestFetch::Delta(d),
            _ => whole,
        }
    }
}

impl PackageIndex {
    /// The newest version.
    pub fn latest(&self) -> Option<&IndexEntry> {
        self.versions.last()
    }

    /// Version `v`.
    pub fn get(&self, v: u64) -> Option<&IndexEntry> {
        self.versions.iter().find(|e| e.version == v)
    }
}

/// Why a signed document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Larger than [`MAX_SIGNED_LEN`].
    #[error("signed document of {0} bytes is larger than the limit")]
    TooLarge(usize),
    /// Not this kind of document (wrong magic), or truncated.
    #[error("not a peerdelta {0} (bad magic or truncated)")]
    Format(&'static str),
    /// The signature does not verify with the pinned key: tampered, or signed
    /// by another DP.
    #[error("bad signature: the {0} was not signed by the pinned DP key, or was modified")]
    Signature(&'static str),
    /// The signed body does not decode, or has trailing bytes.
    #[error("malformed {0}: {1}")]
    Decode(&'static str, String),
    /// Decoded but violates an invariant.
    #[error("invalid manifest: {0}")]
    Invalid(String),
    /// A valid manifest, but of another package or version than asked for.
    #[error("the manifest of {found} v{found_version}, not of {wanted} v{wanted_version}")]
    Other {
        /// The package it describes.
        found: PackageName,
        /// The version it describes.
        found_version: u64,
        /// The package asked for.
        wanted: PackageName,
        /// The version asked for.
        wanted_version: u64,
    },
}

fn kind(magic: &[u8; 8]) -> &'static str {
    if *magic == MANIFEST_MAGIC {
        "manifest"
    } else {
        "package index"
    }
}

/// Signs `value` into an envelope with `magic`.
pub fn seal<T: Serialize>(magic: [u8; 8], value: &T, key: &SigningKey) -> Vec<u8> {
    let body = postcard::to_allocvec(value).expect("serialising owned data into a Vec cannot fail");
    let mut out = Vec::with_capacity(8 + 4 + body.len() + 64);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    let mut signed = magic.to_vec();
    signed.extend_from_slice(&body);
    out.extend_from_slice(&key.sign(&signed).to_bytes());
    out
}

/// Verifies and decodes an envelope with `magic`.
pub fn open<T: DeserializeOwned>(
    magic: [u8; 8],
    bytes: &[u8],
    key: &VerifyingKey,
) -> Result<T, ManifestError> {
    let what = kind(&magic);
    if bytes.len() > MAX_SIGNED_LEN {
        return Err(ManifestError::TooLarge(bytes.len()));
    }
    let (head, rest) = bytes
        .split_at_checked(12)
        .ok_or(ManifestError::Format(what))?;
    if head[..8] != magic {
        return Err(ManifestError::Format(what));
    }
    let body_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if rest.len() != body_len + 64 {
        return Err(ManifestError::Format(what));
    }
    let (body, sig) = rest.split_at(body_len);
    let sig = Signature::from_slice(sig).map_err(|_| ManifestError::Signature(what))?;
    let mut signed = magic.to_vec();
    signed.extend_from_slice(body);
    key.verify(&signed, &sig)
        .map_err(|_| ManifestError::Signature(what))?;
    let (value, trailing) = postcard::take_from_bytes::<T>(body)
        .map_err(|e| ManifestError::Decode(what, e.to_string()))?;
    if !trailing.is_empty() {
        return Err(ManifestError::Decode(
            what,
            format!("{} trailing bytes", trailing.len()),
        ));
    }
    Ok(value)
}

/// Verifies and decodes a signed manifest, and checks its invariants.
pub fn open_manifest(bytes: &[u8], key: &VerifyingKey) -> Result<Manifest, ManifestError> {
    let m: Manifest = open(MANIFEST_MAGIC, bytes, key)?;
    m.validate()?;
    Ok(m)
}

/// [`open_manifest`], and it must be the manifest of `package` version
/// `version`: a validly signed manifest of another version must not stand
/// in for the one asked for.
pub fn open_manifest_of(
    bytes: &[u8],
    key: &VerifyingKey,
    package: &PackageName,
    version: u64,
) -> Result<Manifest, ManifestError> {
    let m = open_manifest(bytes, key)?;
    if m.package != *package || m.version != version {
        return Err(ManifestError::Other {
            found: m.package,
            found_version: m.version,
            wanted: package.clone(),
            wanted_version: version,
        });
    }
    Ok(m)
}

/// Verifies and decodes a signed package index.
pub fn open_index(bytes: &[u8], key: &VerifyingKey) -> Result<PackageIndex, ManifestError> {
    let index: PackageIndex = open(INDEX_MAGIC, bytes, key)?;
    index.validate()?;
    Ok(index)
}

/// Verifies and decodes a signed package index in either format: the DP
/// reads an index written before generations as generation 0, never
/// expiring (agents accept only the current format).
pub fn open_index_any(bytes: &[u8], key: &VerifyingKey) -> Result<PackageIndex, ManifestError> {
    if bytes.get(..8) == Some(&LEGACY_INDEX_MAGIC[..]) {
        let old: LegacyIndex = open(LEGACY_INDEX_MAGIC, bytes, key)?;
        let index = PackageIndex {
            package: old.package,
            generation: 0,
            signed_ms: 0,
            expires_ms: None,
            versions: old.versions,
        };
        index.validate()?;
        return Ok(index);
    }
    open_index(bytes, key)
}

impl PackageIndex {
    /// Checks that versions ascend and that manifest deltas start from
    /// earlier versions and are no larger than a signed document.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |m: String| Err(ManifestError::Invalid(m));
        for w in self.versions.windows(2) {
            if w[0].version >= w[1].version {
                return bad(format!("index versions out of order at {}", w[1].version));
            }
        }
        for e in &self.versions {
            if e.manifest_len > MAX_SIGNED_LEN as u64 {
                return bad(format!("v{}: manifest larger than the limit", e.version));
            }
            let over = |n: u64| n > MAX_SIGNED_LEN as u64;
            if e.manifest_zst_len.is_some_and(over)
                || e.manifest_deltas
                    .iter()
                    .any(|d| d.from >= e.version || over(d.len))
            {
                return bad(format!("v{}: bad manifest delta", e.version));
            }
        }
        Ok(())
    }
}

/// Parses a public key file: 64 hex digits, optionally with a comment line.
pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    let hex = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))?;
    let bytes = crate::hex::decode::<32>(hex)?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Formats a public key file.
pub fn format_public_key(key: &VerifyingKey) -> String {
    format!(
        "# peerdelta DP public key (ed25519)\n{}\n",
        crate::hex::encode(key.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn manifest() -> Manifest {
        let h = ContentHash::of(b"x");
        Manifest {
            package: PackageName::new("app").unwrap(),
            version: 3,
            published_ms: 1,
            params: LevelParams::default(),
            entries: vec![
                Entry {
                    path: RelPath::new("bin").unwrap(),
                    mode: 0o755,
                    kind: EntryKind::Dir,
                },
                Entry {
                    path: RelPath::new("bin/tool").unwrap(),
                    mode: 0o755,
                    kind: EntryKind::File(FileEntry {
                        size: 1,
                        hash: h,
                        sig: SigRef {
                            len: 10,
                            depth: 1,
                            hash: h,
                        },
                        needs: vec![],
                        pieces: None,
                        zst_len: None,
                    }),
                },
            ],
            bundles: vec![BundleRef {
                from: 1,
                hash: h,
                len: 9,
            }],
        }
    }

    #[test]
    fn bundles_must_come_from_distinct_earlier_versions_oldest_first() {
        let mut m = manifest();
        assert!(m.validate().is_ok());
        let b = m.bundles[0];
        m.bundles = vec![BundleRef { from: 2, ..b }, b];
        assert!(m.validate().is_err(), "newest first");
        m.bundles = vec![BundleRef { from: 3, ..b }];
        assert!(m.validate().is_err(), "from the version itself");
        m.bundles = vec![
            b,
            BundleRef {
                from: 2,
                len: 5,
                ..b
            },
        ];
        assert_eq!(
            m.bundle_from(|_| true).map(|b| b.from),
            Some(2),
            "the smallest"
        );
        assert_eq!(m.bundle_from(|v| v == 1).map(|b| b.from), Some(1));
        assert_eq!(m.bundle_from(|_| false), None);
    }

    #[test]
    fn seal_open_and_tamper() {
        let k = key(1);
        let m = manifest();
        let sealed = seal(MANIFEST_MAGIC, &m, &k);
        assert_eq!(open_manifest(&sealed, &k.verifying_key()).unwrap(), m);
        // Another key.
        assert!(matches!(
            open_manifest(&sealed, &key(2).verifying_key()),
            Err(ManifestError::Signature(_))
        ));
        // Any flipped bit.
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x10;
            assert!(
                open_manifest(&t, &k.verifying_key()).is_err(),
                "bit flip at {i} accepted"
            );
        }
        // Truncated or extended.
        assert!(open_manifest(&sealed[..sealed.len() - 1], &k.verifying_key()).is_err());
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(open_manifest(&longer, &k.verifying_key()).is_err());
        // A manifest is not an index.
        assert!(open_index(&sealed, &k.verifying_key()).is_err());
        // Asked for by package and version: only that one.
        let vk = k.verifying_key();
        assert_eq!(
            open_manifest_of(&sealed, &vk, &m.package, m.version).unwrap(),
            m
        );
        let other = PackageName::new("other").unwrap();
        for (p, v) in [(&m.package, m.version + 1), (&other, m.version)] {
            let e = open_manifest_of(&sealed, &vk, p, v).unwrap_err();
            assert!(matches!(e, ManifestError::Other { .. }), "{e}");
            assert!(e.to_string().contains(&format!("not of {p} v{v}")), "{e}");
        }
    }

    #[test]
    fn names_and_paths() {
        for ok in ["a", "app-1.2_x", "A.b"] {
            assert!(PackageName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(PackageName::new(bad).is_err(), "{bad}");
        }
        for ok in ["a", "a/b", "dir/file.txt", "weird name ü", "..a", "a.."] {
            assert!(RelPath::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "../a", "a/../b", ".", "a/./b", "a\0b", "a\\b",
        ] {
            assert!(RelPath::new(bad).is_err(), "{bad}");
        }
        // Deserialising validates too.
        assert!(serde_json::from_str::<RelPath>("\"../etc/passwd\"").is_err());
    }

    #[test]
    fn validate_order_and_parents() {
        let mut m = manifest();
        assert!(m.validate().is_ok());
        m.entries.swap(0, 1);
        assert!(m.validate().is_err());
        let mut m = manifest();
        m.entries.remove(0);
        assert!(m.validate().is_err(), "file before its directory");
    }

    fn index(
        generation: u64,
        latest: u64,
        signed_ms: u64,
        expires_ms: Option<u64>,
    ) -> PackageIndex {
        let h = ContentHash::of(b"m");
        PackageIndex {
            package: PackageName::new("app").unwrap(),
            generation,
            signed_ms,
            expires_ms,
            versions: (1..=latest)
                .map(|v| IndexEntry {
                    version: v,
                    manifest_hash: h,
                    manifest_len: 10,
                    published_ms: 0,
                    files: 1,
                    bytes: 1,
                    manifest_zst_len: None,
                    manifest_deltas: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn an_index_never_goes_back_and_expires() {
        let seen = index(5, 3, 0, None).seen();
        assert_eq!(
            index(5, 3, 0, None).check_fresh(Some(seen), 0),
            Ok(Freshness::Fresh)
        );
        assert_eq!(
            index(6, 4, 0, None).check_fresh(Some(seen), 0),
            Ok(Freshness::Fresh)
        );
        for older in [
            index(4, 3, 0, None),
            index(5, 2, 0, None),
            index(9, 2, 0, None),
        ] {
            assert!(matches!(
                older.check_fresh(Some(seen), 0),
                Err(StaleIndex::Rollback { .. })
            ));
        }
        let day = 86_400_000;
        let i = index(1, 1, 0, Some(4 * day));
        assert_eq!(i.check_fresh(None, day), Ok(Freshness::Fresh));
        assert_eq!(
            i.check_fresh(None, 3 * day + 1000),
            Ok(Freshness::ExpiresSoon { left_s: 86_399 })
        );
        assert!(matches!(
            i.check_fresh(None, 4 * day),
            Err(StaleIndex::Expired { ago_s: 0, .. })
        ));
    }

    #[test]
    fn a_legacy_index_reads_as_generation_zero() {
        let k = key(3);
        let new = index(0, 2, 0, None);
        let legacy = LegacyIndex {
            package: new.package.clone(),
            versions: new.versions.clone(),
        };
        let sealed = seal(LEGACY_INDEX_MAGIC, &legacy, &k);
        assert_eq!(open_index_any(&sealed, &k.verifying_key()).unwrap(), new);
        assert!(open_index(&sealed, &k.verifying_key()).is_err());
        let sealed = seal(INDEX_MAGIC, &new, &k);
        assert_eq!(open_index_any(&sealed, &k.verifying_key()).unwrap(), new);
    }

    #[test]
    fn public_key_file() {
        let k = key(7).verifying_key();
        assert_eq!(parse_public_key(&format_public_key(&k)), Some(k));
        assert_eq!(parse_public_key("nonsense"), None);
    }
}
