//! The optional access log (`[public] access_log`): one line per request on the public
//! listener, in the combined format Apache and nginx write, so the usual tools read it:
//!
//! ```text
//! 203.0.113.7 - - [22/Nov/2026:10:00:00 +0000] "GET /articles?page=2 HTTP/1.1" 200 5120 "https://site.example/" "Mozilla/5.0 …"
//! ```
//!
//! * The client is the real one: the peer, or after `trusted_proxies` the address found in
//!   `X-Forwarded-For` — the address copyist passes to the CMS.
//! * The time is when the request arrived, in UTC.
//! * The byte count is what the response body actually handed to the connection, counted as it
//!   streams (`-` for none, like Apache's `%b`); the line is written when the body ends or is
//!   dropped. A client that goes away before it gets an answer is logged with nginx's 499.
//! * The request line, referer and user agent are escaped nginx-style: `"`, `\`, control and
//!   non-ASCII bytes become `\xHH`, so no client can end a field or forge a line.
//! * Requests copyist answers itself (413, 431, 405, `/.copyist/…`) are logged too; requests
//!   hyper rejects before copyist sees them (an unparseable head) are not.
//!
//! A request never waits for the log. Lines go through a bounded queue ([`QUEUE_LINES`]) to one
//! writer task ([`Writer::run`], spawned by `node`); when the queue is full the line is dropped
//! and counted in `copyist_access_log_dropped_total`. The writer batches its writes and flushes
//! whenever the queue is empty. A reload ([`AccessLog::reopen`], on SIGHUP) hands it a freshly
//! opened file: how logrotate's `postrotate` and a changed path take effect.
//!
//! This module formats and writes lines; it decides nothing about requests.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::admin::metrics::Metrics;
use crate::error::{BoxError, ProxyBody};
use crate::shutdown::Shutdown;

/// Lines the queue to the writer holds; beyond that lines are dropped (and counted), never
/// waited for. At ~200 bytes a line, about 1.6 MiB.
pub const QUEUE_LINES: usize = 8192;

/// The status logged for a request whose client went away before it was answered (nginx's).
const CLIENT_CLOSED: u16 = 499;

/// Buffer of the writer: lines are gathered into writes of about this size under load.
const WRITE_BUFFER: usize = 64 * 1024;

/// Opens (creating it if needed) the access log at `path` for appending. Readable by the
/// owner's group (`0640`), as web server logs are, when it is created.
pub fn open(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// The sending side: cheap to clone, held by the proxy (lines) and the reloader (files).
#[derive(Clone, Debug)]
pub struct AccessLog {
    queue: mpsc::Sender<Message>,
    metrics: Arc<Metrics>,
}

/// What the writer is sent. One queue for both, so the lines queued before a reopen go to the
/// old file and the ones after it to the new.
#[derive(Debug)]
enum Message {
    Line(String),
    /// Write to this file from now on (`None`: stop writing).
    Reopen(Option<File>),
}

/// The writer task's side: owns the open file.
pub struct Writer {
    queue: mpsc::Receiver<Message>,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    metrics: Arc<Metrics>,
    /// Lines written since the last flush (dropped and counted if the flush fails).
    unflushed: u64,
    /// Whether the last write failed (to log a failure once, and the recovery once).
    failing: bool,
}

/// A connected log handle and writer, writing to `file` (`None`: nothing until a reload
/// hands it a file).
pub fn channel(file: Option<File>, metrics: Arc<Metrics>) -> (AccessLog, Writer) {
    let (tx, rx) = mpsc::channel(QUEUE_LINES);
    let log = AccessLog {
        queue: tx,
        metrics: metrics.clone(),
    };
    let writer = Writer {
        queue: rx,
        file: file.map(buffered),
        metrics,
        unflushed: 0,
        failing: false,
    };
    (log, writer)
}

fn buffered(file: File) -> tokio::io::BufWriter<tokio::fs::File> {
    tokio::io::BufWriter::with_capacity(WRITE_BUFFER, tokio::fs::File::from_std(file))
}

impl AccessLog {
    /// Makes the writer write to `file` after the lines already queued (`None`: stop
    /// writing). Waits for room in the queue: a reload may wait, a request never does.
    pub async fn reopen(&self, file: Option<File>) {
        // Fails only when the writer has stopped (shutting down): nothing left to reopen.
        let _ = self.queue.send(Message::Reopen(file)).await;
    }

    /// Queues one line, or drops and counts it when the writer is behind.
    fn send(&self, line: String) {
        if self.queue.try_send(Message::Line(line)).is_err() {
            self.metrics.access_log_dropped(1);
        }
    }
}

impl Writer {
    /// Writes queued lines until every [`AccessLog`] is gone, or for at most `grace` after
    /// `shutdown` (open connections may still be answering), then flushes.
    pub async fn run(mut self, mut shutdown: Shutdown, grace: Duration) {
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let until = deadline.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                message = self.queue.recv() => match message {
                    Some(Message::Line(line)) => self.write(line).await,
                    Some(Message::Reopen(file)) => self.switch(file).await,
                    None => break,
                },
                () = shutdown.recv(), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + grace);
                }
                () = tokio::time::sleep_until(until), if deadline.is_some() => break,
            }
        }
        self.flush().await;
    }

    async fn write(&mut self, line: String) {
        let Some(file) = &mut self.file else { return };
        match file.write_all(line.as_bytes()).await {
            Ok(()) => self.unflushed += 1,
            Err(error) => self.failed(&error, 1),
        }
        // Flush when idle: lines reach the file at once when traffic is light, and in large
        // writes when it is heavy.
        if self.queue.is_empty() {
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        let Some(file) = &mut self.file else { return };
        let lines = std::mem::take(&mut self.unflushed);
        match file.flush().await {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!("access log writable again");
                }
            }
            Err(error) => self.failed(&error, lines),
        }
    }

    fn failed(&mut self, error: &io::Error, lines: u64) {
        self.metrics.access_log_dropped(lines);
        if !std::mem::replace(&mut self.failing, true) {
            tracing::error!(%error, "cannot write the access log; dropping lines until it works again");
        }
    }

    async fn switch(&mut self, file: Option<File>) {
        self.flush().await;
        self.file = file.map(buffered);
        self.failing = false;
    }
}

// === one request's line ===

/// One request's log line in the making: created when the request arrives, completed with the
/// response's status and body, written when it is dropped (so a request whose client vanished
/// is logged too).
pub struct Entry {
    log: AccessLog,
    client: IpAddr,
    received: SystemTime,
    method: http::Method,
    target: String,
    version: Version,
    referer: Option<http::HeaderValue>,
    user_agent: Option<http::HeaderValue>,
    status: Option<StatusCode>,
    bytes: u64,
}

impl Entry {
    /// Starts the line of `req`, from the real client address `client`.
    pub fn new<B>(log: &AccessLog, req: &Request<B>, client: IpAddr) -> Entry {
        let uri = req.uri();
        let target = match uri.path_and_query() {
            Some(p) => p.as_str().to_owned(),
            // Authority form (CONNECT) or an empty target: what there is.
            None => uri.to_string(),
        };
        let headers: &HeaderMap = req.headers();
        Entry {
            log: log.clone(),
            client,
            received: SystemTime::now(),
            method: req.method().clone(),
            target,
            version: req.version(),
            referer: headers.get(header::REFERER).cloned(),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            status: None,
            bytes: 0,
        }
    }

    /// Follows `resp` to the client: the line gets its status, and its byte count as its body
    /// streams, and is written when the body ends or is dropped.
    pub fn attach(mut self, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        self.status = Some(resp.status());
        resp.map(|inner| LoggedBody { inner, entry: self }.boxed_unsync())
    }

    fn line(&self) -> String {
        let line = Line {
            client: self.client,
            time: self.received,
            method: self.method.as_str(),
            target: self.target.as_bytes(),
            version: self.version,
            status: self.status.map_or(CLIENT_CLOSED, |s| s.as_u16()),
            bytes: self.bytes,
            referer: self.referer.as_ref().map(|v| v.as_bytes()),
            user_agent: self.user_agent.as_ref().map(|v| v.as_bytes()),
        };
        line.to_string()
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let line = self.line();
        self.log.send(line);
    }
}

/// A response body that counts the bytes it hands on, for its [`Entry`].
struct LoggedBody {
    inner: ProxyBody,
    entry: Entry,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.entry.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === formatting ===

/// The fields of one combined-format line.
#[derive(Clone, Debug)]
pub struct Line<'a> {
    /// The real client address.
    pub client: IpAddr,
    /// When the request arrived.
    pub time: SystemTime,
    /// Request method.
    pub method: &'a str,
    /// Request target as received (`/path?query`).
    pub target: &'a [u8],
    /// The client's HTTP version.
    pub version: Version,
    /// Status sent (499: the client left before an answer).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// The `Referer` header, if any.
    pub referer: Option<&'a [u8]>,
    /// The `User-Agent` header, if any.
    pub user_agent: Option<&'a [u8]>,
}

impl std::fmt::Display for Line<'_> {
    /// `CLIENT - - [TIME] "METHOD TARGET VERSION" STATUS BYTES "REFERER" "UA"` and a newline.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::with_capacity(160);
        let _ = write!(out, "{} - - [", self.client);
        clf_time(&mut out, self.time);
        out.push_str("] \"");
        escape(&mut out, self.method.as_bytes());
        out.push(' ');
        escape(&mut out, self.target);
        let _ = write!(out, " {:?}\" {} ", self.version, self.status);
        if self.bytes == 0 {
            out.push('-');
        } else {
            let _ = write!(out, "{}", self.bytes);
        }
        out.push_str(" \"");
        header_field(&mut out, self.referer);
        out.push_str("\" \"");
        header_field(&mut out, self.user_agent);
        out.push_str("\"\n");
        f.write_str(&out)
    }
}

/// A header's value escaped, or `-` when absent or empty (as Apache and nginx log them).
fn header_field(out: &mut String, value: Option<&[u8]>) {
    match value {
        Some(v) if !v.is_empty() => escape(out, v),
        _ => out.push('-'),
    }
}

/// Appends `bytes` with `"`, `\`, control bytes and bytes above 0x7e as `\xHH` (nginx's
/// escaping): the result never ends a quoted field or a line.
pub fn escape(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Appends `time` as `22/Nov/2026:10:00:00 +0000` (UTC; a time before 1970 as the epoch).
fn clf_time(out: &mut String, time: SystemTime) {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let _ = write!(
        out,
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[usize::from(month - 1)],
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u8, u8) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    // day <= 31 and month <= 12 by construction.
    (year, month as u8, day as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(referer: Option<&[u8]>, ua: Option<&[u8]>, target: &[u8]) -> String {
        Line {
            client: "203.0.113.7".parse().unwrap(),
            // 2026-11-22T10:00:00Z
            time: UNIX_EPOCH + Duration::from_secs(1_795_341_600),
            method: "GET",
            target,
            version: Version::HTTP_11,
            status: 200,
            bytes: 5120,
            referer,
            user_agent: ua,
        }
        .to_string()
    }

    #[test]
    fn combined_format() {
        assert_eq!(
            line(Some(b"https://site.example/"), Some(b"curl/8.5"), b"/a?b=c"),
            "203.0.113.7 - - [22/Nov/2026:10:00:00 +0000] \"GET /a?b=c HTTP/1.1\" 200 5120 \
             \"https://site.example/\" \"curl/8.5\"\n"
        );
    }

    #[test]
    fn absent_fields_and_zero_bytes_are_dashes() {
        let mut l = Line {
            client: "::1".parse().unwrap(),
            time: UNIX_EPOCH,
            method: "HEAD",
            target: b"/",
            version: Version::HTTP_2,
            status: 404,
            bytes: 0,
            referer: None,
            user_agent: Some(b""),
        };
        assert_eq!(
            l.to_string(),
            "::1 - - [01/Jan/1970:00:00:00 +0000] \"HEAD / HTTP/2.0\" 404 - \"-\" \"-\"\n"
        );
        l.status = CLIENT_CLOSED;
        assert!(l.to_string().contains("\" 499 - "));
    }

    #[test]
    fn quotes_backslashes_and_control_bytes_cannot_break_a_field_or_a_line() {
        let ua = b"evil\" 200 1 \"-\" \"x\n1.2.3.4 - - [forged]\\\x7f\xff\t";
        let out = line(None, Some(ua), b"/p\"q");
        assert_eq!(out.matches('\n').count(), 1, "{out}");
        assert!(out.ends_with('\n'));
        // Exactly the six quotes of the format itself.
        assert_eq!(out.matches('"').count(), 6, "{out}");
        assert!(out.contains("\"GET /p\\x22q HTTP/1.1\""), "{out}");
        assert!(
            out.ends_with(
                "\"evil\\x22 200 1 \\x22-\\x22 \\x22x\\x0A1.2.3.4 - - [forged]\\x5C\\x7F\\xFF\\x09\"\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn dates_match_the_calendar() {
        let at = |secs: u64| {
            let mut s = String::new();
            clf_time(&mut s, UNIX_EPOCH + Duration::from_secs(secs));
            s
        };
        assert_eq!(at(0), "01/Jan/1970:00:00:00 +0000");
        // Leap day, and the last second of a leap year.
        assert_eq!(at(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(at(1_735_689_599), "31/Dec/2024:23:59:59 +0000");
        assert_eq!(at(4_107_542_400), "01/Mar/2100:00:00:00 +0000");
    }

    #[tokio::test]
    async fn lines_reach_the_file_and_a_reopen_switches_files() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new(dir.path().join("blobs")));
        let first = dir.path().join("a.log");
        let (log, writer) = channel(Some(open(&first).unwrap()), metrics.clone());
        let (trigger, shutdown) = crate::shutdown::channel();
        let task = tokio::spawn(writer.run(shutdown, Duration::from_secs(5)));
        let req = Request::get("/one").body(()).unwrap();
        let entry = Entry::new(&log, &req, "192.0.2.1".parse().unwrap());
        let resp = entry.attach(Response::new(crate::error::full("hello")));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        let second = dir.path().join("b.log");
        log.reopen(Some(open(&second).unwrap())).await;
        let req = Request::get("/two").body(()).unwrap();
        // Dropped before any answer: the client went away.
        drop(Entry::new(&log, &req, "192.0.2.1".parse().unwrap()));
        drop(log);
        trigger.fire();
        task.await.unwrap();
        let a = std::fs::read_to_string(&first).unwrap();
        let b = std::fs::read_to_string(&second).unwrap();
        assert!(
            a.contains("\"GET /one HTTP/1.1\" 200 5 \"-\" \"-\"\n"),
            "{a}"
        );
        assert!(b.contains("\"GET /two HTTP/1.1\" 499 - "), "{b}");
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new(dir.path().join("blobs")));
        // No writer running: the queue fills and stays full.
        let (log, _writer) = channel(None, metrics.clone());
        for _ in 0..QUEUE_LINES + 3 {
            log.send("x\n".to_owned());
        }
        assert_eq!(metrics.access_log_dropped_total(), 3);
    }
}
