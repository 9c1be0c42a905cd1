//! One DNS query in, one response out: decoded and encoded with hickory-proto, except that a
//! service's prepared answer is copied behind the client's own header and question.

use std::sync::Arc;

use hickory_proto::ProtoError;
use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::{DNSClass, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};

use super::zone::{HEADER_LEN, Lookup, Prepared, TTL, Zone, address_rdata};

/// The UDP payload hound offers in its EDNS0 record: the size DNS Flag Day 2020 settled on,
/// which crosses real networks unfragmented.
const OFFERED_UDP_PAYLOAD: u16 = 1232;
/// A UDP answer's limit without EDNS0 (RFC 1035).
const PLAIN_UDP_LIMIT: usize = 512;
/// A TCP answer's limit: its two-byte length prefix.
const TCP_LIMIT: usize = u16::MAX as usize;

/// How a query came, which decides how large its answer may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Answers queries from a zone.
#[derive(Debug)]
pub struct Responder {
    zone: Arc<Zone>,
    /// hound's own EDNS0 record, encoded once: it goes into every answer to an EDNS0 query.
    opt_record: Vec<u8>,
}

/// What the client said about EDNS0.
#[derive(Debug, Clone, Copy)]
struct ClientEdns {
    /// The largest UDP answer the client accepts (at least 512).
    payload: usize,
}

impl Responder {
    pub fn new(zone: Arc<Zone>) -> Responder {
        let mut opt_record = Vec::with_capacity(16);
        // Encoding a fixed, valid record into a Vec cannot fail.
        let _ = Record::from(&offered_edns()).emit(&mut BinEncoder::new(&mut opt_record));
        Responder { zone, opt_record }
    }

    /// Writes the response to `query` into `out`; false when the packet deserves none (it is a
    /// response itself, or too broken to tell whom to answer).
    pub fn answer(&self, query: &[u8], transport: Transport, out: &mut Vec<u8>) -> bool {
        out.clear();
        let message = match Message::from_vec(query) {
            Ok(message) => message,
            Err(_) => return format_error(query, out),
        };
        if message.metadata.message_type != MessageType::Query {
            // Answering a response could start a loop between two servers.
            return false;
        }
        let mut metadata = Metadata::response_from_request(&message.metadata);
        metadata.authoritative = true;
        let edns = message.edns.as_ref().map(|edns| ClientEdns {
            payload: usize::from(edns.max_payload()).max(PLAIN_UDP_LIMIT),
        });
        let limit = match (transport, edns) {
            (Transport::Tcp, _) => TCP_LIMIT,
            (Transport::Udp, Some(edns)) => edns.payload,
            (Transport::Udp, None) => PLAIN_UDP_LIMIT,
        };
        let reply = Reply {
            metadata,
            edns: edns.is_some(),
            limit,
        };
        let question = match message.queries.as_slice() {
            [question] => question,
            _ => return reply.code(ResponseCode::FormErr, None, out),
        };
        if message.metadata.op_code != OpCode::Query {
            return reply.code(ResponseCode::NotImp, Some(question), out);
        }
        if message.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
            return reply.code(ResponseCode::BADVERS, Some(question), out);
        }
        if question.query_class() != DNSClass::IN {
            return reply.code(ResponseCode::Refused, Some(question), out);
        }
        match self.zone.lookup(question.name()) {
            Lookup::Answers(answers) => match answers.for_type(question.query_type()) {
                Some(prepared) => self.copy_prepared(&reply, query, prepared, out),
                None => reply.records(Some(question), Vec::new(), out),
            },
            Lookup::Address(ip) => {
                let data = address_rdata(ip);
                let records = if data.record_type() == question.query_type() {
                    vec![Record::from_rdata(question.name().clone(), TTL, data)]
                } else {
                    Vec::new()
                };
                reply.records(Some(question), records, out)
            }
            Lookup::NoData => reply.records(Some(question), Vec::new(), out),
            Lookup::NxDomain => reply.code(ResponseCode::NXDomain, Some(question), out),
            Lookup::Refused => reply.code(ResponseCode::Refused, Some(question), out),
        }
    }

    /// The fast path: the client's header (as a response) and question, then as much of the
    /// prepared answer as fits — all of it, or the answers without the additional records
    /// (RFC 2181 §9: no TC for those), or nothing with TC.
    fn copy_prepared(
        &self,
        reply: &Reply,
        query: &[u8],
        prepared: &Prepared,
        out: &mut Vec<u8>,
    ) -> bool {
        let opt_len = if reply.edns { self.opt_record.len() } else { 0 };
        let (end, answers, additionals, truncated) =
            if prepared.bytes.len() + opt_len <= reply.limit {
                (
                    prepared.bytes.len(),
                    prepared.answers,
                    prepared.additionals,
                    false,
                )
            } else if prepared.answers_end + opt_len <= reply.limit {
                (prepared.answers_end, prepared.answers, 0, false)
            } else {
                (prepared.question_end, 0, 0, true)
            };
        let mut metadata = reply.metadata;
        metadata.truncation = truncated;
        let header = Header {
            metadata,
            counts: HeaderCounts {
                queries: 1,
                answers,
                authorities: 0,
                additionals: additionals + u16::from(reply.edns),
            },
        };
        out.reserve(end + opt_len);
        if header.emit(&mut BinEncoder::new(out)).is_err() {
            return false;
        }
        // The question as the client spelled it (resolvers check that it comes back, case
        // included); it only differs from the prepared one in case, or it is not this name.
        let canonical = &prepared.bytes[HEADER_LEN..prepared.question_end];
        match query.get(HEADER_LEN..prepared.question_end) {
            Some(asked) if asked.eq_ignore_ascii_case(canonical) => out.extend_from_slice(asked),
            _ => out.extend_from_slice(canonical),
        }
        out.extend_from_slice(&prepared.bytes[prepared.question_end..end]);
        if reply.edns {
            out.extend_from_slice(&self.opt_record);
        }
        true
    }
}

/// How to answer one query.
#[derive(Debug, Clone, Copy)]
struct Reply {
    metadata: Metadata,
    /// The query had an EDNS0 record, so the answer gets one.
    edns: bool,
    /// The largest answer the transport and the client allow.
    limit: usize,
}

impl Reply {
    /// An answer with `code` and no records.
    fn code(mut self, code: ResponseCode, question: Option<&Query>, out: &mut Vec<u8>) -> bool {
        self.metadata.response_code = code;
        self.records(question, Vec::new(), out)
    }

    /// An answer built and encoded by hickory, truncated (TC, no records) if it is too large.
    fn records(self, question: Option<&Query>, answers: Vec<Record>, out: &mut Vec<u8>) -> bool {
        let mut message = Message::new(
            self.metadata.id,
            MessageType::Response,
            self.metadata.op_code,
        );
        message.metadata = self.metadata;
        message.add_queries(question.cloned());
        message.add_answers(answers);
        if self.edns {
            message.set_edns(offered_edns());
        }
        match encode(&message, self.limit) {
            Ok(bytes) => {
                *out = bytes;
                true
            }
            Err(err) => {
                log::debug!("cannot encode a DNS answer: {err}");
                false
            }
        }
    }
}

/// `message` encoded, or its truncated form (TC set, no records) when it exceeds `limit`.
fn encode(message: &Message, limit: usize) -> Result<Vec<u8>, ProtoError> {
    let bytes = message.to_vec()?;
    if bytes.len() <= limit {
        return Ok(bytes);
    }
    message.truncate().to_vec()
}

/// FORMERR for a packet that does not decode, if at least its header does and it is a query;
/// otherwise nothing (there is no one to answer, or it answers us).
fn format_error(packet: &[u8], out: &mut Vec<u8>) -> bool {
    let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
        return false;
    };
    if header.metadata.message_type != MessageType::Query {
        return false;
    }
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = ResponseCode::FormErr;
    let reply = Reply {
        metadata,
        edns: false,
        limit: PLAIN_UDP_LIMIT,
    };
    reply.records(None, Vec::new(), out)
}

/// hound's EDNS0 record: version 0, its UDP payload.
fn offered_edns() -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(OFFERED_UDP_PAYLOAD);
    edns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Node;
    use hickory_proto::rr::{Name, RecordType};

    fn responder(nodes: usize) -> Responder {
        let zone = Arc::new(Zone::new("hound.").unwrap());
        let nodes = (1..=nodes)
            .map(|i| Node::parse_value(&format!("10.0.{}.{}:80", i / 256, i % 256)).unwrap())
            .collect();
        zone.update("api", nodes);
        Responder::new(zone)
    }

    fn query(name: &str, record_type: RecordType, edns_payload: Option<u16>) -> Vec<u8> {
        let mut message = Message::new(4242, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
        if let Some(payload) = edns_payload {
            let mut edns = Edns::new();
            edns.set_max_payload(payload);
            message.set_edns(edns);
        }
        message.to_vec().unwrap()
    }

    fn ask(responder: &Responder, packet: &[u8], transport: Transport) -> Message {
        let mut out = Vec::new();
        assert!(responder.answer(packet, transport, &mut out), "an answer");
        Message::from_vec(&out).expect("a valid response")
    }

    #[test]
    fn prepared_answers_carry_the_clients_id_flags_and_spelling() {
        let responder = responder(3);
        let packet = query("ApI.SeRvIcE.hOuNd.", RecordType::SRV, Some(4096));
        let response = ask(&responder, &packet, Transport::Udp);
        assert_eq!(response.metadata.id, 4242);
        assert_eq!(response.metadata.message_type, MessageType::Response);
        assert!(response.metadata.authoritative && response.metadata.recursion_desired);
        assert!(!response.metadata.truncation);
        assert_eq!(response.queries[0].name().to_ascii(), "ApI.SeRvIcE.hOuNd.");
        assert_eq!(response.answers.len(), 3);
        assert!(
            response
                .answers
                .iter()
                .all(|r| r.name.to_ascii() == "ApI.SeRvIcE.hOuNd.")
        );
        assert_eq!(response.additionals.len(), 3, "glue");
        assert_eq!(
            response.edns.as_ref().unwrap().max_payload(),
            OFFERED_UDP_PAYLOAD
        );
    }

    #[test]
    fn large_answers_lose_glue_then_get_tc_over_udp_only() {
        let responder = responder(40);
        let a = query("api.service.hound.", RecordType::A, None);
        let over_udp = ask(&responder, &a, Transport::Udp);
        assert!(over_udp.metadata.truncation && over_udp.answers.is_empty());
        assert_eq!(over_udp.queries.len(), 1);
        let over_tcp = ask(&responder, &a, Transport::Tcp);
        assert!(!over_tcp.metadata.truncation);
        assert_eq!(over_tcp.answers.len(), 40);
        let big_edns = ask(
            &responder,
            &query("api.service.hound.", RecordType::A, Some(4096)),
            Transport::Udp,
        );
        assert!(!big_edns.metadata.truncation);
        assert_eq!(big_edns.answers.len(), 40);

        // 25 SRV answers fit 1232 bytes, with their glue they do not: answers alone, no TC.
        let responder = super::tests::responder(25);
        let srv = query("api.service.hound.", RecordType::SRV, Some(1232));
        let response = ask(&responder, &srv, Transport::Udp);
        assert!(!response.metadata.truncation);
        assert_eq!(
            (response.answers.len(), response.additionals.len()),
            (25, 0)
        );
        assert!(response.edns.is_some());
    }

    #[test]
    fn codes_for_everything_else() {
        let responder = responder(1);
        let code = |packet: &[u8]| {
            ask(&responder, packet, Transport::Udp)
                .metadata
                .response_code
        };
        assert_eq!(
            code(&query("nope.service.hound.", RecordType::A, None)),
            ResponseCode::NXDomain
        );
        assert_eq!(
            code(&query("example.com.", RecordType::A, None)),
            ResponseCode::Refused
        );
        let nodata = ask(
            &responder,
            &query("api.service.hound.", RecordType::TXT, None),
            Transport::Udp,
        );
        assert_eq!(
            (nodata.metadata.response_code, nodata.answers.len()),
            (ResponseCode::NoError, 0)
        );
        let addr = ask(
            &responder,
            &query("10-1-2-3.addr.hound.", RecordType::A, None),
            Transport::Udp,
        );
        assert_eq!(addr.answers[0].data.to_string(), "10.1.2.3");
        let mut bad_version =
            Message::from_vec(&query("api.service.hound.", RecordType::A, Some(1232))).unwrap();
        bad_version.edns.as_mut().unwrap().set_version(1);
        let response = ask(&responder, &bad_version.to_vec().unwrap(), Transport::Udp);
        // BADVERS and BADSIG share code 16; hickory decodes it as BADSIG.
        assert_eq!(u16::from(response.metadata.response_code), 16);
        let mut two = Message::from_vec(&query("api.service.hound.", RecordType::A, None)).unwrap();
        two.add_query(Query::query(
            Name::from_ascii("x.hound.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(code(&two.to_vec().unwrap()), ResponseCode::FormErr);
    }

    #[test]
    fn broken_packets_get_formerr_or_nothing() {
        let responder = responder(1);
        let mut out = Vec::new();
        assert!(
            !responder.answer(&[1, 2, 3], Transport::Udp, &mut out),
            "no header: no answer"
        );
        let whole = query("api.service.hound.", RecordType::A, None);
        for cut in HEADER_LEN..whole.len() {
            assert!(responder.answer(&whole[..cut], Transport::Udp, &mut out));
            let response = Message::from_vec(&out).unwrap();
            assert_eq!(
                response.metadata.response_code,
                ResponseCode::FormErr,
                "cut at {cut}"
            );
        }
        let mut as_response = whole.clone();
        as_response[2] |= 0x80;
        assert!(
            !responder.answer(&as_response, Transport::Udp, &mut out),
            "never answer a response"
        );
    }
}
