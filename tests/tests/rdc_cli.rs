//! `peerdelta rdc …` as a user runs it: outputs, round trips and exit codes.

use std::fs;

use peerdelta_protocol::rdc::{self, LevelParams, Params};
use peerdelta_tests::{peerdelta, random_bytes, run_code, run_ok};

fn edited(old: &[u8]) -> Vec<u8> {
    let mut new = old[..300_000].to_vec();
    new.extend_from_slice(&random_bytes(99, 5000));
    new.extend_from_slice(&old[300_000..1_200_000]);
    new.extend_from_slice(&old[1_250_000..]);
    new.extend_from_slice(&old[10_000..60_000]); // a moved copy
    new
}

#[test]
fn sig_prints_the_chunks_of_each_level() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(1, 3_000_000);
    let file = dir.path().join("f.bin");
    fs::write(&file, &data).unwrap();
    let want = rdc::chunks(&data, Params::LEVEL1);
    for threads in ["1", "2", "5"] {
        let out = run_ok(
            peerdelta(["rdc", "sig"])
                .arg(&file)
                .args(["--threads", threads]),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), want.len(), "threads {threads}");
        for (line, c) in lines.iter().zip(&want) {
            assert_eq!(
                *line,
                format!(
                    "{} {} {}",
                    c.offset,
                    c.len,
                    peerdelta_protocol::hex::encode(&c.md4)
                )
            );
        }
    }
    // Level 2 chunks level 1's signature file.
    let files = rdc::signature_files(&data, LevelParams::default());
    let level1 = &files.files[0];
    let want2 = rdc::chunks(level1, Params::LEVEL_N);
    let out = run_ok(peerdelta(["rdc", "sig", "--level", "2"]).arg(&file));
    assert_eq!(out.lines().count(), want2.len());
    let first = format!(
        "{} {} {}",
        want2[0].offset,
        want2[0].len,
        peerdelta_protocol::hex::encode(&want2[0].md4)
    );
    assert_eq!(out.lines().next(), Some(first.as_str()));
}

#[test]
fn sigfile_writes_every_level() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(2, 6_000_000);
    let file = dir.path().join("big.bin");
    fs::write(&file, &data).unwrap();
    let prefix = dir.path().join("big.sig");
    run_ok(
        peerdelta(["rdc", "sigfile"])
            .arg(&file)
            .arg("-o")
            .arg(&prefix),
    );
    let want = rdc::signature_files(&data, LevelParams::default());
    assert!(want.depth() >= 2, "a 6 MB file has two levels");
    for (k, bytes) in want.files.iter().enumerate() {
        let got = fs::read(format!("{}.{}", prefix.display(), k + 1)).unwrap();
        assert_eq!(&got, bytes, "level {}", k + 1);
    }
    assert!(
        !dir.path()
            .join(format!("big.sig.{}", want.depth() + 1))
            .exists()
    );
    run_ok(
        peerdelta(["rdc", "sigfile"])
            .arg(&file)
            .arg("-o")
            .arg(&prefix)
            .args(["--levels", "4"]),
    );
    assert!(dir.path().join("big.sig.4").exists());
}

#[test]
fn needs_then_apply_rebuilds_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let old = random_bytes(3, 6_000_000);
    let new = edited(&old);
    let (seed, source) = (dir.path().join("old"), dir.path().join("new"));
    fs::write(&seed, &old).unwrap();
    fs::write(&source, &new).unwrap();
    let text = run_ok(
        peerdelta(["rdc", "needs", "--seed"])
            .arg(&seed)
            .arg("--source")
            .arg(&source),
    );
    let needs_txt = dir.path().join("needs.txt");
    fs::write(&needs_txt, &text).unwrap();
    let out = dir.path().join("rebuilt");
    run_ok(
        peerdelta(["rdc", "apply", "--seed"])
            .arg(&seed)
            .arg("--source")
            .arg(&source)
            .arg("--needs")
            .arg(&needs_txt)
            .arg("-o")
            .arg(&out),
    );
    assert_eq!(fs::read(&out).unwrap(), new);

    // JSON: same needs, and the summary adds up.
    let json = run_ok(
        peerdelta(["rdc", "needs", "--json", "--seed"])
            .arg(&seed)
            .arg("--source")
            .arg(&source),
    );
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["type"], "needs");
    let from_source = doc["from_source_bytes"].as_u64().unwrap();
    assert!(
        from_source > 5000 && from_source < 40_000,
        "source bytes {from_source}"
    );
    assert_eq!(
        doc["from_seed_bytes"].as_u64().unwrap() + from_source,
        new.len() as u64
    );
    let levels = doc["signature_levels"].as_array().unwrap();
    assert!(levels.len() >= 2, "{levels:?}");
    let json_path = dir.path().join("needs.json");
    fs::write(&json_path, &json).unwrap();
    let out2 = dir.path().join("rebuilt2");
    run_ok(
        peerdelta(["rdc", "apply", "--seed"])
            .arg(&seed)
            .arg("--source")
            .arg(&source)
            .arg("--needs")
            .arg(&json_path)
            .arg("-o")
            .arg(&out2),
    );
    assert_eq!(fs::read(&out2).unwrap(), new);
}

#[test]
fn exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    fs::write(&file, random_bytes(4, 10_000)).unwrap();
    let missing = dir.path().join("missing");
    // 1: a missing or unreadable file, with a one-line error naming it.
    let out = run_code(peerdelta(["rdc", "sig"]).arg(&missing), 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("missing"), "{err}");
    run_code(
        peerdelta(["rdc", "needs", "--seed"])
            .arg(&missing)
            .arg("--source")
            .arg(&file),
        1,
    );
    run_code(peerdelta(["rdc", "sig"]).arg(dir.path()), 1);
    // 2: bad parameters or usage.
    for bad in [
        ["--window", "1"],
        ["--window", "97"],
        ["--horizon", "127"],
        ["--horizon", "16384"],
    ] {
        let out = run_code(peerdelta(["rdc", "sig"]).arg(&file).args(bad), 2);
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
    run_code(
        peerdelta(["rdc", "sig"]).arg(&file).args(["--level", "9"]),
        2,
    );
    run_code(&mut peerdelta(["rdc", "sig"]), 2);
    run_code(&mut peerdelta(["rdc", "frobnicate"]), 2);
    // A needs list that reads past the end of its input fails cleanly (1) and
    // leaves no output file behind.
    let needs = dir.path().join("bad.txt");
    fs::write(&needs, "seed 0 5000\nsource 9000 5000\n").unwrap();
    let out_file = dir.path().join("out");
    let out = run_code(
        peerdelta(["rdc", "apply", "--seed"])
            .arg(&file)
            .arg("--source")
            .arg(&file)
            .arg("--needs")
            .arg(&needs)
            .arg("-o")
            .arg(&out_file),
        1,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("reads 5000 bytes at 9000"));
    assert!(!out_file.exists());
    fs::write(&needs, "seed zero 5000\n").unwrap();
    run_code(
        peerdelta(["rdc", "apply", "--seed"])
            .arg(&file)
            .arg("--source")
            .arg(&file)
            .arg("--needs")
            .arg(&needs)
            .arg("-o")
            .arg(&out_file),
        1,
    );
    // Toy parameters are accepted only when asked for.
    run_ok(
        peerdelta([
            "rdc",
            "sig",
            "--unchecked",
            "--window",
            "4",
            "--horizon",
            "3",
        ])
        .arg(&file),
    );
}

#[test]
fn empty_and_tiny_files() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    fs::write(&empty, b"").unwrap();
    assert_eq!(run_ok(peerdelta(["rdc", "sig"]).arg(&empty)), "");
    let tiny = dir.path().join("tiny");
    fs::write(&tiny, b"abc").unwrap();
    let out = run_ok(peerdelta(["rdc", "sig"]).arg(&tiny));
    let want: Vec<String> = rdc::chunks(b"abc", Params::LEVEL1)
        .iter()
        .map(|c| {
            format!(
                "{} {} {}",
                c.offset,
                c.len,
                peerdelta_protocol::hex::encode(&c.md4)
            )
        })
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
    // Under clip/clip a 3-byte file is cut at its strict maximum (spec §2.2).
    assert_eq!(want.len(), 2);
    let text = run_ok(
        peerdelta(["rdc", "needs", "--seed"])
            .arg(&empty)
            .arg("--source")
            .arg(&tiny),
    );
    assert!(text.contains("source 0 3"), "{text}");
}
