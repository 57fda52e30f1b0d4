//! HTTP byte ranges (RFC 9110 §14), both sides: how a DP answers a `Range`
//! header (parsing, and the rule that keeps a multi-range request from
//! costing more than the file), and how a receiver reads the answer
//! (`Content-Range`, `multipart/byteranges`), whatever a server merged.
//!
//! # The server's rule
//!
//! A request for `bytes=0-,0-,…` once made the DP send the file once per
//! range (the Apache CVE-2011-3192 pattern): 256 ranges of a 4 MiB content
//! sent 1 GB. Now, before anything is sent:
//!
//! - more than [`MAX_RANGES`] ranges is answered 416 (agents send at most
//!   [`MAX_RANGES_PER_REQUEST`] per request, so the limit costs no honest
//!   client);
//! - the ranges are sorted and merged where they overlap, touch, or are
//!   separated by less than one part's framing ([`COALESCE_GAP`]), as RFC 9110
//!   §14.2 allows;
//! - if what is left would take more bytes as `multipart/byteranges` than
//!   the one span from its first to its last byte, that span is sent as a
//!   single `206` instead.
//!
//! So a response body is never larger than the file plus the framing of the
//! parts actually sent, and parts never repeat a byte.
//!
//! # The client's side
//!
//! A client finds each range it asked for inside whatever parts come back
//! ([`parse_multipart`], [`find_range`]), as the RFC requires of it: a
//! server may merge ranges, answer one part, or ignore `Range`.

/// Most ranges in one request; more is answered 416.
pub const MAX_RANGES: usize = 1024;

pub use crate::fetchplan::MAX_RANGES_PER_REQUEST;

// Far above what an agent sends.
const _: () = assert!(MAX_RANGES_PER_REQUEST * 8 <= MAX_RANGES);

/// Ranges separated by fewer bytes than this are merged into one part: a
/// part's header costs about as much (boundary, type, `Content-Range`).
pub const COALESCE_GAP: u64 = 80;

/// How a request's `Range` header is answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Ranges {
    /// No usable `Range` header: the whole file, `200`.
    None,
    /// No range overlaps the file, or too many ranges: `416`.
    Unsatisfiable,
    /// One range `(first, last)` inclusive: a plain `206`.
    One(u64, u64),
    /// Two or more disjoint ranges, ascending, inclusive:
    /// `206 multipart/byteranges`.
    Many(Vec<(u64, u64)>),
}

/// Parses a `Range: bytes=…` header for a file of `len` bytes and applies
/// the merging rule of the module doc. A malformed header is ignored (the
/// whole file is sent), as RFC 9110 §14.2 allows.
pub fn parse_ranges(v: &str, len: u64) -> Ranges {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ranges::None;
    };
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (count, part) in spec.split(',').enumerate() {
        if count >= MAX_RANGES {
            return Ranges::Unsatisfiable;
        }
        let Some((a, b)) = part.trim().split_once('-') else {
            return Ranges::None;
        };
        let range = match (a.trim(), b.trim()) {
            ("", "") => return Ranges::None,
            ("", n) => match n.parse::<u64>() {
                Ok(n) if n > 0 && len > 0 => Some((len.saturating_sub(n), len - 1)),
                Ok(_) => None,
                Err(_) => return Ranges::None,
            },
            (a, "") => match a.parse::<u64>() {
                Ok(a) if a < len => Some((a, len - 1)),
                Ok(_) => None,
                Err(_) => return Ranges::None,
            },
            (a, b) => match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(a), Ok(b)) if a > b => return Ranges::None,
                (Ok(a), Ok(b)) if a < len => Some((a, b.min(len - 1))),
                (Ok(_), Ok(_)) => None,
                _ => return Ranges::None,
            },
        };
        out.extend(range);
    }
    let merged = merge(out);
    match merged.as_slice() {
        [] => Ranges::Unsatisfiable,
        [(a, b)] => Ranges::One(*a, *b),
        [(first, _), .., (_, last)] => {
            let span = last - first + 1;
            if multipart_len(len, &merged) > span {
                Ranges::One(*first, *last)
            } else {
                Ranges::Many(merged)
            }
        }
    }
}

/// Sorts inclusive ranges and merges those that overlap, touch, or are
/// closer than [`COALESCE_GAP`].
fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(COALESCE_GAP + 1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// The boundary of a multipart answer: any string the parts cannot contain
/// would do; this one is fixed per file length and ranges, so a HEAD and a
/// GET agree on the length.
pub fn boundary(len: u64, ranges: &[(u64, u64)]) -> String {
    let first = ranges.first().map_or(0, |r| r.0);
    format!(
        "peerdelta-{:016x}",
        len ^ (ranges.len() as u64) ^ first.rotate_left(17)
    )
}

/// The header of one part, with its leading CRLF.
pub fn part_head(boundary: &str, a: u64, b: u64, len: u64) -> String {
    format!(
        "\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {a}-{b}/{len}\r\n\r\n"
    )
}

/// The closing delimiter.
pub fn tail(boundary: &str) -> String {
    format!("\r\n--{boundary}--\r\n")
}

/// Bytes of the `multipart/byteranges` body for these ranges of a file of
/// `len` bytes.
pub fn multipart_len(len: u64, ranges: &[(u64, u64)]) -> u64 {
    let boundary = boundary(len, ranges);
    ranges
        .iter()
        .map(|&(a, b)| part_head(&boundary, a, b, len).len() as u64 + (b - a + 1))
        .sum::<u64>()
        + tail(&boundary).len() as u64
}

/// `bytes A-B/LEN` (a `Content-Range` value) → `(A, B, LEN)`, `LEN` being
/// `None` for `*`.
pub fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (ab, len) = rest.split_once('/')?;
    let (a, b) = ab.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    if b < a {
        return None;
    }
    Some((a, b, len.trim().parse().ok()))
}

/// Why a `multipart/byteranges` body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("multipart answer: {0}")]
pub struct MultipartError(pub &'static str);

/// Most parts read from one answer (a server merging ranges sends fewer
/// than were asked; one sending far more is refused).
pub const MAX_PARTS: usize = 4 * MAX_RANGES;

/// The parts of a `multipart/byteranges` body: for each, the file offset of
/// its first byte and where its bytes are in `body`.
pub fn parse_multipart(
    body: &[u8],
    boundary: &str,
) -> Result<Vec<(u64, std::ops::Range<usize>)>, MultipartError> {
    let delim = format!("--{boundary}");
    if boundary.is_empty() || boundary.len() > 200 {
        return Err(MultipartError("a boundary of 1-200 characters"));
    }
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let mut out = Vec::new();
    let mut pos = 0usize;
    loop {
        let rest = body.get(pos..).unwrap_or_default();
        let i = find(rest, delim.as_bytes()).ok_or(MultipartError("no closing boundary"))?;
        let after = pos + i + delim.len();
        if body.get(after..).is_some_and(|b| b.starts_with(b"--")) {
            return Ok(out);
        }
        if out.len() >= MAX_PARTS {
            return Err(MultipartError("too many parts"));
        }
        let tail = body.get(after..).unwrap_or_default();
        let head_len = find(tail, b"\r\n\r\n").ok_or(MultipartError("a part without headers"))?;
        let head = String::from_utf8_lossy(&tail[..head_len]).to_ascii_lowercase();
        let range = head
            .lines()
            .find_map(|l| l.trim().strip_prefix("content-range:"))
            .ok_or(MultipartError("a part without Content-Range"))?;
        let (a, b, _) =
            parse_content_range(range).ok_or(MultipartError("a bad Content-Range in a part"))?;
        let start = after + head_len + 4;
        let len = usize::try_from(b - a)
            .ok()
            .and_then(|n| n.checked_add(1))
            .ok_or(MultipartError("a part larger than memory"))?;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= body.len())
            .ok_or(MultipartError("a part shorter than its Content-Range"))?;
        out.push((a, start..end));
        pos = end;
    }
}

/// Where bytes `offset..offset + len` of the file are among `parts`
/// (`(file offset, length)` of each part, in any order): the part index and
/// the offset inside it.
pub fn find_range(parts: &[(u64, u64)], offset: u64, len: u64) -> Option<(usize, u64)> {
    let end = offset.checked_add(len)?;
    parts.iter().enumerate().find_map(|(i, &(s, l))| {
        (s <= offset && s.checked_add(l).is_some_and(|e| end <= e)).then(|| (i, offset - s))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_suffix_ranges() {
        assert_eq!(parse_ranges("bytes=0-9", 100), Ranges::One(0, 9));
        assert_eq!(parse_ranges("bytes=90-", 100), Ranges::One(90, 99));
        assert_eq!(parse_ranges("bytes=90-200", 100), Ranges::One(90, 99));
        assert_eq!(parse_ranges("bytes=-5", 100), Ranges::One(95, 99));
        assert_eq!(parse_ranges("bytes=-500", 100), Ranges::One(0, 99));
        assert_eq!(parse_ranges("bytes=100-200", 100), Ranges::Unsatisfiable);
        assert_eq!(parse_ranges("bytes=100-200,0-0", 100), Ranges::One(0, 0));
        assert_eq!(parse_ranges("bytes=-0", 100), Ranges::Unsatisfiable);
        assert_eq!(parse_ranges("bytes=0-0", 0), Ranges::Unsatisfiable);
    }

    #[test]
    fn malformed_headers_mean_the_whole_file() {
        for bad in [
            "bytes=5-2",
            "bytes=x-2",
            "items=0-2",
            "bytes=-",
            "bytes=1",
            "",
        ] {
            assert_eq!(parse_ranges(bad, 100), Ranges::None, "{bad}");
        }
        assert_eq!(
            parse_ranges("bytes=99999999999999999999-", 100),
            Ranges::None
        );
    }

    #[test]
    fn disjoint_ranges_stay_parts_in_ascending_order() {
        let len = 100_000;
        assert_eq!(
            parse_ranges("bytes=50000-59999, 0-9999", len),
            Ranges::Many(vec![(0, 9999), (50000, 59999)])
        );
    }

    #[test]
    fn overlapping_touching_and_close_ranges_merge() {
        let len = 100_000;
        assert_eq!(
            parse_ranges("bytes=0-9999,5000-19999", len),
            Ranges::One(0, 19999)
        );
        assert_eq!(
            parse_ranges("bytes=0-9999,10000-19999", len),
            Ranges::One(0, 19999)
        );
        assert_eq!(
            parse_ranges("bytes=0-9999,10050-19999", len),
            Ranges::One(0, 19999),
            "a gap smaller than a part header"
        );
        assert_eq!(
            parse_ranges("bytes=0-9999,10500-19999,60000-69999", len),
            Ranges::Many(vec![(0, 9999), (10500, 19999), (60000, 69999)])
        );
    }

    #[test]
    fn many_copies_of_the_file_are_one_part() {
        let len = 4 << 20;
        let header = format!("bytes={}", vec!["0-"; 256].join(","));
        assert_eq!(parse_ranges(&header, len), Ranges::One(0, len - 1));
        let header = format!("bytes={}", vec!["-1000000"; 300].join(","));
        assert_eq!(
            parse_ranges(&header, len),
            Ranges::One(len - 1_000_000, len - 1)
        );
    }

    #[test]
    fn tiny_scattered_ranges_become_their_span_when_framing_costs_more() {
        // 1,000 one-byte ranges 200 bytes apart: ~100 kB of framing for 1 kB
        // of data; the span (200 kB) is the cheaper answer... but not cheaper
        // than parts; the rule picks the smaller of the two.
        let len = 1 << 20;
        let ranges: Vec<String> = (0..1000)
            .map(|i| format!("{}-{}", i * 200, i * 200))
            .collect();
        let header = format!("bytes={}", ranges.join(","));
        match parse_ranges(&header, len) {
            Ranges::Many(r) => {
                assert_eq!(r.len(), 1000);
                assert!(multipart_len(len, &r) <= 999 * 200 + 1);
            }
            Ranges::One(a, b) => assert_eq!((a, b), (0, 999 * 200)),
            other => panic!("{other:?}"),
        }
        // Ranges 100 bytes apart: parts cost more than the span.
        let ranges: Vec<String> = (0..1000)
            .map(|i| format!("{}-{}", i * 100, i * 100))
            .collect();
        let header = format!("bytes={}", ranges.join(","));
        assert_eq!(parse_ranges(&header, len), Ranges::One(0, 99_900));
    }

    #[test]
    fn more_ranges_than_the_limit_are_refused() {
        let ranges: Vec<String> = (0..=MAX_RANGES as u64)
            .map(|i| format!("{}-{}", i * 1000, i * 1000 + 10))
            .collect();
        let header = format!("bytes={}", ranges.join(","));
        assert_eq!(parse_ranges(&header, 1 << 30), Ranges::Unsatisfiable);
        let ok = format!("bytes={}", ranges[..MAX_RANGES].join(","));
        assert!(matches!(parse_ranges(&ok, 1 << 30), Ranges::Many(_)));
    }

    #[test]
    fn no_answer_is_larger_than_the_file_plus_framing() {
        // A cheap property check over many shapes of header.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m.max(1)
        };
        for _ in 0..2000 {
            let len = 1 + next(1 << 22);
            let n = 1 + next(300) as usize;
            let parts: Vec<String> = (0..n)
                .map(|_| match next(3) {
                    0 => format!("{}-", next(len + 10)),
                    1 => format!("-{}", next(len + 10)),
                    _ => {
                        let a = next(len + 10);
                        format!("{a}-{}", a + next(len))
                    }
                })
                .collect();
            let header = format!("bytes={}", parts.join(","));
            let body = match parse_ranges(&header, len) {
                Ranges::None => len,
                Ranges::Unsatisfiable => 0,
                Ranges::One(a, b) => {
                    assert!(a <= b && b < len);
                    b - a + 1
                }
                Ranges::Many(r) => {
                    assert!(r.windows(2).all(|w| w[0].1 + COALESCE_GAP + 1 < w[1].0));
                    multipart_len(len, &r)
                }
            };
            assert!(body <= len, "{header} on {len} bytes: {body}");
        }
    }

    #[test]
    fn multipart_answers_are_read_whatever_was_merged() {
        let body = b"\r\n--XYZ\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-3/100\r\n\r\nabcd\r\n--XYZ\r\nContent-Range: bytes 10-14/100\r\n\r\nklmno\r\n--XYZ--\r\n";
        let parts = parse_multipart(body, "XYZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(&body[parts[1].1.clone()], b"klmno");
        let spans: Vec<(u64, u64)> = parts.iter().map(|(s, r)| (*s, r.len() as u64)).collect();
        assert_eq!(find_range(&spans, 1, 2), Some((0, 1)));
        assert_eq!(find_range(&spans, 12, 3), Some((1, 2)));
        assert_eq!(find_range(&spans, 4, 2), None);
        assert_eq!(find_range(&spans, u64::MAX, 2), None);
        for bad in [
            &b"--XYZ\r\nContent-Range: bytes 0-9/10\r\n\r\nshort"[..],
            b"--XYZ\r\nContent-Range: bytes 0-18446744073709551615/10\r\n\r\nx\r\n--XYZ--",
            b"--XYZ\r\nContent-Range: bytes 9-0/10\r\n\r\nx\r\n--XYZ--",
            b"--XYZ\r\n\r\nx",
            b"",
        ] {
            assert!(
                parse_multipart(bad, "XYZ").is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_content_range("bytes 5-9/100"),
            Some((5, 9, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9, None)));
        assert_eq!(parse_content_range("bytes 9-5/*"), None);
    }
}
