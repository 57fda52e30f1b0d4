//! Grouping byte ranges into HTTP requests: adjacent ranges merge, and each
//! request carries at most a number of ranges and of bytes, so that a
//! long-RTT link is kept busy by a few large multi-range requests in flight,
//! and an interrupted request loses at most its own bytes.

/// Limits of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most ranges in one request.
    pub max_ranges: usize,
    /// Most bytes in one request.
    pub max_bytes: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_ranges: 64,
            max_bytes: 4 << 20,
        }
    }
}

/// One request: ranges `(offset, len)` in ascending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPlan {
    /// The ranges.
    pub ranges: Vec<(u64, u64)>,
}

impl RequestPlan {
    /// Bytes requested.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }

    /// The `Range` header value.
    pub fn header(&self) -> String {
        let parts: Vec<String> = self
            .ranges
            .iter()
            .map(|&(o, l)| format!("{}-{}", o, o + l - 1))
            .collect();
        format!("bytes={}", parts.join(","))
    }
}

/// Plans requests for `ranges` (any order, non-empty ranges): sorted, adjacent
/// ones merged, split to respect `limits` (a range longer than `max_bytes` is
/// cut into pieces).
pub fn plan(ranges: &[(u64, u64)], limits: RequestLimits) -> Vec<RequestPlan> {
    let mut sorted: Vec<(u64, u64)> = ranges.iter().copied().filter(|r| r.1 > 0).collect();
    sorted.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (o, l) in sorted {
        match merged.last_mut() {
            Some((mo, ml)) if *mo + *ml >= o => *ml = (*ml).max(o + l - *mo),
            _ => merged.push((o, l)),
        }
    }
    let max_bytes = limits.max_bytes.max(1);
    let mut out: Vec<RequestPlan> = Vec::new();
    let mut cur = RequestPlan { ranges: Vec::new() };
    let mut cur_bytes = 0u64;
    for (mut o, mut l) in merged {
        while l > 0 {
            if cur.ranges.len() >= limits.max_ranges.max(1) || cur_bytes >= max_bytes {
                out.push(std::mem::replace(
                    &mut cur,
                    RequestPlan { ranges: Vec::new() },
                ));
                cur_bytes = 0;
            }
            let take = l.min(max_bytes - cur_bytes);
            cur.ranges.push((o, take));
            cur_bytes += take;
            o += take;
            l -= take;
        }
    }
    if !cur.ranges.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_split_and_limits() {
        let limits = RequestLimits {
            max_ranges: 2,
            max_bytes: 100,
        };
        let p = plan(&[(50, 10), (0, 10), (10, 5), (200, 250)], limits);
        let all: Vec<Vec<(u64, u64)>> = p.iter().map(|r| r.ranges.clone()).collect();
        assert_eq!(
            all,
            vec![
                vec![(0, 15), (50, 10)],
                vec![(200, 100)],
                vec![(300, 100)],
                vec![(400, 50)]
            ]
        );
        assert!(p.iter().all(|r| r.bytes() <= 100 && r.ranges.len() <= 2));
        assert_eq!(p[0].header(), "bytes=0-14,50-59");
        assert!(plan(&[], limits).is_empty());
        // Overlaps merge too.
        assert_eq!(
            plan(&[(0, 10), (5, 10)], RequestLimits::default())[0].ranges,
            vec![(0, 15)]
        );
    }
}
