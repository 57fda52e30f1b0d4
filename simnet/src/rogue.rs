//! What a rogue peer answers, by [`Misbehaviour`]: pure functions the
//! simulator asks when a request reaches a rogue.

use peerdelta_protocol::rangeset::RangeSet;
use peerdelta_protocol::transfer::Outcome as End;

use crate::scenario::Misbehaviour;

/// A rogue's answer to a data request (`None`: it never answers).
pub(crate) fn rogue_answer(kind: Misbehaviour, present: bool) -> Option<End> {
    if !present {
        return Some(End::Unreachable);
    }
    match kind {
        Misbehaviour::SilentMaster | Misbehaviour::Flapping => None,
        Misbehaviour::NotFound | Misbehaviour::SlowReader => Some(End::NotFound),
        Misbehaviour::Busy => Some(End::Busy),
    }
}

/// A rogue's answer to a coverage question: what it claims to hold and
/// whether it claims the base, or an error (`None`: no answer).
pub(crate) fn rogue_coverage(
    kind: Misbehaviour,
    present: bool,
    size: u64,
) -> Option<Result<(RangeSet, bool), End>> {
    if !present {
        return Some(Err(End::Unreachable));
    }
    match kind {
        Misbehaviour::SilentMaster | Misbehaviour::Flapping => None,
        Misbehaviour::NotFound | Misbehaviour::Busy => Some(Ok((RangeSet::whole(size), true))),
        Misbehaviour::SlowReader => Some(Ok((RangeSet::new(), false))),
    }
}
