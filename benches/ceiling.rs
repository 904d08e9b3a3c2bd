//! The transport ceiling of `make bench-compare` (bench-only, not shipped):
//! a minimal hyper 1 HTTP/1.1 server on a Unix socket, on the same tokio
//! multi-thread runtime as the sidecar (hyper's default limits), that reads each
//! request body to its end and answers a fixed JSON body of `--bytes` bytes
//! (default: the size of a 1 KiB envelope answer). Whatever the sidecar
//! costs above this server is its own work: routing, checks, JSON, crypto.
//!
//! With `--upstream http://HOST:PORT` it is instead a thin proxy: each
//! request goes as it came (method, path, headers, body) to the upstream
//! over a pooled keep-alive connection (hyper's client, which reqwest is
//! built on), and its answer comes back as it is — the least a proxy on
//! the sidecar's stack can cost, to compare the proxied path with.
//!
//! ```text
//! cargo build --release --example transport-ceiling
//! target/release/examples/transport-ceiling --socket /tmp/ceiling.sock [--bytes 1634]
//! target/release/examples/transport-ceiling --socket /tmp/proxy.sock --upstream http://127.0.0.1:8200
//! ```

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::path::PathBuf;

/// `{"envelope":"<base64 of a 1 KiB envelope>","version":"1"}`
/// with its newline, as the sidecar answers a 1 KiB envelope encrypt.
const DEFAULT_BYTES: usize = 1634;

fn main() {
    let mut socket: Option<PathBuf> = None;
    let mut upstream: Option<String> = None;
    let mut bytes = DEFAULT_BYTES;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => socket = args.next().map(PathBuf::from),
            "--upstream" => upstream = args.next(),
            "--bytes" => {
                bytes = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage("--bytes takes a number"))
            }
            _ => usage(&format!("unknown argument {arg}")),
        }
    }
    let socket = socket.unwrap_or_else(|| usage("--socket PATH is required"));
    let body = answer(bytes);
    let _ = std::fs::remove_file(&socket);
    let runtime = tokio::runtime::Runtime::new().expect("building the tokio runtime");
    runtime.block_on(serve(socket, body, upstream));
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "transport-ceiling: {problem}\nusage: transport-ceiling --socket PATH [--bytes N | --upstream http://HOST:PORT]"
    );
    std::process::exit(2)
}

/// A JSON object of exactly `size` bytes (newline included).
fn answer(size: usize) -> Bytes {
    let head = r#"{"envelope":""#;
    let tail = "\",\"version\":\"1\"}\n";
    let fill = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "A".repeat(fill)))
}

async fn serve(socket: PathBuf, body: Bytes, upstream: Option<String>) {
    let listener = tokio::net::UnixListener::bind(&socket).expect("binding the socket");
    eprintln!("transport-ceiling: listening on {}", socket.display());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).keep_alive(true);
    // The proxy's state only in proxy mode: the ceiling does nothing more
    // per request than read the body and answer.
    let proxy = upstream.map(|upstream| {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        std::sync::Arc::new((client, upstream))
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let io = TokioIo::new(stream);
        let conn = match &proxy {
            None => {
                let body = body.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let body = body.clone();
                    async move {
                        // Read the request to its end, as the sidecar does.
                        let _ = req.into_body().collect().await;
                        let mut response = Response::new(Full::new(body));
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(http.serve_connection(io, service))
            }
            Some(proxy) => {
                let proxy = proxy.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let proxy = proxy.clone();
                    async move {
                        let (client, upstream) = &*proxy;
                        Ok::<_, Infallible>(forward(client, upstream, req).await)
                    }
                });
                tokio::spawn(http.serve_connection(io, service))
            }
        };
        drop(conn);
    }
}

/// The thin proxy: the request to `upstream`, its answer back (502 when
/// the upstream cannot be reached).
async fn forward(
    client: &Client<HttpConnector, Full<Bytes>>,
    upstream: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, incoming) = req.into_parts();
    let Ok(body) = incoming.collect().await.map(|b| b.to_bytes()) else {
        return status(http::StatusCode::BAD_REQUEST);
    };
    let uri = format!(
        "{upstream}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = parts.method;
    *request.headers_mut() = parts.headers;
    request.headers_mut().remove(http::header::HOST);
    match uri.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return status(http::StatusCode::BAD_REQUEST),
    }
    match client.request(request).await {
        Ok(answer) => {
            let (parts, incoming) = answer.into_parts();
            match incoming.collect().await {
                Ok(b) => Response::from_parts(parts, Full::new(b.to_bytes())),
                Err(_) => status(http::StatusCode::BAD_GATEWAY),
            }
        }
        Err(_) => status(http::StatusCode::BAD_GATEWAY),
    }
}

fn status(code: http::StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}
