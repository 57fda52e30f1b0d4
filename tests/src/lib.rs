//! Helpers for the end-to-end tests in `tests/tests/`: they start the real
//! `peerdelta` binary as separate processes.
//!
//! The binary is the one `cargo test --workspace` builds next to the test
//! executables (`target/<profile>/peerdelta`); the agent crate has an
//! integration test, which makes cargo build it before any test runs.

pub mod agents;
pub mod fixtures;
pub mod library;
pub mod netns;
pub mod nginx;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `peerdelta` binary built by this `cargo test` run.
pub fn peerdelta_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/peerdelta
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("peerdelta");
    assert!(
        bin.exists(),
        "{} not found: run the tests with `cargo test --workspace`, which builds it",
        bin.display()
    );
    bin
}

/// A `peerdelta` command with the given arguments.
pub fn peerdelta<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(peerdelta_bin());
    c.args(args);
    c.env_remove("RUST_LOG");
    // No user configuration file or cache leaks into a test.
    let isolated = std::env::temp_dir().join("peerdelta-tests-home");
    c.env("XDG_CONFIG_HOME", isolated.join("config"));
    c.env("XDG_CACHE_HOME", isolated.join("cache"));
    for v in [
        "PEERDELTA_DP",
        "PEERDELTA_DP_KEY",
        "PEERDELTA_CACHE",
        "PEERDELTA_CONFIG",
    ] {
        c.env_remove(v);
    }
    c
}

/// Runs the command and returns its output, whatever the exit code.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

/// Runs the command and asserts it exits with `code`; shows stderr otherwise.
pub fn run_code(cmd: &mut Command, code: i32) -> Output {
    let out = run(cmd);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?} exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the command, asserts success, returns stdout as text.
pub fn run_ok(cmd: &mut Command) -> String {
    String::from_utf8(run_code(cmd, 0).stdout).expect("utf-8 stdout")
}

/// Deterministic pseudo-random bytes (xorshift), for test inputs.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A child process killed (SIGKILL) when dropped.
pub struct Running {
    /// The process.
    pub child: std::process::Child,
    /// What it printed on stdout before it was ready.
    pub banner: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and waits for a stdout line starting with `prefix`; returns
/// the process and the rest of that line.
pub fn start_until(cmd: &mut Command, prefix: &str) -> (Running, String) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut banner = String::new();
    loop {
        match lines.next() {
            Some(Ok(line)) => {
                banner.push_str(&line);
                banner.push('\n');
                if let Some(rest) = line.strip_prefix(prefix) {
                    let rest = rest.trim().to_owned();
                    // Keep draining stdout so the child never blocks on it.
                    std::thread::spawn(move || for _ in lines.by_ref() {});
                    return (Running { child, banner }, rest);
                }
            }
            _ => {
                let status = child.wait();
                panic!("{cmd:?} exited before printing {prefix:?}: {status:?}\n{banner}");
            }
        }
    }
}

/// A running `peerdelta dp serve`.
pub struct DpServer {
    /// The process.
    pub process: Running,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl DpServer {
    /// Serves the library at `lib` on a free loopback port.
    pub fn start(lib: &Path) -> DpServer {
        Self::start_with(lib, &[])
    }

    /// Serves the library at `lib` on a free loopback port, with more
    /// `dp serve` arguments.
    pub fn start_with(lib: &Path, args: &[&str]) -> DpServer {
        let (process, url) = start_until(
            peerdelta(["dp", "serve", "--listen", "127.0.0.1:0", "--library"])
                .arg(lib)
                .args(args),
            "listening on http://",
        );
        DpServer { process, addr: url }
    }

    /// Serves the library at `lib` on `addr` (`127.0.0.1:PORT`): a DP
    /// restarted where its clients knew it.
    pub fn start_at(lib: &Path, addr: &str) -> DpServer {
        let (process, url) = start_until(
            peerdelta(["dp", "serve", "--listen", addr, "--library"]).arg(lib),
            "listening on http://",
        );
        DpServer { process, addr: url }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Bytes `a..=b` of the file, found in whatever this answer carries: the
    /// whole file (200), one range (206 with `Content-Range`) or the parts
    /// of a multi-range answer (which a server may merge, RFC 9110 §14.2).
    pub fn range_bytes(&self, a: u64, b: u64) -> Option<Vec<u8>> {
        let parts: Vec<(u64, Vec<u8>)> = match (self.status, self.header("content-range")) {
            (200, _) => vec![(0, self.body.clone())],
            (206, Some(cr)) => {
                let start = cr
                    .trim_start_matches("bytes ")
                    .split('-')
                    .next()?
                    .parse()
                    .ok()?;
                vec![(start, self.body.clone())]
            }
            (206, None) => self
                .byteranges()
                .into_iter()
                .map(|(s, _, d)| (s, d))
                .collect(),
            _ => return None,
        };
        parts.iter().find_map(|(s, d)| {
            (*s <= a && b < s + d.len() as u64)
                .then(|| d[(a - s) as usize..=(b - s) as usize].to_vec())
        })
    }

    /// The parts of a `multipart/byteranges` body: `(start, end inclusive, bytes)`.
    pub fn byteranges(&self) -> Vec<(u64, u64, Vec<u8>)> {
        let ct = self.header("content-type").expect("content-type");
        let boundary = ct
            .split("boundary=")
            .nth(1)
            .expect("boundary")
            .trim_matches('"');
        let delim = format!("--{boundary}");
        let mut out = Vec::new();
        let body = &self.body;
        let mut pos = 0;
        while let Some(i) = find(&body[pos..], delim.as_bytes()) {
            let start = pos + i + delim.len();
            if body[start..].starts_with(b"--") {
                break;
            }
            let head_end = start + find(&body[start..], b"\r\n\r\n").expect("part headers") + 4;
            let head = String::from_utf8_lossy(&body[start..head_end]).to_lowercase();
            let range = head
                .lines()
                .find_map(|l| l.strip_prefix("content-range: bytes "))
                .expect("content-range");
            let (ab, _) = range.split_once('/').expect("range/len");
            let (a, b) = ab.split_once('-').expect("a-b");
            let (a, b): (u64, u64) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
            let data = body[head_end..head_end + (b - a + 1) as usize].to_vec();
            pos = head_end + data.len();
            out.push((a, b, data));
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A minimal HTTP/1.1 request (`Connection: close`, body by Content-Length
/// or to the end), enough to check servers byte for byte.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let head_end = find(&raw, b"\r\n\r\n").expect("response headers") + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[head_end..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(b, b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
    out
}

/// A TCP connection to `addr` from the local address `from` (any
/// `127.x.y.z` works on Linux loopback: tests play several clients).
pub fn connect_from(from: std::net::IpAddr, addr: &str) -> std::net::TcpStream {
    let addr: std::net::SocketAddr = addr.parse().expect("socket address");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().expect("a socket");
        s.bind(std::net::SocketAddr::new(from, 0))
            .unwrap_or_else(|e| panic!("binding {from}: {e}"));
        let stream = s
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr} from {from}: {e}"));
        let std = stream.into_std().expect("a std stream");
        std.set_nonblocking(false).expect("blocking mode");
        std
    })
}

/// Skips a test that cannot run on this machine, saying why, or fails it
/// when `CI` is set: CI installs what every test needs, so there a missing
/// prerequisite is a failure, never a silent pass.
pub fn cannot_run(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("this test cannot run: {why} (CI is set, so that is a failure)");
    }
    eprintln!("SKIPPED, not passed: {why}");
}

/// GET a path.
pub fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    http(addr, "GET", path, headers, b"")
}
