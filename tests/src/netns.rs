//! Hosts on one Ethernet segment, on this machine: Linux network namespaces
//! joined by veth pairs to a bridge in the test's own namespace (which is
//! the segment's gateway, so a server started here is reachable from every
//! host). Needs root and iproute2; [`Segment::create`] says why not.

use std::process::Command;

/// A bridge and `n` namespaces on it, removed when dropped.
pub struct Segment {
    /// The namespaces, one per host.
    pub hosts: Vec<String>,
    bridge: String,
    net: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Segment {
    /// Creates the bridge (gateway `x.x.x.1/24`) and `n` hosts (`.10`, `.11`, ...).
    pub fn create(n: usize) -> Result<Segment, String> {
        let id = std::process::id();
        let tag = format!("pd{}", id % 100_000);
        let mut s = Segment {
            hosts: Vec::new(),
            bridge: format!("{tag}br"),
            net: format!("10.213.{}", id % 250),
        };
        ip(&["link", "add", &s.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}.1/24", s.net), "dev", &s.bridge])?;
        ip(&["link", "set", &s.bridge, "up"])?;
        for i in 0..n {
            let ns = format!("{tag}h{i}");
            let (outer, inner) = (format!("{tag}o{i}"), format!("{tag}i{i}"));
            ip(&["netns", "add", &ns])?;
            s.hosts.push(ns.clone());
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &outer, "master", &s.bridge, "up"])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            let addr = format!("{}/24", s.addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let gw = s.gateway();
            ip(&["-n", &ns, "route", "add", "default", "via", &gw])?;
        }
        Ok(s)
    }

    /// The bridge's address (the gateway, in the test's namespace).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.net)
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.net, 10 + i)
    }
}

/// `cmd` run inside namespace `ns` (same program, arguments, environment).
pub fn exec(ns: &str, cmd: &Command) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]);
    c.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

impl Drop for Segment {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
