//! PostgreSQL protocol framing and the few messages gavel writes itself.
//!
//! Frontend messages are decoded with `pgwire`'s codec; gavel forwards the
//! original bytes, never a re-encoding, so whatever it does not need to
//! understand reaches the server exactly as the client sent it.

use bytes::{Buf, BufMut, BytesMut};
use pgwire::messages::response::{
    CommandComplete, ErrorResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};
use pgwire::messages::{
    DecodeContext, PgWireBackendMessage, PgWireFrontendMessage, ProtocolVersion,
};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Startup-phase request codes (the protocol version field).
pub const SSL_REQUEST: u32 = 80_877_103;
/// GSSAPI encryption request (declined).
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// A cancel request on a fresh connection.
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol 3.0.
pub const PROTOCOL_3_0: u32 = 196_608;

/// Longest startup packet accepted (PostgreSQL's own limit).
pub const MAX_STARTUP: usize = 10_000;
/// Longest message accepted from an authenticated client. PostgreSQL
/// allows up to 1 GB; gavel holds a statement whole while it decides, so it
/// caps memory per connection lower.
pub const MAX_MESSAGE: usize = 256 << 20;
/// Longest message accepted before authentication (a password).
pub const MAX_AUTH_MESSAGE: usize = 4_096;

/// A protocol error: the peer sent something gavel will not pass on.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid message.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Reads one startup-phase packet (length-prefixed, no type byte) and
/// returns it whole, length included.
pub async fn read_startup_packet<R: AsyncRead + Unpin>(r: &mut R) -> Result<BytesMut, WireError> {
    let len = r.read_u32().await? as usize;
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(WireError::Protocol(format!(
            "invalid startup packet length {len}"
        )));
    }
    let mut buf = BytesMut::with_capacity(len);
    buf.put_u32(len as u32);
    buf.resize(len, 0);
    r.read_exact(&mut buf[4..]).await?;
    Ok(buf)
}

/// The code in a startup packet (protocol version or request code).
pub fn startup_code(packet: &[u8]) -> u32 {
    u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]])
}

/// Decodes a startup packet's parameters.
pub fn decode_startup(packet: &BytesMut) -> Result<pgwire::messages::startup::Startup, WireError> {
    let mut buf = packet.clone();
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    ctx.awaiting_frontend_ssl = false;
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        PgWireFrontendMessage::decode(&mut buf, &ctx)
    }))
    .map_err(|_| WireError::Protocol("malformed startup message".into()))?;
    match decoded {
        Ok(Some(PgWireFrontendMessage::Startup(s))) => Ok(s),
        Ok(_) => Err(WireError::Protocol("not a startup message".into())),
        Err(e) => Err(WireError::Protocol(e.to_string())),
    }
}

/// Decodes a cancel request: (process id, secret key).
pub fn decode_cancel(packet: &BytesMut) -> Result<(i32, i32), WireError> {
    if packet.len() != 16 {
        return Err(WireError::Protocol("a cancel request is 16 bytes".into()));
    }
    let mut b = &packet[8..];
    Ok((b.get_i32(), b.get_i32()))
}

/// Splits one whole message (type byte, length, body) off the front of
/// `buf`, or returns `None` until it has fully arrived.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(WireError::Protocol(format!(
            "message {:?} has invalid length {len}",
            buf[0] as char
        )));
    }
    if len > max {
        return Err(WireError::Protocol(format!(
            "message {:?} of {len} bytes exceeds the limit of {max}",
            buf[0] as char
        )));
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    Ok(Some(buf.split_to(len + 1)))
}

/// Whether the statement text and the statement and portal names of a
/// message are valid UTF-8. pgwire decodes strings lossily, while gavel
/// forwards the original bytes: two names that decode alike, or a statement
/// gavel reads differently from the server, must never get through.
fn strings_are_utf8(frame: &[u8]) -> Result<(), &'static str> {
    let body = &frame[5.min(frame.len())..];
    let (mut rest, count) = match frame[0] {
        b'Q' | b'E' => (body, 1),
        b'P' | b'B' => (body, 2),
        b'D' | b'C' => (body.get(1..).unwrap_or(&[]), 1),
        _ => (body, 0),
    };
    for _ in 0..count {
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Err("carries an unterminated string");
        };
        if std::str::from_utf8(&rest[..end]).is_err() {
            return Err("carries text that is not valid UTF-8");
        }
        rest = &rest[end + 1..];
    }
    Ok(())
}

/// Whether a message's fields (strings, fixed-size integers, the counted
/// arrays of Parse and Bind) fill its body exactly. pgwire 0.42 reads them
/// without checking and panics past the end (found by the `frontend` fuzz
/// target, for Parse and Execute); checking first turns such a message into
/// a protocol error.
fn counts_fit(frame: &[u8]) -> Result<(), &'static str> {
    fn skip_cstr(rest: &[u8]) -> Option<&[u8]> {
        let end = rest.iter().position(|&b| b == 0)?;
        Some(&rest[end + 1..])
    }
    fn take(rest: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
        (rest.len() >= n).then(|| rest.split_at(n))
    }
    fn count(rest: &[u8]) -> Option<(usize, &[u8])> {
        let (n, rest) = take(rest, 2)?;
        let n = i16::from_be_bytes([n[0], n[1]]);
        (n >= 0).then_some((n as usize, rest))
    }
    let body = &frame[5.min(frame.len())..];
    let fits = match frame[0] {
        b'P' => (|| {
            let rest = skip_cstr(skip_cstr(body)?)?;
            let (n, rest) = count(rest)?;
            (rest.len() == n * 4).then_some(())
        })(),
        b'B' => (|| {
            let rest = skip_cstr(skip_cstr(body)?)?;
            let (formats, rest) = count(rest)?;
            let (_, rest) = take(rest, formats * 2)?;
            let (params, mut rest) = count(rest)?;
            for _ in 0..params {
                let (len, after) = take(rest, 4)?;
                let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                rest = match len {
                    -1 => after,
                    n if n >= 0 => take(after, n as usize)?.1,
                    _ => return None,
                };
            }
            let (results, rest) = count(rest)?;
            (rest.len() == results * 2).then_some(())
        })(),
        b'E' => (|| (skip_cstr(body)?.len() == 4).then_some(()))(),
        b'Q' | b'f' => (|| skip_cstr(body)?.is_empty().then_some(()))(),
        b'D' | b'C' => (|| skip_cstr(body.get(1..)?)?.is_empty().then_some(()))(),
        b'S' | b'H' | b'X' | b'c' => body.is_empty().then_some(()),
        _ => Some(()),
    };
    fits.ok_or("has fields that do not match its length")
}

/// Decodes one whole frontend message (after startup).
pub fn decode_frontend(frame: &[u8]) -> Result<PgWireFrontendMessage, WireError> {
    if let Err(why) = strings_are_utf8(frame).and_then(|()| counts_fit(frame)) {
        return Err(WireError::Protocol(format!(
            "message {:?} {why}",
            frame[0] as char
        )));
    }
    let mut buf = BytesMut::from(frame);
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    ctx.awaiting_frontend_ssl = false;
    ctx.awaiting_frontend_startup = false;
    // pgwire 0.42 can panic on some malformed bodies (found by the
    // `frontend` fuzz target: `P\0\0\0\x06;\x80`); a hostile client must
    // get a protocol error, never a panicking task.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        PgWireFrontendMessage::decode(&mut buf, &ctx)
    }))
    .map_err(|_| WireError::Protocol(format!("message {:?} is malformed", frame[0] as char)))?;
    match decoded {
        Ok(Some(m)) if buf.is_empty() => Ok(m),
        Ok(Some(_)) => Err(WireError::Protocol(format!(
            "message {:?} has trailing bytes",
            frame[0] as char
        ))),
        Ok(None) => Err(WireError::Protocol(format!(
            "message {:?} is truncated",
            frame[0] as char
        ))),
        Err(e) => Err(WireError::Protocol(e.to_string())),
    }
}

/// Reads the NUL-terminated string at the start of `body`.
pub fn cstr(body: &[u8]) -> Option<&str> {
    let end = body.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&body[..end]).ok()
}

fn encode(msg: PgWireBackendMessage, out: &mut BytesMut) {
    // Encoding into a BytesMut cannot fail for these messages; a failure
    // would mean a pgwire bug, and the connection then sees a short reply.
    if let Err(e) = msg.encode(out) {
        tracing::error!(error = %e, "encoding a backend message failed");
    }
}

/// An `ErrorResponse`.
pub fn error(
    out: &mut BytesMut,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let mut fields = vec![
        (b'S', "ERROR".to_owned()),
        (b'V', "ERROR".to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ];
    if let Some(d) = detail {
        fields.push((b'D', d.to_owned()));
    }
    if let Some(h) = hint {
        fields.push((b'H', h.to_owned()));
    }
    encode(
        PgWireBackendMessage::ErrorResponse(ErrorResponse::new(fields)),
        out,
    );
}

/// A `FATAL` `ErrorResponse` (the connection ends after it).
pub fn fatal(out: &mut BytesMut, code: &str, message: &str) {
    let fields = vec![
        (b'S', "FATAL".to_owned()),
        (b'V', "FATAL".to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ];
    encode(
        PgWireBackendMessage::ErrorResponse(ErrorResponse::new(fields)),
        out,
    );
}

/// `ReadyForQuery` with the given transaction status byte.
pub fn ready(out: &mut BytesMut, status: u8) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(
        PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(status)),
        out,
    );
}

/// `CommandComplete`.
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    encode(
        PgWireBackendMessage::CommandComplete(CommandComplete::new(tag.to_owned())),
        out,
    );
}

/// A RowDescription of text columns named `names`.
pub fn row_description(out: &mut BytesMut, names: &[&str]) {
    let mut body = Vec::new();
    body.extend_from_slice(&(names.len() as i16).to_be_bytes());
    for name in names {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(&0i32.to_be_bytes()); // table
        body.extend_from_slice(&0i16.to_be_bytes()); // column
        body.extend_from_slice(&25i32.to_be_bytes()); // text
        body.extend_from_slice(&(-1i16).to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes()); // text format
    }
    out.extend_from_slice(b"T");
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&body);
}

/// A DataRow of text values (`None` is NULL).
pub fn data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    let mut body = Vec::new();
    body.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        match v {
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v.as_bytes());
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    out.extend_from_slice(b"D");
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&body);
}

/// `AuthenticationCleartextPassword`.
pub fn ask_password(out: &mut BytesMut) {
    encode(
        PgWireBackendMessage::Authentication(Authentication::CleartextPassword),
        out,
    );
}

/// `AuthenticationOk`.
pub fn auth_ok(out: &mut BytesMut) {
    encode(
        PgWireBackendMessage::Authentication(Authentication::Ok),
        out,
    );
}

/// `ParameterStatus`.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    encode(
        PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
            name.to_owned(),
            value.to_owned(),
        )),
        out,
    );
}

/// `BackendKeyData`.
pub fn backend_key(out: &mut BytesMut, pid: i32, secret: i32) {
    encode(
        PgWireBackendMessage::BackendKeyData(BackendKeyData::new(pid, SecretKey::I32(secret))),
        out,
    );
}

/// `NegotiateProtocolVersion`: gavel speaks 3.0 and none of `options`.
pub fn negotiate_protocol(out: &mut BytesMut, options: Vec<String>) {
    encode(
        PgWireBackendMessage::NegotiateProtocolVersion(NegotiateProtocolVersion::new(0, options)),
        out,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_only_when_whole_and_lengths_are_checked() {
        let mut b = BytesMut::from(&b"Q\x00\x00\x00\x0dSELECT 1\x00X"[..]);
        let f = split_frame(&mut b, MAX_MESSAGE).unwrap().unwrap();
        assert_eq!(&f[..], b"Q\x00\x00\x00\x0dSELECT 1\x00");
        assert_eq!(&b[..], b"X");
        assert!(split_frame(&mut b, MAX_MESSAGE).unwrap().is_none());
        let mut bad = BytesMut::from(&b"Q\x00\x00\x00\x02"[..]);
        assert!(split_frame(&mut bad, MAX_MESSAGE).is_err());
        let mut big = BytesMut::from(&b"Q\x7f\x00\x00\x00"[..]);
        assert!(split_frame(&mut big, MAX_MESSAGE).is_err());
    }

    #[test]
    fn decode_rejects_trailing_and_truncated_bodies() {
        assert!(matches!(
            decode_frontend(b"Q\x00\x00\x00\x0dSELECT 1\x00"),
            Ok(PgWireFrontendMessage::Query(_))
        ));
        assert!(decode_frontend(b"Q\x00\x00\x00\x0cSELECT 1").is_err());
        assert!(decode_frontend(b"Z\x00\x00\x00\x04").is_err());
        // Text that is not UTF-8 (pgwire would decode it lossily).
        assert!(decode_frontend(b"Q\x00\x00\x00\x0dSELECT\x951\x00").is_err());
        assert!(decode_frontend(b"P\x00\x00\x00\x0e\xff\x00SELECT\x00\x00\x00").is_err());
        // Found by the fuzzer: pgwire panicked on this Parse body.
        assert!(decode_frontend(b"P\x00\x00\x00\x06;\x80").is_err());
        // FunctionCall is not passed on.
        assert!(decode_frontend(b"F\x00\x00\x00\x04").is_err());
        // A length that disagrees with the content.
        assert!(decode_frontend(b"Q\x00\x00\x00\x0cDROP\x00abc").is_err());
        assert!(decode_frontend(b"E\x00\x00\x00\x0a\x00\x00\x00\x00\x00\x00").is_err());
    }

    #[test]
    fn counts_beyond_the_body_are_protocol_errors() {
        // Found by the fuzzer: a Parse whose parameter count runs past its
        // end made pgwire panic.
        let crash = b"P\x00\x00\x00$SELDOP  C1TERQ\x00\x00\x00\x16NOTIFY jobs, '";
        assert!(decode_frontend(&crash[..]).is_err());
        // Parse: two parameter types declared, one present.
        assert!(
            decode_frontend(b"P\x00\x00\x00\x12\x00SELECT $1\x00\x00\x02\x00\x00\x00\x17").is_err()
        );
        assert!(matches!(
            decode_frontend(
                b"P\x00\x00\x00\x16\x00SELECT $1\x00\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19"
            ),
            Ok(PgWireFrontendMessage::Parse(_))
        ));
        // Bind: one parameter of 5 bytes declared, 2 present.
        assert!(
            decode_frontend(b"B\x00\x00\x00\x10\x00\x00\x00\x00\x00\x01\x00\x00\x00\x05ab")
                .is_err()
        );
        // Found by the fuzzer: an Execute without its row limit.
        assert!(decode_frontend(b"E\x00\x00\x00\x05\x00").is_err());
        assert!(matches!(
            decode_frontend(b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"),
            Ok(PgWireFrontendMessage::Execute(_))
        ));
        assert!(decode_frontend(b"S\x00\x00\x00\x05\x00").is_err());
        assert!(decode_frontend(b"D\x00\x00\x00\x04").is_err());
        // A negative length other than -1 (NULL).
        assert!(
            decode_frontend(b"B\x00\x00\x00\x10\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00")
                .is_err()
        );
        assert!(matches!(
            decode_frontend(b"B\x00\x00\x00\x12\x00\x00\x00\x00\x00\x01\x00\x00\x00\x02ab\x00\x00"),
            Ok(PgWireFrontendMessage::Bind(_))
        ));
        assert!(matches!(
            decode_frontend(b"B\x00\x00\x00\x10\x00\x00\x00\x00\x00\x01\xff\xff\xff\xff\x00\x00"),
            Ok(PgWireFrontendMessage::Bind(_))
        ));
    }
}
