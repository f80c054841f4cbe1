#!/usr/bin/env python3
"""Helpers for bench/run: free ports, /proc readings, wrk/curl/criterion parsing, the cold-start
client and the report. Standard library only (Python 3.8+).

    benchlib.py ports N                      N free loopback TCP ports, one a line
    benchlib.py stat PID                     JSON: cpu seconds, VmHWM, VmRSS summed over PID and
                                             its descendants (nginx: master + workers)
    benchlib.py clear-hwm PID                reset VmHWM of PID and its descendants
                                             (echo 5 > /proc/P/clear_refs)
    benchlib.py conns PID --remote-ports P,Q [--local-ports P] [--delay-ms MS] [--own-port P]
                                             established TCP connections of PID and its
                                             descendants to (or accepted on) those ports
    benchlib.py sample OUT INTERVAL PID      sample summed VmRSS every INTERVAL s until killed;
                                             OUT holds "start_kb max_kb samples", rewritten each time
    benchlib.py wrk-record ...               parse a wrk --latency output into a JSON record
    benchlib.py coldstart ...                N concurrent first requests; JSON result
    benchlib.py idle ...                     N idle keep-alive connections to a proxy, one request
                                             on each, the proxy's RSS at each step; JSON result
    benchlib.py criterion LOG                criterion's output → JSON lines {name, ns}
    benchlib.py report JSONL                 the markdown report
"""

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import statistics
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# /proc
# ---------------------------------------------------------------------------------------------


def _descendants(root):
    """root and every live descendant (by scanning /proc/*/stat for parent ids)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        # comm may hold spaces and parentheses: fields start after the last ')'.
        rest = s[s.rfind(")") + 2 :].split()
        children.setdefault(int(rest[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return 0
    rest = s[s.rfind(")") + 2 :].split()
    # fields 14-17 of stat (utime stime cutime cstime) are rest[11:15]
    return sum(int(x) for x in rest[11:15])


def listen_overflows():
    """System-wide TcpExt ListenOverflows: connections dropped because an accept queue was full."""
    try:
        with open("/proc/net/netstat") as f:
            lines = [l.split() for l in f if l.startswith("TcpExt:")]
        return int(lines[1][lines[0].index("ListenOverflows")])
    except (OSError, ValueError, IndexError):
        return 0


def proc_stat(pid):
    pids = _descendants(pid)
    return {
        "listen_overflows": listen_overflows(),
        "pids": len(pids),
        "cpu_s": sum(_cpu_ticks(p) for p in pids) / CLK_TCK,
        "hwm_kb": sum(_status_kb(p, "VmHWM") for p in pids),
        "rss_kb": sum(_status_kb(p, "VmRSS") for p in pids),
    }


def _tcp_established(pid):
    """(inode, local_port, remote_port) of every ESTABLISHED TCP socket in PID's network namespace
    (/proc/PID/net/tcp and tcp6: addresses are hex ip:port, state 01 is ESTABLISHED)."""
    out = []
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f)
                for line in f:
                    x = line.split()
                    if len(x) > 9 and x[3] == "01":
                        out.append((int(x[9]), int(x[1].rsplit(":", 1)[1], 16), int(x[2].rsplit(":", 1)[1], 16)))
        except (OSError, StopIteration, ValueError):
            pass
    return out


def _socket_inodes(pids):
    """The socket inodes open in any of PIDS (their fds' `socket:[N]` links)."""
    inodes = set()
    for p in pids:
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return inodes


def count_conns(pid, remote_ports=(), local_ports=()):
    """ESTABLISHED TCP connections held by PID or a descendant (nginx: master + workers) whose
    remote port is in REMOTE_PORTS (to the upstream) or local port in LOCAL_PORTS (accepted from
    clients). Per process tree, unlike `ss` filtered by name: the upstream nginx is not counted."""
    mine = _socket_inodes(_descendants(pid))
    rp, lp = set(remote_ports), set(local_ports)
    return sum(1 for ino, l, r in _tcp_established(pid) if ino in mine and (r in rp or l in lp))


def clear_hwm(pid):
    ok = True
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def sample(out, interval, pid):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    start, peak, n = None, 0, 0
    deadline = time.monotonic() + 3600  # bounded: never outlives an hour
    while not stop and time.monotonic() < deadline:
        pids = _descendants(pid)
        rss = sum(_status_kb(p, "VmRSS") for p in pids)
        if rss == 0 and not os.path.exists(f"/proc/{pid}"):
            break
        if start is None:
            start = rss
        peak = max(peak, rss)
        n += 1
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{start} {peak} {n}\n")
        os.replace(tmp, out)
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(text):
    r = {"rps": None, "p50_ms": None, "p99_ms": None, "requests": 0, "errors": 0, "non2xx": 0}
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"Requests/sec:\s+([0-9.]+)", s)
        if m:
            r["rps"] = float(m.group(1))
        m = re.match(r"(50|99)(?:\.000)?%\s+(\S+)", s)
        if m:
            r["p%s_ms" % m.group(1)] = _ms(m.group(2))
        m = re.match(r"(\d+) requests in ([0-9.]+)(\w+),", s)
        if m:
            r["requests"] = int(m.group(1))
            r["elapsed_s"] = _ms(m.group(2) + m.group(3)) / 1000.0
        m = re.match(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", s)
        if m:
            r["errors"] = sum(int(x) for x in m.groups())
        m = re.match(r"Non-2xx or 3xx responses: (\d+)", s)
        if m:
            r["non2xx"] = int(m.group(1))
    return r


def parse_criterion(text):
    out, name = [], None
    for line in text.splitlines():
        m = re.match(r"^(\S.*?)\s+time:\s+\[(.*)\]", line)
        if m:
            name = m.group(1).strip()
            mid = m.group(2).split()
        else:
            m = re.match(r"^\s+time:\s+\[(.*)\]", line)
            if m and name:
                mid = m.group(1).split()
            else:
                if line and not line[0].isspace() and not line.startswith(("Benchmarking", "Found", "Warning", "Gnuplot")):
                    name = line.strip()
                continue
        # [low unit mid unit high unit]
        value, unit = float(mid[2]), mid[3]
        scale = {"ps": 0.001, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}[unit]
        out.append({"kind": "micro", "name": name, "ns": value * scale})
        name = None
    return out


# ---------------------------------------------------------------------------------------------
# cold start client
# ---------------------------------------------------------------------------------------------


def _post(url):
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=5).read()


async def _coldstart(host, port, n, path, wait_s, since, timeout, release_url, settle_ms):
    deadline = time.monotonic() + wait_s
    while True:
        try:
            s = socket.create_connection((host, port), timeout=1)
            s.close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"coldstart: {host}:{port} did not open within {wait_s}s")
            await asyncio.sleep(0.002)
    t_open = time.time()
    overflows_before = listen_overflows()
    conns = await asyncio.wait_for(
        asyncio.gather(*[asyncio.open_connection(host, port) for _ in range(n)]), timeout
    )
    t_connected = time.time()
    req = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: bench-coldstart\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    t0 = time.perf_counter()
    t0_wall = time.time()
    for _, w in conns:
        w.write(req)
    t_release = None
    if release_url:
        # Let the proxy read every request (they queue on the acquisition in flight), then let
        # the fake Entra answer it.
        await asyncio.gather(*[w.drain() for _, w in conns])
        await asyncio.sleep(settle_ms / 1000.0)
        t_release = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(None, _post, release_url)

    async def one(r, w):
        await w.drain()
        data = await r.read()  # Connection: close: the answer ends at EOF
        t = time.perf_counter()
        w.close()
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        return status, t

    results = await asyncio.wait_for(asyncio.gather(*[one(r, w) for r, w in conns]), timeout)
    t_last = max(t for _, t in results)
    statuses = {}
    for s, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    lat = sorted((t - t0) * 1000 for _, t in results)
    return {
        "n": n,
        "statuses": statuses,
        "ok": statuses.get("200", 0),
        "fire_to_last_ms": (t_last - t0) * 1000,
        "release_to_last_ms": (t_last - t_release) * 1000 if t_release else None,
        "answered_before_release": sum(1 for _, t in results if t_release and t < t_release),
        "fire_to_first_ms": lat[0],
        "fire_to_median_ms": lat[len(lat) // 2],
        "connect_all_ms": (t_connected - t_open) * 1000,
        "listen_overflows": listen_overflows() - overflows_before,
        "since_to_open_ms": (t_open - since) * 1000 if since else None,
        "since_to_last_ms": (t0_wall + (t_last - t0) - since) * 1000 if since else None,
    }


# ---------------------------------------------------------------------------------------------
# idle keep-alive connections
# ---------------------------------------------------------------------------------------------


def _raise_nofile(want):
    """Lift this process's open-files limit to WANT (the hard one too, where allowed: root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    for lim in ((want, max(want, hard)), (min(want, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, lim)
            return lim[0]
        except (ValueError, OSError):
            pass
    return soft


def nofile_limit(pid):
    """The soft open-files limit of PID (/proc/PID/limits), or None."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    v = line.split()[3]
                    return None if v == "unlimited" else int(v)
    except (OSError, IndexError, ValueError):
        pass
    return None


async def _idle(pid, host, port, n, path, up_ports, settle, later, open_conc, req_conc, timeout):
    """Opens N keep-alive connections to HOST:PORT (OPEN_CONC connects at a time), holds them,
    then sends one GET PATH on each (REQ_CONC at a time) and holds them again, reading the RSS of
    PID (summed over its process tree) at each step."""
    limit = _raise_nofile(n * 2 + 100)
    if limit < n + 50:
        raise SystemExit(f"idle: open-files limit {limit} is too low for {n} connections")
    rss = lambda: proc_stat(pid)["rss_kb"]
    r = {"n": n, "port": port, "path": path, "proxy_nofile": nofile_limit(pid)}
    r["accepted_before"] = count_conns(pid, local_ports=[port])
    r["rss_before_kb"] = rss()

    sem = asyncio.Semaphore(open_conc)

    async def connect():
        async with sem:
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            except (OSError, asyncio.TimeoutError):
                return None

    t0 = time.perf_counter()
    conns = [c for c in await asyncio.gather(*[connect() for _ in range(n)]) if c]
    r["open_ms"] = (time.perf_counter() - t0) * 1000
    r["open_failed"] = n - len(conns)
    await asyncio.sleep(settle)
    # Accepted by the proxy (its fds), not merely queued in the kernel's accept queue.
    r["accepted"] = count_conns(pid, local_ports=[port]) - r["accepted_before"]
    r["rss_open_kb"] = rss()
    r["closed_before_request"] = sum(1 for rd, _ in conns if rd.at_eof())

    req = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench-idle\r\n"
        "Accept: */*\r\n\r\n"
    ).encode()
    sem = asyncio.Semaphore(req_conc)

    async def one(rd, w):
        async with sem:
            try:
                w.write(req)
                await w.drain()
                head = await asyncio.wait_for(rd.readuntil(b"\r\n\r\n"), 30)
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                cl = [int(l.split(":", 1)[1]) for l in lines[1:] if l.lower().startswith("content-length:")]
                if not cl:
                    return -1  # not a Content-Length answer: not what /ado/small gives
                await asyncio.wait_for(rd.readexactly(cl[0]), 30)
                return status
            except (OSError, ValueError, IndexError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return 0

    t0 = time.perf_counter()
    statuses = await asyncio.wait_for(asyncio.gather(*[one(rd, w) for rd, w in conns]), timeout)
    r["requests_ms"] = (time.perf_counter() - t0) * 1000
    r["statuses"] = {}
    for st in statuses:
        r["statuses"][str(st)] = r["statuses"].get(str(st), 0) + 1
    r["ok"] = r["statuses"].get("200", 0)
    await asyncio.sleep(settle)
    r["rss_req_kb"] = rss()
    r["upstream_conns_req"] = count_conns(pid, remote_ports=up_ports)
    await asyncio.sleep(later)
    r["rss_req_later_kb"] = rss()
    r["upstream_conns_req_later"] = count_conns(pid, remote_ports=up_ports)
    r["settle_s"], r["later_s"] = settle, settle + later
    # Connections the proxy closed while they sat idle after a 200 (EOF seen by the client).
    r["closed_while_idle"] = sum(1 for (rd, _), st in zip(conns, statuses) if st == 200 and rd.at_eof())
    r["failures"] = r["open_failed"] + (len(conns) - r["ok"]) + r["closed_while_idle"]

    for _, w in conns:
        w.close()
    # Until the proxy has seen them go: its accepted connections on PORT back to where they were.
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 30:
        if count_conns(pid, local_ports=[port]) <= r["accepted_before"]:
            break
        await asyncio.sleep(0.2)
    r["close_seen_ms"] = (time.perf_counter() - t0) * 1000
    r["rss_closed_kb"] = rss()
    return r


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

TARGETS = ["direct", "patless", "nginx", "haproxy", "caddy"]
PROXIES = TARGETS[1:]
# The request table's rows: the above, and the floor (bench/floor.rs: patless's server and
# upstream pool without its stack; plain rows only, SKIP_FLOOR=1 drops it) under patless.
ROW_TARGETS = ["direct", "patless", "floor", "nginx", "haproxy", "caddy"]
PEERS = ["nginx", "haproxy", "caddy"]
# The same targets with the upstream over TLS (certificate verified): "patless-https" etc.
HTTPS = "-https"
# ... and over HTTP/2 (TLS, h2 by ALPN): patless, haproxy and caddy only ("patless-h2" etc.).
H2 = "-h2"
# The client count at which the HTTP/2 upstream target is checked (issue: ≤ 4 upstream
# connections, req/s ≥ patless-https).
H2_CONNS = 256


def idle_per_conn(r, key):
    """KiB of RSS per held connection at reading KEY, over the RSS before they were opened."""
    return (r[key] - r["rss_before_kb"]) / r["n"] if r.get(key) is not None and r["n"] else None


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _f(x, fmt="{:.2f}", none="–"):
    return none if x is None else fmt.format(x)


def report(path):
    recs = [json.loads(l) for l in open(path) if l.strip()]
    meta = {}
    for r in recs:
        if r["kind"] == "meta":
            meta.update(r)
    wrk = [r for r in recs if r["kind"] == "wrk"]
    idle = {(r["target"], r["when"]): r["rss_kb"] for r in recs if r["kind"] == "idle"}
    pooled = {(r["target"], r["when"]): r.get("upstream_conns") for r in recs if r["kind"] == "idle"}
    backlogs = {r["target"]: r["backlog"] for r in recs if r["kind"] == "backlog"}
    protos = {r["target"]: r["upstream_protocol"] for r in recs if r["kind"] == "proto"}
    out = []
    p = out.append
    p("# patless benchmark")
    p("")
    p(
        f"{meta.get('date', '?')} · {meta.get('cpus', '?')} cores · {meta.get('kernel', '?')} · "
        f"rounds {meta.get('rounds', '?')} × {meta.get('duration', '?')} per wrk run · "
        f"upstream nginx workers {meta.get('upstream_workers', '?')} · "
        f"nginx proxy keepalive {meta.get('nginx_keepalive', '?')} per worker"
    )
    p("")
    p(f"- versions: {meta.get('versions', '?')}")
    p(f"- load before: `{meta.get('uptime_before', '?')}`")
    p(f"- load after:  `{meta.get('uptime_after', '?')}`")
    if meta.get("total_s") is not None:
        p(f"- bench/run took {meta['total_s']:.0f} s")
    p("")

    # ---- main table
    groups = {}
    for r in wrk:
        groups.setdefault((r["body"], r["conns"], r["target"]), []).append(r)
    bodies = [b for b in meta.get("bodies", "small 64k").split() if any(k[0] == b for k in groups)]
    conns_list = sorted({k[1] for k in groups})
    summary = {}
    for key, rs in groups.items():
        cpu100k = [
            r["cpu_s"] / r["requests"] * 1e5 if r.get("cpu_s") is not None and r["requests"] else None
            for r in rs
        ]
        summary[key] = {
            "rps": _med([r["rps"] for r in rs]),
            "p50": _med([r["p50_ms"] for r in rs]),
            "p99": _med([r["p99_ms"] for r in rs]),
            "hwm_mib": max((r["hwm_kb"] for r in rs if r.get("hwm_kb")), default=None),
            "cpu100k": _med(cpu100k),
            "bad": sum(r["errors"] + r["non2xx"] for r in rs),
            "overflows": sum(r.get("listen_overflows", 0) for r in rs),
            "up_busy": max((r["upstream_cpu_s"] / r["elapsed_s"] for r in rs if r.get("elapsed_s")), default=None),
            "up_conns": _med([r.get("upstream_conns_mid") for r in rs]),
            "n": len(rs),
        }
        if summary[key]["hwm_mib"] is not None:
            summary[key]["hwm_mib"] /= 1024.0
    p("## Requests (wrk, keep-alive; medians over rounds)")
    p("")
    p(
        "| body | conns | target | req/s | p50 ms | p99 ms | p99 added over direct ms | peak RSS MiB "
        "| CPU s / 100k req | CPU ÷ nginx | upstream busy | upstream conns | patless ÷ nginx | patless ÷ haproxy "
        "| patless ÷ caddy | errors | listen overflows |"
    )
    p("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    kinds = [""] + [k for k in (HTTPS, H2) if any(g[2].endswith(k) for g in groups)]
    for b in bodies:
        for c in conns_list:
            for kind in kinds:
                # No direct-h2 (wrk speaks HTTP/1.1 only): -h2 rows are set against direct-https.
                d = summary.get((b, c, "direct" + (HTTPS if kind == H2 else kind)))
                ng = summary.get((b, c, "nginx" + kind))
                for base in ROW_TARGETS:
                    t = base + kind
                    s = summary.get((b, c, t))
                    if not s:
                        continue
                    added = None if base == "direct" or not d or s["p99"] is None else s["p99"] - d["p99"]
                    vs = {}
                    if base == "patless":
                        for o in PEERS:
                            os_ = summary.get((b, c, o + kind))
                            vs[o] = s["rps"] / os_["rps"] if os_ and os_["rps"] else None
                    cpu_vs = None
                    if base not in ("direct", "nginx") and ng and ng["cpu100k"] and s["cpu100k"] is not None:
                        cpu_vs = s["cpu100k"] / ng["cpu100k"]
                    p(
                        f"| {b} | {c} | {t} | {_f(s['rps'], '{:,.0f}')} | {_f(s['p50'], '{:.3f}')} "
                        f"| {_f(s['p99'], '{:.3f}')} | {_f(added, '{:+.3f}')} "
                        f"| {_f(None if base == 'direct' else s['hwm_mib'], '{:.1f}')} "
                        f"| {_f(None if base == 'direct' else s['cpu100k'], '{:.2f}')} "
                        f"| {_f(cpu_vs, '{:.2f}×', '')} "
                        f"| {_f(s['up_busy'], '{:.0%}')} "
                        f"| {_f(s['up_conns'], '{:g}')} "
                        + "".join(f"| {_f(vs.get(o), '{:.2f}×', '')} " for o in PEERS)
                        + f"| {s['bad']} | {s['overflows']} |"
                    )
    p("")
    if any(g[2] == "floor" for g in groups):
        p(
            "*floor* rows: bench/floor.rs, patless's server (worker threads, connection handling) "
            "and upstream pool with nothing between them: it sets the token and forwards, without "
            "patless's stack (inbound policy, path check, routes, token cache, replay, timeouts, "
            "metrics). What it costs per request, patless's stack cannot go below; the "
            "difference to the patless row is the stack's cost."
        )
        p("")
    if len(kinds) > 1:
        p(
            "*-https* rows: the same proxies forwarding to the upstream nginx's TLS port (TLS 1.3, "
            "ECDSA P-256 certificate from a throwaway CA, verified by each proxy; upstream "
            "keep-alive and session reuse), compared with each other and with `direct-https` "
            "(wrk speaking TLS to the upstream itself). Clients still speak plain HTTP to the proxies."
        )
        p("")
    if H2 in kinds:
        p(
            "*-h2* rows: the proxies that can speak HTTP/2 to an upstream (patless, haproxy, Caddy) "
            "forwarding to the upstream nginx's third listener, TLS with h2 offered by ALPN (same "
            "certificate, 128 concurrent streams per connection); clients still speak HTTP/1.1 to "
            "the proxies. nginx has no -h2 row: its proxy module speaks HTTP/1.x only to "
            "upstreams. wrk has no h2 either, so *p99 added over direct* on these rows is over "
            "`direct-https`."
        )
        if protos:
            p("")
            p(
                "Protocol the upstream saw (`$server_protocol`, one request each): "
                + ", ".join(f"{t} {v}" for t, v in protos.items() if t.endswith(H2))
                + "; every other proxied target "
                + (
                    "HTTP/1.1"
                    if all(v == "HTTP/1.1" for t, v in protos.items() if not t.endswith(H2))
                    else ", ".join(f"{t} {v}" for t, v in protos.items() if not t.endswith(H2))
                )
                + "."
            )
        p("")
        for b in bodies:
            c = H2_CONNS if H2_CONNS in conns_list else max(conns_list)
            a, o = summary.get((b, c, "patless" + H2)), summary.get((b, c, "patless" + HTTPS))
            if not a:
                continue
            r = a["rps"] / o["rps"] if o and o["rps"] and a["rps"] else None
            p(
                f"- {b}: patless-h2 at {c} conns: {_f(a['up_conns'], '{:g}')} upstream connections, "
                f"{_f(a['rps'], '{:,.0f}')} req/s = {_f(r, '{:.2f}×')} patless-https"
            )
        p("")
    p(
        "*upstream conns*: ESTABLISHED TCP connections from the proxy's processes to the upstream "
        "port the row forwards to (plain, TLS or h2; from `/proc/PID/net/tcp` and the processes' "
        "fds), sampled once halfway through each run; median over rounds. Connections pooled by "
        "earlier rows to the other ports are not counted here (`upstream_conns_mid_all` in "
        "`latest.jsonl` has all of them)."
    )
    p("")
    p(
        "*peak RSS* is reset to the current RSS before each run, so memory a proxy keeps from an "
        "earlier run (pooled upstream connections and their buffers) shows in later rows; "
        "`latest.jsonl` has each run's value (`hwm_kb`)."
    )
    p("")
    p(
        "Idle RSS (VmRSS, MiB) — before load: "
        + ", ".join(
            f"{t} {_f(idle.get((t, 'start')) and idle[(t, 'start')] / 1024, '{:.1f}')}"
            for t in PROXIES
        )
        + "; after load: "
        + ", ".join(
            f"{t} {_f(idle.get((t, 'after')) and idle[(t, 'after')] / 1024, '{:.1f}')}"
            for t in PROXIES
        )
    )
    p("")
    p(
        "Upstream connections held open (keep-alive pools, plain, TLS and h2) — before load: "
        + ", ".join(f"{t} {_f(pooled.get((t, 'start')), '{}')}" for t in PROXIES)
        + "; 2 s after load: "
        + ", ".join(f"{t} {_f(pooled.get((t, 'after')), '{}')}" for t in PROXIES)
    )
    p("")
    if backlogs:
        p(
            "Listen backlog (accept queue, from `ss`): "
            + ", ".join(f"{t} {backlogs[t]}" for t in TARGETS if t in backlogs)
            + ". *listen overflows* is the kernel's system-wide `TcpExtListenOverflows` over a row's runs: "
            "other programs on the machine can add to it."
        )
        p("")

    # ---- idle keep-alive connections
    held = {r["target"]: r for r in recs if r["kind"] == "idle_conns"}
    if held:
        n = max(r["n"] for r in held.values())
        p(f"## Idle keep-alive connections ({n:,} held open)")
        p("")
        p(
            "| target | RSS before MiB | accepted | KiB/conn before first request "
            "| KiB/conn after one request, 2 s | KiB/conn after one request, 7 s "
            "| upstream conns after | RSS after closing MiB | failures |"
        )
        p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for t in PROXIES:
            r = held.get(t)
            if not r:
                continue
            bad = r["failures"]
            why = []
            if r["open_failed"]:
                why.append(f"{r['open_failed']} not opened")
            non200 = {k: v for k, v in r["statuses"].items() if k != "200"}
            if non200:
                why.append("answers " + ", ".join(f"{k}: {v}" for k, v in sorted(non200.items())))
            if r["closed_while_idle"]:
                why.append(f"{r['closed_while_idle']} closed while idle")
            p(
                f"| {t} | {r['rss_before_kb'] / 1024:.1f} | {r['accepted']:,} "
                f"| {_f(idle_per_conn(r, 'rss_open_kb'), '{:.1f}')} "
                f"| {_f(idle_per_conn(r, 'rss_req_kb'), '{:.1f}')} "
                f"| {_f(idle_per_conn(r, 'rss_req_later_kb'), '{:.1f}')} "
                f"| {r.get('upstream_conns_req_later', '–')} "
                f"| {_f(r.get('rss_closed_kb') and r['rss_closed_kb'] / 1024, '{:.1f}')} "
                f"| {bad}{' (' + '; '.join(why) + ')' if why else ''} |"
            )
        p("")
        p(
            "A fresh instance of each proxy in turn (restarted with its config after the other "
            "tests, so that it has no freed memory from them to reuse), on its plain-HTTP "
            "listener, after one request: its RSS (`VmRSS`, "
            "summed over its processes: nginx's master and workers) is read, N keep-alive "
            "connections are opened and held 2 s (*before first request*), then one "
            "`GET /ado/small` is sent on each (64 in flight at a time) and every answer read, and "
            "the connections are held 2 s and 7 s more (*after one request*). KiB/conn is (RSS "
            "then − RSS before opening) ÷ N, so it includes whatever else the proxy grew, such as "
            "the upstream connections it pooled for those requests (*upstream conns after*, at 7 s). "
            "*accepted*: connections in the proxy's own fds 2 s after opening (not merely queued "
            "by the kernel). *RSS after closing*: once the proxy has seen every connection close "
            "(what it keeps). *failures*: not opened, not answered 200, or closed by the proxy "
            "while idle."
        )
        p("")

    # ---- streaming
    stream = [r for r in recs if r["kind"] == "stream"]
    if stream:
        p("## Streaming (1 GiB through each target; medians over rounds)")
        p("")
        p("| direction | target | MiB/s | % of direct | RSS start MiB | RSS growth MiB (max over rounds) | ok |")
        p("| --- | --- | ---: | ---: | ---: | ---: | --- |")
        sg = {}
        for r in stream:
            sg.setdefault((r["dir"], r["target"]), []).append(r)
        for dr in ("upload", "download"):
            d = _med([r["speed_Bps"] for r in sg.get((dr, "direct"), [])])
            for t in TARGETS:
                rs = sg.get((dr, t))
                if not rs:
                    continue
                sp = _med([r["speed_Bps"] for r in rs])
                growth = max((r["rss_max_kb"] - r["rss_start_kb"]) / 1024 for r in rs)
                start = min(r["rss_start_kb"] for r in rs) / 1024
                ok = all(r["ok"] for r in rs)
                p(
                    f"| {dr} | {t} | {_f(sp and sp / 2**20, '{:,.0f}')} | {_f(sp / d if d and sp else None, '{:.0%}')} "
                    f"| {_f(None if t == 'direct' else start, '{:.1f}')} | {_f(None if t == 'direct' else growth, '{:.1f}')} "
                    f"| {'yes' if ok else 'NO'} |"
                )
        p("")

    # ---- cold start
    cold = [r for r in recs if r["kind"] == "cold"]
    if cold:
        p("## Cold start (fresh patless, N concurrent first requests)")
        p("")
        p(
            "| mode | requests | 200s | token requests | connect all ms | listen overflows "
            "| release → last ms | fire → last ms "
            "| fire → median ms | exec → last ms | same burst, token cached: fire → last ms |"
        )
        p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in cold:
            p(
                f"| {r['mode']} | {r['n']} | {r['ok']} | {r['token_requests']} "
                f"| {_f(r.get('connect_all_ms'), '{:.0f}')} | {r.get('listen_overflows', '–')} "
                f"| {_f(r.get('release_to_last_ms'), '{:.0f}')} "
                f"| {_f(r['fire_to_last_ms'], '{:.0f}')} | {_f(r['fire_to_median_ms'], '{:.0f}')} "
                f"| {_f(r.get('since_to_last_ms'), '{:.0f}')} | {_f(r.get('warm_fire_to_last_ms'), '{:.0f}')} |"
            )
        p("")
        p(
            "*held*: the fake Entra holds the start-up acquisition until every request has been "
            "written (plus a settle time), so all of them wait for that one acquisition; "
            "*release → last* is the fan-out. *instant*: Entra answers at once; *exec → last* "
            "includes process start and connecting. *listen overflows*: connections the kernel "
            "dropped (and the client retried a second later) because the listener's accept queue "
            "was full."
        )
        p("")

    # ---- micro
    micro = [r for r in recs if r["kind"] == "micro"]
    if micro:
        p("## Micro-benchmarks (criterion, bench/hot_paths.rs)")
        p("")
        p("| benchmark | ns / iter |")
        p("| --- | ---: |")
        for r in micro:
            p(f"| {r['name']} | {r['ns']:.1f} |")
        p("")

    # ---- targets
    p("## Targets")
    p("")
    p("Issue 26's targets first, then the earlier ones (bench/README.md, \"Against the targets\").")
    p("")
    p(
        "A ratio between two targets is the median over rounds of that ratio within each round "
        "(the two cells run seconds apart), with each round's value beside it; the table above "
        "gives each cell's median on its own, so its ratios, one median over another, can differ."
    )
    p("")
    checks = []

    def paired(c, target, other, body="small", cpu=False):
        """`target` over `other` in each round (the two cells run one after the other, seconds
        apart), and the verdict's value: the median of those, which this machine's drift from
        one round to the next moves far less than a ratio of two medians taken from different
        rounds. With one round, the ratio of the two cells."""

        def by_round(t):
            out = {}
            for r in groups.get((body, c, t), []):
                if cpu:
                    v = r["cpu_s"] / r["requests"] if r.get("cpu_s") is not None and r["requests"] else None
                else:
                    v = r["rps"]
                if v:
                    out[r.get("round")] = v
            return out

        a, o = by_round(target), by_round(other)
        rs = [a[k] / o[k] for k in sorted(a, key=str) if k in o]
        return (_med(rs), rs)

    def shown(value, rs):
        rounds = f" (rounds {', '.join(f'{r:.2f}' for r in rs)})" if len(rs) > 1 else ""
        return _f(value, "{:.2f}×") + rounds

    for c in (64, 256):
        r, rs = paired(c, "patless" + HTTPS, "nginx" + HTTPS)
        if r is not None:
            checks.append((f"HTTPS upstream, small, {c} conns: ≥ 1.05× nginx", r >= 1.05, shown(r, rs)))
    r, rs = paired(64, "patless", "nginx")
    checks.append(("plain upstream, small, 64 conns: ≥ 1.0× nginx", r is not None and r >= 1.0, shown(r, rs)))
    for suffix in ("", HTTPS):
        for c in conns_list:
            a, o = summary.get(("small", c, "patless" + suffix)), summary.get(("small", c, "nginx" + suffix))
            r, rs = paired(c, "patless" + suffix, "nginx" + suffix, cpu=True)
            if a and o and a["cpu100k"] and o["cpu100k"] and r is not None:
                where = "HTTPS" if suffix else "plain"
                f = paired(c, "floor", "nginx", cpu=True)[0] if not suffix else None
                floor = f"; the floor {f:.2f}×" if f else ""
                checks.append((f"CPU per request ≤ 1.1× nginx ({where}, small, {c} conns)", r <= 1.1,
                               f"{shown(r, rs)}: {a['cpu100k']:.2f} vs {o['cpu100k']:.2f} s / 100k{floor}"))
    a = summary.get(("64k", 256, "patless"))
    h = a["hwm_mib"] if a else None
    checks.append(("peak RSS ≤ 32 MiB at 256 conns, 64 KiB bodies (plain upstream)", h is not None and h <= 32, _f(h, "{:.1f} MiB")))
    for b in bodies:
        c = H2_CONNS if H2_CONNS in conns_list else None
        a, o = summary.get((b, c, "patless" + H2)), summary.get((b, c, "patless" + HTTPS))
        if not a:
            continue
        n = a["up_conns"]
        checks.append(
            (f"h2 upstream, {c} conns ({b}): ≤ 4 upstream connections", n is not None and n <= 4, _f(n, "{:g}"))
        )
        r, rs = paired(c, "patless" + H2, "patless" + HTTPS, body=b)
        checks.append((f"h2 upstream, {c} conns ({b}): req/s ≥ patless-https", r is not None and r >= 1, shown(r, rs)))
    r = held.get("patless")
    if r:
        for key, when in (("rss_open_kb", "before first request"), ("rss_req_later_kb", "7 s after one request")):
            k = idle_per_conn(r, key)
            checks.append(
                (f"idle keep-alive RSS ≤ 4 KiB per connection ({when}, {r['n']:,} held)", k is not None and k <= 4 and r["failures"] == 0,
                 f"{_f(k, '{:.1f} KiB')}, {r['failures']} failures")
            )
    # The earlier targets.
    for c, want in ((1, 1.0), (256, 1.0)):
        r, rs = paired(c, "patless", "nginx")
        checks.append((f"(earlier) req/s at {c} conns ≥ {want}× nginx (small body)", r is not None and r >= want, shown(r, rs)))
    for b in bodies:
        for c in conns_list:
            a, o = summary.get((b, c, "patless")), summary.get((b, c, "nginx"))
            if a and o and a["p99"] is not None and o["p99"] is not None:
                checks.append(
                    (f"(earlier) p99 ≤ nginx's ({b}, {c} conns)", a["p99"] <= o["p99"], f"{a['p99']:.3f} vs {o['p99']:.3f} ms")
                )
    i = idle.get(("patless", "start"))
    checks.append(("(earlier) idle RSS ≤ 12 MiB", i is not None and i / 1024 <= 12, _f(i and i / 1024, "{:.1f} MiB")))
    if stream:
        for dr in ("upload", "download"):
            d = _med([r["speed_Bps"] for r in sg.get((dr, "direct"), [])])
            rs = sg.get((dr, "patless"), [])
            sp = _med([r["speed_Bps"] for r in rs])
            r = sp / d if sp and d else None
            checks.append((f"(earlier) {dr} ≥ 90% of direct", r is not None and r >= 0.9, _f(r, "{:.0%}")))
            g = max(((x["rss_max_kb"] - x["rss_start_kb"]) / 1024 for x in rs), default=None)
            checks.append((f"(earlier) {dr}: RSS growth ≤ 8 MiB", g is not None and g <= 8, _f(g, "{:.1f} MiB")))
    if cold:
        for r in cold:
            checks.append(
                (
                    f"(earlier) cold start ({r['mode']}): one token request, all 200",
                    r["token_requests"] == 1 and r["ok"] == r["n"],
                    f"{r['token_requests']} token request(s), {r['ok']}/{r['n']} 200s",
                )
            )
    p("| target | holds | measured |")
    p("| --- | --- | --- |")
    for name, ok, val in checks:
        p(f"| {name} | {'yes' if ok else '**no**'} | {val} |")
    p("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ports")
    s.add_argument("n", type=int)
    s = sub.add_parser("stat")
    s.add_argument("pid", type=int)
    s = sub.add_parser("clear-hwm")
    s.add_argument("pid", type=int)
    s = sub.add_parser("conns")
    s.add_argument("pid", type=int)
    s.add_argument("--remote-ports", default="", help="comma-separated")
    s.add_argument("--local-ports", default="", help="comma-separated")
    s.add_argument("--delay-ms", type=int, default=0, help="sleep this long first")
    s.add_argument("--own-port", type=int, help='print "OWN ALL": to this port, to all of them')
    s = sub.add_parser("sample")
    s.add_argument("out")
    s.add_argument("interval", type=float)
    s.add_argument("pid", type=int)
    s = sub.add_parser("wrk-record")
    s.add_argument("--wrk-out", required=True)
    s.add_argument("--before", required=True)
    s.add_argument("--after", required=True)
    s.add_argument("--up-before", required=True)
    s.add_argument("--up-after", required=True)
    s.add_argument("--fields", required=True, help="JSON merged into the record")
    s = sub.add_parser("coldstart")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--path", default="/ado/small")
    s.add_argument("--wait", type=float, default=20)
    s.add_argument("--since", type=float, default=0)
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--release-url", default="")
    s.add_argument("--settle-ms", type=float, default=200)
    s = sub.add_parser("idle")
    s.add_argument("--pid", type=int, required=True, help="the proxy (RSS summed over its children)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--n", type=int, default=4000)
    s.add_argument("--path", default="/ado/small")
    s.add_argument("--up-ports", default="", help="the upstream's ports, comma-separated")
    s.add_argument("--settle", type=float, default=2, help="s held before each RSS reading")
    s.add_argument("--later", type=float, default=5, help="s more before the last reading")
    s.add_argument("--open-concurrency", type=int, default=200)
    s.add_argument("--request-concurrency", type=int, default=64)
    s.add_argument("--timeout", type=float, default=90)
    s.add_argument("--fields", default="{}", help="JSON merged into the record")
    s = sub.add_parser("summary")
    s.add_argument("json")
    s = sub.add_parser("idle-summary")
    s.add_argument("json")
    s = sub.add_parser("criterion")
    s.add_argument("log")
    s = sub.add_parser("report")
    s.add_argument("jsonl")
    a = ap.parse_args()

    if a.cmd == "ports":
        socks = []
        for _ in range(a.n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        for s in socks:
            print(s.getsockname()[1])
            s.close()
    elif a.cmd == "stat":
        print(json.dumps(proc_stat(a.pid)))
    elif a.cmd == "clear-hwm":
        sys.exit(0 if clear_hwm(a.pid) else 1)
    elif a.cmd == "conns":
        time.sleep(a.delay_ms / 1000.0)
        ports = lambda t: [int(x) for x in t.split(",") if x]
        if a.own_port:
            print(count_conns(a.pid, [a.own_port]), count_conns(a.pid, ports(a.remote_ports)))
        else:
            print(count_conns(a.pid, ports(a.remote_ports), ports(a.local_ports)))
    elif a.cmd == "sample":
        sample(a.out, a.interval, a.pid)
    elif a.cmd == "wrk-record":
        r = parse_wrk(open(a.wrk_out).read())
        r.update(json.loads(a.fields))
        before, after = json.loads(a.before), json.loads(a.after)
        if before:
            r["cpu_s"] = after["cpu_s"] - before["cpu_s"]
            r["hwm_kb"] = after["hwm_kb"]
        ub, ua = json.loads(a.up_before), json.loads(a.up_after)
        r["upstream_cpu_s"] = ua["cpu_s"] - ub["cpu_s"]
        r["listen_overflows"] = ua["listen_overflows"] - ub["listen_overflows"]
        r["kind"] = "wrk"
        print(json.dumps(r))
    elif a.cmd == "coldstart":
        r = asyncio.run(
            _coldstart(
                a.host, a.port, a.n, a.path, a.wait, a.since, a.timeout, a.release_url, a.settle_ms
            )
        )
        print(json.dumps(r))
    elif a.cmd == "idle":
        r = asyncio.run(
            _idle(
                a.pid, a.host, a.port, a.n, a.path, [int(x) for x in a.up_ports.split(",") if x],
                a.settle, a.later, a.open_concurrency, a.request_concurrency, a.timeout,
            )
        )
        r.update(json.loads(a.fields))
        r["kind"] = "idle_conns"
        print(json.dumps(r))
    elif a.cmd == "idle-summary":
        r = json.loads(a.json)
        print(
            f"RSS {r['rss_before_kb'] / 1024:.1f} MiB; {r['accepted']} accepted; KiB/conn "
            f"{idle_per_conn(r, 'rss_open_kb'):.1f} before a request, "
            f"{idle_per_conn(r, 'rss_req_kb'):.1f} / {idle_per_conn(r, 'rss_req_later_kb'):.1f} "
            f"2 s / 7 s after one; {r['ok']} × 200, {r['failures']} failures, "
            f"upstream conns {r['upstream_conns_req_later']}, closes seen in {r['close_seen_ms']:.0f} ms"
        )
    elif a.cmd == "summary":
        r = json.loads(a.json)
        rps = r.get("rps") or 0
        print(f"{rps:,.0f} req/s, p50 {_f(r.get('p50_ms'), '{:.3g}')} ms, p99 {_f(r.get('p99_ms'), '{:.3g}')} ms, "
              f"errors {r.get('errors', 0) + r.get('non2xx', 0)}")
    elif a.cmd == "criterion":
        for r in parse_criterion(open(a.log, errors="replace").read()):
            print(json.dumps(r))
    elif a.cmd == "report":
        print(report(a.jsonl))


if __name__ == "__main__":
    main()
