//! Recursive signatures (MS-RDC 3.1.5.3, `spec/ms-rdc.md` §5).
//!
//! Level 1 chunks the file; level `k+1` chunks the whole level-`k` signature
//! file, header included. [`SignatureBuilder`] computes every level in one
//! streaming pass: each level's records are fed to the next level's chunker as
//! they are produced, so memory holds only the signature files themselves.

use serde::{Deserialize, Serialize};

use super::chunker::{Chunk, Chunker};
use super::params::Params;
use super::sigfile::{self, HEADER, Signature};

/// Most levels MS-RDC uses (MSRDC_MAXIMUM_DEPTH).
pub const MAX_LEVELS: usize = 8;

/// A level is added on top while the current top signature file is larger
/// than this: the receiver downloads the top level whole, so it stays small.
/// DFS-R uses the same 32 KiB for levels ≥ 2 (MS-FRS2 <35>).
pub const TOP_LEVEL_MAX: u64 = 32 * 1024;

/// Parameters of level 1 and of levels 2 and up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LevelParams {
    /// Level 1 (chunks the file).
    pub level1: Params,
    /// Levels 2 and up (chunk signature files).
    pub upper: Params,
}

impl Default for LevelParams {
    fn default() -> Self {
        LevelParams {
            level1: Params::LEVEL1,
            upper: Params::LEVEL_N,
        }
    }
}

impl LevelParams {
    /// Parameters of `level` (1-based).
    pub fn for_level(&self, level: usize) -> Params {
        if level <= 1 { self.level1 } else { self.upper }
    }
}

/// How many levels to keep given the size of every level's signature file
/// (`sizes[0]` is level 1): level 1 always, then one more while the top is
/// larger than [`TOP_LEVEL_MAX`], up to [`MAX_LEVELS`].
pub fn depth_for(sizes: &[u64]) -> usize {
    let mut depth = 1;
    while depth < sizes.len().min(MAX_LEVELS) && sizes[depth - 1] > TOP_LEVEL_MAX {
        depth += 1;
    }
    depth.min(sizes.len()).max(1)
}

/// The signature files of one content, level 1 first, each with its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureFiles {
    /// `files[k]` is level `k + 1`.
    pub files: Vec<Vec<u8>>,
}

impl SignatureFiles {
    /// Number of levels.
    pub fn depth(&self) -> usize {
        self.files.len()
    }

    /// Level `level` (1-based) as records.
    pub fn level(&self, level: usize) -> Option<Vec<Signature>> {
        let file = self.files.get(level.checked_sub(1)?)?;
        sigfile::decode(file, usize::MAX).ok()
    }

    /// Sizes of the level files in bytes.
    pub fn sizes(&self) -> Vec<u64> {
        self.files.iter().map(|f| f.len() as u64).collect()
    }
}

/// Streams data through every signature level at once.
///
/// Call [`SignatureBuilder::push`] with the data (or, when level 1 is computed
/// elsewhere, [`SignatureBuilder::push_level1`] with its chunks in order), then
/// [`SignatureBuilder::finish`]. The sink passed to each call sees every chunk
/// of every level, with its level, as soon as it is final.
pub struct SignatureBuilder {
    level1: Chunker,
    /// Chunkers of levels 2..=levels, each fed the file of the level below.
    upper: Vec<UpperLevel>,
    files: Vec<Vec<u8>>,
    keep_files: bool,
    scratch: Vec<Chunk>,
}

struct UpperLevel {
    chunker: Chunker,
    header_sent: bool,
}

impl UpperLevel {
    /// Feeds more of the level below's file (its header first).
    fn feed(&mut self, records: &[u8], out: &mut Vec<Chunk>) {
        if !self.header_sent {
            self.header_sent = true;
            self.chunker.push(&HEADER, &mut |c| out.push(c));
        }
        self.chunker.push(records, &mut |c| out.push(c));
    }
}

impl SignatureBuilder {
    /// A builder computing `levels` levels (clamped to `1..=8`) with `params`.
    pub fn new(params: LevelParams, levels: usize) -> Self {
        let levels = levels.clamp(1, MAX_LEVELS);
        let upper = (2..=levels)
            .map(|k| UpperLevel {
                chunker: Chunker::new(params.for_level(k)),
                header_sent: false,
            })
            .collect();
        SignatureBuilder {
            level1: Chunker::new(params.level1),
            upper,
            files: vec![HEADER.to_vec(); levels],
            keep_files: true,
            scratch: Vec::new(),
        }
    }

    /// Does not keep the files, only reports chunks to the sinks (to print one
    /// level of a huge input in bounded memory).
    pub fn without_files(mut self) -> Self {
        self.keep_files = false;
        self.files.iter_mut().for_each(|f| *f = Vec::new());
        self
    }

    /// Number of levels computed.
    pub fn levels(&self) -> usize {
        self.upper.len() + 1
    }

    /// Feeds file data to level 1.
    pub fn push(&mut self, data: &[u8], sink: &mut impl FnMut(usize, &Chunk)) {
        let mut chunks = std::mem::take(&mut self.scratch);
        self.level1.push(data, &mut |c| chunks.push(c));
        self.cascade(chunks, false, sink);
    }

    /// Feeds level-1 chunks computed elsewhere (in order, with no data pushed).
    pub fn push_level1(&mut self, level1: &[Chunk], sink: &mut impl FnMut(usize, &Chunk)) {
        let mut chunks = std::mem::take(&mut self.scratch);
        chunks.extend_from_slice(level1);
        self.cascade(chunks, false, sink);
    }

    /// Ends the input and returns every level's file (empty files if built
    /// [`SignatureBuilder::without_files`]).
    pub fn finish(mut self, sink: &mut impl FnMut(usize, &Chunk)) -> SignatureFiles {
        let mut chunks = std::mem::take(&mut self.scratch);
        self.level1.finish_inner(&mut |c, _| chunks.push(c));
        self.cascade(chunks, true, sink);
        SignatureFiles { files: self.files }
    }

    /// Records new chunks of level 1 and carries their records up the levels.
    fn cascade(&mut self, mut chunks: Vec<Chunk>, end: bool, sink: &mut impl FnMut(usize, &Chunk)) {
        let mut records = Vec::new();
        for level in 1..=self.levels() {
            records.clear();
            for c in &chunks {
                sink(level, c);
                Signature::from(c).encode(&mut records);
            }
            if self.keep_files {
                self.files[level - 1].extend_from_slice(&records);
            }
            chunks.clear();
            let Some(up) = self.upper.get_mut(level - 1) else {
                break;
            };
            up.feed(&records, &mut chunks);
            if end {
                up.chunker.finish_inner(&mut |c, _| chunks.push(c));
            }
        }
        chunks.clear();
        self.scratch = chunks;
    }
}

/// Every signature level of `data`, keeping as many as [`depth_for`] says.
pub fn signature_files(data: &[u8], params: LevelParams) -> SignatureFiles {
    let mut builder = SignatureBuilder::new(params, MAX_LEVELS);
    builder.push(data, &mut |_, _| {});
    let mut all = builder.finish(&mut |_, _| {});
    let depth = depth_for(&all.sizes());
    all.files.truncate(depth);
    all
}

/// Level-1 chunks of `data` (sequential).
pub fn chunks(data: &[u8], params: Params) -> Vec<Chunk> {
    let mut out = Vec::with_capacity(data.len() / 2048 + 1);
    let mut chunker = Chunker::new(params);
    chunker.push(data, &mut |c| out.push(c));
    chunker.finish(&mut |c| out.push(c));
    out
}
