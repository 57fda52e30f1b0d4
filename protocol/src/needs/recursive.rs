//! Recursive transfer (MS-RDC 4.4, `spec/ms-rdc.md` §6 "Recursive transfer").
//!
//! The receiver fetches the source's top signature level (`d`) whole. Then for
//! each level `i` from `d` down to 1 it compares the source's level-`i`
//! signatures with the seed's, which yields the needs that rebuild the source's
//! level-`(i-1)` file from the seed's level-`(i-1)` file plus ranges of the
//! source's. Level 0 is the file itself. Only the source ranges cross the network.
//!
//! [`RecursivePlan`] holds the state between levels and checks every rebuilt
//! signature level by chunking it again: its chunks must be exactly the
//! signatures it was rebuilt from, so a wrong seed range or a corrupt source
//! range is caught at the level where it happened.

use serde::{Deserialize, Serialize};

use super::{Need, SeedIndex, apply_slices, compare_indexed, summarize};
use crate::rdc::sigfile::{self, SigFileError};
use crate::rdc::{
    LevelParams, MAX_LEVELS, Signature, SignatureBuilder, SignatureFiles, chunks, signature_files,
};

/// Why a recursive transfer step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecursiveError {
    /// A signature level does not parse.
    #[error("signature level {level}: {source}")]
    Decode {
        /// The level.
        level: usize,
        /// What was wrong.
        source: SigFileError,
    },
    /// The depth is 0 or more than the seed's levels / [`MAX_LEVELS`].
    #[error("signature depth {depth} is not supported (1..={max})")]
    Depth {
        /// Depth asked for.
        depth: usize,
        /// Largest supported.
        max: usize,
    },
    /// A rebuilt level does not chunk into the signatures it was built from.
    #[error("rebuilt signature level {level} does not match the level above it")]
    Mismatch {
        /// The rebuilt level.
        level: usize,
    },
    /// A need points outside its input.
    #[error("level {level}: {message}")]
    Apply {
        /// Level being rebuilt.
        level: usize,
        /// The apply error, as text.
        message: String,
    },
}

/// The seed's signature levels, computed locally with the source's parameters.
pub struct SeedLevels {
    files: Vec<Vec<u8>>,
    index: Vec<SeedIndex>,
}

impl SeedLevels {
    /// Computes every level of `seed` (up to [`MAX_LEVELS`]).
    pub fn compute(seed: &[u8], params: LevelParams) -> Self {
        let mut b = SignatureBuilder::new(params, MAX_LEVELS);
        b.push(seed, &mut |_, _| {});
        Self::from_files(b.finish(&mut |_, _| {})).unwrap_or_else(|_| SeedLevels {
            files: vec![],
            index: vec![],
        })
    }

    /// Uses signature files computed elsewhere (level 1 first).
    pub fn from_files(files: SignatureFiles) -> Result<Self, RecursiveError> {
        let mut index = Vec::with_capacity(files.files.len());
        for (k, f) in files.files.iter().enumerate() {
            let sigs = sigfile::decode(f, usize::MAX).map_err(|source| RecursiveError::Decode {
                level: k + 1,
                source,
            })?;
            index.push(SeedIndex::new(&sigs));
        }
        Ok(SeedLevels {
            files: files.files,
            index,
        })
    }

    /// Number of levels available.
    pub fn depth(&self) -> usize {
        self.files.len()
    }

    /// The seed's level file (1-based).
    pub fn file(&self, level: usize) -> Option<&[u8]> {
        self.files.get(level.checked_sub(1)?).map(Vec::as_slice)
    }
}

/// State of a recursive transfer between levels.
pub struct RecursivePlan {
    params: LevelParams,
    level: usize,
    sigs: Vec<Signature>,
    needs: Vec<Need>,
}

impl RecursivePlan {
    /// Starts from the source's top signature file, level `depth`.
    pub fn new(
        params: LevelParams,
        depth: usize,
        top: &[u8],
        seed: &SeedLevels,
    ) -> Result<Self, RecursiveError> {
        if depth == 0 || depth > MAX_LEVELS || depth > seed.depth() {
            return Err(RecursiveError::Depth {
                depth,
                max: seed.depth().min(MAX_LEVELS),
            });
        }
        let sigs = sigfile::decode(top, usize::MAX).map_err(|source| RecursiveError::Decode {
            level: depth,
            source,
        })?;
        let needs = compare_indexed(&sigs, &seed.index[depth - 1]);
        Ok(RecursivePlan {
            params,
            level: depth,
            sigs,
            needs,
        })
    }

    /// The level whose signatures the current needs come from. The needs build
    /// level `level() - 1`: a signature file, or the file itself when `level() == 1`.
    pub fn level(&self) -> usize {
        self.level
    }

    /// The needs that rebuild level `level() - 1`.
    pub fn needs(&self) -> &[Need] {
        &self.needs
    }

    /// The current level's signatures.
    pub fn signatures(&self) -> &[Signature] {
        &self.sigs
    }

    /// Takes the rebuilt level `level() - 1` signature file and moves down one
    /// level. Fails when it is not exactly what the current level describes.
    pub fn descend(&mut self, rebuilt: &[u8], seed: &SeedLevels) -> Result<(), RecursiveError> {
        let below = self.level - 1;
        if below == 0 {
            return Err(RecursiveError::Depth {
                depth: 0,
                max: MAX_LEVELS,
            });
        }
        let again = chunks(rebuilt, self.params.for_level(self.level));
        let same = again.len() == self.sigs.len()
            && again
                .iter()
                .zip(&self.sigs)
                .all(|(c, s)| Signature::from(c) == *s);
        if !same {
            return Err(RecursiveError::Mismatch { level: below });
        }
        let sigs =
            sigfile::decode(rebuilt, usize::MAX).map_err(|source| RecursiveError::Decode {
                level: below,
                source,
            })?;
        self.needs = compare_indexed(&sigs, &seed.index[below - 1]);
        self.sigs = sigs;
        self.level = below;
        Ok(())
    }
}

/// Network cost of one signature level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelCost {
    /// The level (1 = signatures of the file).
    pub level: usize,
    /// Size of the source's signature file at this level.
    pub file_bytes: u64,
    /// Bytes of it that cross the network: all of the top level, and the
    /// source ranges of the needs for the levels below.
    pub transferred_bytes: u64,
}

/// Result of [`recursive_local`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecursiveOutcome {
    /// Needs that build the file from the seed and the source.
    pub needs: Vec<Need>,
    /// Signature levels from the top down.
    pub levels: Vec<LevelCost>,
}

impl RecursiveOutcome {
    /// Signature bytes over all levels.
    pub fn signature_bytes(&self) -> u64 {
        self.levels.iter().map(|l| l.transferred_bytes).sum()
    }
}

/// Runs a recursive transfer from signature files alone: the source's levels
/// (its top level is `source.files.last()`) against the seed's, rebuilding each
/// lower source level from the seed's and reporting what would cross the
/// network. The file data is not needed: the result's needs say which ranges
/// of the source the file still requires.
pub fn recursive_needs(
    source: &SignatureFiles,
    seed: &SeedLevels,
    params: LevelParams,
) -> Result<RecursiveOutcome, RecursiveError> {
    let depth = source.depth();
    let top = source.files.last().ok_or(RecursiveError::Depth {
        depth: 0,
        max: MAX_LEVELS,
    })?;
    let mut plan = RecursivePlan::new(params, depth, top, seed)?;
    let mut levels = vec![LevelCost {
        level: depth,
        file_bytes: top.len() as u64,
        transferred_bytes: top.len() as u64,
    }];
    while plan.level() > 1 {
        let below = plan.level() - 1;
        let seed_file = seed.file(below).unwrap_or_default();
        let source_file = &source.files[below - 1];
        let rebuilt = apply_slices(plan.needs(), seed_file, source_file).map_err(|e| {
            RecursiveError::Apply {
                level: below,
                message: e.to_string(),
            }
        })?;
        levels.push(LevelCost {
            level: below,
            file_bytes: source_file.len() as u64,
            transferred_bytes: summarize(plan.needs()).source_bytes,
        });
        plan.descend(&rebuilt, seed)?;
    }
    Ok(RecursiveOutcome {
        needs: plan.needs().to_vec(),
        levels,
    })
}

/// [`recursive_needs`] between two inputs in memory. The source's depth
/// follows [`crate::rdc::depth_for`].
pub fn recursive_local(
    source: &[u8],
    seed: &[u8],
    params: LevelParams,
) -> Result<RecursiveOutcome, RecursiveError> {
    recursive_needs(
        &signature_files(source, params),
        &SeedLevels::compute(seed, params),
        params,
    )
}
