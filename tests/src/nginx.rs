//! Debian's nginx serving a directory, with an access log that records what
//! it sent, for tests that count bytes at the server.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Running;

/// The nginx binary, if installed (`.ci/run` installs nginx-light).
pub fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A free loopback port for a process started later. Not one the kernel
/// hands out for port 0 (bound and released, it could be given to an
/// outgoing connection before the process binds it, and the agents of the
/// subnet tests make many): one from 20000-32767, below Linux's ephemeral
/// range, each handed out once per test process (tests run in threads) and
/// spread by process id (test binaries run one after another).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(97) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}-{}", FIRST + SPAN - 1);
}

/// A running nginx.
pub struct Nginx {
    /// The process (killed on drop).
    pub process: Running,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: PathBuf,
}

/// One access-log line.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Status code.
    pub status: u16,
    /// Body bytes sent (multipart framing included).
    pub body_bytes: u64,
    /// The request's Range header, `-` if none.
    pub range: String,
    /// The request path.
    pub path: String,
}

impl LogLine {
    /// File bytes sent: the body, or for a multipart answer the sum of the
    /// ranges asked (nginx sends them as asked, unmerged).
    pub fn payload(&self) -> u64 {
        let Some(spec) = self.range.strip_prefix("bytes=") else {
            return self.body_bytes;
        };
        if self.status != 206 || !spec.contains(',') {
            return self.body_bytes;
        }
        spec.split(',')
            .map(|r| {
                let (a, b) = r.trim().split_once('-').expect("explicit ranges");
                b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1
            })
            .sum()
    }
}

impl Nginx {
    /// nginx in the foreground, one process, its files under `dir`, serving `root`.
    pub fn start(bin: &Path, dir: &Path, root: &Path) -> Nginx {
        fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  log_format bytes '$status $body_bytes_sent \"$http_range\" $uri';\n\
               access_log {d}/access.log bytes;\n  default_type application/octet-stream;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               max_ranges 128;\n  client_header_timeout 20s;\n  client_body_timeout 20s;\n  send_timeout 60s;\n  keepalive_timeout 20s;\n  client_max_body_size 16k;\n\
               server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    location / {{ }}\n  }}\n}}\n",
            d = dir.display(),
            root = root.display(),
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf).unwrap();
        let child = std::process::Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .spawn()
            .expect("starting nginx");
        let addr = format!("127.0.0.1:{port}");
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nginx did not start: {:?}",
                fs::read_to_string(dir.join("error.log"))
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            process: Running {
                child,
                banner: String::new(),
            },
            addr,
            dir: dir.to_owned(),
        }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The access log so far.
    pub fn log(&self) -> Vec<LogLine> {
        let text = fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let (status, rest) = l.split_once(' ').expect("status");
                let (bytes, rest) = rest.split_once(' ').expect("bytes");
                let rest = rest.strip_prefix('"').expect("range");
                let (range, path) = rest.split_once("\" ").expect("range");
                LogLine {
                    status: status.parse().unwrap(),
                    body_bytes: bytes.parse().unwrap(),
                    range: range.to_owned(),
                    path: path.to_owned(),
                }
            })
            .collect()
    }
}
