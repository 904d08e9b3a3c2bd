"""An OTLP trace receiver for the tests: OTLP/HTTP (protobuf) and OTLP/gRPC,
decoded with the official `opentelemetry-proto` definitions (a real
receiver, not a fake of the sidecar: it accepts what any collector accepts).

    python3 tests/servers/otlp_receiver.py --dir DIR [--tls-cert PEM --tls-key PEM]

When listening it writes, in DIR:
- `url`: `http://127.0.0.1:PORT` (OTLP/HTTP; POST /v1/traces)
- `grpc`: `http://127.0.0.1:PORT` (OTLP/gRPC; TraceService/Export)

(`https://` for both with `--tls-cert` and `--tls-key`)

and for every export it receives:
- `raw.bin`: the request bytes as received, appended (for secret scans);
- `spans.jsonl`: one JSON object per span: its ids in hex, name, kind,
  attributes, status, the resource's attributes, and the transport and
  request headers of its export (gRPC metadata for gRPC).

Needs `pip install opentelemetry-proto grpcio` (`make test` installs them).
"""

import argparse
import json
import os
import signal
import ssl
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOCK = threading.Lock()
DIR = "."


def value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def record(raw, transport, headers):
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(raw)
    lines = []
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                lines.append(json.dumps({
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "trace_state": s.trace_state,
                    "name": s.name,
                    "kind": s.kind,
                    "attributes": attributes(s.attributes),
                    "events": [e.name for e in s.events],
                    "status": {"code": s.status.code, "message": s.status.message},
                    "start": s.start_time_unix_nano,
                    "end": s.end_time_unix_nano,
                    "resource": resource,
                    "scope": ss.scope.name,
                    "transport": transport,
                    "headers": headers,
                }))
    with LOCK:
        with open(os.path.join(DIR, "raw.bin"), "ab") as f:
            f.write(raw)
        with open(os.path.join(DIR, "spans.jsonl"), "a") as f:
            for line in lines:
                f.write(line + "\n")


class Http(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/traces":
            return self.answer(404, b"")
        if self.headers.get("Content-Type") != "application/x-protobuf":
            return self.answer(415, b"")
        headers = {k.lower(): v for k, v in self.headers.items()}
        record(raw, "http", headers)
        self.answer(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Grpc(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        headers = {k.lower(): v for k, v in context.invocation_metadata()}
        record(request.SerializeToString(), "grpc", headers)
        return trace_service_pb2.ExportTraceServiceResponse()


def write(name, text):
    tmp = os.path.join(DIR, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(DIR, name))


def main():
    global DIR
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="where `url`, `grpc` and the received spans go")
    ap.add_argument("--tls-cert", help="serve both protocols over TLS with this certificate (PEM)")
    ap.add_argument("--tls-key", help="... and this key (PEM)")
    args = ap.parse_args()
    DIR = os.path.abspath(args.dir)
    os.makedirs(DIR, exist_ok=True)
    scheme = "https" if args.tls_cert else "http"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Grpc(), server)
    if args.tls_cert:
        with open(args.tls_key, "rb") as k, open(args.tls_cert, "rb") as c:
            credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
        grpc_port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
    http.daemon_threads = True
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        http.socket = context.wrap_socket(http.socket, server_side=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()

    write("grpc", f"{scheme}://127.0.0.1:{grpc_port}\n")
    write("url", f"{scheme}://127.0.0.1:{http.server_address[1]}\n")
    print(f"OTLP receiver: {scheme}://127.0.0.1:{http.server_address[1]} (HTTP), "
          f"127.0.0.1:{grpc_port} (gRPC), spans in {DIR}", file=sys.stderr, flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(0)
    http.shutdown()


if __name__ == "__main__":
    main()
