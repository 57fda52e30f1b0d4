//! Status reports that receivers send to the DP (`POST /status`): a version
//! completed, a hash failure with the content and the source that served it,
//! or the versions an agent holds. JSON on the wire (the agent parses it; this
//! crate has no JSON dependency), validated here.

use serde::{Deserialize, Serialize};

use crate::hash::ContentHash;
use crate::manifest::PackageName;

/// Largest report body the DP accepts.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;

/// One report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    /// The reporting agent (its peer id or host name): 1-128 printable characters.
    pub agent: String,
    /// The package.
    pub package: PackageName,
    /// The version concerned.
    pub version: u64,
    /// What happened.
    pub event: StatusEvent,
    /// When, by the agent's clock (ms since the Unix epoch).
    pub time_ms: u64,
}

/// What a report says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StatusEvent {
    /// The version is complete and verified on the agent.
    Completed {
        /// Bytes fetched from the DP.
        wan_bytes: u64,
        /// Bytes received from peers.
        lan_bytes: u64,
        /// Bytes reused from the agent's own cache.
        reused_bytes: u64,
    },
    /// Bytes failed verification.
    HashFailure {
        /// The content being built.
        content: ContentHash,
        /// Where the bad bytes came from ("dp", "local base", a peer id).
        source: String,
        /// What failed (run, offset, hashes).
        detail: String,
    },
    /// The versions of the package the agent holds.
    Held {
        /// Version numbers.
        versions: Vec<u64>,
    },
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid status report: {0}")]
pub struct InvalidReport(pub String);

fn printable(s: &str, max: usize, what: &str) -> Result<(), InvalidReport> {
    if s.is_empty() || s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(InvalidReport(format!(
            "{what} must be 1-{max} printable characters"
        )));
    }
    Ok(())
}

impl StatusReport {
    /// Checks field limits.
    pub fn validate(&self) -> Result<(), InvalidReport> {
        printable(&self.agent, 128, "agent")?;
        if self.version == 0 {
            return Err(InvalidReport("version must be at least 1".into()));
        }
        match &self.event {
            StatusEvent::HashFailure { source, detail, .. } => {
                printable(source, 256, "source")?;
                if detail.chars().count() > 1024 {
                    return Err(InvalidReport("detail longer than 1024 characters".into()));
                }
                if detail.chars().any(char::is_control) {
                    return Err(InvalidReport(
                        "detail must not contain control characters".into(),
                    ));
                }
            }
            StatusEvent::Held { versions } if versions.len() > 1024 => {
                return Err(InvalidReport("more than 1024 versions".into()));
            }
            _ => {}
        }
        Ok(())
    }

    /// Short name of the event type.
    pub fn kind(&self) -> &'static str {
        match self.event {
            StatusEvent::Completed { .. } => "completed",
            StatusEvent::HashFailure { .. } => "hash_failure",
            StatusEvent::Held { .. } => "held",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json(body: &[u8]) -> Result<StatusReport, InvalidReport> {
        let r: StatusReport =
            serde_json::from_slice(body).map_err(|e| InvalidReport(e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    #[test]
    fn parse_and_validate() {
        let ok = br#"{"agent":"branch-7","package":"app","version":3,"time_ms":1,
            "event":{"type":"hash_failure","content":"6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85","source":"dp","detail":"run 4"}}"#;
        let r = from_json(ok).unwrap();
        assert_eq!(r.kind(), "hash_failure");
        let round = serde_json::to_vec(&r).unwrap();
        assert_eq!(from_json(&round).unwrap(), r);
        for bad in [
            &br#"{"agent":"","package":"app","version":3,"time_ms":1,"event":{"type":"held","versions":[]}}"#[..],
            br#"{"agent":"a","package":"../x","version":3,"time_ms":1,"event":{"type":"held","versions":[]}}"#,
            br#"{"agent":"a","package":"app","version":0,"time_ms":1,"event":{"type":"held","versions":[]}}"#,
            br#"{"agent":"a","package":"app","version":1,"time_ms":1,"event":{"type":"nope"}}"#,
            br#"{"agent":"a","package":"app","version":1,"time_ms":1,"event":{"type":"held","versions":[]},"x":1}"#,
            br#"{"agent":"a\u001b[2J","package":"app","version":1,"time_ms":1,"event":{"type":"held","versions":[]}}"#,
            br#"{"agent":"a","package":"app","version":1,"time_ms":1,"event":{"type":"hash_failure","content":"6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85","source":"dp","detail":"x\ny"}}"#,
            b"not json",
        ] {
            assert!(from_json(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
