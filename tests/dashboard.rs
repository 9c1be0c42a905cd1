//! The dashboard (`GET /`) in a real browser: headless Chromium, driven over the DevTools
//! protocol (CDP) with the tungstenite client hound already depends on, watches an embedded hound
//! while this test registers nodes, emits events through the page's form and restarts hound.
//!
//! Needs Debian's `chromium` on `PATH` (or `HOUND_TEST_CHROMIUM=/path/to/chrome`); `.ci/test`
//! installs it. Without it the tests fail, they do not skip. With
//! `HOUND_DASHBOARD_SCREENSHOT=docs/dashboard.png` the first test also saves a screenshot.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// How long one test may run before the watchdog aborts the test binary.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// How long hound or Chromium may take to announce where they listen.
const START: Duration = Duration::from_secs(20);
/// How long the page may take to show something, or a CDP command to answer.
const PROMPT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[test]
fn dashboard_shows_services_and_events_live() {
    let _watchdog = watchdog();
    let mut hound = Hound::start(&["--embedded", "-p", "0"]);
    // Registered before the page opens: the page learns of it from its first SYNC.
    let _db = register(hound.addr, "db", "10.0.0.9", 5432, "");
    let browser = Browser::launch();
    let mut page = browser.open(&format!("http://{}/", hound.addr));

    let first = page.wait_for("the page to connect and show hound's status", |p| {
        p["connection"] == "connected"
            && p["leader"] == "1"
            && p["member"].as_str().is_some_and(|m| m.starts_with('1'))
            && p["version"] == env!("CARGO_PKG_VERSION")
            && p["health"] == "ok"
            && nodes(p, "db") == Some(vec!["10.0.0.9:5432"])
    });
    assert_eq!(
        first["events"],
        json!([]),
        "the initial SYNC is not an event"
    );

    let api7 = register(hound.addr, "api", "10.0.0.7", 8080, "");
    page.wait_for("node 10.0.0.7:8080 under api", |p| {
        nodes(p, "api") == Some(vec!["10.0.0.7:8080"])
            && has_event(p, "PUT", "api", None, "+10.0.0.7:8080")
    });

    let api8 = register(hound.addr, "api", "10.0.0.8", 8080, "");
    let _cache = register(hound.addr, "cache", "::1", 6379, "");
    let page_now = page.wait_for("three services, sorted", |p| {
        nodes(p, "api") == Some(vec!["10.0.0.7:8080", "10.0.0.8:8080"])
            && nodes(p, "cache") == Some(vec!["[::1]:6379"])
            && nodes(p, "db") == Some(vec!["10.0.0.9:5432"])
    });
    let names: Vec<&str> = page_now["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "cache", "db"]);
    assert!(
        page_now["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["kind"] == "PUT" && e["namespace"] != "db"),
        "three PUTs and nothing else were due: {page_now:#}"
    );

    // A targeted event reaches the page's `*` monitor once per service, newest first.
    page.submit_event("deploy", "v2", " api, db ", false);
    let after = page.wait_for("the targeted event in #events", |p| {
        p["result"]["status"] == "200"
            && has_event(p, "custom", "api", Some("deploy"), "v2")
            && has_event(p, "custom", "db", Some("deploy"), "v2")
    });
    assert_eq!(
        after["events"][0]["kind"], "custom",
        "newest first: {after:#}"
    );

    api7.close();
    page.wait_for("10.0.0.7:8080 gone from api, a DELETE logged", |p| {
        nodes(p, "api") == Some(vec!["10.0.0.8:8080"])
            && has_event(p, "DELETE", "api", None, "−10.0.0.7:8080")
    });

    if let Some(path) = std::env::var_os("HOUND_DASHBOARD_SCREENSHOT") {
        page.screenshot(path.as_ref());
    }

    // Data from the network is text, never markup.
    let hostile = r#"<img src=x onerror="window.pwned=1">"#;
    page.submit_event("alert", hostile, "", true);
    let shown = page.wait_for("the broadcast event, as text", |p| {
        has_event(p, "custom", "*", Some("alert"), hostile)
    });
    assert_eq!(
        shown["injected"], 0,
        "markup from an event was parsed: {shown:#}"
    );
    assert_eq!(page.eval("typeof window.pwned"), "undefined");

    // hound's refusals are shown with their status.
    page.submit_event("deploy", "v3", "", false);
    page.wait_for("the 400 of an event without audience", |p| {
        p["result"]["status"] == "400"
            && p["result"]["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("400"))
    });

    // The last node of a service leaves: the service stays, greyed, without nodes.
    api8.close();
    page.wait_for("api without nodes", |p| {
        service(p, "api").is_some_and(|s| s["empty"] == true && s["nodes"] == json!([]))
            && has_event(p, "DELETE", "api", None, "−10.0.0.8:8080")
    });

    // hound restarts on the same port: the page notices, reconnects and starts afresh.
    let port = hound.addr.port();
    hound.kill();
    page.wait_for("the page to notice hound is gone", |p| {
        p["connection"] == "disconnected" && p["health"] != "ok"
    });
    let hound = Hound::start(&["--embedded", "-p", &port.to_string()]);
    page.wait_for("the page to reconnect to the new hound", |p| {
        p["connection"] == "connected" && p["services"] == json!([])
    });
    let _worker = register(hound.addr, "worker", "10.0.0.1", 9000, "");
    page.wait_for("a node registered after the reconnect", |p| {
        nodes(p, "worker") == Some(vec!["10.0.0.1:9000"])
    });

    page.assert_no_exceptions();
}

/// Nodes show their tags, weight and status — in words, and coloured — and the note of a
/// node that is not passing; a status change is logged as an event.
#[test]
fn dashboard_shows_tags_weight_and_status() {
    let _watchdog = watchdog();
    let hound = Hound::start(&["--embedded", "-p", "0"]);
    let addr = hound.addr;
    let _plain = register(addr, "api", "10.0.0.1", 80, "");
    let mut canary = register_url(&format!(
        "ws://{addr}/etcd/register?service=api&ip=10.0.0.2&port=80&tags=v2,canary&weight=10"
    ));
    let browser = Browser::launch();
    let mut page = browser.open(&format!("http://{addr}/"));
    let first = page.wait_for("both nodes, the canary with its tags and weight", |p| {
        nodes(p, "api") == Some(vec!["10.0.0.1:80", "10.0.0.2:80"])
    });
    let shown = &service(&first, "api").unwrap()["shown"];
    assert_eq!(
        shown[0]["text"], "10.0.0.1:80",
        "a 1.0 node shows just its address"
    );
    assert_eq!(shown[0]["status"], Value::Null);
    assert_eq!(shown[1]["tags"], json!(["v2", "canary"]));
    assert!(
        shown[1]["text"].as_str().unwrap().contains("weight 10"),
        "{shown}"
    );

    let report = r#"{"status":"warning","note":"slow disk"}"#;
    canary
        .0
        .send(Message::Text(report.into()))
        .expect("send a status");
    let warned = page.wait_for("the canary warning, with its note", |p| {
        service(p, "api").is_some_and(|s| {
            s["shown"][1]["status"] == "warning" && s["shown"][1]["note"] == "slow disk"
        }) && has_event(p, "PUT", "api", None, "10.0.0.2:80 warning")
    });
    let canary_shown = &service(&warned, "api").unwrap()["shown"][1];
    assert!(
        canary_shown["text"].as_str().unwrap().contains("warning"),
        "readable without colour: {canary_shown}"
    );
    let warning_colour = canary_shown["statusColour"].clone();

    canary
        .0
        .send(Message::Text(
            r#"{"status":"critical","note":"db down"}"#.into(),
        ))
        .expect("send a status");
    let critical = page.wait_for("the canary critical", |p| {
        service(p, "api").is_some_and(|s| s["shown"][1]["status"] == "critical")
    });
    let canary_shown = &service(&critical, "api").unwrap()["shown"][1];
    assert_eq!(canary_shown["note"], "db down");
    assert_ne!(
        canary_shown["statusColour"], warning_colour,
        "critical and warning are coloured apart"
    );

    canary
        .0
        .send(Message::Text(
            r#"{"status":"passing","note":"fine"}"#.into(),
        ))
        .expect("send a status");
    page.wait_for("the canary back to passing, no note", |p| {
        service(p, "api").is_some_and(|s| {
            s["shown"][1]["status"] == Value::Null && s["shown"][1]["note"] == Value::Null
        })
    });
    page.assert_no_exceptions();
}

#[test]
fn dashboard_passes_the_token_on() {
    let _watchdog = watchdog();
    let hound = Hound::start(&["--embedded", "-p", "0", "--token", "s3cret/+?"]);
    let browser = Browser::launch();
    let token = "s3cret%2F%2B%3F";
    let mut page = browser.open(&format!("http://{}/?token={token}", hound.addr));

    // The socket (?token=) and the REST reads (Authorization) both get through.
    page.wait_for("the page to connect with the token", |p| {
        p["connection"] == "connected" && p["leader"] == "1" && p["health"] == "ok"
    });
    let _api = register(hound.addr, "api", "10.0.0.7", 8080, token);
    page.wait_for("node 10.0.0.7:8080 under api", |p| {
        nodes(p, "api") == Some(vec!["10.0.0.7:8080"])
    });
    page.submit_event("ping", "", "api", false);
    page.wait_for("the event POSTed with the token", |p| {
        p["result"]["status"] == "200" && has_event(p, "custom", "api", Some("ping"), "")
    });
    page.assert_no_exceptions();
}

#[test]
fn dashboard_marks_the_leader() {
    let _watchdog = watchdog();
    let hound = Hound::start(&["--embedded", "-p", "0"]);
    let first = campaign(hound.addr, "api", "10.0.0.1", 80);
    let browser = Browser::launch();
    let mut page = browser.open(&format!("http://{}/", hound.addr));
    page.wait_for("the leader marked after the SYNC", |p| {
        service(p, "api").is_some_and(|s| s["leads"] == "10.0.0.1:80")
    });
    let second = campaign(hound.addr, "api", "10.0.0.2", 80);
    page.wait_for("both nodes, the first still leading", |p| {
        nodes(p, "api") == Some(vec!["10.0.0.1:80", "10.0.0.2:80"])
            && service(p, "api").is_some_and(|s| s["leads"] == "10.0.0.1:80")
    });
    first.close();
    page.wait_for("the second leading, and a LEADER event", |p| {
        service(p, "api").is_some_and(|s| s["leads"] == "10.0.0.2:80")
            && p["events"].as_array().is_some_and(|events| {
                events.iter().any(|e| {
                    e["kind"] == "LEADER"
                        && e["body"]
                            .as_str()
                            .is_some_and(|b| b.starts_with("10.0.0.2:80 (rev "))
                })
            })
    });
    second.close();
    page.wait_for("no leader once the last campaigner left", |p| {
        service(p, "api").is_some_and(|s| s["leads"].is_null() && s["empty"] == true)
    });
    page.assert_no_exceptions();
}

// ---------------------------------------------------------------------------------------------
// What the page shows
// ---------------------------------------------------------------------------------------------

/// Everything the tests look at, read from the DOM through the page's stable ids and data
/// attributes.
const SNAPSHOT: &str = r##"(() => {
  const text = (id) => document.getElementById(id)?.textContent ?? null;
  const result = document.getElementById("event-result");
  return {
    connection: text("connection"),
    leader: text("leader"),
    member: text("member"),
    version: text("version"),
    health: text("health"),
    services: [...document.querySelectorAll("#services [data-service]")].map((s) => ({
      name: s.dataset.service,
      empty: s.classList.contains("empty"),
      nodes: [...s.querySelectorAll("[data-node]")].map((n) => n.dataset.node),
      shown: [...s.querySelectorAll("[data-node]")].map((n) => ({
        node: n.dataset.node,
        status: n.dataset.status ?? null,
        text: n.textContent,
        tags: [...n.querySelectorAll(".tag")].map((t) => t.textContent),
        note: n.querySelector(".note")?.textContent ?? null,
        statusColour: n.querySelector(".status") ? getComputedStyle(n.querySelector(".status")).color : null,
      })),
      leads: s.querySelector("li[data-leader]")?.dataset.node
        ?? s.querySelector(".leader-note")?.dataset.leader ?? null,
    })),
    events: [...document.querySelectorAll("#events > li")].map((li) => ({
      kind: li.dataset.kind,
      namespace: li.dataset.namespace,
      type: li.dataset.eventType ?? null,
      body: li.querySelector(".body")?.textContent ?? null,
      time: li.querySelector("time")?.textContent ?? null,
    })),
    injected: document.querySelectorAll("#events img, #services img").length,
    result: { status: result?.dataset.status ?? null, text: result?.textContent ?? null },
  };
})()"##;

fn service<'a>(page: &'a Value, name: &str) -> Option<&'a Value> {
    page["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

/// The nodes shown under `name`, if the service is shown.
fn nodes<'a>(page: &'a Value, name: &str) -> Option<Vec<&'a str>> {
    let nodes = service(page, name)?["nodes"].as_array()?;
    Some(nodes.iter().filter_map(Value::as_str).collect())
}

fn has_event(
    page: &Value,
    kind: &str,
    namespace: &str,
    event_type: Option<&str>,
    body: &str,
) -> bool {
    page["events"].as_array().is_some_and(|events| {
        events.iter().any(|e| {
            e["kind"] == kind
                && e["namespace"] == namespace
                && e["type"].as_str() == event_type
                && e["body"] == body
                && e["time"].as_str().is_some_and(|t| !t.is_empty())
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Chromium over the DevTools protocol
// ---------------------------------------------------------------------------------------------

/// A headless Chromium with a fresh profile; its whole process group is killed on drop.
struct Browser {
    child: Child,
    log: Arc<Mutex<String>>,
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch() -> Browser {
        let program = std::env::var("HOUND_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir().expect("temporary Chromium profile");
        let mut command = Command::new(&program);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1200,800",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            // Its own process group, so that drop takes the renderers along.
            .process_group(0);
        let (child, log, lines) = match spawn_logged(command) {
            Ok(spawned) => spawned,
            Err(err) if err.kind() == io::ErrorKind::NotFound => panic!(
                "Chromium is not installed ({program:?} not found): these tests need a real \
                 browser. Install Debian's: `apt-get install chromium` (.ci/test does), or set \
                 HOUND_TEST_CHROMIUM to a Chrome or Chromium binary"
            ),
            Err(err) => panic!("cannot start {program:?}: {err}"),
        };
        let mut browser = Browser {
            child,
            log,
            devtools: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + START;
        while browser.devtools.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(at) = line.find("DevTools listening on ") {
                        browser.devtools = line[at + 22..].trim().to_owned();
                    }
                }
                Err(_) => panic!(
                    "Chromium did not announce its DevTools address within {START:?} \
                     (exit: {:?}); stderr:\n{}",
                    browser.child.try_wait(),
                    browser.log()
                ),
            }
        }
        browser
    }

    /// Chromium's stderr, without its complaints about the missing D-Bus.
    fn log(&self) -> String {
        let log = self.log.lock().unwrap();
        log.lines()
            .filter(|line| !line.contains(":ERROR:dbus/"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Opens `url` in a new tab, with the page's exceptions and console recorded.
    fn open(&self, url: &str) -> Page<'_> {
        let mut cdp = Cdp {
            socket: ws_connect(&self.devtools),
            next_id: 0,
            session: None,
            problems: Vec::new(),
            console: Vec::new(),
        };
        let target = cdp.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = cdp.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        cdp.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
        cdp.call("Runtime.enable", json!({}));
        cdp.call("Log.enable", json!({}));
        let navigated = cdp.call("Page.navigate", json!({"url": url}));
        assert!(
            navigated.get("errorText").is_none(),
            "navigating to {url}: {navigated}"
        );
        Page { cdp, browser: self }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory-safety preconditions; the group is the one we created.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// One DevTools connection, attached to one tab (a flat session).
struct Cdp {
    socket: WebSocket<TcpStream>,
    next_id: u64,
    session: Option<String>,
    /// Uncaught exceptions and `console.error` calls of the page.
    problems: Vec<String>,
    /// Everything the page logged, for failure messages.
    console: Vec<String>,
}

impl Cdp {
    /// Sends a command and waits for its answer, recording the events that arrive meanwhile.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(command.to_string()))
            .unwrap_or_else(|err| panic!("sending {method} to Chromium: {err}"));
        let deadline = Instant::now() + PROMPT;
        loop {
            assert!(
                Instant::now() < deadline,
                "Chromium did not answer {method} within {PROMPT:?}"
            );
            let text = match self.socket.read() {
                Ok(Message::Text(text)) => text,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(err))
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(err) => panic!("reading Chromium's answer to {method}: {err}"),
            };
            let message: Value = serde_json::from_str(text.as_str()).expect("CDP sends JSON");
            if message["id"] == id {
                if let Some(error) = message.get("error") {
                    panic!("{method} failed: {error}");
                }
                return message["result"].clone();
            }
            self.record(&message);
        }
    }

    fn record(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                let what = details["exception"]["description"]
                    .as_str()
                    .or(details["text"].as_str())
                    .unwrap_or("?");
                self.problems.push(format!("uncaught: {what}"));
                self.console.push(format!("uncaught: {what}"));
            }
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = params["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        a["value"]
                            .as_str()
                            .map_or_else(|| a.to_string(), str::to_owned)
                    })
                    .collect();
                let line = format!("console.{}: {}", params["type"], args.join(" "));
                if params["type"] == "error" {
                    self.problems.push(line.clone());
                }
                self.console.push(line);
            }
            Some("Log.entryAdded") => {
                let entry = &params["entry"];
                self.console.push(format!(
                    "{} {}: {}",
                    entry["source"], entry["level"], entry["text"]
                ));
            }
            _ => {}
        }
    }
}

/// A tab showing the dashboard.
struct Page<'a> {
    cdp: Cdp,
    browser: &'a Browser,
}

impl Page<'_> {
    /// Evaluates `expression` in the page and returns its value as JSON.
    fn eval(&mut self, expression: &str) -> Value {
        let answer = self.cdp.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(details) = answer.get("exceptionDetails") {
            panic!("evaluating {expression}: {details}");
        }
        answer["result"]["value"].clone()
    }

    /// Polls the DOM until `condition` holds; panics with what the page showed after
    /// [`PROMPT`]. Returns the snapshot that satisfied it.
    fn wait_for(&mut self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PROMPT;
        loop {
            let snapshot = self.eval(SNAPSHOT);
            if condition(&snapshot) {
                return snapshot;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {PROMPT:?} for {what}; the page shows:\n{snapshot:#}\n\
                     page console:\n{}\nChromium stderr:\n{}",
                    self.cdp.console.join("\n"),
                    self.browser.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fills in the event form and submits it as a user would.
    fn submit_event(&mut self, event_type: &str, body: &str, services: &str, broadcast: bool) {
        let script = format!(
            r##"(() => {{
  const set = (id, value) => {{ document.getElementById(id).value = value; }};
  set("event-type", {event_type});
  set("event-body", {body});
  set("event-services", {services});
  const broadcast = document.getElementById("event-broadcast");
  if (broadcast.checked !== {broadcast}) broadcast.click();
  document.getElementById("event-result").dataset.status = "";
  document.querySelector("#event-form button[type=submit]").click();
  return true;
}})()"##,
            event_type = json!(event_type),
            body = json!(body),
            services = json!(services),
        );
        assert_eq!(self.eval(&script), true);
    }

    fn assert_no_exceptions(&self) {
        assert!(
            self.cdp.problems.is_empty(),
            "the page reported errors:\n{}",
            self.cdp.problems.join("\n")
        );
    }

    /// Saves a 1200×800 PNG of the page.
    fn screenshot(&mut self, path: &std::path::Path) {
        self.cdp.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
        );
        let shot = self
            .cdp
            .call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        std::fs::write(path, png).unwrap_or_else(|err| panic!("writing {path:?}: {err}"));
        eprintln!("saved a screenshot of the dashboard to {path:?}");
    }
}

/// Decodes standard base64 (CDP's encoding of binary data).
fn base64_decode(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:?}"),
        };
        acc = (acc << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// hound, and its register sockets
// ---------------------------------------------------------------------------------------------

/// An embedded hound, killed on drop.
struct Hound {
    child: Child,
    addr: SocketAddr,
}

impl Hound {
    fn start(args: &[&str]) -> Hound {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hound"));
        command.args(args);
        let (mut child, log, lines) = spawn_logged(command).expect("start hound");
        const MARK: &str = "listening on http://";
        let deadline = Instant::now() + START;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "hound did not log `{MARK}…` within {START:?} (exit: {:?}); stderr:\n{}",
                    child.wait(),
                    log.lock().unwrap()
                );
            };
            if let Some(at) = line.find(MARK) {
                let addr = line[at + MARK.len()..].split_whitespace().next().unwrap();
                let addr = addr.parse().expect("hound logs a socket address");
                return Hound { child, addr };
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hound {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A register socket: the node is registered while it is open.
struct Registration(WebSocket<TcpStream>);

fn register(addr: SocketAddr, service: &str, ip: &str, port: u16, token: &str) -> Registration {
    let url = format!("ws://{addr}/etcd/register?service={service}&ip={ip}&port={port}");
    let url = if token.is_empty() {
        url
    } else {
        format!("{url}&token={token}")
    };
    register_url(&url)
}

/// A register socket that campaigns for leadership of its service.
fn campaign(addr: SocketAddr, service: &str, ip: &str, port: u16) -> Registration {
    register_url(&format!(
        "ws://{addr}/etcd/register?service={service}&ip={ip}&port={port}&campaign=1"
    ))
}

/// Registers through `url` (a whole `ws://…/etcd/register?…` URL) and reads its SYNC.
fn register_url(url: &str) -> Registration {
    let url = url.to_owned();
    let mut socket = ws_connect(&url);
    // Its own SYNC comes first, once the registration is in place.
    let deadline = Instant::now() + PROMPT;
    loop {
        assert!(Instant::now() < deadline, "no SYNC on {url}");
        match socket.read() {
            Ok(Message::Text(text)) if text.as_str().contains("\"SYNC\"") => break,
            Ok(_) => {}
            Err(tungstenite::Error::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => panic!("reading {url}: {err}"),
        }
    }
    Registration(socket)
}

impl Registration {
    /// Closes the socket cleanly, which deregisters the node at once.
    fn close(mut self) {
        let _ = self.0.close(None);
        let deadline = Instant::now() + PROMPT;
        while Instant::now() < deadline {
            match self.0.read() {
                Ok(_) => {}
                Err(tungstenite::Error::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
        panic!("hound did not complete the close handshake");
    }
}

/// A WebSocket client whose reads give up after 200 ms (`WouldBlock`), so every wait is bounded.
fn ws_connect(url: &str) -> WebSocket<TcpStream> {
    let authority = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or_else(|| panic!("not a ws:// URL: {url}"));
    let addr: SocketAddr = authority.parse().expect("a numeric host:port");
    let stream = TcpStream::connect_timeout(&addr, PROMPT).expect("connect");
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream.set_write_timeout(Some(PROMPT)).unwrap();
    let socket = match tungstenite::client(url, stream) {
        Ok((socket, _)) => socket,
        Err(err) => panic!("WebSocket handshake with {url}: {err}"),
    };
    socket
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    socket
}

// ---------------------------------------------------------------------------------------------
// Processes and the watchdog
// ---------------------------------------------------------------------------------------------

/// Spawns `command` with stderr collected (all of it into the log, each line also to the
/// receiver), and with `PR_SET_PDEATHSIG` so that it dies with the test thread that started it,
/// even when the watchdog aborts the binary.
fn spawn_logged(
    mut command: Command,
) -> io::Result<(Child, Arc<Mutex<String>>, mpsc::Receiver<String>)> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (send, lines) = mpsc::channel();
    let collected = Arc::clone(&log);
    thread::spawn(move || {
        for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line).into_owned();
            collected.lock().unwrap().push_str(&line);
            collected.lock().unwrap().push('\n');
            let _ = send.send(line);
        }
    });
    Ok((child, log, lines))
}

/// Aborts the test binary (taking the children along, see [`spawn_logged`]) if a test runs
/// longer than [`TEST_LIMIT`]; dropping it disarms it.
struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

fn watchdog() -> Watchdog {
    let name = thread::current().name().unwrap_or("?").to_owned();
    let (disarm, armed) = mpsc::channel::<()>();
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = armed.recv_timeout(TEST_LIMIT) {
            // Straight to fd 2: what `eprintln!` wrote would stay in the test's capture.
            let _ = writeln!(
                io::stderr(),
                "watchdog: {name} ran longer than {TEST_LIMIT:?}; aborting"
            );
            std::process::abort();
        }
    });
    Watchdog { _disarm: disarm }
}
