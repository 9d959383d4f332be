//! A recording fake forge over real HTTP/1.1, std only: one thread per
//! connection, keep-alive. By default it answers GitHub, Gitea and GitLab
//! paths well enough for sluice (statuses, the PR comment, PR heads), with
//! paging; `fail_next` scripts failures first.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const MAX_LINE: u64 = 64 * 1024;
const MAX_HEADERS: usize = 100;
const MAX_BODY: usize = 16 << 20;
const IDLE: Duration = Duration::from_secs(60);

/// One request as the server read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    /// With the query string.
    pub path: String,
    /// Names lowercased, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The path without the query string.
    pub fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }

    /// A query parameter's value.
    pub fn query(&self, key: &str) -> Option<&str> {
        query_param(self.path.split_once('?')?.1, key)
    }
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }
}

struct Comment {
    /// `repos/{o}/{r}#{n}` or `projects/{id}#{iid}`.
    thread: String,
    id: u64,
    body: String,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    script: VecDeque<Answer>,
    comments: Vec<Comment>,
    last_id: u64,
    heads: HashMap<u64, String>,
    page_cap: Option<usize>,
    /// Open connections, so dropping the server can end them.
    open: HashMap<u64, TcpStream>,
    last_conn: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct FakeForgeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeForgeServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let conn = {
                    let mut state = accepting.lock();
                    state.last_conn += 1;
                    let conn = state.last_conn;
                    if let Ok(clone) = stream.try_clone() {
                        state.open.insert(conn, clone);
                    }
                    conn
                };
                let shared = Arc::clone(&accepting);
                thread::spawn(move || {
                    serve(&stream, addr, &shared);
                    let _ = stream.shutdown(Shutdown::Both);
                    shared.lock().open.remove(&conn);
                });
            }
        });
        FakeForgeServer { addr, shared }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// The next `n` requests get `status` with `extra_headers` and a JSON
    /// `message`, whatever they ask.
    pub fn fail_next(&self, n: usize, status: u16, extra_headers: &[(&str, &str)]) {
        let mut state = self.shared.lock();
        for _ in 0..n {
            state.script.push_back(Answer {
                status,
                headers: extra_headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: json!({ "message": format!("scripted {status}") }).to_string(),
            });
        }
    }

    /// The head sha of PR/MR `number` (in any repository).
    pub fn set_pr_head(&self, number: u64, sha: &str) {
        self.shared.lock().heads.insert(number, sha.to_string());
    }

    /// Serve at most `n` comments a page, whatever is asked (as Gitea's
    /// `MAX_RESPONSE_ITEMS` does).
    pub fn set_page_cap(&self, n: usize) {
        self.shared.lock().page_cap = Some(n.max(1));
    }

    /// Every comment stored, `(id, body)`, oldest first.
    pub fn comments(&self) -> Vec<(u64, String)> {
        let state = self.shared.lock();
        state
            .comments
            .iter()
            .map(|c| (c.id, c.body.clone()))
            .collect()
    }

    /// Waits until `done` holds for the requests so far; false on timeout.
    pub fn wait_for(&self, done: impl Fn(&[Recorded]) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if done(&state.requests) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = match self.shared.changed.wait_timeout(state, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

impl Drop for FakeForgeServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, and end every connection thread.
        let _ = TcpStream::connect(self.addr);
        for (_, stream) in self.shared.lock().open.drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Answers requests on `stream` until it closes, errs or asks to close.
fn serve(stream: &TcpStream, addr: SocketAddr, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let mut reader = BufReader::new(stream);
    let mut writer = stream;
    loop {
        let request = match read_request(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let bad = Answer::json(400, json!({ "message": e.to_string() }));
                let _ = write_answer(&mut writer, &bad, true);
                return;
            }
            Err(_) => return,
        };
        let close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let answer = {
            let mut state = shared.lock();
            state.requests.push(request.clone());
            shared.changed.notify_all();
            match state.script.pop_front() {
                Some(scripted) => scripted,
                None => route(&mut state, &request, addr),
            }
        };
        if write_answer(&mut writer, &answer, close).is_err() || close {
            return;
        }
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// A line without its CRLF; `None` at a clean end of stream.
fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    reader.take(MAX_LINE).read_until(b'\n', &mut buf)?;
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(bad("line too long or cut short"));
    }
    let line = String::from_utf8(buf).map_err(|_| bad("header line is not UTF-8"))?;
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Recorded>> {
    let Some(first) = read_line(reader)? else {
        return Ok(None);
    };
    let parts: Vec<&str> = first.split_whitespace().collect();
    let [method, path, version] = parts[..] else {
        return Err(bad("bad request line"));
    };
    if !version.starts_with("HTTP/1.") || !path.starts_with('/') {
        return Err(bad("bad request line"));
    }
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| bad("headers cut short"))?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        if headers.len() > MAX_HEADERS {
            return Err(bad("too many headers"));
        }
    }
    let mut request = Recorded {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body: String::new(),
    };
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        read_chunked(reader)?
    } else {
        let len = match request.header("content-length") {
            Some(v) => v.parse::<usize>().map_err(|_| bad("bad content-length"))?,
            None => 0,
        };
        if len > MAX_BODY {
            return Err(bad("body too large"));
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        body
    };
    request.body = String::from_utf8_lossy(&body).into_owned();
    Ok(Some(request))
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| bad("chunk cut short"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
        if body.len() + size > MAX_BODY {
            return Err(bad("body too large"));
        }
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader)?
                .ok_or_else(|| bad("trailers cut short"))?
                .is_empty()
            {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        if !read_line(reader)?.is_some_and(|l| l.is_empty()) {
            return Err(bad("chunk not followed by CRLF"));
        }
    }
}

fn write_answer(writer: &mut impl Write, answer: &Answer, close: bool) -> io::Result<()> {
    let reason = match answer.status {
        200 => "OK",
        201 => "Created",
        301 => "Moved Permanently",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: {}\r\n",
        answer.status,
        answer.body.len(),
        if close { "close" } else { "keep-alive" },
    );
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes())?;
    writer.write_all(answer.body.as_bytes())?;
    writer.flush()
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[derive(Clone, Copy)]
enum Shape {
    /// GitHub and Gitea issue comments.
    Issue,
    /// GitLab MR notes.
    Note,
}

fn comment_json(shape: Shape, c: &Comment) -> Value {
    match shape {
        Shape::Issue => json!({ "id": c.id, "body": c.body, "user": { "login": "sluice-bot" } }),
        Shape::Note => json!({
            "id": c.id, "body": c.body, "system": false, "author": { "username": "sluice-bot" }
        }),
    }
}

fn not_found() -> Answer {
    Answer::json(404, json!({ "message": "Not Found" }))
}

fn route(state: &mut State, req: &Recorded, addr: SocketAddr) -> Answer {
    let route = req.route();
    let segs: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
    // Skip an API prefix such as `/api/v4`.
    let Some(start) = segs.iter().position(|s| *s == "repos" || *s == "projects") else {
        return not_found();
    };
    let number = |s: &str| s.parse::<u64>().ok();
    match (req.method.as_str(), &segs[start..]) {
        ("POST", ["repos", _, _, "statuses", _]) | ("POST", ["projects", _, "statuses", _]) => {
            Answer::json(201, json!({}))
        }
        ("GET", ["repos", o, r, "issues", n, "comments"]) => match number(n) {
            Some(n) => list(
                state,
                req,
                &format!("repos/{o}/{r}#{n}"),
                Shape::Issue,
                addr,
            ),
            None => not_found(),
        },
        ("POST", ["repos", o, r, "issues", n, "comments"]) => match number(n) {
            Some(n) => create(state, req, format!("repos/{o}/{r}#{n}"), Shape::Issue),
            None => not_found(),
        },
        ("PATCH", ["repos", o, r, "issues", "comments", id]) => {
            let repo = format!("repos/{o}/{r}#");
            edit(
                state,
                req,
                |c| c.thread.starts_with(&repo),
                number(id),
                Shape::Issue,
            )
        }
        ("GET", ["repos", _, _, "pulls", n]) => match number(n).and_then(|n| state.heads.get(&n)) {
            Some(sha) => Answer::json(200, json!({ "number": number(n), "head": { "sha": sha } })),
            None => not_found(),
        },
        ("GET", ["projects", p, "merge_requests", iid, "notes"]) => match number(iid) {
            Some(iid) => list(
                state,
                req,
                &format!("projects/{p}#{iid}"),
                Shape::Note,
                addr,
            ),
            None => not_found(),
        },
        ("POST", ["projects", p, "merge_requests", iid, "notes"]) => match number(iid) {
            Some(iid) => create(state, req, format!("projects/{p}#{iid}"), Shape::Note),
            None => not_found(),
        },
        ("PUT" | "PATCH", ["projects", p, "merge_requests", iid, "notes", id]) => {
            let thread = format!("projects/{p}#{}", number(iid).unwrap_or(0));
            edit(state, req, |c| c.thread == thread, number(id), Shape::Note)
        }
        ("GET", ["projects", _, "merge_requests", iid]) => {
            match number(iid).and_then(|n| state.heads.get(&n)) {
                Some(sha) => Answer::json(
                    200,
                    json!({ "iid": number(iid), "sha": sha, "diff_refs": { "head_sha": sha } }),
                ),
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

fn list(state: &State, req: &Recorded, thread: &str, shape: Shape, addr: SocketAddr) -> Answer {
    let size_param = if req.query("limit").is_some() {
        "limit"
    } else {
        "per_page"
    };
    let asked = req
        .query(size_param)
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(30);
    let size = asked.clamp(1, state.page_cap.unwrap_or(usize::MAX));
    let page = req
        .query("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let all: Vec<&Comment> = state
        .comments
        .iter()
        .filter(|c| c.thread == thread)
        .collect();
    let from = (page - 1).saturating_mul(size).min(all.len());
    let to = from.saturating_add(size).min(all.len());
    let items: Vec<Value> = all[from..to]
        .iter()
        .map(|c| comment_json(shape, c))
        .collect();
    let mut answer = Answer::json(200, Value::Array(items));
    if to < all.len() {
        let next = format!(
            "<http://{addr}{}?{size_param}={size}&page={}>; rel=\"next\"",
            req.route(),
            page + 1
        );
        answer.headers.push(("link".into(), next));
    }
    answer
}

fn new_body(req: &Recorded) -> Option<String> {
    req.json().get("body")?.as_str().map(str::to_string)
}

fn create(state: &mut State, req: &Recorded, thread: String, shape: Shape) -> Answer {
    let Some(body) = new_body(req) else {
        return Answer::json(400, json!({ "message": "body missing" }));
    };
    state.last_id += 1;
    let comment = Comment {
        thread,
        id: state.last_id,
        body,
    };
    let answer = Answer::json(201, comment_json(shape, &comment));
    state.comments.push(comment);
    answer
}

fn edit(
    state: &mut State,
    req: &Recorded,
    in_scope: impl Fn(&Comment) -> bool,
    id: Option<u64>,
    shape: Shape,
) -> Answer {
    let Some(body) = new_body(req) else {
        return Answer::json(400, json!({ "message": "body missing" }));
    };
    match state
        .comments
        .iter_mut()
        .find(|c| Some(c.id) == id && in_scope(c))
    {
        Some(comment) => {
            comment.body = body;
            Answer::json(200, comment_json(shape, comment))
        }
        None => not_found(),
    }
}

/// The commit statuses posted for `sha`, in order: (context, state,
/// description, target URL). GitLab calls the context `name`.
pub fn statuses(reqs: &[Recorded], sha: &str) -> Vec<(String, String, String, String)> {
    reqs.iter()
        .filter(|r| r.method == "POST" && r.route().ends_with(&format!("/statuses/{sha}")))
        .map(|r| {
            let j = r.json();
            let s = |k: &str| j[k].as_str().unwrap_or("").to_string();
            let context = j["context"].as_str().or(j["name"].as_str()).unwrap_or("");
            (
                context.to_string(),
                s("state"),
                s("description"),
                s("target_url"),
            )
        })
        .collect()
}
