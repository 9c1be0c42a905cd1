//! Verifies hound against a secured etcd: TLS with client certificates, and etcd's own user and
//! password authentication, including what hound does when etcd refuses its credentials.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A certificate authority: its PEM certificate and what signs with it.
struct Authority {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn authority(name: &str) -> Authority {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generate CA key");
    let certificate = params.self_signed(&key).expect("self-sign CA certificate");
    Authority {
        pem: certificate.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A certificate signed by `ca` for `names` (IP literals become IP SANs), and its key, as PEM.
fn leaf(
    ca: &Authority,
    names: &[&str],
    common_name: &str,
    usages: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("leaf parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages.to_vec();
    let key = KeyPair::generate().expect("generate leaf key");
    let certificate = params
        .signed_by(&key, &ca.issuer)
        .expect("sign leaf certificate");
    (certificate.pem(), key.serialize_pem())
}

/// The PEM files of one test, in a temp dir: `ca.pem`; `server.pem`/`server-key.pem` for etcd
/// (127.0.0.1 and localhost); `client.pem`/`client-key.pem` from the same CA; and
/// `rogue-client.pem`/`rogue-client-key.pem` from a CA etcd does not trust.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("hound-test-pki-")
            .tempdir()
            .expect("create PKI temp dir");
        let ca = authority("hound test CA");
        let rogue = authority("a CA etcd does not trust");
        let (server, server_key) = leaf(
            &ca,
            &["127.0.0.1", "localhost"],
            "etcd",
            // etcd 3.4 also dials itself with its server certificate (gRPC gateway).
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let client_usage = [ExtendedKeyUsagePurpose::ClientAuth];
        let (client, client_key) = leaf(&ca, &[], "hound", &client_usage);
        let (rogue_client, rogue_key) = leaf(&rogue, &[], "hound", &client_usage);
        let pki = Pki { dir };
        for (name, pem) in [
            ("ca.pem", &ca.pem),
            ("server.pem", &server),
            ("server-key.pem", &server_key),
            ("client.pem", &client),
            ("client-key.pem", &client_key),
            ("rogue-client.pem", &rogue_client),
            ("rogue-client-key.pem", &rogue_key),
        ] {
            std::fs::write(pki.path(name), pem).unwrap_or_else(|err| panic!("write {name}: {err}"));
        }
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap_or_else(|err| panic!("read {name}: {err}"))
    }

    /// TLS options of a client that trusts the CA and presents the good client certificate.
    fn client_tls(&self) -> TlsOptions {
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(self.read("ca.pem")))
            .identity(Identity::from_pem(
                self.read("client.pem"),
                self.read("client-key.pem"),
            ))
    }
}

// ---------------------------------------------------------------------------------------------
// etcd with TLS and client certificates
// ---------------------------------------------------------------------------------------------

/// A single-member etcd that serves clients only over https and only with a certificate from
/// the test's CA. Killed on drop.
struct TlsEtcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
}

impl TlsEtcd {
    fn start(pki: &Pki) -> TlsEtcd {
        let dir = tempfile::Builder::new()
            .prefix("hound-test-etcd-tls-")
            .tempdir()
            .expect("create etcd temp dir");
        let mut etcd = TlsEtcd {
            child: None,
            client_port: 0,
            peer_port: 0,
            dir,
        };
        for _attempt in 0..5 {
            etcd.client_port = free_port();
            etcd.peer_port = free_port();
            if etcd.client_port != etcd.peer_port && etcd.launch(pki) {
                return etcd;
            }
            // The ports were probably taken in the meantime: try again with new ones.
            etcd.kill();
            let _ = std::fs::remove_dir_all(etcd.dir.path().join("data"));
        }
        panic!(
            "etcd with TLS did not come up after 5 attempts; log:\n{}",
            tail(&etcd.log(), 20)
        );
    }

    fn launch(&mut self, pki: &Pki) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("open etcd log");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let binary = std::env::var_os("HOUND_TEST_ETCD")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("etcd"));
        let mut command = Command::new(&binary);
        command
            .args(["--name", "default", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--cert-file", &pki.path("server.pem")])
            .args(["--key-file", &pki.path("server-key.pem")])
            .args(["--trusted-ca-file", &pki.path("ca.pem")])
            .arg("--client-cert-auth")
            .args(["--heartbeat-interval", "25", "--election-timeout", "250"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child =
            spawn_child(command).unwrap_or_else(|err| panic!("cannot run {binary:?}: {err}"));
        self.child = Some(child);
        // Answering a client that presents the test's certificate is the proof of health.
        let mut client = self.client(pki);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().expect("try_wait etcd").is_some()
            {
                return false;
            }
            if client.try_version(Duration::from_millis(500)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The https client URL.
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    /// A client with the CA and the good client certificate.
    fn client(&self, pki: &Pki) -> EtcdClient {
        EtcdClient::connect_with(
            &self.url(),
            ConnectOptions::new().with_tls(pki.client_tls()),
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- log of etcd on {} (last 10 lines) ---\n{}",
                self.url(),
                tail(&self.log(), 10)
            );
        }
    }
}

/// hound's flags for the CA and, if given, a client certificate and key from `pki`.
fn tls_args(pki: &Pki, identity: Option<(&str, &str)>) -> Vec<String> {
    let mut args = vec!["--etcd-ca".to_owned(), pki.path("ca.pem")];
    if let Some((cert, key)) = identity {
        args.extend(["--etcd-cert".to_owned(), pki.path(cert)]);
        args.extend(["--etcd-key".to_owned(), pki.path(key)]);
    }
    args
}

// ---------------------------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------------------------

/// Registers a node while a monitor watches, and checks the PUT, the key in etcd (read with
/// `etcd`, a client allowed in), and the DELETE when the socket closes.
fn assert_registers_end_to_end(hound: &Hound, etcd: &mut EtcdClient) {
    let mut watcher = monitor_synced(hound, &["api"]);
    let node = register(hound, "api", "10.0.0.1", 80);
    let put = wait_for_event(&mut watcher, "api", "PUT", PROMPT);
    assert_eq!(put, key_event("api", "PUT", &[("10.0.0.1", 80)]));
    let entry = etcd
        .get(&hound.key("api", "10.0.0.1:80"))
        .expect("the registration is in etcd");
    assert_eq!(entry.value, naming_value("10.0.0.1:80"));
    assert_ne!(entry.lease, 0, "the registration is on a lease");
    assert_eq!(hound.nodes("api"), pairs(&[("10.0.0.1", 80)]));
    close(node);
    let delete = wait_for_event(&mut watcher, "api", "DELETE", PROMPT);
    assert_eq!(delete, key_event("api", "DELETE", &[]));
    assert!(
        !registered(etcd, hound, "api", "10.0.0.1:80"),
        "the key is gone after the socket closed"
    );
}

/// Waits for `/healthz` to answer 503 and returns its `reason`.
fn unhealthy_reason(hound: &Hound) -> String {
    let response = poll_for(PROMPT, "/healthz to answer 503", || {
        let response = hound.get("/healthz");
        (response.status != 200).then_some(response)
    });
    let body = response.assert_json(503);
    assert_eq!(body["status"], "unavailable", "{body}");
    match &body["reason"] {
        Value::String(reason) if !reason.trim().is_empty() => reason.clone(),
        _ => panic!("the 503 names no reason: {body}"),
    }
}

/// Asserts that hound refuses what needs etcd with 503: a registration, an event, etcd's version.
fn assert_refuses_etcd_work(hound: &Hound) {
    match ws_connect(hound.addr(), &register_path("api", "10.0.0.1", 80), &[]) {
        Ok(_) => panic!("a registration was accepted while etcd refuses hound"),
        Err(response) => response.assert_error(503),
    }
    hound
        .post_event(&json!({"event_type": "t", "broadcast": true}))
        .assert_error(503);
    hound.get("/etcd/version").assert_error(503);
}

/// Asserts that hound is alive and never panicked.
fn assert_alive(hound: &mut Hound) {
    assert!(hound.is_running(), "hound exited:\n{}", hound.stderr());
    let stderr = hound.stderr();
    assert!(!stderr.contains("panicked"), "hound panicked:\n{stderr}");
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

#[test]
fn over_tls_with_a_client_certificate_hound_is_healthy_and_registers() {
    let _w = watchdog();
    let pki = Pki::generate();
    let etcd = TlsEtcd::start(&pki);
    let mut hound = Hound::builder_for_url(&etcd.url())
        .args(tls_args(&pki, Some(("client.pem", "client-key.pem"))))
        .start();
    let health = hound.get("/healthz").assert_json(200);
    assert_eq!(health, json!({"status": "ok"}));
    let version = hound.get("/etcd/version").assert_json(200);
    assert!(
        version["version"]
            .as_str()
            .is_some_and(|v| v.starts_with('3')),
        "{version}"
    );
    assert_registers_end_to_end(&hound, &mut etcd.client(&pki));
    assert_alive(&mut hound);
}

#[test]
fn over_tls_without_a_trusted_client_certificate_hound_is_503_and_stays_up() {
    let _w = watchdog();
    let pki = Pki::generate();
    let etcd = TlsEtcd::start(&pki);
    let without_certificate = Hound::builder_for_url(&etcd.url())
        .args(tls_args(&pki, None))
        .without_waiting_healthy()
        .start();
    let foreign_certificate = Hound::builder_for_url(&etcd.url())
        .args(tls_args(
            &pki,
            Some(("rogue-client.pem", "rogue-client-key.pem")),
        ))
        .without_waiting_healthy()
        .start();
    // Each check of a hound that was never healthy waits out the 2 s start-up grace: check
    // both at once.
    let cases = [
        ("no client certificate", without_certificate),
        ("a certificate from another CA", foreign_certificate),
    ];
    let hounds: Vec<(&str, Hound)> = std::thread::scope(|scope| {
        let checks: Vec<_> = cases
            .into_iter()
            .map(|(what, mut hound)| {
                scope.spawn(move || {
                    let reason = unhealthy_reason(&hound);
                    assert!(reason.contains("etcd"), "{what}: reason {reason:?}");
                    assert_refuses_etcd_work(&hound);
                    assert_eq!(
                        hound.get("/healthz").status,
                        503,
                        "{what}: /healthz turned 200"
                    );
                    assert_alive(&mut hound);
                    (what, hound)
                })
            })
            .collect();
        checks
            .into_iter()
            .map(|check| {
                check
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
            .collect()
    });
    let mut client = etcd.client(&pki);
    for (what, hound) in &hounds {
        assert_namespace_empty(&mut client, hound, what);
    }
}

#[test]
fn an_etcd_tls_file_that_cannot_be_read_exits_2_with_one_line() {
    let _w = watchdog();
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing-ca.pem");
    let missing = missing.to_string_lossy();
    let output = run_hound(
        &["--etcd", "https://127.0.0.1:2379", "--etcd-ca", &missing],
        &[],
    );
    assert_usage_error(&output, "--etcd-ca naming a missing file");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--etcd-ca") && stderr.contains(missing.as_ref()),
        "the line names the flag and the file: {stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// User and password
// ---------------------------------------------------------------------------------------------

const ROOT_PASSWORD: &str = "right-pw-5b1e7c";
const WRONG_PASSWORD: &str = "wrong-pw-9d04af";

/// A plain etcd with user `root` (password [`ROOT_PASSWORD`]) and authentication enabled.
fn etcd_with_auth() -> Etcd {
    let etcd = Etcd::start();
    etcd.client().enable_auth(ROOT_PASSWORD);
    etcd
}

/// A client logged in as root.
fn root_client(etcd: &Etcd) -> EtcdClient {
    EtcdClient::connect_with(
        &etcd.url(),
        ConnectOptions::new().with_user("root", ROOT_PASSWORD),
    )
}

/// Changes root's password (logged in with [`ROOT_PASSWORD`]).
fn set_root_password(etcd: &Etcd, password: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build tokio runtime");
    let change = async {
        let options = ConnectOptions::new().with_user("root", ROOT_PASSWORD);
        let mut client = etcd_client::Client::connect([etcd.url()], Some(options)).await?;
        client.user_change_password("root", password).await
    };
    runtime
        .block_on(async { tokio::time::timeout(PROMPT, change).await })
        .expect("changing root's password timed out")
        .expect("change root's password");
}

#[test]
fn with_etcd_auth_and_the_right_password_hound_registers() {
    let _w = watchdog();
    let etcd = etcd_with_auth();
    let mut hound = Hound::builder(&etcd)
        .args(["--etcd-user", "root", "--log-level", "debug"])
        .env("HOUND_ETCD_PASSWORD", ROOT_PASSWORD)
        .start();
    assert_eq!(hound.get("/healthz").assert_json(200)["status"], "ok");
    assert_registers_end_to_end(&hound, &mut root_client(&etcd));
    assert_alive(&mut hound);
    let stderr = hound.stderr();
    assert!(stderr.contains("[DEBUG]"), "debug logging is on:\n{stderr}");
    assert!(
        !stderr.contains(ROOT_PASSWORD),
        "the password is in the log:\n{stderr}"
    );
}

#[test]
fn with_a_wrong_etcd_password_hound_stays_up_503_and_says_so_once() {
    let _w = watchdog();
    let etcd = etcd_with_auth();
    let mut hound = Hound::builder(&etcd)
        .args(["--etcd-user", "root", "--log-level", "debug"])
        .env("HOUND_ETCD_PASSWORD", WRONG_PASSWORD)
        .without_waiting_healthy()
        .start();
    let reason = unhealthy_reason(&hound);
    assert!(
        reason.contains("authentication"),
        "the reason names the refused authentication: {reason:?}"
    );
    assert_refuses_etcd_work(&hound);
    // hound keeps trying with back-off; etcd logs each refused attempt.
    poll_until(
        Duration::from_secs(10),
        "etcd to refuse hound's password three times",
        || etcd.log().matches("invalid password").count() >= 3,
    );
    assert_eq!(hound.get("/healthz").status, 503, "/healthz turned 200");
    assert_alive(&mut hound);
    let stderr = hound.stderr();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("[ERROR]")).collect();
    assert_eq!(
        errors.len(),
        1,
        "one ERROR line, not one per retry:\n{stderr}"
    );
    assert!(
        errors[0].contains("authentication"),
        "the ERROR line says what is wrong: {}",
        errors[0]
    );
    assert!(
        !stderr.contains(WRONG_PASSWORD),
        "the password is in the log:\n{stderr}"
    );
    assert_namespace_empty(&mut root_client(&etcd), &hound, "after refused logins");

    // Once etcd accepts the password hound has, hound gets in without a restart.
    set_root_password(&etcd, WRONG_PASSWORD);
    hound.wait_healthy();
    let _node = register(&hound, "api", "10.0.0.1", 80);
    assert_alive(&mut hound);
}

#[test]
fn etcd_user_without_a_password_exits_2_with_one_line() {
    let _w = watchdog();
    let output = run_hound(&["--etcd-user", "root"], &[]);
    assert_usage_error(&output, "--etcd-user without HOUND_ETCD_PASSWORD");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("HOUND_ETCD_PASSWORD"),
        "the line names the variable: {stderr}"
    );
}
