#!/usr/bin/env python3
"""A hostile or careless client of the kms-sidecar socket, for tests/it/adversarial.rs.

The tests run it as other uids (setpriv) against the real sidecar. Every mode
prints one JSON object on stdout and exits 0; what it saw is for the test to
judge.

  hold SOCKET PATH CONNECTIONS CONTENT_LENGTH SEND_BYTES WAIT_S [READ_AFTER_S]
      Opens CONNECTIONS connections, each sending a POST head that declares
      CONTENT_LENGTH and then SEND_BYTES of body: less than declared, the
      body never ends; all of it, a valid {"plaintext": ...} JSON body. It
      starts reading answers after READ_AFTER_S seconds (default 0: at once)
      and collects what each connection answers within WAIT_S seconds.
      Prints {"statuses": {...}, "codes": {...}, "closed": n, "silent": n}.

  http SOCKET METHOD PATH BODY_BYTES COUNT [HEADER:VALUE ...]
      COUNT requests with Python's http.client, which writes the head and
      then the body (as requests/urllib3 do), each on a new connection.
      BODY_BYTES is the size of a JSON body ({"message": "<base64>"}) or 0
      for none. Prints {"statuses": {...}, "codes": {...}, "errors": {...},
      "retry_after": [...]}.

  idle SOCKET CONNECTIONS WAIT_S
      Opens CONNECTIONS connections that send nothing and reports how many
      the sidecar closed at once ("refused") and within WAIT_S ("closed").

  nonces SOCKET PATH COUNT PREFIX
      COUNT signs ({"message": ...}) on one keep-alive connection, each with
      a fresh 64-character `x-request-nonce` (PREFIX and a counter) and the
      current `x-request-timestamp`: a flood of a replay-guarded key.
      Prints {"statuses": {...}, "codes": {...}, "retry_after": [...]}.

  squat SOCKET SECONDS
      What a container that can write the socket's directory could do:
      deletes the socket, listens on its path, and answers every request
      with a forged `{"valid": true}` for SECONDS. Prints {"taken": bool,
      "answered": n} (n: requests it got).

  idle-uids SOCKET CONNECTIONS WAIT_S GID FIRST_UID
      As idle, run as root, each connection made as another uid (FIRST_UID,
      FIRST_UID + 1, ...) of group GID: the peer credentials a socket
      records are the effective ones at connect(), as a root container
      that switches uids would present them.
"""

import base64
import collections
import http.client
import json
import os
import resource
import select
import socket
import sys
import time


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def parse_response(raw):
    """(status, error code) of a raw HTTP response, or (None, None)."""
    if not raw.startswith(b"HTTP/1.1 "):
        return None, None
    status = int(raw[9:12])
    code = None
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        code = json.loads(body.split(b"\n")[0])["error"]["code"]
    except Exception:
        pass
    return status, code


def json_body(length):
    """A {"plaintext": "<base64>"} body of exactly `length` bytes."""
    head, tail = b'{"plaintext":"', b'"}'
    n = length - len(head) - len(tail)
    n -= n % 4
    return head + b"A" * n + tail + b" " * (length - len(head) - n - len(tail))


def hold(sock_path, path, connections, content_length, send_bytes, wait_s, read_after_s=0.0):
    conns = []
    refused = 0
    if send_bytes >= content_length:
        body = json_body(content_length)
    else:
        body = b"{" + b" " * max(send_bytes - 1, 0)
    for _ in range(connections):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(sock_path)
        except OSError:
            refused += 1
            continue
        s.setblocking(False)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
        ).encode()
        conns.append({"sock": s, "out": head + body, "in": b"", "done": False})
    read_from = time.monotonic() + read_after_s
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not all(c["done"] for c in conns):
        live = [c for c in conns if not c["done"]]
        poller = select.poll()
        reading = time.monotonic() >= read_from
        for c in live:
            events = (select.POLLIN if reading else 0) | (select.POLLOUT if c["out"] else 0)
            if events:
                poller.register(c["sock"], events)
        events = dict(poller.poll(200))
        readable = {fd for fd, ev in events.items() if ev & (select.POLLIN | select.POLLHUP | select.POLLERR)}
        writable = {fd for fd, ev in events.items() if ev & select.POLLOUT}
        for c in live:
            s = c["sock"]
            fd = s.fileno()
            if fd in writable and c["out"]:
                try:
                    n = s.send(c["out"][:65536])
                    c["out"] = c["out"][n:]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    c["out"] = b""
            if fd in readable:
                try:
                    data = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    c["done"] = True
                else:
                    c["in"] += data
                    if b"\r\n\r\n" in c["in"] and c["in"].endswith(b"\n"):
                        c["done"] = True
    statuses, codes = collections.Counter(), collections.Counter()
    closed = silent = 0
    for c in conns:
        status, code = parse_response(c["in"])
        if status is not None:
            statuses[str(status)] += 1
            if code:
                codes[code] += 1
        elif c["done"]:
            closed += 1
        else:
            silent += 1
        c["sock"].close()
    print(json.dumps({"statuses": statuses, "codes": codes, "closed": closed + refused, "silent": silent}))


def http_requests(sock_path, method, path, body_bytes, count, headers):
    statuses, codes, errors = collections.Counter(), collections.Counter(), collections.Counter()
    retry_after = []
    body = None
    if body_bytes > 0:
        raw = b"x" * max(0, (body_bytes - 16) * 3 // 4)
        body = json.dumps({"message": base64.b64encode(raw).decode()}).encode()
    hdrs = {"Content-Type": "application/json"}
    for h in headers:
        k, _, v = h.partition(":")
        hdrs[k] = v
    for _ in range(count):
        conn = UnixHTTPConnection(sock_path)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            statuses[str(resp.status)] += 1
            if resp.getheader("Retry-After"):
                retry_after.append(resp.getheader("Retry-After"))
            try:
                codes[json.loads(data)["error"]["code"]] += 1
            except Exception:
                pass
        except Exception as e:  # what the review saw: BrokenPipeError, ConnectionResetError
            errors[type(e).__name__] += 1
        finally:
            conn.close()
    print(json.dumps({"statuses": statuses, "codes": codes, "errors": errors, "retry_after": retry_after}))


def nonces(sock_path, path, count, prefix):
    statuses, codes, retry_after = collections.Counter(), collections.Counter(), []
    body = json.dumps({"message": base64.b64encode(b"flood").decode()}).encode()
    conn = UnixHTTPConnection(sock_path)
    for i in range(count):
        nonce = f"{prefix}-{i:062d}"[-64:]
        conn.request("POST", path, body=body, headers={
            "Content-Type": "application/json",
            "x-request-nonce": nonce,
            "x-request-timestamp": str(int(time.time())),
        })
        resp = conn.getresponse()
        data = resp.read()
        statuses[str(resp.status)] += 1
        if resp.status != 200:
            codes[json.loads(data)["error"]["code"]] += 1
            if resp.getheader("Retry-After") and len(retry_after) < 3:
                retry_after.append(resp.getheader("Retry-After"))
    conn.close()
    print(json.dumps({"statuses": statuses, "codes": codes, "retry_after": retry_after}))


def squat(sock_path, seconds):
    try:
        os.unlink(sock_path)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(sock_path)
        os.chmod(sock_path, 0o666)
        srv.listen(64)
    except OSError as e:
        print(json.dumps({"taken": False, "answered": 0, "error": e.strerror}))
        return
    srv.settimeout(0.2)
    answered, deadline = 0, time.monotonic() + seconds
    body = b'{"valid": true, "version": "1"}\n'
    while time.monotonic() < deadline:
        try:
            c, _ = srv.accept()
        except socket.timeout:
            continue
        c.settimeout(1)
        try:
            c.recv(65536)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            answered += 1
        except OSError:
            pass
        c.close()
    print(json.dumps({"taken": True, "answered": answered}))


def idle(sock_path, connections, wait_s, as_ids=None):
    socks, refused = [], 0
    for i in range(connections):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if as_ids:
                gid, first_uid = as_ids
                os.setegid(gid)
                os.seteuid(first_uid + i)
            try:
                s.connect(sock_path)
            finally:
                if as_ids:
                    os.seteuid(0)
                    os.setegid(0)
            socks.append(s)
        except OSError:
            refused += 1
    # Closed at accept: readable with EOF right away.
    time.sleep(0.5)
    at_once = sum(1 for s in socks if closed_now(s))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
    closed = sum(1 for s in socks if closed_now(s))
    print(json.dumps({"opened": len(socks), "refused": refused + at_once, "closed": closed}))


def closed_now(s):
    p = select.poll()
    p.register(s, select.POLLIN | select.POLLHUP)
    if not p.poll(0):
        return False
    try:
        s.setblocking(False)
        return s.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def main(argv):
    mode = argv[1]
    raise_fd_limit()
    if mode == "hold":
        hold(argv[2], argv[3], int(argv[4]), int(argv[5]), int(argv[6]), float(argv[7]),
             float(argv[8]) if len(argv) > 8 else 0.0)
    elif mode == "http":
        http_requests(argv[2], argv[3], argv[4], int(argv[5]), int(argv[6]), argv[7:])
    elif mode == "idle":
        idle(argv[2], int(argv[3]), float(argv[4]))
    elif mode == "nonces":
        nonces(argv[2], argv[3], int(argv[4]), argv[5])
    elif mode == "squat":
        squat(argv[2], float(argv[3]))
    elif mode == "idle-uids":
        idle(argv[2], int(argv[3]), float(argv[4]), (int(argv[5]), int(argv[6])))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv)
