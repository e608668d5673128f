//! A tiny HTTP/1.1 server on 127.0.0.1 for the pull tests: fixed routes, byte ranges, optional
//! truncated bodies, a hit counter. One thread per connection, `Connection: close` always.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Answer `Range: bytes=a-b` with 206 and a `Content-Range`.
    pub ranges: bool,
    /// Announce the full length but close the connection after this many body bytes.
    pub truncate_at: Option<usize>,
}

impl Route {
    pub(crate) fn ok(content_type: &str, body: Vec<u8>) -> Self {
        Route {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
            ranges: false,
            truncate_at: None,
        }
    }
}

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Route>>,
    hits: AtomicUsize,
    path_hits: Mutex<HashMap<String, usize>>,
}

pub(crate) struct TestServer {
    port: u16,
    state: Arc<State>,
}

impl TestServer {
    pub(crate) fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let st = Arc::clone(&state);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let st = Arc::clone(&st);
                thread::spawn(move || {
                    let _ = handle(stream, &st);
                });
            }
        });
        TestServer { port, state }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn add(&self, path: &str, route: Route) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), route);
    }

    /// Requests served so far (any path, including 404s).
    pub(crate) fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub(crate) fn hits_on(&self, path: &str) -> usize {
        *self.state.path_hits.lock().unwrap().get(path).unwrap_or(&0)
    }
}

fn parse_range(v: &str, len: usize) -> Option<(usize, usize)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: usize = a.trim().parse().ok()?;
    let end = if b.trim().is_empty() {
        len.checked_sub(1)?
    } else {
        b.trim().parse::<usize>().ok()?.min(len.checked_sub(1)?)
    };
    (start <= end).then_some((start, end))
}

fn handle(stream: TcpStream, st: &State) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    st.hits.fetch_add(1, Ordering::SeqCst);
    *st.path_hits
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default() += 1;
    let route = st.routes.lock().unwrap().get(&path).cloned();
    let mut out = stream;
    let Some(route) = route else {
        let body = b"not found";
        write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        out.write_all(body)?;
        return out.flush();
    };
    let len = route.body.len();
    let (status, body, content_range) = match range.as_deref().and_then(|r| parse_range(r, len)) {
        Some((a, b)) if route.ranges => (
            206,
            &route.body[a..=b],
            Some(format!("bytes {a}-{b}/{len}")),
        ),
        _ => (route.status, &route.body[..], None),
    };
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in &route.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(cr) = content_range {
        head.push_str(&format!("Content-Range: {cr}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    let send = match route.truncate_at {
        Some(n) if body.len() > 1 => &body[..n.min(body.len() - 1)],
        _ => body,
    };
    out.write_all(send)?;
    out.flush()?;
    out.shutdown(std::net::Shutdown::Both)
}
