//! Every decoder of outside bytes, briefly, in `cargo test`: the fuzz
//! targets' own functions (`fuzz/src/lib.rs`, one per decoder) run on the
//! committed seed inputs (`fuzz/seeds/<target>/`), on every input that once
//! crashed a target (`fuzz/regressions/<target>/`, named after what it
//! found), and on random and mutated inputs. `cargo fuzz` runs them for real
//! (README, "Fuzzing").

use std::path::PathBuf;

use proptest::prelude::*;

#[path = "../../fuzz/src/lib.rs"]
mod exercise;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("wire", exercise::wire),
    ("manifest", exercise::manifest),
    ("index", exercise::index),
    ("needsfile", exercise::needsfile),
    ("sigstore", exercise::sigstore),
    ("byteranges", exercise::byteranges),
    ("multipart", exercise::multipart),
    ("status", exercise::status),
    ("journal", exercise::journal),
    ("rdc_levels", exercise::rdc_levels),
    ("pack_frame", exercise::pack_frame),
];

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect()
}

#[test]
fn every_target_has_seeds() {
    for (t, _) in TARGETS {
        assert!(!inputs("seeds", t).is_empty(), "no seeds for {t}");
    }
}

#[test]
fn seeds_and_past_crashes_decode_without_panicking() {
    for (t, f) in TARGETS {
        for kind in ["seeds", "regressions"] {
            for (path, data) in inputs(kind, t) {
                let r = std::panic::catch_unwind(|| f(&data));
                assert!(r.is_ok(), "{t}: {} panicked", path.display());
            }
        }
    }
}

/// A seed with a few bytes changed: random inputs rarely get past a magic
/// number, mutated seeds reach the decoders' inner checks.
fn mutated(seed: &[u8], edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut v = seed.to_vec();
    for &(at, b) in edits {
        if !v.is_empty() {
            let i = at % v.len();
            v[i] ^= b;
        }
    }
    v.truncate(v.len().saturating_sub(cut % 8));
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for (_, f) in TARGETS {
            f(&data);
        }
    }

    #[test]
    fn mutated_seeds_never_panic(
        edits in proptest::collection::vec((any::<usize>(), 1u8..), 1..6),
        cut in any::<usize>(),
    ) {
        for (t, f) in TARGETS {
            for (_, seed) in inputs("seeds", t) {
                f(&mutated(&seed, &edits, cut));
            }
        }
    }
}
