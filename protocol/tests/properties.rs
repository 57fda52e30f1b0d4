//! Property tests of the RDC core: the streaming and parallel chunkers equal the
//! literal rule whatever the slicing, and needs lists always rebuild the source.

use peerdelta_protocol::needs::{Need, apply_slices, compare, recursive_local, summarize};
use peerdelta_protocol::rdc::h3::HashMode;
use peerdelta_protocol::rdc::{
    Chunk, Chunker, EdgeRules, EndRule, LevelParams, ParallelOptions, Params, Signature, StartRule,
    chunks, reference, sigfile, sign_parallel,
};
use proptest::prelude::*;

/// Data with structure: random bytes, runs of one byte, and a small alphabet,
/// so that equal hashes (ties) and long maxima-free stretches both occur.
fn data(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2000),
        (any::<u8>(), 0usize..3000).prop_map(|(b, n)| vec![b; n]),
        prop::collection::vec(0u8..3, 0..2000),
    ];
    prop::collection::vec(piece, 0..6).prop_map(move |ps| {
        let mut v: Vec<u8> = ps.concat();
        v.truncate(max_len);
        v
    })
}

fn edges() -> impl Strategy<Value = EdgeRules> {
    (
        prop_oneof![
            Just(StartRule::Clip),
            Just(StartRule::Horizon),
            Just(StartRule::Prose)
        ],
        prop_oneof![Just(EndRule::Clip), Just(EndRule::Full)],
    )
        .prop_map(|(start, end)| EdgeRules { start, end })
}

/// The chunks of `data` pushed in slices of the given sizes (cycled), with
/// the AVX-512 kernel where the CPU has it, or the portable one.
fn stream(data: &[u8], params: Params, slices: &[usize], portable: bool) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut c = if portable {
        Chunker::portable(params)
    } else {
        Chunker::new(params)
    };
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = slices
            .get(i % slices.len().max(1))
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        c.push(&rest[..n], &mut |x| out.push(x));
        rest = &rest[n..];
        i += 1;
    }
    c.finish(&mut |x| out.push(x));
    out
}

fn sigs(data: &[u8], params: Params) -> Vec<Signature> {
    chunks(data, params).iter().map(Signature::from).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The streaming chunker equals the literal rule for any parameters, edge
    /// rules and slicing.
    #[test]
    fn streaming_equals_reference(
        data in data(12_000),
        window in 1u32..=96,
        horizon in 1u32..=400,
        edges in edges(),
        slices in prop::collection::vec(1usize..5000, 1..8),
    ) {
        let params = Params::new_unchecked(window, horizon).unwrap().with_edges(edges);
        let want = reference::chunks(&data, &params, HashMode::Spec);
        prop_assert_eq!(stream(&data, params, &slices, false), want.clone());
        prop_assert_eq!(stream(&data, params, &slices, true), want.clone());
        prop_assert_eq!(stream(&data, params, &[data.len().max(1)], false), want);
    }

    /// Parallel signing equals sequential signing for any piece length.
    #[test]
    fn parallel_equals_sequential(
        data in data(30_000),
        window in 2u32..=96,
        horizon in 1u32..=600,
        piece in 1u64..8000,
        threads in 1usize..5,
    ) {
        let params = Params::new_unchecked(window, horizon).unwrap();
        let want = stream(&data, params, &[data.len().max(1)], false);
        let mut got = Vec::new();
        sign_parallel(&data[..], params, ParallelOptions::new(threads).with_piece_len(piece), &mut |c| got.push(*c)).unwrap();
        prop_assert_eq!(got, want);
    }

    /// Parallel signing equals sequential signing on data with long runs of
    /// one byte value, which pieces inside them skip.
    #[test]
    fn parallel_equals_sequential_across_constant_runs(
        runs in prop::collection::vec(
            prop_oneof![
                (any::<u8>(), 1usize..20_000).prop_map(|(b, n)| vec![b; n]),
                prop::collection::vec(any::<u8>(), 1..1500),
            ],
            1..8,
        ),
        window in 2u32..=96,
        horizon in 1u32..=600,
        piece in 500u64..6000,
    ) {
        let data = runs.concat();
        let params = Params::new_unchecked(window, horizon).unwrap();
        let want = stream(&data, params, &[data.len().max(1)], false);
        let mut got = Vec::new();
        sign_parallel(&data[..], params, ParallelOptions::new(3).with_piece_len(piece), &mut |c| got.push(*c)).unwrap();
        prop_assert_eq!(got, want);
    }

    /// Decoding arbitrary bytes as a signature file never panics, and a
    /// successful decode round-trips.
    #[test]
    fn sigfile_decode_is_total(bytes in prop::collection::vec(any::<u8>(), 0..200), header in any::<bool>()) {
        let mut input = if header { sigfile::HEADER.to_vec() } else { Vec::new() };
        input.extend(bytes);
        if let Ok(sigs) = sigfile::decode(&input, 1 << 20) {
            prop_assert_eq!(sigfile::encode(&sigs), input);
        }
    }
}

proptest! {
    // Inputs of about a megabyte: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Passing over long runs of one value gives the chunks that hashing
    /// every byte gives, however the input is sliced or split into pieces,
    /// with either kernel, with any edge rules, and finding boundaries only.
    #[test]
    fn skipping_runs_changes_no_chunk(
        runs in prop::collection::vec(
            prop_oneof![
                (prop_oneof![Just(0u8), any::<u8>()], 60_000usize..300_000).prop_map(|(b, n)| vec![b; n]),
                prop::collection::vec(any::<u8>(), 1..3000),
            ],
            1..5,
        ),
        window in 2u32..=96,
        horizon in 1u32..=2000,
        edges in edges(),
        slice in prop_oneof![Just(usize::MAX), 1000usize..200_000],
        piece in 50_000u64..400_000,
        portable in any::<bool>(),
    ) {
        let longest_run = runs.iter().filter(|r| r.len() >= 60_000).map(Vec::len).max().unwrap_or(0);
        let data = runs.concat();
        let params = Params::new_unchecked(window, horizon).unwrap().with_edges(edges);
        let mut want = Vec::new();
        let mut c = Chunker::hashing_every_byte(params);
        c.push(&data, &mut |x| want.push(x));
        prop_assert_eq!(c.skipped_bytes(), 0);
        c.finish(&mut |x| want.push(x));
        prop_assert_eq!(&stream(&data, params, &[slice.min(data.len()).max(1)], portable), &want);
        // The skip happens: a run this long holds whole chunks past warming up.
        let mut c = Chunker::new(params);
        c.push(&data, &mut |_| {});
        if longest_run >= 200_000 {
            prop_assert!(c.skipped_bytes() > 0, "nothing skipped in a run of {longest_run}");
        }
        let mut bounds = Vec::new();
        let mut c = Chunker::boundaries_only(params);
        c.push(&data, &mut |x| bounds.push((x.offset, x.len)));
        c.finish(&mut |x| bounds.push((x.offset, x.len)));
        prop_assert_eq!(bounds, want.iter().map(|x| (x.offset, x.len)).collect::<Vec<_>>());
        if edges == EdgeRules::default() {
            let mut got = Vec::new();
            sign_parallel(&data[..], params, ParallelOptions::new(2).with_piece_len(piece), &mut |c| got.push(*c)).unwrap();
            prop_assert_eq!(got, want);
        }
    }
}

/// An edit applied to an old file to make a new one.
#[derive(Debug, Clone)]
enum Edit {
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Replace { at: usize, bytes: Vec<u8> },
    Move { from: usize, len: usize, to: usize },
    Append(Vec<u8>),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..3000))
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (any::<usize>(), 1usize..5000).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..500))
            .prop_map(|(at, bytes)| Edit::Replace { at, bytes }),
        (any::<usize>(), 1usize..8000, any::<usize>()).prop_map(|(from, len, to)| Edit::Move {
            from,
            len,
            to
        }),
        prop::collection::vec(any::<u8>(), 1..4000).prop_map(Edit::Append),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply_edit(v: &mut Vec<u8>, e: &Edit) {
    let n = v.len();
    match e {
        Edit::Insert { at, bytes } => {
            let at = at % (n + 1);
            v.splice(at..at, bytes.iter().copied());
        }
        Edit::Delete { at, len } if n > 0 => {
            let at = at % n;
            let end = (at + len).min(n);
            v.drain(at..end);
        }
        Edit::Replace { at, bytes } if n > 0 => {
            let at = at % n;
            for (i, b) in bytes.iter().enumerate() {
                if let Some(x) = v.get_mut(at + i) {
                    *x = *b;
                }
            }
        }
        Edit::Move { from, len, to } if n > 0 => {
            let from = from % n;
            let end = (from + len).min(n);
            let block: Vec<u8> = v.drain(from..end).collect();
            let to = to % (v.len() + 1);
            v.splice(to..to, block);
        }
        Edit::Append(bytes) => v.extend_from_slice(bytes),
        Edit::Truncate(at) => v.truncate(at % (n + 1)),
        _ => {}
    }
}

fn old_file() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..60_000),
        1 => (0usize..40_000).prop_map(|n| vec![0u8; n]),
        1 => prop::collection::vec(any::<u8>(), 0..50),
        1 => data(60_000),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]

    /// Whatever the edits, the needs list rebuilds the new file exactly, takes
    /// only whole chunks, and never asks the source for more than the file.
    #[test]
    fn needs_rebuild_exactly(old in old_file(), edits in prop::collection::vec(edit(), 0..6), small in any::<bool>()) {
        let mut new = old.clone();
        for e in &edits {
            apply_edit(&mut new, e);
        }
        let params = if small { Params::LEVEL_N } else { Params::new(48, 128).unwrap() };
        let needs = compare(&sigs(&new, params), &sigs(&old, params));
        let rebuilt = apply_slices(&needs, &old, &new).unwrap();
        prop_assert_eq!(&rebuilt, &new);
        let sum = summarize(&needs);
        prop_assert_eq!(sum.target_bytes, new.len() as u64);
        prop_assert!(sum.source_bytes <= new.len() as u64);
        // Merged: no two neighbours of the same kind are contiguous.
        for pair in needs.windows(2) {
            let contiguous = match (pair[0], pair[1]) {
                (Need::Seed { offset: a, len }, Need::Seed { offset: b, .. }) => a + len == b,
                (Need::Source { offset: a, len }, Need::Source { offset: b, .. }) => a + len == b,
                _ => false,
            };
            prop_assert!(!contiguous, "unmerged needs {:?}", pair);
        }
        if edits.is_empty() {
            prop_assert_eq!(sum.source_bytes, 0);
        }
    }

    /// The recursive transfer rebuilds every level and the file exactly.
    #[test]
    fn recursive_rebuilds_exactly(old in old_file(), edits in prop::collection::vec(edit(), 0..4)) {
        let mut new = old.clone();
        for e in &edits {
            apply_edit(&mut new, e);
        }
        let params = LevelParams { level1: Params::new(48, 128).unwrap(), upper: Params::LEVEL_N };
        let outcome = recursive_local(&new, &old, params).unwrap();
        prop_assert_eq!(apply_slices(&outcome.needs, &old, &new).unwrap(), new);
    }
}

#[test]
fn recursive_on_a_large_file_transfers_little() {
    // 8 MiB so that there are two levels; one small edit in the middle.
    let mut x: u32 = 7;
    let old: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();
    let mut new = old.clone();
    new.splice(
        4_000_000..4_000_010,
        b"a small edit in the middle".iter().copied(),
    );
    let out = recursive_local(&new, &old, LevelParams::default()).unwrap();
    assert_eq!(apply_slices(&out.needs, &old, &new).unwrap(), new);
    assert!(out.levels.len() >= 2, "levels {:?}", out.levels);
    let data = summarize(&out.needs).source_bytes;
    assert!(data < 20_000, "file bytes transferred: {data}");
    // Only the top level is sent whole; the levels below send a few chunks.
    for l in &out.levels[1..] {
        assert!(l.transferred_bytes < l.file_bytes / 4, "{l:?}");
    }
}
