//! Verifies the command line: `--help`, `--version`, `--routes`, usage errors (exit 2, one line)
//! and that environment variables apply with flags winning over them.

use std::time::Duration;

use crate::support::*;

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn help_exits_zero_and_mentions_every_flag() {
    let _w = watchdog();
    for flag in ["--help", "-h"] {
        let output = run_hound(&[flag], &[]);
        assert_eq!(output.status.code(), Some(0), "{flag}: {output:?}");
        let help = stdout_of(&output);
        for mentioned in [
            "--bind",
            "--port",
            "--etcd",
            "--ttl",
            "--namespace",
            "--event-namespace",
            "--log-level",
            "--log-format",
            "--ping-interval",
            "--routes",
            "--version",
            "--help",
        ] {
            assert!(
                help.contains(mentioned),
                "{flag} output does not mention {mentioned}:\n{help}"
            );
        }
    }
}

#[test]
fn version_prints_name_and_crate_version() {
    let _w = watchdog();
    for flag in ["--version", "-v"] {
        let output = run_hound(&[flag], &[]);
        assert_eq!(output.status.code(), Some(0), "{flag}: {output:?}");
        assert_eq!(
            stdout_of(&output).trim(),
            format!("hound {}", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
}

#[test]
fn routes_lists_every_route() {
    let _w = watchdog();
    for flag in ["--routes", "-r"] {
        let output = run_hound(&[flag], &[]);
        assert_eq!(output.status.code(), Some(0), "{flag}: {output:?}");
        let routes = stdout_of(&output);
        for route in [
            "/healthz",
            "/version",
            "/etcd/version",
            "/etcd/leader",
            "/etcd/services",
            "/etcd/services/",
            "/etcd/event",
            "/etcd/register",
            "/etcd/monitor",
        ] {
            assert!(
                routes.contains(route),
                "{flag} does not list {route}:\n{routes}"
            );
        }
    }
}

#[test]
fn bad_flags_and_values_exit_2_with_one_line() {
    let _w = watchdog();
    let cases: &[&[&str]] = &[
        &["--no-such-flag"],
        &["--port", "abc"],
        &["--port", "70000"],
        &["--port"],
        &["--ttl", "0"],
        &["--ttl", "soon"],
        &["--log-level", "loud"],
        &["--log-format", "xml"],
        &["--ping-interval", "often"],
        &["stray-argument"],
    ];
    for args in cases {
        let output = run_hound(args, &[]);
        assert_usage_error(&output, &format!("hound {args:?}"));
    }
}

#[test]
fn bad_env_values_exit_2_with_one_line() {
    let _w = watchdog();
    for (name, value) in [("HOUND_PORT", "abc"), ("HOUND_TTL", "0")] {
        let output = run_hound(&[], &[(name, value)]);
        assert_usage_error(&output, &format!("{name}={value}"));
    }
}

#[test]
fn port_comes_from_env_and_the_flag_wins() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let env_port = free_port();
    let hound = Hound::builder(&etcd)
        .without_port_flag()
        .env("HOUND_PORT", env_port.to_string())
        .start();
    assert_eq!(hound.addr().port(), env_port, "HOUND_PORT applies");
    assert_eq!(hound.get("/healthz").status, 200);
    drop(hound);

    let flag_port = free_port();
    let hound = Hound::builder(&etcd)
        .without_port_flag()
        .env("HOUND_PORT", free_port().to_string())
        .args(["--port", &flag_port.to_string()])
        .start();
    assert_eq!(
        hound.addr().port(),
        flag_port,
        "--port wins over HOUND_PORT"
    );
}

#[test]
fn bind_comes_from_env_and_the_flag_wins() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::builder(&etcd).env("HOUND_BIND", "127.0.0.2").start();
    assert_eq!(
        hound.addr().ip().to_string(),
        "127.0.0.2",
        "HOUND_BIND applies"
    );
    assert_eq!(hound.get("/healthz").status, 200);
    drop(hound);

    let hound = Hound::builder(&etcd)
        .env("HOUND_BIND", "127.0.0.2")
        .args(["--bind", "127.0.0.3"])
        .start();
    assert_eq!(hound.addr().ip().to_string(), "127.0.0.3", "--bind wins");
}

#[test]
fn etcd_and_namespace_come_from_env() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let namespace = unique("envns");
    let hound = Hound::builder(&etcd)
        .without_etcd_flag()
        .without_namespace_flags()
        .namespace(&namespace)
        .env("HOUND_ETCD", etcd.url())
        .env("HOUND_NAMESPACE", &namespace)
        .start();
    let _ws = register(&hound, "api", "10.0.0.1", 80);
    let mut client = etcd.client();
    let entry = client
        .get(&format!("{namespace}/api/10.0.0.1:80"))
        .expect("registration under HOUND_NAMESPACE");
    assert_eq!(entry.value, naming_value("10.0.0.1:80"));
}

#[test]
fn namespace_flag_wins_over_env() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let env_namespace = unique("envns");
    let hound = Hound::builder(&etcd)
        .env("HOUND_NAMESPACE", &env_namespace)
        .start();
    let _ws = register(&hound, "api", "10.0.0.1", 80);
    let mut client = etcd.client();
    assert!(
        registered(&mut client, &hound, "api", "10.0.0.1:80"),
        "registration under the --namespace value"
    );
    assert!(
        client.get_prefix(&format!("{env_namespace}/")).is_empty(),
        "nothing under HOUND_NAMESPACE when --namespace is given"
    );
}

#[test]
fn ttl_comes_from_env_and_the_flag_wins() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut client = etcd.client();
    for (env_ttl, flag, expected) in [("7", None, 7), ("7", Some("9"), 9)] {
        let mut builder = Hound::builder(&etcd).env("HOUND_TTL", env_ttl);
        if let Some(ttl) = flag {
            builder = builder.args(["--ttl", ttl]);
        }
        let hound = builder.start();
        let _ws = register(&hound, "api", "10.0.0.1", 80);
        let entry = client
            .get(&hound.key("api", "10.0.0.1:80"))
            .expect("registration exists after the handshake");
        assert_ne!(entry.lease, 0, "registration has a lease");
        assert_eq!(
            client.lease_granted_ttl(entry.lease),
            Some(expected),
            "HOUND_TTL={env_ttl} --ttl {flag:?}"
        );
    }
}

#[test]
fn ping_interval_flag_is_accepted() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ping-interval", "1"]);
    let mut ws = monitor_synced(&hound, &["api"]);
    // The socket answers pings while reading, so it must still be open well after two intervals.
    expect_no_message(&mut ws, Duration::from_millis(2500));
    assert_eq!(hound.get("/healthz").status, 200);
}

/// `--log-format json`: every line hound writes is one JSON object with a time, a level and
/// a message, and registrations are logged with their service and node.
#[test]
fn log_format_json_writes_one_object_per_line() {
    let _w = watchdog();
    let hound = Backend::Embedded.start(&["--log-format", "json"]);
    let mut ws = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut ws, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    drop(ws);
    poll_until(
        Duration::from_secs(5),
        "the deregistration to be logged",
        || hound.stderr().contains("deregistering"),
    );
    let stderr = hound.stderr();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
        })
        .collect();
    assert!(lines.len() >= 3, "{stderr}");
    for line in &lines {
        let fields: Vec<&str> = line
            .as_object()
            .map(|object| object.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(fields.len(), 3, "{line}");
        assert!(
            line["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert!(
            ["ERROR", "WARN", "INFO"].contains(&line["level"].as_str().unwrap_or("")),
            "{line}"
        );
        assert!(line["message"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|line| line["message"]
            .as_str()
            .is_some_and(|m| m.contains("registered") && m.contains("api/10.0.0.1:80"))),
        "{stderr}"
    );
}
