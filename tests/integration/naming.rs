//! Verifies that etcd's own naming code reads the values hound writes: a small Go program
//! (`tests/go/src/houndnaming`) built against Debian's `golang-etcd-server-dev` lists a service's
//! endpoints with `clientv3/naming/endpoints` — the code grpc-go's etcd resolver uses — and
//! gets each node's `Addr` and `Metadata` exactly as hound describes it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};
use tungstenite::Message;

use crate::support::*;

/// `$HOUND_TEST_GO`, else `go` on PATH (`.ci/test` installs Debian's golang-go and
/// golang-etcd-server-dev).
fn go_program() -> String {
    std::env::var("HOUND_TEST_GO").unwrap_or_else(|_| "go".into())
}

/// Builds the Go program once per test run (GOPATH mode over Debian's Go sources, offline).
fn houndnaming() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go");
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/go");
        let binary = tmp.join("houndnaming");
        let output = Command::new(go_program())
            .args(["build", "-o"])
            .arg(&binary)
            .arg("houndnaming")
            .env("GO111MODULE", "off")
            .env("GOPATH", format!("{}:/usr/share/gocode", source.display()))
            .env("GOCACHE", tmp.join("cache"))
            .env("GOFLAGS", "")
            .current_dir(source.join("src/houndnaming"))
            .output()
            .expect("run go (Debian's golang-go; .ci/test installs it)");
        assert!(
            output.status.success(),
            "building tests/go/src/houndnaming failed (needs Debian's golang-etcd-server-dev):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        binary
    })
}

#[test]
fn etcds_naming_code_reads_hounds_values() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut watcher = monitor_synced(&hound, &["api"]);
    let described = format!(
        "{}&tags=v2,canary&weight=10&meta.zone=eu-1",
        register_path("api", "10.0.0.7", 8080)
    );
    let mut canary = ws_open(&hound, &described);
    next_json(&mut watcher, PROMPT);
    let _plain = register(&hound, "api", "10.0.0.8", 8080);
    next_json(&mut watcher, PROMPT);
    canary
        .send(Message::Text(
            r#"{"status":"warning","note":"slow disk"}"#.into(),
        ))
        .expect("send a status");
    let changed = next_json(&mut watcher, PROMPT);
    assert_eq!(changed["body"]["services"][0]["status"], "warning");

    let output = Command::new(houndnaming())
        .arg(etcd.url())
        .arg(format!("{}/api/", hound.namespace()))
        .output()
        .expect("run houndnaming");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: Value = serde_json::from_slice(&output.stdout).expect("JSON from houndnaming");
    assert_eq!(
        listed,
        json!({
            hound.key("api", "10.0.0.7:8080"): {
                "Addr": "10.0.0.7:8080",
                "Metadata": {"tags": ["v2", "canary"], "weight": 10, "meta": {"zone": "eu-1"},
                             "status": "warning", "note": "slow disk"}
            },
            hound.key("api", "10.0.0.8:8080"): {"Addr": "10.0.0.8:8080", "Metadata": null}
        })
    );
}
