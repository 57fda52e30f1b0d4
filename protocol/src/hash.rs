//! Content hashes: BLAKE3, 32 bytes, shown as lowercase hex.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hex;
use crate::rdc::ReadAt;

/// The BLAKE3 hash of a file's content. Content is stored and sent by this
/// hash, so a renamed, moved or duplicated file costs nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// BLAKE3 of nothing: the base of a pieces file (a needs list that takes
    /// every run from the origin).
    pub const EMPTY: ContentHash = ContentHash([
        0xaf, 0x13, 0x49, 0xb9, 0xf5, 0xf9, 0xa1, 0xa6, 0xa0, 0x40, 0x4d, 0xea, 0x36, 0xdc, 0xc9,
        0x49, 0x9b, 0xcb, 0x25, 0xc9, 0xad, 0xc1, 0x12, 0xb7, 0xcc, 0x9a, 0x93, 0xca, 0xe4, 0x1f,
        0x32, 0x62,
    ]);

    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ContentHash(*blake3::hash(bytes).as_bytes())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// The first two hex digits, the shard directory in the library.
    pub fn shard(&self) -> String {
        hex::encode(&self.0[..1])
    }
}

impl From<blake3::Hash> for ContentHash {
    fn from(h: blake3::Hash) -> Self {
        ContentHash(*h.as_bytes())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a content hash (64 hex digits): {0:?}")]
pub struct BadHash(pub String);

impl FromStr for ContentHash {
    type Err = BadHash;
    fn from_str(s: &str) -> Result<Self, BadHash> {
        hex::decode::<32>(s)
            .map(ContentHash)
            .ok_or_else(|| BadHash(s.chars().take(80).collect()))
    }
}

/// Hex in human-readable formats (JSON), raw bytes in binary ones (postcard).
impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(d).map(ContentHash)
        }
    }
}

/// Bytes of one leaf of [`hash_parallel`]: a whole BLAKE3 subtree (a power
/// of two of 1 KiB chunks), read and hashed by one thread.
pub const PARALLEL_LEAF: u64 = 8 << 20;

/// Bytes [`hash_parallel`] reads at a time.
const READ_LEN: u64 = 1 << 20;

/// Runs `work(k, buf)` for `k` in `0..count` on `threads` threads, in
/// order of `k`, each thread with its own reused buffer. `work` returns
/// whether to go on; once one says no or fails, no further `k` is started
/// (every `k` started is finished). The first error is returned.
fn for_each_index<E: Send>(
    count: u64,
    threads: usize,
    work: impl Fn(u64, &mut Vec<u8>) -> Result<bool, E> + Sync,
) -> Result<(), E> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let next = AtomicU64::new(0);
    let go_on = AtomicBool::new(true);
    let error: Mutex<Option<E>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, count.max(1) as usize) {
            s.spawn(|| {
                let mut buf = Vec::new();
                while go_on.load(Ordering::Relaxed) {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= count {
                        break;
                    }
                    match work(k, &mut buf) {
                        Ok(true) => {}
                        Ok(false) => go_on.store(false, Ordering::Relaxed),
                        Err(e) => {
                            go_on.store(false, Ordering::Relaxed);
                            error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    match error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The BLAKE3 of `src` computed on `threads` threads: each thread hashes
/// whole [`PARALLEL_LEAF`] subtrees (their chaining values, at their
/// offsets), and the tree above them is merged as BLAKE3 builds it (the
/// left subtree of `n` bytes is the largest power of two of chunks below
/// `n`), so the result is exactly [`ContentHash::of`] the whole input.
pub fn hash_parallel<R: ReadAt + ?Sized>(src: &R, threads: usize) -> Result<ContentHash, R::Error> {
    use blake3::hazmat::{
        ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
    };
    use std::sync::Mutex;

    let len = src.len();
    let leaves = len.div_ceil(PARALLEL_LEAF);
    // Feeds `offset..offset + n` to `h` through one small buffer (fresh
    // memory costs more than reused memory).
    let feed = |h: &mut blake3::Hasher, offset: u64, n: u64, buf: &mut Vec<u8>| {
        let mut at = offset;
        while at < offset + n {
            let step = READ_LEN.min(offset + n - at);
            buf.resize(step as usize, 0);
            src.read_exact_at(buf, at)?;
            h.update(buf);
            at += step;
        }
        Ok(())
    };
    let sequential = || -> Result<ContentHash, R::Error> {
        let mut h = blake3::Hasher::new();
        feed(&mut h, 0, len, &mut Vec::new())?;
        Ok(h.finalize().into())
    };
    if leaves <= 1 || threads <= 1 {
        return sequential();
    }
    let cvs: Mutex<Vec<Option<ChainingValue>>> = Mutex::new(vec![None; leaves as usize]);
    for_each_index(leaves, threads, |k, buf| {
        let offset = k * PARALLEL_LEAF;
        let mut h = blake3::Hasher::new();
        h.set_input_offset(offset);
        feed(&mut h, offset, PARALLEL_LEAF.min(len - offset), buf)?;
        let cv = h.finalize_non_root();
        cvs.lock().unwrap_or_else(|e| e.into_inner())[k as usize] = Some(cv);
        Ok(true)
    })?;
    // Without an error every leaf was hashed.
    let Some(cvs) = (cvs.into_inner().unwrap_or_else(|e| e.into_inner()))
        .into_iter()
        .collect::<Option<Vec<ChainingValue>>>()
    else {
        return sequential();
    };
    // The chaining value of `offset..offset + n`, which starts at a leaf
    // and spans whole leaves but maybe the last.
    fn node(cvs: &[ChainingValue], offset: u64, n: u64) -> ChainingValue {
        if n <= PARALLEL_LEAF {
            return cvs[(offset / PARALLEL_LEAF) as usize];
        }
        let left = blake3::hazmat::left_subtree_len(n);
        merge_subtrees_non_root(
            &node(cvs, offset, left),
            &node(cvs, offset + left, n - left),
            Mode::Hash,
        )
    }
    let left = blake3::hazmat::left_subtree_len(len);
    Ok(merge_subtrees_root(
        &node(&cvs, 0, left),
        &node(&cvs, left, len - left),
        Mode::Hash,
    )
    .into())
}

/// What [`find_by_runs`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundByRuns {
    /// The candidate the input is, if any.
    pub candidate: Option<usize>,
    /// Bytes of the input read and hashed to find out.
    pub hashed: u64,
}

/// Which of `candidates` `src` is, where a candidate is the BLAKE3 of every
/// `run_len` bytes of a content, in order (a pieces file's runs): the index
/// of the first candidate whose every run hash is the hash of the same run
/// of `src`, or `None`. Runs are hashed on `threads` threads, in order, and
/// the work stops once no candidate can match (every run started is
/// hashed, so a match has hashed them all), so a changed file costs
/// about the runs up to its first change. Equal run hashes mean equal bytes
/// (the hash is collision resistant), so a match is `src`'s content.
pub fn find_by_runs<R: ReadAt + ?Sized>(
    src: &R,
    run_len: u64,
    candidates: &[&[ContentHash]],
    threads: usize,
) -> Result<FoundByRuns, R::Error> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    let len = src.len();
    let run_len = run_len.max(1);
    let runs = len.div_ceil(run_len);
    let mut alive: Vec<bool> = candidates.iter().map(|c| c.len() as u64 == runs).collect();
    if runs == 0 || !alive.contains(&true) {
        return Ok(FoundByRuns {
            candidate: alive.iter().position(|&a| a),
            hashed: 0,
        });
    }
    let hashed = AtomicU64::new(0);
    let alive = Mutex::new(&mut alive);
    for_each_index(runs, threads, |k, buf| {
        let offset = k * run_len;
        buf.resize(run_len.min(len - offset) as usize, 0);
        src.read_exact_at(buf, offset)?;
        let h = ContentHash::of(buf);
        hashed.fetch_add(buf.len() as u64, Ordering::Relaxed);
        let mut alive = alive.lock().unwrap_or_else(|e| e.into_inner());
        for (a, c) in alive.iter_mut().zip(candidates) {
            *a = *a && c.get(k as usize) == Some(&h);
        }
        Ok(alive.contains(&true))
    })?;
    let alive = alive.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(FoundByRuns {
        candidate: alive.iter().position(|&a| a),
        hashed: hashed.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = ContentHash::of(b"abc");
        assert_eq!(h.to_hex().parse::<ContentHash>().unwrap(), h);
        assert_eq!(
            h.to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(h.shard(), "64");
        assert_eq!(ContentHash::of(b""), ContentHash::EMPTY);
        assert!("xyz".parse::<ContentHash>().is_err());
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<ContentHash>(&json).unwrap(), h);
        let bin = postcard::to_allocvec(&h).unwrap();
        assert_eq!(bin.len(), 32);
        assert_eq!(postcard::from_bytes::<ContentHash>(&bin).unwrap(), h);
    }

    #[test]
    fn a_content_is_found_by_its_runs_and_only_by_them() {
        let run = 1000usize;
        let data: Vec<u8> = (0..7 * run + 123).map(|i| (i % 251) as u8).collect();
        let runs = |d: &[u8]| d.chunks(run).map(ContentHash::of).collect::<Vec<_>>();
        let same = runs(&data);
        let mut changed_late = data.clone();
        changed_late[7 * run + 5] ^= 1;
        let mut changed_early = data.clone();
        changed_early[3] ^= 1;
        let (late, early) = (runs(&changed_late), runs(&changed_early));
        let shorter = runs(&data[..6 * run]);
        for threads in [1, 2, 4] {
            let find = |c: &[&[ContentHash]]| {
                find_by_runs(&data[..], run as u64, c, threads).map(|f| f.candidate)
            };
            assert_eq!(find(&[&same]).unwrap(), Some(0));
            assert_eq!(find(&[&late, &early, &same]).unwrap(), Some(2));
            assert_eq!(find(&[&late, &early, &shorter]).unwrap(), None);
            assert_eq!(find(&[]).unwrap(), None);
            // The runs of another content, read from `data`, are not it;
            // found, every run was hashed.
            let late_found = |c: &[&[ContentHash]]| {
                find_by_runs(&changed_late[..], run as u64, c, threads).unwrap()
            };
            assert_eq!(late_found(&[&same]).candidate, None);
            let found = late_found(&[&same, &late]);
            assert_eq!(found.candidate, Some(1));
            assert_eq!(found.hashed, data.len() as u64);
        }
        // A change in the first run ends the work there (on one thread; more
        // threads may have read a few runs ahead).
        let counted = Counted(&changed_early, std::sync::atomic::AtomicU64::new(0));
        let found = find_by_runs(&counted, run as u64, &[&same], 1).unwrap();
        assert_eq!((found.candidate, found.hashed), (None, run as u64));
        assert_eq!(counted.1.into_inner(), 1);
    }

    /// An input that counts its reads.
    struct Counted<'a>(&'a [u8], std::sync::atomic::AtomicU64);

    impl ReadAt for Counted<'_> {
        type Error = std::convert::Infallible;
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Self::Error> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.read_exact_at(buf, offset)
        }
    }

    #[test]
    fn the_parallel_hash_is_the_hash() {
        // Around leaf boundaries and at sizes whose tree is unbalanced.
        let data: Vec<u8> = (0..5 * PARALLEL_LEAF as usize + 4096)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8)
            .collect();
        let leaf = PARALLEL_LEAF as usize;
        for n in [
            0,
            1,
            1024,
            leaf - 1,
            leaf,
            leaf + 1,
            2 * leaf,
            3 * leaf + 17,
            4 * leaf,
            5 * leaf + 4096,
        ] {
            let input = &data[..n];
            for threads in [1, 2, 3] {
                assert_eq!(
                    hash_parallel(input, threads).unwrap(),
                    ContentHash::of(input),
                    "{n} bytes, {threads} threads"
                );
            }
        }
    }
}
