//! The CA's mTLS port in native code: TLS (rustls), HTTP/2 (the h2 crate) and gRPC's
//! length-prefixed framing, on one tokio thread beside the worker's asyncio loop. Nothing here
//! decides anything: every call is handed to Python whole (method, verified client leaf,
//! metadata, message bytes) and Python answers it with serialized messages and a status. The hand-off never takes the GIL
//! on the tokio thread: calls wait in a queue and an eventfd wakes the asyncio loop, which takes
//! them all at once (`Server.take`). An answer leaves in one write: headers, message and status
//! are queued on the stream together, so the connection flushes them as one TLS record (a caller
//! is woken once per answer, not once per frame).

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Ping, RecvStream, SendStream};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

const GRPC_HEADER: usize = 5;
// grpc-message is percent-encoded (gRPC over HTTP/2): '%', controls and non-ASCII bytes.
const GRPC_MESSAGE_ESCAPES: &AsciiSet = &CONTROLS.add(b'%');
const STATUS_INVALID_ARGUMENT: u32 = 3;
const STATUS_RESOURCE_EXHAUSTED: u32 = 8;
const STATUS_UNAVAILABLE: u32 = 14;

/// Caps of the port, as the front door's (`meshward_common.front_door.DoorLimits`).
#[derive(Clone, Copy)]
struct Limits {
    handshake_timeout: Duration,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    max_connections: usize,
    max_per_source: usize,
    max_message: usize,
}

enum Event {
    Call(CallData),
    Closed(u64),
}

struct CallData {
    id: u64,
    method: String,
    conn: Arc<ConnInfo>,
    metadata: Vec<(String, String)>,
    message: Bytes,
    reply: Reply,
}

struct ConnInfo {
    peer_der: Option<Bytes>,
    peer: String,
}

/// What Python answers: framed messages, then the status (the trailers); or a unary call's
/// whole answer at once, so that one wake-up of this thread sends it in one flush.
enum Out {
    Message(Bytes),
    Status(HeaderMap),
    Answer(Bytes),
}

/// The answer's half of a call.
struct Reply {
    tx: Mutex<Option<mpsc::UnboundedSender<Out>>>,
    finished: Arc<AtomicBool>,
}

impl Drop for Reply {
    fn drop(&mut self) {
        // Python let go of the call without an answer (its worker is stopping): say so, rather
        // than end the stream with no status at all.
        if let Some(tx) = self.tx.get_mut().unwrap().take() {
            let _ = tx.send(Out::Status(grpc_trailers(
                STATUS_UNAVAILABLE,
                "the call was dropped unanswered: the CA worker is stopping",
            )));
        }
    }
}

struct Connections {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

struct Shared {
    queue: Mutex<VecDeque<Event>>,
    signalled: AtomicBool,
    wakeup: RawFd,
    tls: RwLock<Arc<ServerConfig>>,
    next_id: AtomicU64,
    connections: Mutex<Connections>,
    limits: Limits,
}

impl Shared {
    fn push(&self, event: Event) {
        self.queue.lock().unwrap().push_back(event);
        if !self.signalled.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: an eventfd owned by this Shared; 8 bytes from a live u64.
            unsafe { libc::write(self.wakeup, (&one as *const u64).cast(), 8) };
        }
    }

    fn admit(&self, ip: IpAddr) -> bool {
        let mut conns = self.connections.lock().unwrap();
        let from_source = conns.per_source.get(&ip).copied().unwrap_or(0);
        if conns.total >= self.limits.max_connections || from_source >= self.limits.max_per_source {
            return false;
        }
        conns.total += 1;
        *conns.per_source.entry(ip).or_insert(0) += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut conns = self.connections.lock().unwrap();
        conns.total -= 1;
        if let Some(n) = conns.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                conns.per_source.remove(&ip);
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the eventfd was created by Server::new and is closed only here.
        unsafe { libc::close(self.wakeup) };
    }
}

struct Admitted {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.shared.release(self.ip);
    }
}

/// Tells Python a call's caller went away (reset, closed connection) before Python finished, so
/// a stream's task stops.
struct Pending {
    id: u64,
    finished: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::Acquire) {
            self.shared.push(Event::Closed(self.id));
        }
    }
}

fn grpc_trailers(code: u32, message: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from(code),
    );
    if !message.is_empty() {
        let encoded = utf8_percent_encode(message, GRPC_MESSAGE_ESCAPES).to_string();
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            map.insert(HeaderName::from_static("grpc-message"), value);
        }
    }
    map
}

fn grpc_headers(extra: Option<HeaderMap>) -> Response<()> {
    let mut response = Response::new(());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    if let Some(extra) = extra {
        headers.extend(extra);
    }
    response
}

/// A status with no message: gRPC's Trailers-Only response (the status in the headers).
fn refuse(mut respond: SendResponse<Bytes>, code: u32, message: &str) {
    let _ = respond.send_response(grpc_headers(Some(grpc_trailers(code, message))), true);
}

enum BodyError {
    TooLarge,
    Reset, // the caller reset the stream
}

/// The request's body, whole, within the limit.
async fn read_body(body: &mut RecvStream, limit: usize) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| BodyError::Reset)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

async fn handle(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
) {
    let is_grpc = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if request.method() != http::Method::POST || !is_grpc {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        let _ = respond.send_response(response, true);
        return;
    }
    let method = request.uri().path().to_owned();
    let metadata: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            name != "content-type" && name != "te" && !name.starts_with("grpc-")
        })
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|v| (name.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    let mut body = request.into_body();
    let body = match read_body(&mut body, shared.limits.max_message + GRPC_HEADER).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            let text = format!(
                "received message larger than max ({} bytes)",
                shared.limits.max_message
            );
            return refuse(respond, STATUS_RESOURCE_EXHAUSTED, &text);
        }
        Err(BodyError::Reset) => return,
    };
    let message = match unframe(&body) {
        Ok(message) => message,
        Err(reason) => return refuse(respond, STATUS_INVALID_ARGUMENT, reason),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let finished = Arc::new(AtomicBool::new(false));
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let _pending = Pending {
        id,
        finished: finished.clone(),
        shared: shared.clone(),
    };
    shared.push(Event::Call(CallData {
        id,
        method,
        conn,
        metadata,
        message: body.slice(message),
        reply: Reply {
            tx: Mutex::new(Some(tx)),
            finished,
        },
    }));
    let mut stream: Option<SendStream<Bytes>> = None;
    loop {
        // Whatever Python queued since the last look goes out together (one flush).
        let first = tokio::select! {
            out = rx.recv() => out,
            _ = poll_fn(|cx| match stream.as_mut() {
                Some(s) => s.poll_reset(cx),
                None => respond.poll_reset(cx),
            }) => return, // the caller reset the stream or the connection is gone
        };
        let Some(first) = first else { return };
        let mut next = Some(first);
        while let Some(out) = next.take().or_else(|| rx.try_recv().ok()) {
            let (data, trailers) = match out {
                Out::Answer(data) => (Some(data), Some(grpc_trailers(0, ""))),
                Out::Message(data) => (Some(data), None),
                Out::Status(trailers) => (None, Some(trailers)),
            };
            if let Some(data) = data {
                if stream.is_none() {
                    match respond.send_response(grpc_headers(None), false) {
                        Ok(s) => stream = Some(s),
                        Err(_) => return,
                    }
                }
                if let Some(s) = stream.as_mut() {
                    if s.send_data(data, false).is_err() {
                        return;
                    }
                }
            }
            if let Some(trailers) = trailers {
                match stream.as_mut() {
                    Some(s) => {
                        let _ = s.send_trailers(trailers);
                    }
                    None => {
                        let _ = respond.send_response(grpc_headers(Some(trailers)), true);
                    }
                }
                return;
            }
        }
    }
}

/// The one message of a unary request: its byte range in `body`, or why the framing is bad.
fn unframe(body: &Bytes) -> Result<std::ops::Range<usize>, &'static str> {
    if body.len() < GRPC_HEADER {
        return Err("the request holds no complete gRPC message");
    }
    if body[0] != 0 {
        return Err("compressed messages are not accepted (no grpc-encoding is served)");
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != GRPC_HEADER + length {
        return Err("the request is not exactly one length-prefixed gRPC message");
    }
    Ok(GRPC_HEADER..body.len())
}

fn peer_text(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("ipv4:{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("ipv6:[{}]:{}", a.ip(), a.port()),
    }
}

/// Ping every `every`; returns once an answer took longer than `wait` (the connection is then
/// closed, as grpcio's keepalive closes a peer that no longer answers).
async fn keepalive(mut pings: h2::PingPong, every: Duration, wait: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(wait, pings.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _admitted = Admitted {
        shared: shared.clone(),
        ip: addr.ip(),
    };
    let _ = tcp.set_nodelay(true);
    let acceptor = TlsAcceptor::from(shared.tls.read().unwrap().clone());
    let limits = shared.limits;
    let setup = async {
        let tls = acceptor.accept(tcp).await.ok()?;
        let peer_der = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| Bytes::copy_from_slice(leaf.as_ref()));
        let connection = h2::server::Builder::new()
            .max_concurrent_streams(1024)
            .max_header_list_size(16 * 1024)
            .handshake::<_, Bytes>(tls)
            .await
            .ok()?;
        Some((peer_der, connection))
    };
    // The TLS handshake and the HTTP/2 preface, within the handshake deadline.
    let Ok(Some((peer_der, mut connection))) =
        tokio::time::timeout(limits.handshake_timeout, setup).await
    else {
        return;
    };
    let conn = Arc::new(ConnInfo {
        peer_der,
        peer: peer_text(addr),
    });
    let pings = connection.ping_pong().expect("ping_pong is taken once");
    let alive = keepalive(pings, limits.keepalive_interval, limits.keepalive_timeout);
    tokio::pin!(alive);
    let mut stopping = false;
    loop {
        tokio::select! {
            accepted = connection.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    tokio::spawn(handle(request, respond, conn.clone(), shared.clone()));
                }
                _ => return, // closed, or a protocol error (h2 has sent its GOAWAY)
            },
            _ = &mut alive => return,
            stop = shutdown.wait_for(|stop| *stop), if !stopping => {
                let _ = stop.is_ok();
                stopping = true;
                connection.graceful_shutdown(); // GOAWAY; calls in flight finish
            }
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(_) => return,
    };
    let mut connections = JoinSet::new();
    let mut stopping = shutdown.clone();
    loop {
        tokio::select! {
            stop = stopping.wait_for(|stop| *stop) => { let _ = stop.is_ok(); break }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => {
                    if shared.admit(addr.ip()) {
                        let rx = shutdown.clone();
                        connections.spawn(serve_connection(tcp, addr, shared.clone(), rx));
                    }
                }
                // Out of descriptors, or a connection gone before it was accepted: go on.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

fn read_certs(pem: &[u8], what: &str) -> PyResult<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(PyValueError::new_err(format!("{what}: no certificate")));
    }
    Ok(certs)
}

fn tls_config(chain_pem: &[u8], key_pem: &[u8], bundle_pem: &[u8]) -> PyResult<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(chain_pem, "certificate chain")?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| PyValueError::new_err(format!("private key: {e}")))?
        .ok_or_else(|| PyValueError::new_err("private key: none in the PEM"))?;
    let mut roots = RootCertStore::empty();
    for root in read_certs(bundle_pem, "trust bundle")? {
        roots
            .add(root)
            .map_err(|e| PyValueError::new_err(format!("trust bundle: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| PyValueError::new_err(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| PyValueError::new_err(format!("TLS versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| PyValueError::new_err(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A message with gRPC's length prefix (uncompressed).
fn framed(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(GRPC_HEADER + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

/// One call, as Python sees it. `send` a serialized message (streams: many), then `finish`;
/// or `answer` a unary call with its message and OK at once.
#[pyclass(frozen, module = "ca._native_grpc")]
struct Call {
    #[pyo3(get)]
    id: u64,
    #[pyo3(get)]
    method: String,
    #[pyo3(get)]
    peer: String,
    #[pyo3(get)]
    peer_der: Option<Py<PyBytes>>,
    #[pyo3(get)]
    metadata: Vec<(String, String)>,
    #[pyo3(get)]
    message: Py<PyBytes>,
    reply: Reply,
}

#[pymethods]
impl Call {
    /// Queue one serialized message; False once the caller has gone.
    fn send(&self, message: &[u8]) -> bool {
        match self.reply.tx.lock().unwrap().as_ref() {
            Some(tx) => tx.send(Out::Message(framed(message))).is_ok(),
            None => false,
        }
    }

    /// A unary call's answer: its one serialized message and status OK, sent together.
    fn answer(&self, message: &[u8]) {
        self.end(Out::Answer(framed(message)));
    }

    /// End the call with a gRPC status (0: OK) and its message.
    fn finish(&self, code: u32, message: &str) {
        self.end(Out::Status(grpc_trailers(code, message)));
    }
}

impl Call {
    /// The call's last word: nothing is sent after it (and Drop has nothing left to say).
    fn end(&self, last: Out) {
        self.reply.finished.store(true, Ordering::Release);
        if let Some(tx) = self.reply.tx.lock().unwrap().take() {
            let _ = tx.send(last);
        }
    }
}

/// The listening port: `Server(fd, chain_pem, key_pem, bundle_pem, ...)` serves on the
/// listening socket `fd` (taken over) until `stop`.
#[pyclass(frozen, module = "ca._native_grpc")]
struct Server {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[pymethods]
impl Server {
    #[new]
    #[pyo3(signature = (fd, chain_pem, key_pem, bundle_pem, *, handshake_timeout, keepalive_interval, keepalive_timeout, max_connections, max_per_source, max_message, grace))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        fd: RawFd,
        chain_pem: &[u8],
        key_pem: &[u8],
        bundle_pem: &[u8],
        handshake_timeout: f64,
        keepalive_interval: f64,
        keepalive_timeout: f64,
        max_connections: usize,
        max_per_source: usize,
        max_message: usize,
        grace: f64,
    ) -> PyResult<Self> {
        let config = tls_config(chain_pem, key_pem, bundle_pem)?;
        // SAFETY: plain eventfd(2); the descriptor is owned by Shared from here on.
        let wakeup = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if wakeup < 0 {
            return Err(PyOSError::new_err(format!(
                "eventfd: {}",
                std::io::Error::last_os_error()
            )));
        }
        let seconds = |s: f64| Duration::from_secs_f64(s.max(0.001));
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            signalled: AtomicBool::new(false),
            wakeup,
            tls: RwLock::new(Arc::new(config)),
            next_id: AtomicU64::new(1),
            connections: Mutex::new(Connections {
                total: 0,
                per_source: HashMap::new(),
            }),
            limits: Limits {
                handshake_timeout: seconds(handshake_timeout),
                keepalive_interval: seconds(keepalive_interval),
                keepalive_timeout: seconds(keepalive_timeout),
                max_connections,
                max_per_source,
                max_message,
            },
        });
        // SAFETY: the caller hands over a listening TCP socket it no longer uses.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        listener
            .set_nonblocking(true)
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let (shutdown, rx) = watch::channel(false);
        let serving = shared.clone();
        let grace = seconds(grace);
        let thread = std::thread::Builder::new()
            .name("ca-mtls-port".into())
            .spawn(move || runtime.block_on(serve(listener, serving, rx, grace)))
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(Server {
            shared,
            shutdown,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The descriptor that becomes readable when calls wait (for `loop.add_reader`).
    fn wakeup_fd(&self) -> RawFd {
        self.shared.wakeup
    }

    /// Every waiting event: a `Call`, or the id (int) of a call whose caller went away.
    fn take(&self, py: Python<'_>) -> PyResult<Vec<PyObject>> {
        let mut counter = [0u8; 8];
        // SAFETY: nonblocking read of our own eventfd into an 8-byte buffer.
        unsafe { libc::read(self.shared.wakeup, counter.as_mut_ptr().cast(), 8) };
        self.shared.signalled.store(false, Ordering::Release);
        let events: Vec<Event> = self.shared.queue.lock().unwrap().drain(..).collect();
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            match event {
                Event::Closed(id) => out.push(id.into_pyobject(py)?.into_any().unbind()),
                Event::Call(call) => {
                    let call = Call {
                        id: call.id,
                        method: call.method,
                        peer: call.conn.peer.clone(),
                        peer_der: call
                            .conn
                            .peer_der
                            .as_ref()
                            .map(|d| PyBytes::new(py, d).unbind()),
                        metadata: call.metadata,
                        message: PyBytes::new(py, &call.message).unbind(),
                        reply: call.reply,
                    };
                    out.push(Py::new(py, call)?.into_any());
                }
            }
        }
        Ok(out)
    }

    /// New certificate, key or trust bundle: every handshake from now on uses them.
    fn set_tls(&self, chain_pem: &[u8], key_pem: &[u8], bundle_pem: &[u8]) -> PyResult<()> {
        let config = tls_config(chain_pem, key_pem, bundle_pem)?;
        *self.shared.tls.write().unwrap() = Arc::new(config);
        Ok(())
    }

    /// Stop accepting, let calls in flight finish (at most the grace), and wait for that.
    fn stop(&self, py: Python<'_>) {
        let _ = self.shutdown.send(true);
        let thread = self.thread.lock().unwrap().take();
        if let Some(thread) = thread {
            py.allow_threads(|| {
                let _ = thread.join();
            });
        }
    }
}

#[pymodule]
fn _native_grpc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Server>()?;
    m.add_class::<Call>()?;
    Ok(())
}
