#!/usr/bin/env python3
"""What an idle client connection costs a proxy in RSS (not run by bench/run).

Starts an upstream nginx (GET /small, keep-alive), the fake Entra (bench/fake_entra.rs) and patless
(release build, its default workers, `server.max_connections = 8192`, a route /ado to the
upstream); warms patless up with three requests on connections of their own (the token, the
upstream connection); then, for each of --waves waves, opens N connections and holds them:

  - before a request: once they are open, before any request;
  - after one: each sends one keep-alive GET /ado/small (--batch connections at a time: sent
    together, then answered) and idles; sampled 2 s and 7 s after the last answer.

Reports (VmRSS then - VmRSS before the wave) / N, in KiB per connection. A second wave shows what
connections cost once the allocator holds memory the first wave freed. --trim then calls
malloc_trim(0) in the proxy through gdb: what is left is what the connections hold, not what
glibc keeps of freed memory. With --nginx, nginx is the proxy instead (master and workers).

    cargo build --release --locked --bin patless --example bench-fake-entra
    python3 bench/idle_conns.py --patless target/release/patless \
        --fake-entra target/release/examples/bench-fake-entra [-n 4000] [--batch 100] [--waves 2]
"""

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def read_answer(s):
    """Reads one response with a Content-Length body; returns its status."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError(f"closed before the answer: {buf!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("closed in the body")
        body += chunk
    return int(lines[0].split()[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--patless")
    ap.add_argument("--fake-entra")
    ap.add_argument("--nginx", action="store_true", help="measure nginx as the proxy instead")
    ap.add_argument("-n", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--path", default="/ado/small", help="what each connection asks for")
    ap.add_argument("--waves", type=int, default=1, help="waves of N connections, one after another")
    ap.add_argument(
        "--trim",
        action="store_true",
        help="diagnosis: then call malloc_trim(0) in the proxy with gdb and sample once more",
    )
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 3 * args.n * 2 + 1024)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))

    work = tempfile.mkdtemp(prefix="idle-conns-")
    procs = []
    try:
        up_port = free_port()
        os.makedirs(f"{work}/up", exist_ok=True)
        temp = "".join(
            f"    {k}_temp_path {work}/up/{k};\n"
            for k in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        )
        with open(f"{work}/up/nginx.conf", "w") as f:
            f.write(f"""worker_processes 1;
daemon off;
pid {work}/up/nginx.pid;
error_log {work}/up/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
{temp}    keepalive_timeout 300s;
    keepalive_requests 100000000;
    server {{
        listen 127.0.0.1:{up_port} backlog=4096;
        location = /small {{ default_type text/plain; return 200 "a small upstream answer"; }}
        location / {{ return 404; }}
    }}
}}
""")
        procs.append(subprocess.Popen(["nginx", "-p", f"{work}/up", "-c", f"{work}/up/nginx.conf"]))
        wait_port(up_port)

        port = free_port()
        if args.nginx:
            os.makedirs(f"{work}/px", exist_ok=True)
            temp = temp.replace("/up/", "/px/")
            with open(f"{work}/px/nginx.conf", "w") as f:
                f.write(f"""worker_processes 1;
daemon off;
pid {work}/px/nginx.pid;
error_log {work}/px/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
{temp}    keepalive_timeout 120s;
    keepalive_requests 100000000;
    upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /ado/ {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer static";
            proxy_pass http://up/;
        }}
    }}
}}
""")
            px = subprocess.Popen(["nginx", "-p", f"{work}/px", "-c", f"{work}/px/nginx.conf"])
            procs.append(px)
            wait_port(port)
            pids = lambda: [px.pid] + children(px.pid)  # noqa: E731
        else:
            entra = subprocess.Popen([args.fake_entra], stdout=subprocess.PIPE, text=True)
            procs.append(entra)
            entra_port = int(entra.stdout.readline())
            admin = free_port()
            conf = f"{work}/patless.toml"
            with open(conf, "w") as f:
                f.write(f"""[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
host_routes = false
default_profile = "bench"
max_connections = 8192

[entra]
authority_host = "http://127.0.0.1:{entra_port}"

[profiles.bench]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "3f2b9c1e-8d4a-4e6f-9b7c-2a1d5e8f0c34"
client_secret = "bench-secret"

[[routes]]
prefix = "/ado"
upstream = "http://127.0.0.1:{up_port}"
profile = "bench"
scope = "499b84ac-1321-427f-aa17-267ca6975798/.default"
""")
            os.chmod(conf, 0o600)
            env = {k: v for k, v in os.environ.items() if k != "PATLESS_LOG"}
            px = subprocess.Popen(
                [args.patless, "serve", "--config", conf],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(f"{work}/patless.err", "w"),
            )
            procs.append(px)
            wait_port(admin)
            wait_port(port)
            pids = lambda: [px.pid]  # noqa: E731

        req = f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        # Warm-up: the token, the upstream connection, the allocator's first arenas.
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(req)
                assert read_answer(s) < 500
        time.sleep(2)
        base = rss_kib(pids())

        def per(v, since):
            return (v - since) / args.n

        who = "nginx" if args.nginx else "patless"
        held = []
        for wave in range(1, args.waves + 1):
            # Wave 1 measures from the warmed-up process; a later wave, from the RSS the earlier
            # ones left (their freed memory is the allocator's to reuse).
            since = rss_kib(pids())
            conns = []
            for _ in range(args.n):
                conns.append(socket.create_connection(("127.0.0.1", port)))
            time.sleep(1)
            opened = rss_kib(pids())
            for i in range(0, args.n, args.batch):
                batch = conns[i : i + args.batch]
                for s in batch:
                    s.sendall(req)
                for s in batch:
                    status = read_answer(s)
                    assert status < 500, status
            answered = time.monotonic()
            samples = {}
            for at in (2, 7):
                time.sleep(max(0, answered + at - time.monotonic()))
                samples[at] = rss_kib(pids())
            held += conns
            print(
                f"{who} wave {wave}: n={args.n} batch={args.batch} RSS before {since} KiB; "
                f"per connection: before a request {per(opened, since):.2f} KiB, "
                f"2 s after one {per(samples[2], since):.2f} KiB, "
                f"7 s after one {per(samples[7], since):.2f} KiB",
                flush=True,
            )
        if args.trim:
            for pid in pids():
                subprocess.run(
                    ["gdb", "-p", str(pid), "-batch", "-ex", "call (int) malloc_trim(0)"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
            time.sleep(0.5)
            trimmed = rss_kib(pids())
            print(
                f"{who}: after malloc_trim(0): {(trimmed - base) / len(held):.2f} KiB "
                f"per held connection ({len(held)})"
            )
        # Every connection is still open and still serves.
        for s in held[:: max(1, len(held) // 50)]:
            s.sendall(req)
            assert read_answer(s) < 500
        for s in held:
            s.close()
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
