//! object_store's HTTP client over ureq, the crate's one HTTP client.
//!
//! object_store signs, retries and parses S3's answers itself; it only
//! needs something that sends one `http::Request` and hands back the
//! response as it arrives. ureq is synchronous, so each request runs on a
//! blocking thread of the store's runtime: the head comes back through a
//! oneshot channel and the body follows in chunks through a bounded one,
//! so a large download streams in constant memory.

use std::io::{self, Read as _};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use object_store::ClientOptions;
use object_store::client::{
    ClientConfigKey, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest,
    HttpResponse, HttpResponseBody, HttpService,
};

/// A chunk of a response body handed from the reading thread.
const CHUNK: usize = 64 << 10;
/// Chunks buffered between the reading thread and the store.
const IN_FLIGHT: usize = 4;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Until the answer's head: S3 answers a PUT of a part once it has it all.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// For a whole body either way: generous, since tables can be large, but
/// finite, so a stalled connection ends in an error object_store retries.
const BODY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Builds object_store's client on a ureq agent.
#[derive(Debug, Default)]
pub struct UreqConnector;

impl HttpConnector for UreqConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let allow_http = options
            .get_config_value(&ClientConfigKey::AllowHttp)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let agent = ureq::Agent::config_builder()
            // object_store reads every status itself (404 is "not found",
            // 412 "already there", 503 "slow down, retry").
            .http_status_as_error(false)
            .https_only(!allow_http)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_send_body(Some(BODY_TIMEOUT))
            .timeout_recv_body(Some(BODY_TIMEOUT))
            .build()
            .new_agent();
        Ok(HttpClient::new(UreqService {
            agent: Arc::new(agent),
        }))
    }
}

#[derive(Debug)]
struct UreqService {
    agent: Arc<ureq::Agent>,
}

#[async_trait::async_trait]
impl HttpService for UreqService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        // A request body is in memory already (a part is at most the part
        // size): collected, not streamed.
        let mut body = std::pin::pin!(body);
        let mut bytes = Vec::with_capacity(body.content_length());
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            if let Ok(data) = frame?.into_data() {
                bytes.extend_from_slice(&data);
            }
        }
        let request = http::Request::from_parts(parts, bytes);
        let agent = Arc::clone(&self.agent);
        let (head_tx, head_rx) = tokio::sync::oneshot::channel();
        let (chunk_tx, chunk_rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
        tokio::task::spawn_blocking(move || {
            let response = match agent.run(request) {
                Ok(r) => r,
                Err(e) => {
                    let _ = head_tx.send(Err(http_error(e)));
                    return;
                }
            };
            let (head, body) = response.into_parts();
            if head_tx.send(Ok(head)).is_err() {
                return;
            }
            let mut reader = body.into_reader();
            let mut buf = vec![0u8; CHUNK];
            loop {
                let item = match reader.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
                    Err(e) => Err(io_error(e)),
                };
                let failed = item.is_err();
                // The store dropped the body: stop reading.
                if chunk_tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        });
        let head = head_rx.await.map_err(|_| {
            HttpError::new(
                HttpErrorKind::Unknown,
                io::Error::other("the request's thread stopped"),
            )
        })??;
        Ok(HttpResponse::from_parts(
            head,
            HttpResponseBody::new(Chunks(chunk_rx)),
        ))
    }
}

/// A response body arriving from the reading thread.
struct Chunks(tokio::sync::mpsc::Receiver<Result<Bytes, HttpError>>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        self.0.poll_recv(cx).map(|c| c.map(|c| c.map(Frame::data)))
    }
}

/// ureq's error, classified as object_store's retry logic expects.
fn http_error(e: ureq::Error) -> HttpError {
    let kind = match &e {
        ureq::Error::Timeout(_) => HttpErrorKind::Timeout,
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => HttpErrorKind::Connect,
        ureq::Error::Io(io) => return io_error_kind(io.kind(), e),
        _ => HttpErrorKind::Request,
    };
    HttpError::new(kind, e)
}

fn io_error(e: io::Error) -> HttpError {
    io_error_kind(e.kind(), e)
}

fn io_error_kind<E: std::error::Error + Send + Sync + 'static>(
    kind: io::ErrorKind,
    e: E,
) -> HttpError {
    use io::ErrorKind as K;
    let kind = match kind {
        K::TimedOut => HttpErrorKind::Timeout,
        K::ConnectionRefused | K::NotConnected | K::AddrNotAvailable => HttpErrorKind::Connect,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            HttpErrorKind::Interrupted
        }
        _ => HttpErrorKind::Unknown,
    };
    HttpError::new(kind, e)
}
