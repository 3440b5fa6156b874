//! The proxy's own HTTP/1.1 client against an upstream that answers with
//! exactly the bytes each test scripts: every way RFC 9112 delimits a
//! response body, which of them leave the connection reusable, upstreams
//! that time out idle connections, and responses that are not HTTP.

mod support;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What the scripted upstream answers to a path, and whether it then
/// closes the connection.
fn script(method: &str, path: &str) -> (&'static [u8], bool) {
    match (method, path) {
        (_, "/length") => (b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nlength", false),
        (_, "/chunked") => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nchu\r\n4\r\nnked\r\n0\r\nx-t: 1\r\n\r\n",
            false,
        ),
        ("HEAD", "/head") => (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", false),
        (_, "/204") => (b"HTTP/1.1 204 No Content\r\nx-empty: yes\r\n\r\n", false),
        (_, "/continue") => (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ncontinued", false),
        (_, "/close-delimited") => (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", true),
        (_, "/connection-close") => (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nclose", true),
        (_, "/not-http") => (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", true),
        (_, "/two-lengths") => (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd", true),
        (_, "/short") => (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", true),
        (_, "/drop-if-reused") => (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh", false),
        _ => (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", false),
    }
}

struct ScriptedUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

impl ScriptedUpstream {
    /// `idle_close`: how long a connection may sit idle before the upstream
    /// closes it, as servers with a keep-alive timeout do.
    async fn start(idle_close: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(conn, idle_close));
            }
        });
        ScriptedUpstream { addr, connections, _task: AbortOnDrop(task) }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(mut conn: TcpStream, idle_close: Duration) {
    let mut buf = Vec::new();
    for served in 0.. {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(idle_close, conn.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if path == "/drop-if-reused" && served > 0 {
            // As a server closing an idle connection just as a request
            // arrives on it: the request gets no answer at all.
            return;
        }
        let (answer, close) = script(method, path);
        if conn.write_all(answer).await.is_err() || close {
            return;
        }
    }
}

async fn get(proxy: &Proxy, upstream: &ScriptedUpstream, path: &str, extra: &[&str]) -> CurlOutput {
    let url = format!("http://{}{path}", upstream.addr);
    let outbound = format!("http://{}", proxy.outbound);
    let mut args = vec!["-x", &outbound, "-D", "-", "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args).await
}

#[tokio::test]
async fn every_body_framing_passes_whole_and_keep_alive_ones_share_a_connection() {
    let upstream = ScriptedUpstream::start(TIMEOUT).await;
    let proxy = Proxy::builder().spawn().await;
    let expect = [
        ("/length", &[][..], "length"),
        ("/chunked", &[], "chunked"),
        ("/204", &[], ""),
        ("/continue", &[], "continued"),
    ];
    for (path, extra, body) in expect {
        let out = get(&proxy, &upstream, path, extra).await;
        assert_eq!(out.code, 0, "{path}: {out:?}");
        let (_, content) = out.stdout.split_once("\r\n\r\n").expect("a head");
        let content = content.rsplit_once('\n').map(|(b, _)| b).unwrap_or_default();
        assert_eq!(content, body, "{path}: {out:?}");
    }
    let url = format!("http://{}/head", upstream.addr);
    let out = curl(&["-x", &format!("http://{}", proxy.outbound), "-I", "-w", "%{http_code}", &url]).await;
    // HEAD keeps the upstream's length, and nobody waits for 100 bytes.
    assert_eq!(out.http_code(), 200, "{out:?}");
    assert!(out.stdout.to_lowercase().contains("content-length: 100"), "{out:?}");
    let out = get(&proxy, &upstream, "/204", &[]).await;
    assert_eq!(out.http_code(), 204, "{out:?}");
    assert!(out.stdout.contains("x-empty: yes"), "{out:?}");
    // Every response above left the connection reusable: one was enough.
    assert_eq!(upstream.connections(), 1);

    // A body delimited by the close, and an explicit close: each whole,
    // each costing the upstream connection.
    let out = get(&proxy, &upstream, "/close-delimited", &[]).await;
    assert!(out.stdout.contains("\r\n\r\nuntil the end\n200"), "{out:?}");
    let out = get(&proxy, &upstream, "/connection-close", &[]).await;
    assert!(out.stdout.contains("\r\n\r\nclose\n200"), "{out:?}");
    let out = get(&proxy, &upstream, "/length", &[]).await;
    assert!(out.stdout.ends_with("\r\n\r\nlength\n200"), "{out:?}");
    assert_eq!(upstream.connections(), 3);
}

#[tokio::test]
async fn pooled_connections_the_upstream_closed_while_idle_are_not_used() {
    let upstream = ScriptedUpstream::start(Duration::from_millis(100)).await;
    let proxy = Proxy::builder().spawn().await;
    for _ in 0..3 {
        let out = get(&proxy, &upstream, "/length", &[]).await;
        assert_eq!(out.http_code(), 200, "{out:?}");
        // Past the upstream's keep-alive timeout: the pooled connection is
        // closed by the time the next request comes.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(upstream.connections(), 3);
}

#[tokio::test]
async fn responses_that_break_http_get_502_or_a_cut_off_body() {
    let upstream = ScriptedUpstream::start(TIMEOUT).await;
    let proxy = Proxy::builder().spawn().await;
    for path in ["/not-http", "/two-lengths"] {
        let out = get(&proxy, &upstream, path, &[]).await;
        assert_eq!(out.http_code(), 502, "{path}: {out:?}");
        assert!(out.stdout.to_lowercase().contains("l5d-proxy-error"), "{path}: {out:?}");
    }
    // The head promised 10 bytes and the connection closed after 3: the
    // client must see a truncated response, not a whole one.
    let out = get(&proxy, &upstream, "/short", &[]).await;
    assert_ne!(out.code, 0, "{out:?}");
    // And the proxy goes on serving.
    let out = get(&proxy, &upstream, "/length", &[]).await;
    assert_eq!(out.http_code(), 200, "{out:?}");
}

#[tokio::test]
async fn a_request_that_meets_a_closing_pooled_connection_is_sent_again_only_if_safe() {
    let upstream = ScriptedUpstream::start(TIMEOUT).await;
    let proxy = Proxy::builder().spawn().await;
    let out = get(&proxy, &upstream, "/length", &[]).await;
    assert_eq!(out.http_code(), 200, "{out:?}");
    // The pooled connection closes under this GET: it goes again, once, on
    // a new connection, and the client never knows.
    let out = get(&proxy, &upstream, "/drop-if-reused", &[]).await;
    assert!(out.stdout.ends_with("\r\n\r\nfresh\n200"), "{out:?}");
    assert_eq!(upstream.connections(), 2);
    // A request with a body is not sent twice (the upstream may have acted
    // on it): the client gets the failure.
    let out = get(&proxy, &upstream, "/drop-if-reused", &["--data-binary", "once"]).await;
    assert_eq!(out.http_code(), 502, "{out:?}");
    assert_eq!(upstream.connections(), 2);
}
