//! Verifies discovery without a WebSocket over HTTP: `curl -N` reads SYNC and then a PUT from
//! `/etcd/watch` (and the route's Accept, token and Origin rules); `/v1/sd/prometheus` in the
//! `http_sd_configs` format; and a real Prometheus server that discovers a node there and
//! scrapes it (`up == 1` through its API).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// `curl -N` on `/etcd/watch`, its `data:` lines delivered through a channel.
struct Curl {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Curl {
    fn watch(hound: &Hound, path: &str) -> Curl {
        let program = std::env::var("HOUND_TEST_CURL").unwrap_or_else(|_| "curl".into());
        let mut command = Command::new(program);
        command
            .args(["-sN", "-H", "Accept: text/event-stream"])
            .arg(format!("http://{}{path}", hound.addr()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = spawn_child(command).expect("run curl (Debian's curl)");
        let stdout = child.stdout.take().expect("curl stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(data) = line.strip_prefix("data: ")
                    && send.send(data.to_owned()).is_err()
                {
                    return;
                }
            }
        });
        Curl { child, lines }
    }

    /// The next event's message.
    fn next(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(PROMPT)
            .expect("an event from curl within the deadline");
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("{line:?} is not JSON: {err}"))
    }
}

impl Drop for Curl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn curl_reads_sync_then_a_put_from_the_event_stream() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let curl = Curl::watch(&hound, "/etcd/watch?monitor=api");
    assert_eq!(curl.next(), key_event("api", "SYNC", &[]));
    poll_until(PROMPT, "the stream to count as kind=watch", || {
        hound.metric("hound_sockets{kind=\"watch\"}") == 1.0
    });

    let _node = register(&hound, "api", "10.0.0.9", 8080);
    assert_eq!(curl.next(), key_event("api", "PUT", &[("10.0.0.9", 8080)]));
    hound.post_event(&json!({"event_type": "deploy", "services": ["api"]}));
    assert_eq!(curl.next(), custom_event("api", "deploy", ""));

    drop(curl);
    poll_until(PROMPT, "hound to notice curl left", || {
        hound.metric("hound_sockets{kind=\"watch\"}") == 0.0
    });
}

#[test]
fn the_event_stream_keeps_the_websocket_routes_rules_and_the_targets_need_the_token() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--token", "s3cret", "--ping-interval", "1"]);
    let addr = hound.addr();
    let sse = [
        ("Accept", "text/event-stream"),
        ("Authorization", "Bearer s3cret"),
    ];

    request(addr, "GET", "/etcd/watch", &sse, b"").assert_error(400);
    request(addr, "GET", "/etcd/watch?monitor=a/b", &sse, b"").assert_error(400);
    let json_only = [
        ("Accept", "application/json"),
        ("Authorization", "Bearer s3cret"),
    ];
    request(addr, "GET", "/etcd/watch?monitor=api", &json_only, b"").assert_error(406);
    request(
        addr,
        "GET",
        "/etcd/watch?monitor=api",
        &[("Accept", "text/event-stream")],
        b"",
    )
    .assert_error(401);
    let foreign = [
        ("Accept", "text/event-stream"),
        ("Authorization", "Bearer s3cret"),
        ("Origin", "http://evil.example"),
    ];
    request(addr, "GET", "/etcd/watch?monitor=api", &foreign, b"").assert_error(403);
    hound.get("/v1/sd/prometheus").assert_error(401);
    hound
        .get("/v1/sd/prometheus?token=s3cret")
        .assert_error(401);
    let bearer = [("Authorization", "Bearer s3cret")];
    let targets = request(addr, "GET", "/v1/sd/prometheus", &bearer, b"");
    assert_eq!(targets.assert_json(200), json!([]));

    // `?token=` works as on the WebSocket routes (EventSource cannot set headers), and an idle
    // stream gets a comment line every ping interval.
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    use std::io::Write;
    write!(
        stream,
        "GET /etcd/watch?monitor=api&token=s3cret HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("send the request");
    stream.set_read_timeout(Some(PROMPT)).expect("timeout");
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    reader.read_line(&mut head).expect("status line");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with(':')) {
        let mut line = String::new();
        assert!(
            reader
                .read_line(&mut line)
                .expect("a line within the deadline")
                > 0
        );
        seen.push(line.trim_end().to_owned());
    }
    assert!(
        seen.iter()
            .any(|l| l.eq_ignore_ascii_case("content-type: text/event-stream; charset=utf-8")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("data: ") && l.contains("SYNC")),
        "{seen:?}"
    );
}

#[test]
fn prometheus_targets_list_healthy_nodes_with_labels() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let empty = hound.get("/v1/sd/prometheus");
    assert_eq!(empty.assert_json(200), json!([]));
    assert_eq!(empty.header("Content-Type"), Some("application/json"));

    let mut client = etcd.client();
    for (service, node) in [
        ("api", "10.0.0.2:80"),
        ("api", "[::1]:8080"),
        ("db", "10.0.1.1:5432"),
    ] {
        client.put(&hound.key(service, node), node);
    }
    poll_until(PROMPT, "hound to see the nodes", || {
        hound.services().len() == 2
    });
    let labels = |service: &str| json!({"__meta_hound_service": service, "__meta_hound_status": "passing", "__meta_hound_tags": ",,"});
    assert_eq!(
        hound.get("/v1/sd/prometheus").assert_json(200),
        json!([
            {"targets": ["10.0.0.2:80"], "labels": labels("api")},
            {"targets": ["[::1]:8080"], "labels": labels("api")},
            {"targets": ["10.0.1.1:5432"], "labels": labels("db")},
        ])
    );
    assert_eq!(
        hound
            .get("/v1/sd/prometheus?service=db,nope")
            .assert_json(200),
        json!([{"targets": ["10.0.1.1:5432"], "labels": labels("db")}])
    );
    hound.get("/v1/sd/prometheus?service=a/b").assert_error(400);
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `$HOUND_TEST_PROMETHEUS`, else `prometheus` on PATH (`.ci/test` installs Debian's).
fn prometheus_program() -> String {
    std::env::var("HOUND_TEST_PROMETHEUS").unwrap_or_else(|_| "prometheus".into())
}

#[test]
fn a_real_prometheus_discovers_a_node_and_scrapes_it() {
    let _w = watchdog_for(Duration::from_secs(120));
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    // The node is hound itself: its /metrics is a scrape target Prometheus can read.
    let port = hound.addr().port();
    let _node = register(&hound, "hound-metrics", "127.0.0.1", port);

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: hound-sd\n    http_sd_configs:\n      \
             - url: http://{}/v1/sd/prometheus\n        refresh_interval: 1s\n    \
             relabel_configs:\n      - source_labels: [__meta_hound_service]\n        \
             target_label: service\n",
            hound.addr()
        ),
    )
    .expect("write the config");
    let web = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(prometheus_program());
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _prometheus = KillOnDrop(spawn_child(command).unwrap_or_else(|err| {
        panic!(
            "cannot run {}: {err}; install Debian's prometheus (.ci/test does)",
            prometheus_program()
        )
    }));
    let addr: std::net::SocketAddr = web.parse().expect("an address");
    let query = format!(
        "/api/v1/query?query={}",
        encode("up{job=\"hound-sd\",service=\"hound-metrics\"}")
    );
    let result = poll_for(
        Duration::from_secs(90),
        "Prometheus to scrape the node (up == 1)",
        || {
            let response = try_request(addr, "GET", &query, &[], b"").ok()?;
            let body: Value = serde_json::from_slice(&response.body).ok()?;
            let result = body["data"]["result"].as_array()?.first()?.clone();
            (result["value"][1] == "1").then_some(result)
        },
    );
    assert_eq!(result["metric"]["instance"], format!("127.0.0.1:{port}"));
    assert_eq!(result["metric"]["service"], "hound-metrics");
}
