//! What each fuzz target does with its input: feed it to one decoder of
//! bytes from outside (the network, a DP, a peer, a file on disk) and check
//! what comes out. A panic, an overflow or an allocation past the limits is
//! a bug. `cargo fuzz run <target>` runs them (README, "Fuzzing"); the
//! workspace's `tests/tests/decoders.rs` runs the same functions on random
//! inputs and on every saved regression input in `cargo test`.

use ed25519_dalek::{Signer, SigningKey};
use peerdelta_protocol::manifest::{
    self, INDEX_MAGIC, IndexSeen, LEGACY_INDEX_MAGIC, MANIFEST_MAGIC, Manifest, PackageIndex,
};
use peerdelta_protocol::rdc::LevelParams;
use peerdelta_protocol::{
    ContentHash, byteranges, journal, needs, needsfile, sigstore, status, wire,
};

/// The fixed key signed inputs are sealed with, so the decoders behind the
/// signature check get fuzzed too.
fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

/// `magic ‖ len ‖ body ‖ signature`, as the DP seals a document.
fn seal_raw(magic: [u8; 8], body: &[u8]) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let mut signed = magic.to_vec();
    signed.extend_from_slice(body);
    out.extend_from_slice(&key().sign(&signed).to_bytes());
    out
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = data.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

/// Pack frames as a receiver unpacks them (zstd frames, alone or against a
/// span of the base), and whole compressed manifests: never more than the
/// recorded size.
pub fn pack_frame(data: &[u8]) {
    use peerdelta_protocol::needsfile::{Frame, Span};
    let raw_len = (u64_at(data, 0) % (1 << 20)) as u32;
    let ref_len = usize::from(data.get(8).copied().unwrap_or(0)) * 64;
    let reference = data.get(9..9 + ref_len).filter(|r| !r.is_empty());
    let body = data
        .get(9 + ref_len.min(data.len().saturating_sub(9))..)
        .unwrap_or_default();
    let frame = Frame {
        first: 0,
        count: 1,
        offset: 0,
        len: body.len() as u32,
        raw_len,
        reference: reference.map(|r| Span {
            offset: 0,
            len: r.len() as u32,
        }),
    };
    if let Ok(raw) = peerdelta_store::pack::unpack_frame(&frame, body, reference) {
        assert_eq!(raw.len(), raw_len as usize);
    }
    if let Ok(raw) = peerdelta_store::pack::decompress(body, None, 1 << 16) {
        assert!(raw.len() <= 1 << 16);
    }
}

/// Subnet wire messages: what decodes re-encodes to itself.
pub fn wire(data: &[u8]) {
    if let Ok(r) = wire::decode_request(data) {
        let again = wire::decode_request(&wire::encode_request(&r));
        assert_eq!(again.ok().as_ref(), Some(&r), "request round trip");
    }
    if let Ok(r) = wire::decode_response(data) {
        let again = wire::decode_response(&wire::encode_response(&r));
        assert_eq!(again.ok().as_ref(), Some(&r), "response round trip");
    }
}

/// Manifests: the envelope as received, and the body behind a valid
/// signature.
pub fn manifest(data: &[u8]) {
    let vk = key().verifying_key();
    let _ = manifest::open_manifest(data, &vk);
    if let Ok(m) = manifest::open_manifest(&seal_raw(MANIFEST_MAGIC, data), &vk) {
        assert!(m.validate().is_ok());
        let _ = m.total_bytes();
        for (e, _) in m.files() {
            assert!(m.file(&e.path).is_some());
        }
        let sealed = manifest::seal(MANIFEST_MAGIC, &m, &key());
        let back: Manifest = manifest::open_manifest(&sealed, &vk).expect("round trip");
        assert_eq!(back, m);
    }
}

/// Package indexes (both formats) and the freshness rule.
pub fn index(data: &[u8]) {
    let vk = key().verifying_key();
    let _ = manifest::open_index_any(data, &vk);
    for magic in [INDEX_MAGIC, LEGACY_INDEX_MAGIC] {
        if let Ok(i) = manifest::open_index_any(&seal_raw(magic, data), &vk) {
            let seen = IndexSeen {
                generation: u64_at(data, 0),
                latest: u64_at(data, 8),
            };
            let _ = i.check_fresh(Some(seen), u64_at(data, 16));
            let _ = i.check_fresh(None, u64_at(data, 24));
            for e in &i.versions {
                let f = e.manifest_fetch(|v| v % 3 == 0);
                let _ = f.len();
            }
            let _: &PackageIndex = &i;
        }
    }
}

/// Needs files (and the packs they describe).
pub fn needsfile(data: &[u8]) {
    if let Ok(nf) = needsfile::decode(data) {
        assert!(nf.validate().is_ok());
        let placed: Vec<_> = nf.placed().collect();
        let total: u64 = placed.iter().map(|p| u64::from(p.run.len)).sum();
        assert_eq!(total, nf.target_len);
        let _ = nf.origin_runs();
        for g in nf.frame_groups() {
            let _ = nf.reference_for(g);
        }
    }
}

/// Signature containers: header, level ranges, the check against a manifest.
pub fn sigstore(data: &[u8]) {
    if let Ok((h, start)) = sigstore::decode_header(data) {
        for level in 0..=h.depth() + 1 {
            if let Some(r) = h.level_range(start, level) {
                assert!(r.start <= r.end);
            }
        }
        let sig = peerdelta_protocol::manifest::SigRef {
            len: u64_at(data, data.len().saturating_sub(8)),
            depth: h.depth() as u8,
            hash: ContentHash::EMPTY,
        };
        if h.check_against(start, &sig, &LevelParams::default(), h.content_len)
            .is_ok()
        {
            for level in 1..=h.depth() {
                let r = h.level_range(start, level).expect("checked");
                assert!(r.end <= sig.len);
            }
        }
    }
    let _ = sigstore::decode(data);
}

/// A `Range` header against a file of some length: never an answer larger
/// than the file.
pub fn byteranges(data: &[u8]) {
    let len = u64_at(data, 0) % (1 << 40);
    let header = String::from_utf8_lossy(data.get(8..).unwrap_or_default());
    match byteranges::parse_ranges(&header, len) {
        byteranges::Ranges::None | byteranges::Ranges::Unsatisfiable => {}
        byteranges::Ranges::One(a, b) => assert!(a <= b && b < len),
        byteranges::Ranges::Many(r) => {
            assert!(r.len() >= 2);
            assert!(r.windows(2).all(|w| w[0].1 < w[1].0));
            assert!(r.iter().all(|&(a, b)| a <= b && b < len));
            assert!(byteranges::multipart_len(len, &r) <= len);
        }
    }
}

/// A `multipart/byteranges` answer and `Content-Range` values.
pub fn multipart(data: &[u8]) {
    let n = usize::from(data.first().copied().unwrap_or(0) % 32);
    let boundary = String::from_utf8_lossy(data.get(1..1 + n).unwrap_or_default()).into_owned();
    let body = data.get(1 + n..).unwrap_or_default();
    if let Ok(parts) = byteranges::parse_multipart(body, &boundary) {
        let spans: Vec<(u64, u64)> = parts
            .iter()
            .map(|(s, r)| {
                assert!(r.start <= r.end && r.end <= body.len());
                (*s, r.len() as u64)
            })
            .collect();
        let _ = byteranges::find_range(&spans, u64_at(data, 0), u64_at(data, 8));
    }
    let _ = byteranges::parse_content_range(&String::from_utf8_lossy(data));
}

/// Status reports as the DP receives them.
pub fn status(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<status::StatusReport>(data)
        && r.validate().is_ok()
    {
        let _ = r.kind();
        let again: status::StatusReport =
            serde_json::from_slice(&serde_json::to_vec(&r).expect("encode")).expect("round trip");
        assert_eq!(again, r);
    }
}

/// Transfer journals: ranges inside the content, and a valid prefix.
pub fn journal(data: &[u8]) {
    let mut h = [0u8; 32];
    if let Some(s) = data.get(8..40) {
        h.copy_from_slice(s);
    }
    let hash = ContentHash(h);
    if let Some(p) = journal::parse(data, &hash) {
        assert!(p.valid_len as usize <= data.len());
        let mut end = 0;
        for &(o, l) in &p.ranges {
            assert!(l > 0 && o >= end);
            end = o + l;
            assert!(end <= p.content_len);
        }
    }
}

/// RDC signature files as a receiver gets them from a DP (the top level of
/// a recursive transfer, and the levels it rebuilds).
pub fn rdc_levels(data: &[u8]) {
    let _ = peerdelta_protocol::rdc::sigfile::decode(data, 1 << 16);
    static LEVELS: std::sync::OnceLock<needs::SeedLevels> = std::sync::OnceLock::new();
    let levels = LEVELS.get_or_init(|| {
        let seed: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        needs::SeedLevels::compute(&seed, LevelParams::default())
    });
    let depth = 1 + usize::from(data.first().copied().unwrap_or(0)) % 3;
    if let Ok(mut plan) = needs::RecursivePlan::new(
        LevelParams::default(),
        depth,
        data.get(1..).unwrap_or_default(),
        levels,
    ) {
        let _ = plan.needs().len();
        let _ = plan.descend(data, levels);
    }
}
