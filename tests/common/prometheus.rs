//! A real Prometheus (Debian's `/usr/bin/prometheus`, installed by `scripts/setup.sh`) on the
//! host, listening on a loopback port and scraping loopback targets every second.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::operator::wait_until;

/// A Prometheus scraping `targets` (loopback ports) as one job, every second. Its
/// configuration, data and log (`prometheus.log`) live in its own folder. Killed on drop,
/// and its folder removed.
pub struct Prometheus {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// Writes `DIR/prometheus.yml` (scrape and evaluation interval 1 s, timeout 800 ms; one
    /// job `job` with `127.0.0.1:PORT` for each of `targets`), starts Prometheus on
    /// `127.0.0.1:port` and waits (bounded) until it answers a query.
    pub fn start(dir: PathBuf, port: u16, job: &str, targets: &[u16]) -> Prometheus {
        std::fs::create_dir_all(dir.join("data")).expect("create the prometheus folder");
        let targets: Vec<String> = targets
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 800ms, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let mut prom = Prometheus {
            child: None,
            port,
            dir,
        };
        prom.spawn();
        prom
    }

    /// Starts (again, after [`Prometheus::kill`]) on the same port, configuration and data.
    pub fn spawn(&mut self) {
        let log =
            std::fs::File::create(self.dir.join("prometheus.log")).expect("create prometheus.log");
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!(
                "--config.file={}",
                self.dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start /usr/bin/prometheus (scripts/setup.sh installs it)");
        self.child = Some(child);
        assert!(
            wait_until(Duration::from_secs(60), || self
                .query("vector(1)")
                .is_some()),
            "prometheus did not start; its log:\n{}",
            std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
        );
    }

    /// SIGKILL (Prometheus going away); [`Prometheus::spawn`] brings it back.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, for a manifest's `prometheus.url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An instant query's result array, `None` if Prometheus does not answer (2 s bound).
    pub fn query(&self, expr: &str) -> Option<Vec<serde_json::Value>> {
        let encoded: String = expr
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            stream,
            "GET /api/v1/query?query={encoded} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let body = response.split_once("\r\n\r\n")?.1;
        // Prometheus may answer chunked; the JSON object is what lies between the braces.
        let body = &body[body.find('{')?..=body.rfind('}')?];
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        v["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
