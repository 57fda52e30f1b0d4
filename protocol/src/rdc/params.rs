//! FilterMax parameters and their limits (`spec/ms-rdc.md` §2, §3).

use serde::{Deserialize, Serialize};

/// Smallest hash window MS-RDC allows (MSRDC_MINIMUM_HASHWINDOWSIZE).
pub const MIN_WINDOW: u32 = 2;
/// Largest hash window MS-RDC allows (MSRDC_MAXIMUM_HASHWINDOWSIZE).
pub const MAX_WINDOW: u32 = 96;
/// Smallest horizon MS-RDC allows (MSRDC_MINIMUM_HORIZONSIZE).
pub const MIN_HORIZON: u32 = 128;
/// Largest horizon we accept: MS-RDC 3.1.5.1.2 says `h < 16384`.
pub const MAX_HORIZON: u32 = 16_383;
/// No chunk is longer than this; a cut is forced when it is reached (MS-RDC 3.1.5.1.2).
pub const MAX_CHUNK_LEN: u32 = 65_535;

/// Why a [`Params`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// The hash window is outside `2..=96`.
    #[error("hash window {0} is outside {MIN_WINDOW}..={MAX_WINDOW}")]
    Window(u32),
    /// The horizon is outside `128..=16383`.
    #[error("horizon {0} is outside {MIN_HORIZON}..={MAX_HORIZON}")]
    Horizon(u32),
}

/// Which positions near the start of the data may cut (`spec/ms-rdc.md` §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum StartRule {
    /// Any `p ≥ 1`: the literal recursive definition. The default.
    #[default]
    Clip,
    /// `p ≥ h` (MS-RDC 4.3, Figure 8).
    Horizon,
    /// `p > h` (first prose sentence of MS-RDC 3.1.5.1.2).
    Prose,
}

/// Which positions near the end of the data may cut (`spec/ms-rdc.md` §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum EndRule {
    /// Positions past the end are ignored: a maximum may cut with a short right
    /// horizon. The default.
    #[default]
    Clip,
    /// Only `p + h ≤ n - 1` may cut: a full right horizon is required.
    Full,
}

/// The edge rules as a pair; the default `Clip`/`Clip` is the one the vectors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct EdgeRules {
    /// Rule at the start of the data.
    pub start: StartRule,
    /// Rule at the end of the data.
    pub end: EndRule,
}

/// FilterMax parameters of one signature level: hash window `w` and horizon `h`.
///
/// Both ends of a transfer must use the same parameters; they are not carried in
/// the signature file (MS-RDC 3.1.5.1), so peerdelta records them in manifests.
/// Decoded parameters (from a manifest or a signature container) pass the
/// same range checks as [`Params::new`]: toy values exist only in code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ParamsOnWire")]
pub struct Params {
    window: u32,
    horizon: u32,
    edges: EdgeRules,
}

/// [`Params`] as decoded, before its checks.
#[derive(Deserialize)]
struct ParamsOnWire {
    window: u32,
    horizon: u32,
    edges: EdgeRules,
}

impl TryFrom<ParamsOnWire> for Params {
    type Error = ParamError;

    fn try_from(w: ParamsOnWire) -> Result<Self, ParamError> {
        Ok(Params::new(w.window, w.horizon)?.with_edges(w.edges))
    }
}

impl Params {
    /// Level-1 defaults: window 48, horizon 1024 (MSRDC_DEFAULT_*_1).
    pub const LEVEL1: Params = Params {
        window: 48,
        horizon: 1024,
        edges: EdgeRules::CLIP,
    };
    /// Defaults of levels 2 and up: window 2, horizon 128 (MSRDC_DEFAULT_*_N).
    pub const LEVEL_N: Params = Params {
        window: 2,
        horizon: 128,
        edges: EdgeRules::CLIP,
    };

    /// Validated parameters: window `2..=96`, horizon `128..=16383`.
    pub fn new(window: u32, horizon: u32) -> Result<Self, ParamError> {
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&window) {
            return Err(ParamError::Window(window));
        }
        if !(MIN_HORIZON..=MAX_HORIZON).contains(&horizon) {
            return Err(ParamError::Horizon(horizon));
        }
        Ok(Params {
            window,
            horizon,
            edges: EdgeRules::CLIP,
        })
    }

    /// Parameters outside the MS-RDC ranges, for toy examples such as the
    /// ConfigMgr blog's window 4 / horizon 3. Still refuses values the chunker
    /// cannot run with: a window of 0 or above 96, a horizon of 0 or above 16383.
    pub fn new_unchecked(window: u32, horizon: u32) -> Result<Self, ParamError> {
        if !(1..=MAX_WINDOW).contains(&window) {
            return Err(ParamError::Window(window));
        }
        if !(1..=MAX_HORIZON).contains(&horizon) {
            return Err(ParamError::Horizon(horizon));
        }
        Ok(Params {
            window,
            horizon,
            edges: EdgeRules::CLIP,
        })
    }

    /// The same parameters with other edge rules (default `Clip`/`Clip`).
    pub fn with_edges(mut self, edges: EdgeRules) -> Self {
        self.edges = edges;
        self
    }

    /// Hash window `w` in bytes.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Horizon `h` in positions.
    pub fn horizon(&self) -> u32 {
        self.horizon
    }

    /// Edge rules.
    pub fn edges(&self) -> EdgeRules {
        self.edges
    }

    /// Rotation amount of H3 for this window.
    pub fn shift(&self) -> u32 {
        super::h3::shift_for_window(self.window)
    }

    /// Parameters for signature level `level` (1-based) with the defaults:
    /// [`Params::LEVEL1`] for level 1, [`Params::LEVEL_N`] above.
    pub fn default_for_level(level: u32) -> Self {
        if level <= 1 {
            Params::LEVEL1
        } else {
            Params::LEVEL_N
        }
    }
}

impl EdgeRules {
    /// `Clip`/`Clip`, the default.
    pub const CLIP: EdgeRules = EdgeRules {
        start: StartRule::Clip,
        end: EndRule::Clip,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(Params::new(2, 128).is_ok());
        assert!(Params::new(96, 16383).is_ok());
        assert_eq!(Params::new(1, 128), Err(ParamError::Window(1)));
        assert_eq!(Params::new(97, 128), Err(ParamError::Window(97)));
        assert_eq!(Params::new(48, 127), Err(ParamError::Horizon(127)));
        assert_eq!(Params::new(48, 16384), Err(ParamError::Horizon(16384)));
        assert!(Params::new_unchecked(4, 3).is_ok());
        assert!(Params::new_unchecked(0, 3).is_err());
        assert!(Params::new_unchecked(4, 0).is_err());
        assert_eq!(Params::new(48, 1024).unwrap(), Params::LEVEL1);
    }

    #[test]
    fn decoding_checks_the_ranges() {
        let ok = postcard::to_allocvec(&Params::LEVEL1).unwrap();
        assert_eq!(postcard::from_bytes::<Params>(&ok).unwrap(), Params::LEVEL1);
        for bad in [
            Params::new_unchecked(4, 3).unwrap(),
            Params::new_unchecked(1, 128).unwrap(),
            Params::new_unchecked(48, 127).unwrap(),
        ] {
            let b = postcard::to_allocvec(&bad).unwrap();
            assert!(postcard::from_bytes::<Params>(&b).is_err(), "{bad:?}");
        }
    }
}
