//! Protocol detection: reads the first bytes of a connection and decides
//! whether it speaks HTTP/1.x, HTTP/2 (prior knowledge) or something else.
//!
//! A decision is made as soon as the bytes rule out HTTP, so TLS from the
//! app and other client-speaks-first protocols are forwarded without delay;
//! only a connection whose bytes could still become an HTTP request line
//! waits, for at most the detect timeout.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::io::PrefixedIo;

/// Longest HTTP/1 request line we wait for before calling a connection
/// opaque. Request targets longer than this are rare and still work: they
/// are forwarded byte-for-byte as TCP.
const MAX_REQUEST_LINE: usize = 8 * 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("no bytes received within the {0:?} detect timeout (mark server-speaks-first ports opaque)")]
    NothingSent(Duration),
    #[error("protocol not determined within the {0:?} detect timeout")]
    Timeout(Duration),
    #[error("connection closed before the protocol was determined")]
    Closed,
    #[error("reading for protocol detection: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn detect<T: AsyncRead + Unpin>(
    mut io: T,
    timeout: Duration,
) -> Result<(Protocol, PrefixedIo<T>), DetectError> {
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            if let Some(protocol) = classify(&buf) {
                return Ok(protocol);
            }
            if buf.len() >= MAX_REQUEST_LINE {
                return Ok(Protocol::Opaque);
            }
            if io.read_buf(&mut buf).await? == 0 {
                // The client half-closed: what it sent is all there is.
                return if buf.is_empty() { Err(DetectError::Closed) } else { Ok(Protocol::Opaque) };
            }
        }
    };
    let protocol = match tokio::time::timeout(timeout, read).await {
        Ok(result) => result?,
        Err(_) if buf.is_empty() => return Err(DetectError::NothingSent(timeout)),
        Err(_) => return Err(DetectError::Timeout(timeout)),
    };
    Ok((protocol, PrefixedIo::new(Bytes::from(buf), io)))
}

/// `None` while the bytes so far could still be either.
pub fn classify(bytes: &[u8]) -> Option<Protocol> {
    if bytes.is_empty() {
        return None;
    }
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        if n == H2_PREFACE.len() {
            return Some(Protocol::Http2);
        }
        // "PRI * HTTP/2.0" is also the start of a (bogus) HTTP/1 request line.
        return None;
    }
    classify_http1_request_line(bytes)
}

/// An HTTP/1 request line is `METHOD SP TARGET SP HTTP/1.x CRLF`, with the
/// method a token (RFC 9110 §9.1).
fn classify_http1_request_line(bytes: &[u8]) -> Option<Protocol> {
    let method_len = bytes.iter().position(|&b| b == b' ');
    let method = &bytes[..method_len.unwrap_or(bytes.len())];
    if !method.iter().all(|&b| is_token(b)) || method.len() > 32 {
        return Some(Protocol::Opaque);
    }
    let method_len = method_len?;
    if method_len == 0 {
        return Some(Protocol::Opaque);
    }
    let rest = &bytes[method_len + 1..];
    let Some(line_end) = rest.iter().position(|&b| b == b'\n') else {
        // Still inside the target: control bytes there mean it is not HTTP.
        return rest.iter().any(|&b| b.is_ascii_control() && b != b'\r').then_some(Protocol::Opaque);
    };
    let line = rest[..line_end].strip_suffix(b"\r").unwrap_or(&rest[..line_end]);
    match line.iter().rposition(|&b| b == b' ') {
        Some(sp) if sp > 0 && matches!(&line[sp + 1..], b"HTTP/1.1" | b"HTTP/1.0") => Some(Protocol::Http1),
        _ => Some(Protocol::Opaque),
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The SNI of a TLS ClientHello at the start of a connection, if the
/// connection starts with one. The bytes read are handed back for replay
/// either way, so a TLS stream that is not for us (the app's own TLS)
/// passes through untouched.
pub async fn client_hello_sni<T: AsyncRead + Unpin>(
    mut io: T,
    timeout: Duration,
) -> Result<(Option<String>, PrefixedIo<T>), DetectError> {
    const HANDSHAKE: u8 = 0x16;
    const MAX_RECORD: usize = 5 + 16 * 1024;
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            if let Some(&first) = buf.first() {
                if first != HANDSHAKE {
                    return Ok(false);
                }
            }
            if buf.len() >= 5 {
                let len = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
                if len > MAX_RECORD {
                    return Ok(false);
                }
                if buf.len() >= len {
                    return Ok(true);
                }
            }
            if io.read_buf(&mut buf).await? == 0 {
                return if buf.is_empty() { Err(DetectError::Closed) } else { Ok(false) };
            }
        }
    };
    let complete = match tokio::time::timeout(timeout, read).await {
        Ok(result) => result?,
        Err(_) if buf.is_empty() => return Err(DetectError::NothingSent(timeout)),
        Err(_) => false,
    };
    let sni = if complete { sni_of(&buf) } else { None };
    Ok((sni, PrefixedIo::new(Bytes::from(buf), io)))
}

fn sni_of(record: &[u8]) -> Option<String> {
    let mut acceptor = weft_tls::rustls::server::Acceptor::default();
    acceptor.read_tls(&mut &record[..]).ok()?;
    match acceptor.accept() {
        Ok(Some(accepted)) => accepted.client_hello().server_name().map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies_complete_prefixes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"POST /a?b=c HTTP/1.0\r\nHost: x\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        // TLS ClientHello.
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), Some(Protocol::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET / SPDY/3\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET /\x00 HTTP/1.1"), Some(Protocol::Opaque));
        assert_eq!(classify(b" GET"), Some(Protocol::Opaque));
    }

    #[test]
    fn waits_while_ambiguous() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET /some/pa"), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
    }

    #[tokio::test]
    async fn detection_keeps_every_byte() {
        let (mut client, server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            client.write_all(b"GET / HT").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"TP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
            client
        });
        let (protocol, mut io) = detect(server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        drop(writer.await.unwrap());
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_clients_time_out() {
        let (_client, server) = tokio::io::duplex(1024);
        match detect(server, Duration::from_secs(1)).await {
            Err(DetectError::NothingSent(_)) => {}
            Err(other) => panic!("unexpected error: {other}"),
            Ok((protocol, _)) => panic!("detected {protocol:?} from nothing"),
        }
    }
}
