//! The DNS view of the mirror: every service's A, AAAA and SRV answers, encoded once whenever
//! its membership changes, so that answering a query costs a lookup and a copy.
//!
//! The hub calls [`Zone::update`] under its lock with a service's new nodes, before the change
//! goes out to the sockets; queries read the published answers behind a read lock the writers
//! hold only to swap a service's entries in.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, RwLock};

use hickory_proto::ProtoError;
use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::error::{Error, Result};
use crate::names::Node;

/// Every answer's TTL: the mirror changes the moment etcd does, so nothing may be cached.
pub const TTL: u32 = 0;
/// Where service names live under the domain.
const SERVICE_LABEL: &str = "service";
/// `.service`, the end of every relative service name.
const SERVICE_SUFFIX: &str = ".service";
/// Where the addresses SRV targets name live under the domain.
const ADDR_LABEL: &str = "addr";
/// The SRV priority of every node (the contract has no priorities).
const SRV_PRIORITY: u16 = 1;
/// The length of a DNS header.
pub const HEADER_LEN: usize = 12;

/// One response, encoded for the lower-case spelling of its question with ID 0, ready to be
/// copied behind any spelling of it: record names point back at the question (name
/// compression), and a question spelled in another case has the same length and structure.
#[derive(Debug)]
pub struct Prepared {
    /// Header, question, answers, additional records.
    pub bytes: Vec<u8>,
    /// Where the question ends and the answers start.
    pub question_end: usize,
    /// Where the answers end and the additional records start.
    pub answers_end: usize,
    pub answers: u16,
    pub additionals: u16,
}

/// The prepared answers of one name; a type without one is answered NOERROR, empty.
#[derive(Debug)]
pub struct NameAnswers {
    a: Option<Prepared>,
    aaaa: Option<Prepared>,
    srv: Prepared,
}

impl NameAnswers {
    /// The prepared answer to a query of `record_type`, if the name has one.
    pub fn for_type(&self, record_type: RecordType) -> Option<&Prepared> {
        match record_type {
            RecordType::A => self.a.as_ref(),
            RecordType::AAAA => self.aaaa.as_ref(),
            RecordType::SRV => Some(&self.srv),
            _ => None,
        }
    }
}

/// What a name is, in the zone.
#[derive(Debug)]
pub enum Lookup {
    /// A service name (or its SRV or tag form) with prepared answers.
    Answers(Arc<NameAnswers>),
    /// The name exists but has no records: NOERROR, no answers.
    NoData,
    /// An `.addr.` name: the address it spells.
    Address(IpAddr),
    /// Under the domain, but names nothing: NXDOMAIN.
    NxDomain,
    /// Outside the domain: REFUSED.
    Refused,
}

/// The answers queries read.
#[derive(Debug, Default)]
struct Published {
    /// Prepared answers by relative lower-case name (`api.service`, `_api._tcp.service`,
    /// `v2.api.service`).
    names: HashMap<String, Arc<NameAnswers>>,
    /// The names each service put in `names`, to take them out again.
    by_service: HashMap<String, Vec<String>>,
    /// Names that exist only because a longer one does (`_tcp.service`, and `b.service` for a
    /// service `a.b`), with how many names make each exist. RFC 8020: answering NXDOMAIN
    /// there would tell a resolver that nothing below exists.
    empty_non_terminals: HashMap<String, usize>,
}

impl Published {
    /// Replaces the names of service `lower` with `names`.
    fn replace(&mut self, lower: &str, names: Vec<(String, Arc<NameAnswers>)>) {
        for old in self.by_service.remove(lower).unwrap_or_default() {
            self.names.remove(&old);
            for suffix in proper_suffixes(&old) {
                if let Some(count) = self.empty_non_terminals.get_mut(suffix) {
                    *count -= 1;
                    if *count == 0 {
                        self.empty_non_terminals.remove(suffix);
                    }
                }
            }
        }
        if names.is_empty() {
            return;
        }
        let mut keys = Vec::with_capacity(names.len());
        for (name, answers) in names {
            for suffix in proper_suffixes(&name) {
                *self
                    .empty_non_terminals
                    .entry(suffix.to_owned())
                    .or_default() += 1;
            }
            self.names.insert(name.clone(), answers);
            keys.push(name);
        }
        self.by_service.insert(lower.to_owned(), keys);
    }

    /// Whether `relative` (lower case) lies below the name of a service with nodes, as a tag
    /// that no node carries does.
    fn below_a_service(&self, relative: &str) -> bool {
        let Some(inner) = relative.strip_suffix(SERVICE_SUFFIX) else {
            return false;
        };
        proper_suffixes(inner).any(|service| self.by_service.contains_key(service))
    }
}

/// `b.c` and `c` for `a.b.c`.
fn proper_suffixes(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('.').map(move |(at, _)| &name[at + 1..])
}

/// The DNS zone hound answers for: `--dns-domain` and what lies below it.
#[derive(Debug)]
pub struct Zone {
    /// The domain, lower case and fully qualified.
    domain: Name,
    published: RwLock<Published>,
    /// Each DNS name's services: names are case-insensitive, so `Api` and `api` are one name
    /// and answer with the nodes of both. Only writers use it, one at a time.
    services: Mutex<HashMap<String, BTreeMap<String, Vec<Node>>>>,
}

impl Zone {
    /// An empty zone for `domain` (e.g. `hound.`).
    pub fn new(domain: &str) -> Result<Zone> {
        Ok(Zone {
            domain: parse_domain(domain)?,
            published: RwLock::default(),
            services: Mutex::default(),
        })
    }

    /// Takes `service`'s new nodes (all of them, healthy or not; empty when it has none left)
    /// and publishes its answers.
    pub fn update(&self, service: &str, nodes: Vec<Node>) {
        let lower = service.to_ascii_lowercase();
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let variants = services.entry(lower.clone()).or_default();
        if nodes.is_empty() {
            variants.remove(service);
        } else {
            variants.insert(service.to_owned(), nodes);
        }
        let mut all: Vec<Node> = variants.values().flatten().cloned().collect();
        all.sort();
        all.dedup_by(|a, b| a.same_address(b));
        if variants.is_empty() {
            services.remove(&lower);
        }
        let names = match self.prepare_service(&lower, &all) {
            Ok(names) => names,
            Err(err) => {
                // A service name with an empty label (`a..b`) or one over 63 characters has
                // no DNS name.
                log::warn!("service {service:?} cannot be named in DNS: {err}");
                Vec::new()
            }
        };
        self.published
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(&lower, names);
    }

    /// What `name` is in the zone.
    pub fn lookup(&self, name: &Name) -> Lookup {
        if !self.domain.zone_of(name) {
            return Lookup::Refused;
        }
        let relative_labels = usize::from(name.num_labels() - self.domain.num_labels());
        let Some(relative) = relative_name(name, relative_labels) else {
            return Lookup::NxDomain;
        };
        if relative.is_empty() || relative == SERVICE_LABEL || relative == ADDR_LABEL {
            return Lookup::NoData;
        }
        if let Some(address) = relative.strip_suffix(ADDR_LABEL) {
            return match address.strip_suffix('.').and_then(parse_address_label) {
                Some(ip) => Lookup::Address(ip),
                None => Lookup::NxDomain,
            };
        }
        let published = self.published.read().unwrap_or_else(|p| p.into_inner());
        if let Some(answers) = published.names.get(&relative) {
            return Lookup::Answers(answers.clone());
        }
        if published.empty_non_terminals.contains_key(&relative)
            || published.below_a_service(&relative)
        {
            return Lookup::NoData;
        }
        Lookup::NxDomain
    }

    /// The names service `lower` answers for, with their answers; none when it has no nodes.
    fn prepare_service(
        &self,
        lower: &str,
        nodes: &[Node],
    ) -> std::result::Result<Vec<(String, Arc<NameAnswers>)>, ProtoError> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        // Healthy nodes only: `Node::is_healthy` is the one place that decides.
        let healthy: Vec<&Node> = nodes.iter().filter(|node| node.is_healthy()).collect();
        let plain = format!("{lower}.{SERVICE_LABEL}");
        let srv_form = format!("_{lower}._tcp.{SERVICE_LABEL}");
        let mut names = vec![
            (plain.clone(), self.prepare_name(&plain, &healthy, true)?),
            (
                srv_form.clone(),
                self.prepare_name(&srv_form, &healthy, false)?,
            ),
        ];
        // DNS names are case-insensitive, so `V2` and `v2` are one name listing both.
        let mut tags: Vec<String> = healthy
            .iter()
            .flat_map(|node| node.tags())
            .map(|tag| tag.to_ascii_lowercase())
            .collect();
        tags.sort();
        tags.dedup();
        for tag in tags {
            let tagged: Vec<&Node> = healthy
                .iter()
                .copied()
                .filter(|node| node.tags().iter().any(|own| own.eq_ignore_ascii_case(&tag)))
                .collect();
            let name = format!("{tag}.{plain}");
            // A tag that makes no DNS name (one with an empty label, `a..b`) costs only its
            // own name, not the service's.
            match self.prepare_name(&name, &tagged, true) {
                Ok(answers) => names.push((name, answers)),
                Err(err) => log::debug!("tag {tag:?} of {lower} has no DNS name: {err}"),
            }
        }
        Ok(names
            .into_iter()
            .map(|(name, answers)| (name, Arc::new(answers)))
            .collect())
    }

    /// The answers of one name for `nodes`: SRV always, A and AAAA if `addresses`.
    fn prepare_name(
        &self,
        relative: &str,
        nodes: &[&Node],
        addresses: bool,
    ) -> std::result::Result<NameAnswers, ProtoError> {
        let name = Name::from_labels(relative.split('.').map(str::as_bytes))?
            .append_domain(&self.domain)?;
        let mut ips: Vec<IpAddr> = nodes.iter().filter_map(|node| node.ip()).collect();
        ips.sort();
        ips.dedup();
        let (a, aaaa) = if addresses {
            let own_name = |_| Ok(name.clone());
            let v4 = address_records(ips.iter().filter(|ip| ip.is_ipv4()), own_name)?;
            let v6 = address_records(ips.iter().filter(|ip| ip.is_ipv6()), own_name)?;
            (
                Some(prepare(&name, RecordType::A, v4, Vec::new())?),
                Some(prepare(&name, RecordType::AAAA, v6, Vec::new())?),
            )
        } else {
            (None, None)
        };
        let mut srv = Vec::with_capacity(nodes.len());
        for node in nodes {
            let target = self.target(node)?;
            let rdata = SRV::new(SRV_PRIORITY, node.weight(), node.port, target);
            srv.push(Record::from_rdata(name.clone(), TTL, RData::SRV(rdata)));
        }
        // The targets' addresses, so a client needs no second query.
        let glue = address_records(ips.iter(), |ip| self.address_name(ip))?;
        let srv = prepare(&name, RecordType::SRV, srv, glue)?;
        Ok(NameAnswers { a, aaaa, srv })
    }

    /// The SRV target of `node`: `<ip>.addr.<domain>`, or its host name.
    fn target(&self, node: &Node) -> std::result::Result<Name, ProtoError> {
        match node.ip() {
            Some(ip) => self.address_name(ip),
            None => {
                let mut name = Name::from_ascii(node.host.as_str())?;
                name.set_fqdn(true);
                Ok(name)
            }
        }
    }

    /// `10-0-0-1.addr.<domain>` for 10.0.0.1, `2001-db8--1.addr.<domain>` for 2001:db8::1.
    pub fn address_name(&self, ip: IpAddr) -> std::result::Result<Name, ProtoError> {
        // From raw labels: hickory's text parser refuses a label that starts with `-` (`--1`).
        let label = address_label(ip);
        Name::from_labels([label.as_bytes(), ADDR_LABEL.as_bytes()])?.append_domain(&self.domain)
    }
}

/// The lower-case relative part of `name` (its first `labels` labels, joined with dots);
/// `None` if a label holds a dot or is not ASCII, which no name of the zone does.
fn relative_name(name: &Name, labels: usize) -> Option<String> {
    let mut relative = String::with_capacity(name.len());
    for label in name.iter().take(labels) {
        if label.contains(&b'.') || !label.is_ascii() {
            return None;
        }
        if !relative.is_empty() {
            relative.push('.');
        }
        relative.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    Some(relative)
}

/// An address as one DNS label: `.` and `:` become `-`. An IPv6 address the standard library
/// would print with a dotted IPv4 tail (`::ffff:10.0.0.1`) is written as eight groups, so the
/// label reads back as the same address.
pub fn address_label(ip: IpAddr) -> String {
    let text = match ip {
        IpAddr::V6(v6) if v6.to_string().contains('.') => {
            let groups: Vec<String> = v6.segments().iter().map(|g| format!("{g:x}")).collect();
            groups.join(":")
        }
        ip => ip.to_string(),
    };
    text.replace(['.', ':'], "-")
}

/// The address an `.addr.` label spells, if it spells one.
fn parse_address_label(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// An A or AAAA record for each of `ips`, owned by the name `owner` gives it.
fn address_records<'a>(
    ips: impl Iterator<Item = &'a IpAddr>,
    owner: impl Fn(IpAddr) -> std::result::Result<Name, ProtoError>,
) -> std::result::Result<Vec<Record>, ProtoError> {
    ips.map(|ip| Ok(Record::from_rdata(owner(*ip)?, TTL, address_rdata(*ip))))
        .collect()
}

/// The A or AAAA data of `ip`.
pub fn address_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// Encodes the response to a `record_type` query of `name` (ID 0) and notes where its
/// sections end.
fn prepare(
    name: &Name,
    record_type: RecordType,
    answers: Vec<Record>,
    additionals: Vec<Record>,
) -> std::result::Result<Prepared, ProtoError> {
    let mut message = Message::response(0, OpCode::Query);
    message.metadata.authoritative = true;
    message.add_query(Query::query(name.clone(), record_type));
    let question_end = message.to_vec()?.len();
    let answer_count = answers.len();
    message.add_answers(answers);
    let answers_end = message.to_vec()?.len();
    let additional_count = additionals.len();
    message.add_additionals(additionals);
    let bytes = message.to_vec()?;
    let count = |n: usize| u16::try_from(n).map_err(|_| ProtoError::Message("too many records"));
    Ok(Prepared {
        bytes,
        question_end,
        answers_end,
        answers: count(answer_count)?,
        additionals: count(additional_count)?,
    })
}

/// Checks `--dns-domain`: a domain name, made fully qualified and lower case.
pub fn parse_domain(domain: &str) -> Result<Name> {
    let bad = |why: String| Error::Config(format!("--dns-domain {domain:?} {why}"));
    let mut name =
        Name::from_ascii(domain).map_err(|err| bad(format!("is not a domain name: {err}")))?;
    if name.num_labels() == 0 {
        return Err(bad("must not be the root".into()));
    }
    let valid = name.iter().all(|label| {
        !label.is_empty()
            && label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    });
    if !valid {
        return Err(bad("may only hold labels of A-Z a-z 0-9 - _".into()));
    }
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::describe::Status;

    fn node(value: &str) -> Node {
        Node::parse_value(value).unwrap()
    }

    fn lookup(zone: &Zone, name: &str) -> Lookup {
        zone.lookup(&Name::from_ascii(name).unwrap())
    }

    fn answers(zone: &Zone, name: &str) -> Arc<NameAnswers> {
        match lookup(zone, name) {
            Lookup::Answers(answers) => answers,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn records(prepared: &Prepared) -> Message {
        Message::from_vec(&prepared.bytes).unwrap()
    }

    #[test]
    fn services_answer_a_aaaa_and_srv_with_glue() {
        let zone = Zone::new("hound.").unwrap();
        zone.update(
            "api",
            vec![
                node("10.0.0.2:80"),
                node("10.0.0.1:81"),
                node("10.0.0.1:80"),
                node("[::1]:8080"),
                node("db.example:5432"),
            ],
        );
        let api = answers(&zone, "API.service.hound.");
        let a = records(api.for_type(RecordType::A).unwrap());
        let ips: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(ips, ["10.0.0.1", "10.0.0.2"], "one A per address, sorted");
        assert!(a.answers.iter().all(|r| r.ttl == 0));
        let aaaa = records(api.for_type(RecordType::AAAA).unwrap());
        assert_eq!(aaaa.answers.len(), 1);
        let srv = records(api.for_type(RecordType::SRV).unwrap());
        let targets: Vec<String> = srv.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(
            targets,
            [
                "1 1 80 10-0-0-1.addr.hound.",
                "1 1 81 10-0-0-1.addr.hound.",
                "1 1 80 10-0-0-2.addr.hound.",
                "1 1 8080 \\--1.addr.hound.",
                "1 1 5432 db.example."
            ]
        );
        let glue: Vec<String> = srv
            .additionals
            .iter()
            .map(|r| format!("{} {}", r.name, r.data))
            .collect();
        assert_eq!(
            glue,
            [
                "10-0-0-1.addr.hound. 10.0.0.1",
                "10-0-0-2.addr.hound. 10.0.0.2",
                "\\--1.addr.hound. ::1"
            ]
        );
        let srv_form = answers(&zone, "_api._tcp.service.hound.");
        assert!(srv_form.for_type(RecordType::A).is_none());
        assert_eq!(
            records(srv_form.for_type(RecordType::SRV).unwrap())
                .answers
                .len(),
            5
        );
    }

    fn described(value: &str, tags: &[&str], weight: u16, status: Option<Status>) -> Node {
        let mut node = node(value);
        node.about.tags = tags.iter().map(|t| t.to_string()).collect();
        node.about.weight = weight;
        node.about.status = status;
        node
    }

    #[test]
    fn weights_tags_and_health_shape_the_answers() {
        let zone = Zone::new("hound.").unwrap();
        zone.update(
            "api",
            vec![
                described("10.0.0.1:80", &["v2", "Canary"], 10, None),
                described("10.0.0.2:80", &["v1"], 1, Some(Status::Warning)),
                described("10.0.0.3:80", &["v2"], 5, Some(Status::Critical)),
                described("10.0.0.4:80", &["v2"], 5, Some(Status::Draining)),
            ],
        );
        let api = answers(&zone, "api.service.hound.");
        let srv = records(api.for_type(RecordType::SRV).unwrap());
        let shown: Vec<String> = srv.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(
            shown,
            [
                "1 10 80 10-0-0-1.addr.hound.",
                "1 1 80 10-0-0-2.addr.hound."
            ],
            "healthy only (passing, warning), each with its weight"
        );
        let v2 = answers(&zone, "v2.api.service.hound.");
        let a = records(v2.for_type(RecordType::A).unwrap());
        let ips: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(ips, ["10.0.0.1"], "a tag lists its healthy nodes only");
        let canary = answers(&zone, "CANARY.api.service.hound.");
        assert_eq!(
            records(canary.for_type(RecordType::A).unwrap())
                .answers
                .len(),
            1
        );
        assert!(matches!(
            lookup(&zone, "v3.api.service.hound."),
            Lookup::NoData | Lookup::NxDomain
        ));
        zone.update(
            "db",
            vec![described("10.0.0.9:5432", &[], 1, Some(Status::Critical))],
        );
        let db = answers(&zone, "db.service.hound.");
        let a = db.for_type(RecordType::A).map(records);
        assert!(
            a.is_none_or(|a| a.answers.is_empty()),
            "a service with nodes but none healthy has no answers"
        );
    }

    #[test]
    fn names_without_services_and_outside_the_domain() {
        let zone = Zone::new("Hound").unwrap();
        zone.update("a.b", vec![node("10.0.0.1:1")]);
        assert!(matches!(
            lookup(&zone, "a.b.service.hound."),
            Lookup::Answers(_)
        ));
        let nodata = |name: &str| matches!(lookup(&zone, name), Lookup::NoData);
        let existing = [
            "hound.",
            "service.hound.",
            "addr.hound.",
            "b.service.hound.",
        ];
        let more = ["_tcp.service.hound.", "v2.a.b.service.hound."];
        for name in existing.iter().chain(&more) {
            assert!(nodata(name), "{name}");
        }
        for missing in [
            "c.service.hound.",
            "x.hound.",
            "a.service.hound.",
            "nope.addr.hound.",
        ] {
            assert!(
                matches!(lookup(&zone, missing), Lookup::NxDomain),
                "{missing}"
            );
        }
        assert!(matches!(lookup(&zone, "example.com."), Lookup::Refused));
        assert!(matches!(lookup(&zone, "hound.example."), Lookup::Refused));
        zone.update("a.b", Vec::new());
        assert!(matches!(
            lookup(&zone, "a.b.service.hound."),
            Lookup::NxDomain
        ));
        assert!(matches!(
            lookup(&zone, "b.service.hound."),
            Lookup::NxDomain
        ));
    }

    #[test]
    fn names_differing_in_case_share_their_nodes() {
        let zone = Zone::new("hound.").unwrap();
        zone.update("Api", vec![node("10.0.0.1:1")]);
        zone.update("api", vec![node("10.0.0.2:1")]);
        let a = records(
            answers(&zone, "api.service.hound.")
                .for_type(RecordType::A)
                .unwrap(),
        );
        assert_eq!(a.answers.len(), 2);
        zone.update("Api", Vec::new());
        let a = records(
            answers(&zone, "api.service.hound.")
                .for_type(RecordType::A)
                .unwrap(),
        );
        assert_eq!(a.answers.len(), 1);
    }

    #[test]
    fn address_labels_read_back() {
        for ip in [
            "10.0.0.1",
            "::1",
            "2001:db8::7",
            "::ffff:10.0.0.1",
            "fe80::1:2",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(parse_address_label(&address_label(ip)), Some(ip), "{ip}");
        }
        assert_eq!(address_label("10.0.0.1".parse().unwrap()), "10-0-0-1");
        assert_eq!(address_label("2001:db8::1".parse().unwrap()), "2001-db8--1");
        assert_eq!(parse_address_label("nope"), None);
        let zone = Zone::new("hound.").unwrap();
        assert!(
            matches!(lookup(&zone, "10-0-0-1.ADDR.hound."), Lookup::Address(ip) if ip == IpAddr::from([10, 0, 0, 1]))
        );
    }

    #[test]
    fn domains_are_checked() {
        assert_eq!(parse_domain("Hound").unwrap().to_string(), "hound.");
        assert_eq!(
            parse_domain("sd.example.").unwrap().to_string(),
            "sd.example."
        );
        for bad in ["", ".", "a..b", "a b", "a/b"] {
            assert!(parse_domain(bad).is_err(), "{bad:?}");
        }
    }
}
