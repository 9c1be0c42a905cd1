//! Network namespaces for the hounds that get partitioned: one namespace per hound, joined to
//! the root namespace by one veth pair for its clients and one per etcd member, each pair a /30
//! of 10.213.0.0/16 used only between that namespace and the host side of its veth. Cutting a
//! member's link (its host side down) is a silent partition between that hound and that member
//! alone: the hound's packets vanish into a dead veth, the member's replies into a blackhole
//! route, and nothing ever leaves the machine.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

/// Namespaces this program made are called `hsoak-<pid>-h<n>`, so a later run can tell its
/// own stale ones (from a run that was killed) by their dead pid.
const PREFIX: &str = "hsoak-";
/// Every address of every link lies in here; a blackhole route for the whole range keeps
/// traffic to a cut link's far end from following the default route out of the machine.
const RANGE: &str = "10.213.0.0/16";
/// Links per hound: the clients' link and one per etcd member.
const LINKS: usize = 4;

/// One veth pair: `root_dev` in the root namespace with `host`, its peer inside the namespace
/// with `inner`.
pub struct Link {
    root_dev: String,
    pub host: Ipv4Addr,
    pub inner: Ipv4Addr,
}

impl Link {
    fn none() -> Link {
        Link {
            root_dev: String::new(),
            host: Ipv4Addr::UNSPECIFIED,
            inner: Ipv4Addr::UNSPECIFIED,
        }
    }
}

/// A hound's namespace and its links.
pub struct HoundNet {
    pub name: String,
    pub client: Link,
    pub members: Vec<Link>,
}

/// Every namespace of this run; removed on drop (also while unwinding from a panic).
pub struct Topology {
    pub hounds: Vec<HoundNet>,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|err| format!("cannot run `ip`: {err}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["netns", "exec", ns, "ip"];
    all.extend_from_slice(args);
    ip(&all)
}

/// Removes namespaces left by runs of this program that are no longer alive.
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("soak: removing stale namespace {name}");
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// The first block of addresses no other run on this machine uses.
fn free_block(hounds: usize) -> Result<u8, String> {
    let taken = ip(&["-o", "-4", "addr", "show"])?;
    let per_run = hounds * LINKS;
    (0..(240 / per_run))
        .map(|slot| (slot * per_run) as u8)
        .find(|&base| !taken.contains(&format!("10.213.{base}.1/")))
        .ok_or_else(|| "no free address block in 10.213.0.0/16".to_owned())
}

impl Topology {
    /// Makes a namespace per hound with its links, or says why it cannot (not root, no `ip`).
    pub fn create(hounds: usize, members: usize) -> Result<Topology, String> {
        assert!(members < LINKS, "one link per member and one for clients");
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".to_owned());
        }
        remove_stale();
        ip(&["route", "replace", "blackhole", RANGE])?;
        let base = free_block(hounds)?;
        let pid = std::process::id();
        let mut topology = Topology { hounds: Vec::new() };
        for h in 0..hounds {
            let name = format!("{PREFIX}{pid}-h{h}");
            ip(&["netns", "add", &name])?;
            // Pushed before its links exist, so a failure below still removes it on drop.
            topology.hounds.push(HoundNet {
                name: name.clone(),
                client: Link::none(),
                members: Vec::new(),
            });
            in_ns(&name, &["link", "set", "lo", "up"])?;
            for l in 0..=members {
                let third = base + (h * LINKS + l) as u8;
                let link = Link {
                    root_dev: format!("hsk{pid}h{h}l{l}"),
                    host: Ipv4Addr::new(10, 213, third, 1),
                    inner: Ipv4Addr::new(10, 213, third, 2),
                };
                let peer = format!("{}p", link.root_dev);
                let inner_dev = format!("l{l}");
                ip(&[
                    "link",
                    "add",
                    &link.root_dev,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &peer,
                ])?;
                ip(&["link", "set", &peer, "netns", &name])?;
                in_ns(&name, &["link", "set", &peer, "name", &inner_dev])?;
                ip(&[
                    "addr",
                    "add",
                    &format!("{}/30", link.host),
                    "dev",
                    &link.root_dev,
                ])?;
                in_ns(
                    &name,
                    &[
                        "addr",
                        "add",
                        &format!("{}/30", link.inner),
                        "dev",
                        &inner_dev,
                    ],
                )?;
                ip(&["link", "set", &link.root_dev, "up"])?;
                in_ns(&name, &["link", "set", &inner_dev, "up"])?;
                let net = topology.hounds.last_mut().expect("just pushed");
                if l == 0 {
                    net.client = link;
                } else {
                    net.members.push(link);
                }
            }
        }
        Ok(topology)
    }

    /// What runs a command inside hound `h`'s namespace.
    pub fn wrapper(&self, h: usize) -> Vec<String> {
        ["ip", "netns", "exec", &self.hounds[h].name]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }

    /// The address hound `h` listens on (its end of the clients' link).
    pub fn bind_addr(&self, h: usize) -> IpAddr {
        IpAddr::V4(self.hounds[h].client.inner)
    }

    /// The address member `m` takes hound `h`'s connections on.
    pub fn member_host(&self, h: usize, m: usize) -> IpAddr {
        IpAddr::V4(self.hounds[h].members[m].host)
    }

    /// Cuts (`up == false`) or restores the link between hound `h` and member `m`.
    pub fn set_link(&self, h: usize, m: usize, up: bool) {
        let dev = &self.hounds[h].members[m].root_dev;
        if let Err(err) = ip(&["link", "set", dev, if up { "up" } else { "down" }]) {
            panic!("cannot set {dev} {}: {err}", if up { "up" } else { "down" });
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for net in &self.hounds {
            // Deleting the namespace destroys its veth ends, and with them their peers.
            let _ = ip(&["netns", "del", &net.name]);
        }
        let others = ip(&["netns", "list"])
            .map(|list| list.lines().any(|l| l.starts_with(PREFIX)))
            .unwrap_or(true);
        if !others {
            let _ = ip(&["route", "del", "blackhole", RANGE]);
        }
    }
}
