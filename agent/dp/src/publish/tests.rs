//! Tests of the publish steps.

use std::fs::{self, File};
use std::io::Read;

use peerdelta_protocol::manifest::PiecesRef;
use peerdelta_protocol::rdc::LevelParams;
use peerdelta_protocol::{ContentHash, layout, needsfile};

use super::known::pieces_hashes;
use super::needs::PieceReader;
use super::scan::{Stamp, hash_file, unchanged};
use super::store::{copy_signing, write_pieces};
use super::*;
use crate::library::Staging;

#[test]
fn a_file_hashes_to_its_content_or_is_reported_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    // Two parallel leaves and a bit.
    let data: Vec<u8> = (0..(17u32 << 20)).map(|i| (i % 251) as u8).collect();
    fs::write(&path, &data).unwrap();
    let len = data.len() as u64;
    for threads in [1, 2] {
        assert_eq!(
            hash_file(&path, len, threads).unwrap(),
            ContentHash::of(&data)
        );
        // Scanned at another size: it changed since.
        for scanned in [len - 1, len + 1] {
            let e = hash_file(&path, scanned, threads).unwrap_err().to_string();
            assert!(e.contains("changed while it was being published"), "{e}");
        }
    }
}

#[test]
fn a_file_written_to_since_its_stamp_is_changed_and_a_read_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    fs::write(&path, b"some bytes").unwrap();
    // An old modification time, so that any write moves it whatever
    // the clock's granularity.
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let mut file = File::open(&path).unwrap();
    let before = Stamp::now(&file, &path).unwrap();
    let mut read = Vec::new();
    file.read_to_end(&mut read).unwrap();
    unchanged(&file, &path, 10, Some(before)).unwrap();
    // Another size than scanned.
    let e = unchanged(&file, &path, 11, None).unwrap_err().to_string();
    assert!(e.contains("(11 bytes, then 10)"), "{e}");
    // The same bytes written again.
    fs::write(&path, b"some bytes").unwrap();
    let e = unchanged(&file, &path, 10, Some(before))
        .unwrap_err()
        .to_string();
    assert!(e.contains("changed while it was being published"), "{e}");
    unchanged(&file, &path, 10, None).unwrap();
}

#[test]
fn a_copy_hashes_and_signs_what_it_wrote_or_reports_a_changed_source() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("source");
    let data: Vec<u8> = (0..(5u32 << 20) + 7).map(|i| (i / 3 % 241) as u8).collect();
    fs::write(&src, &data).unwrap();
    let len = data.len() as u64;
    let params = LevelParams::default();
    let tmp = dir.path().join("copy");
    let copy = copy_signing(&mut File::open(&src).unwrap(), &src, &tmp, len, params, 2).unwrap();
    assert_eq!((copy.len, copy.digest), (len, ContentHash::of(&data)));
    let runs: Vec<ContentHash> = data
        .chunks(needsfile::MAX_RUN as usize)
        .map(ContentHash::of)
        .collect();
    assert_eq!(copy.runs, runs);
    assert_eq!(fs::read(&tmp).unwrap(), data);
    let signed = peerdelta_store::signing::signature_levels(&data[..], params, 1).unwrap();
    assert_eq!(copy.files.files, signed.files);
    // Scanned longer (it shrank since) or shorter (it grew).
    for (size, what) in [(len + 1, "changed while"), (len - 1, "grew while")] {
        let e = copy_signing(&mut File::open(&src).unwrap(), &src, &tmp, size, params, 2)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains(what), "{size}: {e}");
    }
}

#[test]
fn pieces_hashes_come_only_from_the_pieces_file_the_manifests_name() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Library::at(&dir.path().join("lib"), None);
    fs::create_dir_all(dir.path().join("lib")).unwrap();
    fs::create_dir_all(lib.tmp_dir()).unwrap();
    let data: Vec<u8> = (0..(5u32 << 19) + 3).map(|i| (i % 249) as u8).collect();
    let (hash, size) = (ContentHash::of(&data), data.len() as u64);
    let staging = Staging::new(&lib);
    let known = write_pieces(&staging, &hash, size, &data[..], &[], 0, 1)
        .unwrap()
        .unwrap();
    staging.commit().unwrap();
    let runs: Vec<ContentHash> = data
        .chunks(needsfile::MAX_RUN as usize)
        .map(ContentHash::of)
        .collect();
    assert_eq!(pieces_hashes(&lib, &hash, size, Some(&known)), runs);
    // Another file than the manifests name, none named, or none there:
    // nothing is reused (the needs lists hash their runs).
    let other = PiecesRef {
        file_hash: ContentHash::of(b"another pieces file"),
        ..known
    };
    assert!(pieces_hashes(&lib, &hash, size, Some(&other)).is_empty());
    assert!(pieces_hashes(&lib, &hash, size, None).is_empty());
    fs::remove_file(lib.path(&layout::needs(&ContentHash::EMPTY, &hash))).unwrap();
    assert!(pieces_hashes(&lib, &hash, size, Some(&known)).is_empty());
}

#[test]
fn pieces_come_from_the_source_only_where_it_still_hashes_as_copied() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Library::at(&dir.path().join("lib"), None);
    let run = needsfile::MAX_RUN as usize;
    let copied: Vec<u8> = (0..2 * run).map(|i| (i % 253) as u8).collect();
    let hash = ContentHash::of(&copied);
    let path = lib.path(&layout::content(&hash));
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    // The library holds other bytes than the source in the first piece
    // (only so that the test sees which one was read), and the source
    // changed in the second.
    let mut library = copied.clone();
    library[0] ^= 1;
    fs::write(&path, &library).unwrap();
    let mut source = copied.clone();
    source[run + 5] ^= 1;
    let src_path = dir.path().join("source");
    fs::write(&src_path, &source).unwrap();
    let first = Some(ContentHash::of(&copied[..run]));
    let second = Some(ContentHash::of(&copied[run..]));

    let mut reader = PieceReader::new(&lib, &hash, Some(&src_path)).unwrap();
    assert_eq!(reader.read(0, run as u64, first).unwrap(), &source[..run]);
    assert_eq!(
        reader.read(run as u64, run as u64, second).unwrap(),
        &library[run..]
    );
    // No hash to check the source against, or no source: the library.
    assert_eq!(reader.read(0, run as u64, None).unwrap(), &library[..run]);
    let mut reader = PieceReader::new(&lib, &hash, None).unwrap();
    assert_eq!(reader.read(0, run as u64, first).unwrap(), &library[..run]);
    // A source gone since: the library.
    fs::remove_file(&src_path).unwrap();
    let mut reader = PieceReader::new(&lib, &hash, Some(&src_path)).unwrap();
    assert_eq!(reader.read(0, run as u64, first).unwrap(), &library[..run]);
}
