//! Every vector of `spec/rdc-vectors.json`, each named in its failure message.

use md4::{Digest, Md4};
use peerdelta_protocol::hex;
use peerdelta_protocol::needs::{Need, apply_slices, compare};
use peerdelta_protocol::rdc::h3::{H3_TABLE, HashMode, h3_values, shift_for_window};
use peerdelta_protocol::rdc::{
    Chunk, Chunker, EdgeRules, EndRule, LevelParams, ParallelOptions, Params, Signature,
    SignatureBuilder, StartRule, reference, sigfile, sign_parallel, similarity,
};
use serde_json::Value;
use sha2::Sha256;

fn vectors() -> Value {
    let text = include_str!("../../spec/rdc-vectors.json");
    serde_json::from_str(text).expect("rdc-vectors.json parses")
}

fn vector(name: &str) -> Value {
    vectors()["vectors"]
        .as_array()
        .expect("vectors array")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("vector {name} missing"))
        .clone()
}

fn lcg(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = (1_103_515_245 * x + 12_345) % (1 << 31);
            ((x >> 16) & 0xFF) as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(&Sha256::digest(data))
}

fn md4_hex(data: &[u8]) -> String {
    hex::encode(&Md4::digest(data))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// Chunks with the streaming chunker, fed in slices of `slice` bytes.
fn stream_chunks(data: &[u8], params: Params, slice: usize) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut c = Chunker::new(params);
    for piece in data.chunks(slice.max(1)) {
        c.push(piece, &mut |x| out.push(x));
    }
    c.finish(&mut |x| out.push(x));
    out
}

/// All the ways we compute chunks agree; returns them.
fn all_ways(name: &str, data: &[u8], params: Params) -> Vec<Chunk> {
    let whole = stream_chunks(data, params, data.len());
    for slice in [1, 7, 1000, 4096, 65_537] {
        if slice < data.len() && (slice > 1 || data.len() <= 40_000) {
            assert_eq!(
                stream_chunks(data, params, slice),
                whole,
                "{name}: slices of {slice}"
            );
        }
    }
    for piece_len in [1000u64, 5000, 70_000] {
        let mut par = Vec::new();
        let opts = ParallelOptions::new(3).with_piece_len(piece_len);
        sign_parallel(data, params, opts, &mut |c| par.push(*c)).expect("in-memory");
        assert_eq!(par, whole, "{name}: parallel, pieces of {piece_len}");
    }
    whole
}

fn check_chunks(name: &str, got: &[Chunk], want: &Value) {
    let want = want.as_array().expect("chunk list");
    assert_eq!(got.len(), want.len(), "{name}: chunk count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.offset, u(&w[0]), "{name}: chunk {i} offset");
        assert_eq!(u64::from(g.len), u(&w[1]), "{name}: chunk {i} length");
        if let Some(md4) = w.get(2) {
            assert_eq!(hex::encode(&g.md4), s(md4), "{name}: chunk {i} md4");
        }
    }
}

fn rules(key: &str) -> (HashMode, EdgeRules) {
    let mut mode = HashMode::Spec;
    let mut edges = EdgeRules::default();
    for part in key.split(',') {
        match part {
            "hash=spec" => mode = HashMode::Spec,
            "hash=figure7" => mode = HashMode::Figure7,
            "start=clip" => edges.start = StartRule::Clip,
            "start=horizon" => edges.start = StartRule::Horizon,
            "start=prose" => edges.start = StartRule::Prose,
            "end=clip" => edges.end = EndRule::Clip,
            "end=full" => edges.end = EndRule::Full,
            other => panic!("unknown rule {other}"),
        }
    }
    (mode, edges)
}

fn sig_file(chunks: &[Chunk]) -> Vec<u8> {
    sigfile::encode(&chunks.iter().map(Signature::from).collect::<Vec<_>>())
}

#[test]
fn h3_table_and_shifts() {
    let v = vectors();
    let t = &v["h3_table"];
    let bytes: Vec<u8> = H3_TABLE.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(sha256_hex(&bytes), s(&t["sha256"]), "h3_table sha256");
    assert_eq!(md4_hex(&bytes), s(&t["md4"]), "h3_table md4");
    assert_eq!(
        format!("{:08x}", H3_TABLE.iter().fold(0, |a, x| a ^ x)),
        s(&t["xor_of_all_entries"])
    );
    assert_eq!(format!("{:08x}", H3_TABLE[0]), s(&t["first"]));
    assert_eq!(format!("{:08x}", H3_TABLE[255]), s(&t["last"]));
    for (w, want) in v["shift_amount_by_window"]
        .as_object()
        .expect("shift table")
    {
        let w: u32 = w.parse().expect("window");
        assert_eq!(
            u64::from(shift_for_window(w)),
            u(want),
            "shift_amount_by_window {w}"
        );
    }
}

#[test]
fn h3_hello_world() {
    let v = vector("ms-rdc-4.2-h3-hello-world");
    let data = hex::decode_vec(s(&v["data_hex"])).expect("hex");
    let w = u(&v["window"]) as u32;
    assert_eq!(u64::from(shift_for_window(w)), u(&v["shift_amount"]));
    for (mode, key) in [
        (HashMode::Spec, "h3_spec"),
        (HashMode::Figure7, "h3_figure7"),
    ] {
        let got: Vec<String> = h3_values(&data, w, mode)
            .iter()
            .map(|h| format!("{h:08x}"))
            .collect();
        let want: Vec<&str> = v[key].as_array().expect("list").iter().map(s).collect();
        assert_eq!(got, want, "ms-rdc-4.2-h3-hello-world {key}");
    }
}

#[test]
fn spec_sample_4_5() {
    let name = "ms-rdc-4.5-rfc1320";
    let v = vector(name);
    let data = include_bytes!("data/rfc1320-ms-rdc-4.5.txt");
    assert_eq!(
        data.len() as u64,
        u(&v["input_length"]),
        "{name}: input length"
    );
    assert_eq!(
        sha256_hex(data),
        s(&v["input_sha256"]),
        "{name}: input sha256"
    );
    assert_eq!(md4_hex(data), s(&v["input_md4"]), "{name}: input md4");
    let params = Params::new(u(&v["window"]) as u32, u(&v["horizon"]) as u32).expect("valid");
    let got = all_ways(name, data, params);
    let boundaries: Vec<u64> = got.iter().map(|c| c.offset).collect();
    let want_b: Vec<u64> = v["boundaries"]
        .as_array()
        .expect("list")
        .iter()
        .map(u)
        .collect();
    assert_eq!(boundaries, want_b, "{name}: boundaries");
    for (i, (c, w)) in got
        .iter()
        .zip(v["expected_signatures"].as_array().expect("list"))
        .enumerate()
    {
        assert_eq!(u64::from(c.len), u(&w[0]), "{name}: signature {i} length");
        assert_eq!(hex::encode(&c.md4), s(&w[1]), "{name}: signature {i} md4");
    }
    assert_eq!(
        hex::encode(&sig_file(&got)),
        s(&v["expected_signature_file_hex"]),
        "{name}: 132-byte file"
    );
    let sigs: Vec<Signature> = got.iter().map(Signature::from).collect();
    assert_eq!(
        hex::encode(&similarity(&sigs).0),
        s(&v["expected_similarity_hex"]),
        "{name}: traits"
    );
    assert_eq!(
        reference::chunks(data, &params, HashMode::Spec),
        got,
        "{name}: reference"
    );
    let fig7 = reference::chunks(data, &params, HashMode::Figure7);
    assert_eq!(
        fig7.len() as u64,
        u(&v["figure7_mode_chunk_count"]),
        "{name}: figure 7 chunk count"
    );
    // Every edge rule gives the same result on this sample.
    for start in [StartRule::Clip, StartRule::Horizon, StartRule::Prose] {
        for end in [EndRule::Clip, EndRule::Full] {
            let p = params.with_edges(EdgeRules { start, end });
            assert_eq!(
                stream_chunks(data, p, 4096),
                got,
                "{name}: {start:?}/{end:?}"
            );
        }
    }
}

#[test]
fn blog_example() {
    let name = "blog-configmgr-bdr";
    let v = vector(name);
    let w = u(&v["window"]) as u32;
    let h = u(&v["horizon"]) as u32;
    assert!(
        Params::new(w, h).is_err(),
        "{name}: the blog's parameters are out of range"
    );
    let params = Params::new_unchecked(w, h).expect("toy parameters");
    for (label, file) in [("first file", &v), ("second file", &v["second_file"])] {
        let data = match label {
            "first file" => hex::decode_vec(s(&v["data_hex"])).expect("hex"),
            _ => hex::decode_vec(s(&v["blog_reported"]["second_file_hex"])).expect("hex"),
        };
        for (mode, key) in [
            (HashMode::Spec, "h3_spec"),
            (HashMode::Figure7, "h3_figure7"),
        ] {
            let got: Vec<String> = h3_values(&data, w, mode)
                .iter()
                .map(|x| format!("{x:08x}"))
                .collect();
            let want: Vec<&str> = file[key].as_array().expect("list").iter().map(s).collect();
            assert_eq!(got, want, "{name} {label} {key}");
        }
        for (key, want) in file["chunks"].as_object().expect("chunks") {
            let (mode, edges) = rules(key);
            let p = params.with_edges(edges);
            let what = format!("{name} {label} {key}");
            check_chunks(&what, &reference::chunks(&data, &p, mode), want);
            if mode == HashMode::Spec {
                for slice in [1, 3, 10] {
                    check_chunks(
                        &format!("{what} streaming/{slice}"),
                        &stream_chunks(&data, p, slice),
                        want,
                    );
                }
            }
        }
    }
    // What the blog itself reported.
    let data = hex::decode_vec(s(&v["data_hex"])).expect("hex");
    let reported: Vec<String> = h3_values(&data, w, HashMode::Figure7)
        .iter()
        .map(|x| format!("{x:08x}"))
        .collect();
    let want: Vec<&str> = v["blog_reported"]["h3"]
        .as_array()
        .expect("list")
        .iter()
        .map(s)
        .collect();
    assert_eq!(reported, want, "{name}: blog H3 = figure 7");
    check_chunks(
        &format!("{name}: blog chunks"),
        &reference::chunks(&data, &params, HashMode::Figure7),
        &v["blog_reported"]["chunks"],
    );
    let second = hex::decode_vec(s(&v["blog_reported"]["second_file_hex"])).expect("hex");
    assert_eq!(
        md4_hex(&second[..2]),
        s(&v["blog_reported"]["second_file_first_chunk_md4"])
    );
    assert_eq!(
        md4_hex(&second[..2]),
        s(&v["second_file"]["md4_of_bytes_0_2"])
    );
}

fn check_lcg(name: &str) {
    let v = vector(name);
    let data = lcg(u(&v["seed"]), u(&v["size"]) as usize);
    assert_eq!(
        sha256_hex(&data),
        s(&v["data_sha256"]),
        "{name}: data sha256"
    );
    if let Some(first) = v.get("data_first16_hex") {
        assert_eq!(hex::encode(&data[..16]), s(first), "{name}: first 16 bytes");
    }
    let params = Params::new(u(&v["window"]) as u32, u(&v["horizon"]) as u32).expect("valid");
    let got = all_ways(name, &data, params);
    assert_eq!(
        got.len() as u64,
        u(&v["chunk_count"]),
        "{name}: chunk count"
    );
    let first = v["first_chunks"].as_array().expect("list");
    check_chunks(
        &format!("{name} first"),
        &got[..first.len()],
        &v["first_chunks"],
    );
    let last = v["last_chunks"].as_array().expect("list");
    check_chunks(
        &format!("{name} last"),
        &got[got.len() - last.len()..],
        &v["last_chunks"],
    );
    let file = sig_file(&got);
    assert_eq!(
        file.len() as u64,
        u(&v["signature_file_length"]),
        "{name}: file length"
    );
    assert_eq!(
        md4_hex(&file),
        s(&v["md4_of_signature_file"]),
        "{name}: md4 of file"
    );
    assert_eq!(
        md4_hex(&file[24..]),
        s(&v["md4_of_signature_records"]),
        "{name}: md4 of records"
    );
    let boundaries: Vec<u64> = got.iter().map(|c| c.offset).collect();
    let want: Vec<u64> = v["boundaries"]
        .as_array()
        .expect("list")
        .iter()
        .map(u)
        .collect();
    assert_eq!(boundaries, want, "{name}: boundaries");
    assert_eq!(
        reference::chunks(&data, &params, HashMode::Spec),
        got,
        "{name}: reference"
    );
    for (key, e) in v["edge_variants"].as_object().expect("variants") {
        let (_, edges) = rules(key);
        let got = all_ways(&format!("{name} {key}"), &data, params.with_edges(edges));
        assert_eq!(
            got.len() as u64,
            u(&e["chunk_count"]),
            "{name} {key}: count"
        );
        let first = e["first_chunks"].as_array().expect("list");
        check_chunks(
            &format!("{name} {key} first"),
            &got[..first.len()],
            &e["first_chunks"],
        );
        let last = e["last_chunks"].as_array().expect("list");
        check_chunks(
            &format!("{name} {key} last"),
            &got[got.len() - last.len()..],
            &e["last_chunks"],
        );
    }
}

#[test]
fn lcg_1k_default() {
    check_lcg("lcg-1k-default");
}

#[test]
fn lcg_1k_small() {
    check_lcg("lcg-1k-small");
}

#[test]
fn edge_probes() {
    for name in [
        "edge-probe-start-at-h",
        "edge-probe-start-at-h-minus-1",
        "edge-probe-end-at-n-1-h",
        "edge-probe-end-at-n-h",
    ] {
        let v = vector(name);
        let data = lcg(u(&v["seed"]), u(&v["size"]) as usize);
        assert_eq!(
            sha256_hex(&data),
            s(&v["data_sha256"]),
            "{name}: data sha256"
        );
        let params = Params::new(u(&v["window"]) as u32, u(&v["horizon"]) as u32).expect("valid");
        for (key, want) in v["chunks_by_rule"].as_object().expect("rules") {
            let (mode, edges) = rules(key);
            let p = params.with_edges(edges);
            check_chunks(&format!("{name} {key}"), &all_ways(name, &data, p), want);
            check_chunks(
                &format!("{name} {key} reference"),
                &reference::chunks(&data, &p, mode),
                want,
            );
        }
    }
}

#[test]
fn forced_cut() {
    let name = "forced-cut-zeros-then-lcg";
    let v = vector(name);
    let mut data = vec![0u8; 131_072];
    data.extend(lcg(1, 4096));
    assert_eq!(data.len() as u64, u(&v["size"]));
    assert_eq!(
        sha256_hex(&data),
        s(&v["data_sha256"]),
        "{name}: data sha256"
    );
    let params = Params::new(u(&v["window"]) as u32, u(&v["horizon"]) as u32).expect("valid");
    let got = all_ways(name, &data, params);
    check_chunks(name, &got, &v["chunks"]);
    assert_eq!(
        reference::chunks(&data, &params, HashMode::Spec),
        got,
        "{name}: reference"
    );
}

#[test]
fn recursive_levels() {
    let name = "lcg-256k-recursive";
    let v = vector(name);
    let data = lcg(u(&v["seed"]), u(&v["size"]) as usize);
    assert_eq!(
        sha256_hex(&data),
        s(&v["data_sha256"]),
        "{name}: data sha256"
    );
    let params = LevelParams {
        level1: Params::new(u(&v["window"]) as u32, u(&v["horizon"]) as u32).expect("valid"),
        upper: Params::new(u(&v["windowN"]) as u32, u(&v["horizonN"]) as u32).expect("valid"),
    };
    let levels = v["levels"].as_array().expect("levels");
    let mut per_level: Vec<Vec<Chunk>> = vec![Vec::new(); levels.len()];
    for slice in [data.len(), 999] {
        per_level.iter_mut().for_each(Vec::clear);
        let mut b = SignatureBuilder::new(params, levels.len());
        let mut sink = |level: usize, c: &Chunk| per_level[level - 1].push(*c);
        for piece in data.chunks(slice) {
            b.push(piece, &mut sink);
        }
        let files = b.finish(&mut sink);
        let mut input = data.clone();
        for (k, l) in levels.iter().enumerate() {
            let what = format!("{name} level {} (slices of {slice})", k + 1);
            assert_eq!(
                input.len() as u64,
                u(&l["input_length"]),
                "{what}: input length"
            );
            let got = &per_level[k];
            assert_eq!(
                got.len() as u64,
                u(&l["chunk_count"]),
                "{what}: chunk count"
            );
            let shown = l["chunks"].as_array().expect("list").len();
            check_chunks(&what, &got[..shown], &l["chunks"]);
            let file = &files.files[k];
            assert_eq!(
                file.len() as u64,
                u(&l["signature_file_length"]),
                "{what}: file length"
            );
            assert_eq!(
                md4_hex(file),
                s(&l["md4_of_signature_file"]),
                "{what}: file md4"
            );
            // The level is also what chunking the level below from scratch gives.
            let p = params.for_level(k + 1);
            assert_eq!(
                all_ways(&what, &input, p),
                *got,
                "{what}: independent chunking"
            );
            input = file.clone();
        }
    }
}

#[test]
fn needs_insert_delete() {
    let name = "needs-insert-delete";
    let v = vector(name);
    let seed = lcg(21, 65_536);
    let mut source = seed[..10_000].to_vec();
    source.extend(b"INSERTED".repeat(50));
    source.extend_from_slice(&seed[10_000..40_000]);
    source.extend_from_slice(&seed[45_000..]);
    assert_eq!(sha256_hex(&seed), s(&v["seed_sha256"]), "{name}: seed");
    assert_eq!(
        sha256_hex(&source),
        s(&v["source_sha256"]),
        "{name}: source"
    );
    let params = Params::new(u(&v["window"]) as u32, u(&v["horizon"]) as u32).expect("valid");
    let sigs = |d: &[u8]| -> Vec<Signature> {
        stream_chunks(d, params, 4096)
            .iter()
            .map(Signature::from)
            .collect()
    };
    let needs = compare(&sigs(&source), &sigs(&seed));
    let want: Vec<Need> = v["needs"]
        .as_array()
        .expect("needs")
        .iter()
        .map(|n| match s(&n[0]) {
            "seed" => Need::Seed {
                offset: u(&n[1]),
                len: u(&n[2]),
            },
            "source" => Need::Source {
                offset: u(&n[1]),
                len: u(&n[2]),
            },
            other => panic!("{name}: kind {other}"),
        })
        .collect();
    assert_eq!(needs, want, "{name}: needs");
    let from_source: u64 = needs
        .iter()
        .filter(|n| matches!(n, Need::Source { .. }))
        .map(Need::len)
        .sum();
    assert_eq!(
        from_source,
        u(&v["source_bytes_needed"]),
        "{name}: source bytes"
    );
    assert_eq!(
        apply_slices(&needs, &seed, &source).expect("in range"),
        source,
        "{name}: rebuild"
    );
}
