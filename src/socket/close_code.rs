//! The WebSocket close codes hound sends, with the reason text that goes with each.

/// hound is shutting down.
pub const GOING_AWAY: u16 = 1001;
/// The client broke the WebSocket protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// The client sent a frame that is not UTF-8 text where text was required.
pub const INVALID_DATA: u16 = 1007;
/// The client sent a frame or message over the size limit.
pub const TOO_BIG: u16 = 1009;
/// The socket's queue filled up because the client does not read.
pub const TRY_AGAIN_LATER: u16 = 1013;
/// A newer registration of the same node on this hound took over.
pub const SUPERSEDED: u16 = 4000;

/// The close reason sent with `code`.
pub fn reason(code: u16) -> &'static str {
    match code {
        GOING_AWAY => "shutting down",
        PROTOCOL_ERROR => "protocol error",
        INVALID_DATA => "invalid data",
        TOO_BIG => "frame too big",
        TRY_AGAIN_LATER => "too slow: message queue full",
        SUPERSEDED => "superseded",
        _ => "",
    }
}
