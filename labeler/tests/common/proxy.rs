//! A fault-injecting HTTP proxy in front of the S3 server on loopback. Each request is read whole and
//! either answered with a fault (503 Slow Down, a reset connection, 403 Access Denied for chosen keys) or
//! forwarded to the server on a fresh connection, one request per connection, so the proxy sees every
//! request the store client makes. Faults are counted, so a test can prove they happened.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct ProxyState {
    /// Requests still to fail: even counts answer 503, odd counts reset the connection.
    pub fail_next: AtomicUsize,
    /// When set, only requests whose path contains this count against `fail_next`.
    pub fail_only: Mutex<Option<String>>,
    /// Requests whose path contains this get 403 Access Denied, every time.
    pub forbid: Mutex<Option<String>>,
    /// Responses whose path contains this have their body cut in half (then the connection is reset),
    /// while `cuts_left` lasts: a read that breaks mid-object.
    pub cut_body: Mutex<Option<String>>,
    pub cuts_left: AtomicUsize,
    /// Faults served so far.
    pub faults: AtomicUsize,
}

pub struct FaultProxy {
    pub port: u16,
    pub state: Arc<ProxyState>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream_port`.
    pub fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(client, upstream_port, &state);
                });
            }
        });
        FaultProxy { port, state }
    }
}

fn serve(client: TcpStream, upstream_port: u16, state: &ProxyState) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let end = line == "\r\n";
        if !line.to_ascii_lowercase().starts_with("connection:") {
            head.push(line);
        }
        if end {
            break;
        }
    }
    let length: usize = head
        .iter()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let mut client = client;
    let path = head[0].split_whitespace().nth(1).unwrap_or("").to_owned();
    if state.forbid.lock().unwrap().as_deref().is_some_and(|f| path.contains(f)) {
        state.faults.fetch_add(1, Ordering::SeqCst);
        return reply(&mut client, "403 Forbidden", "AccessDenied", "Access Denied");
    }
    let left = state.fail_next.load(Ordering::SeqCst);
    let eligible = state.fail_only.lock().unwrap().as_deref().is_none_or(|f| path.contains(f));
    if eligible
        && left > 0
        && state.fail_next.compare_exchange(left, left - 1, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    {
        state.faults.fetch_add(1, Ordering::SeqCst);
        if left.is_multiple_of(2) {
            return reply(&mut client, "503 Slow Down", "SlowDown", "Please reduce your request rate.");
        }
        return client.shutdown(Shutdown::Both);
    }
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port))?;
    let last = head.len() - 1;
    for line in &head[..last] {
        upstream.write_all(line.as_bytes())?;
    }
    upstream.write_all(b"Connection: close\r\n\r\n")?;
    upstream.write_all(&body)?;
    let mut response = Vec::new();
    upstream.read_to_end(&mut response)?;
    // Tell the client this connection ends here, so it never reuses it.
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(response.len(), |p| p + 2);
    let (status_and_headers, rest) = response.split_at(split);
    let kept: Vec<&str> = std::str::from_utf8(status_and_headers)
        .unwrap_or("")
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    client.write_all(format!("{}\r\nConnection: close\r\n", kept.join("\r\n")).as_bytes())?;
    let cut = state.cut_body.lock().unwrap().as_deref().is_some_and(|c| path.contains(c))
        && rest.len() > 4
        && state.cuts_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if cut {
        state.faults.fetch_add(1, Ordering::SeqCst);
        // `rest` starts with the blank line ending the headers; send half the body, then reset.
        client.write_all(&rest[..2 + (rest.len() - 2) / 2])?;
        return client.shutdown(Shutdown::Both);
    }
    client.write_all(rest)?;
    client.shutdown(Shutdown::Both)
}

fn reply(client: &mut TcpStream, status: &str, code: &str, message: &str) -> std::io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    client.shutdown(Shutdown::Both)
}
