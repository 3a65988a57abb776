#!/usr/bin/python3
"""kvrt-sim's metrics against the real Prometheus tools.

  sim_prometheus.py KVRT_SIM promtool   kvrt-sim --metrics-out; promtool check metrics
  sim_prometheus.py KVRT_SIM scrape     a Prometheus server on loopback scrapes
                                        kvrt-sim --metrics-port and answers a query
  sim_prometheus.py KVRT_SIM http       the endpoint's bounds: 404 elsewhere, a
                                        silent or oversized request is cut off

Exit 0 pass, 1 fail, 77 skip (the reason on stderr). Every process started
here is ended by its pid; every wait is bounded.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

SKIP = 77
SIM_ARGS = ["--requests", "200", "--no-progress", "--spec", "ngram"]


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def sample(text, name):
    """The value of the first sample of family `name` in exposition text."""
    m = re.search(r"^%s(\{[^}]*\})? (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(2)) if m else None


def check_promtool(sim, tmp):
    promtool = shutil.which("promtool")
    if not promtool:
        print("SKIP: promtool not installed (Debian package prometheus)", file=sys.stderr)
        sys.exit(SKIP)
    out = os.path.join(tmp, "metrics.prom")
    subprocess.run([sim, *SIM_ARGS, "--metrics-out", out], check=True, timeout=120,
                   stdout=subprocess.DEVNULL)
    text = open(out).read()
    check = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                           capture_output=True, timeout=60)
    if check.returncode != 0:
        fail("promtool check metrics: %s%s" % (check.stdout, check.stderr))
    for family in ("kvrt_sched_steps_total", "kvrt_cache_hit_tokens_total",
                   "kvrt_cache_miss_never_cached_total", "kvrt_pool_free",
                   "kvrt_sched_spec_accepted_total"):
        if sample(text, family) is None:
            fail("%s missing from the metrics" % family)
    if not sample(text, "kvrt_sched_steps_total") > 0:
        fail("no steps counted")
    print("promtool accepted %d lines; steps=%d" % (text.count("\n"),
                                                    sample(text, "kvrt_sched_steps_total")))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc):
    if proc and proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def query(prom_port, expr):
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (
        prom_port, urllib.parse.urlencode({"query": expr}))
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    if body.get("status") != "success":
        return None
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def check_scrape(sim, tmp):
    prometheus = shutil.which("prometheus")
    if not prometheus:
        print("SKIP: prometheus not installed (Debian package prometheus)", file=sys.stderr)
        sys.exit(SKIP)
    sim_port, prom_port = free_port(), free_port()
    out = os.path.join(tmp, "final.prom")
    config = os.path.join(tmp, "prometheus.yml")
    with open(config, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: kvrt-sim\n    static_configs:\n"
                "      - targets: ['127.0.0.1:%d']\n" % sim_port)
    sim_proc = prom = None
    try:
        sim_proc = subprocess.Popen(
            [sim, *SIM_ARGS, "--metrics-port", str(sim_port), "--metrics-out", out,
             "--metrics-hold", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        prom = subprocess.Popen(
            [prometheus, "--config.file=" + config,
             "--storage.tsdb.path=" + os.path.join(tmp, "data"),
             "--web.listen-address=127.0.0.1:%d" % prom_port, "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "prom.log"), "w"))
        deadline = time.monotonic() + 90
        value = None
        while time.monotonic() < deadline:
            if sim_proc.poll() is not None:
                fail("kvrt-sim exited early: %s" % sim_proc.stderr.read().decode())
            if prom.poll() is not None:
                fail("prometheus exited: %s" % open(os.path.join(tmp, "prom.log")).read())
            try:
                value = query(prom_port, 'kvrt_sched_steps_total{job="kvrt-sim"}')
            except OSError:
                value = None  # the server is still starting
            if value is not None and os.path.exists(out):
                break
            time.sleep(0.5)
        if value is None:
            fail("Prometheus never returned kvrt_sched_steps_total within 90 s")
        final = sample(open(out).read(), "kvrt_sched_steps_total")
        # The run ends in well under a second, so every scrape saw the final value.
        if value != final:
            fail("Prometheus read %s steps, kvrt-sim's final metrics say %s" % (value, final))
        print("Prometheus scraped kvrt-sim: kvrt_sched_steps_total = %d" % value)
    finally:
        stop(prom)
        stop(sim_proc)
    if sim_proc.returncode != 0:
        fail("kvrt-sim exited %d after SIGTERM" % sim_proc.returncode)


def http_get(port, path, timeout=10):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data.decode("utf-8", "replace")
            data += chunk


def closed_within(sock, seconds):
    """True when the server closes sock within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def check_http(sim, tmp):
    out = os.path.join(tmp, "final.prom")
    sim_proc = subprocess.Popen([sim, *SIM_ARGS, "--metrics-port", "0", "--metrics-hold", "60",
                                 "--metrics-out", out],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = sim_proc.stderr.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)/metrics", line)
        if not m:
            fail("kvrt-sim did not print its metrics address: %r" % line)
        port = int(m.group(1))
        deadline = time.monotonic() + 30
        while True:  # empty until the simulation's first progress point
            reply = http_get(port, "/metrics")
            head, _, body = reply.partition("\r\n\r\n")
            if body or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if not head.startswith("HTTP/1.0 200") or "version=0.0.4" not in head:
            fail("bad /metrics reply head: %r" % head)
        length = int(re.search(r"Content-Length: (\d+)", head).group(1))
        if length != len(body.encode()) or "# TYPE kvrt_pool_free gauge" not in body:
            fail("bad /metrics body (%d bytes, Content-Length %d)" % (len(body), length))
        if not http_get(port, "/").startswith("HTTP/1.0 404"):
            fail("/ is not a 404")
        silent = socket.create_connection(("127.0.0.1", port))
        if not closed_within(silent, 10):
            fail("a connection that sends nothing was kept past 10 s")
        silent.close()
        flood = socket.create_connection(("127.0.0.1", port))
        try:
            flood.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if not closed_within(flood, 10):
            fail("a request head over 8 KiB was not cut off")
        flood.close()
        if "kvrt_sched_steps_total" not in http_get(port, "/metrics"):
            fail("the endpoint stopped serving after the bad clients")
        deadline = time.monotonic() + 60
        while not os.path.exists(out) and time.monotonic() < deadline:
            time.sleep(0.1)  # SIGTERM ends the hold; during the run it just kills
        if not os.path.exists(out):
            fail("kvrt-sim did not finish its run within 60 s")
        print("endpoint on port %d: 200 for /metrics, 404 elsewhere, bad clients cut off" % port)
    finally:
        stop(sim_proc)
    if sim_proc.returncode != 0:
        fail("kvrt-sim exited %d after SIGTERM" % sim_proc.returncode)


def main():
    sim, mode = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvrt-prom-") as tmp:
        {"promtool": check_promtool, "scrape": check_scrape, "http": check_http}[mode](sim, tmp)


if __name__ == "__main__":
    main()
