#!/usr/bin/env python3
"""Turn bench/run.sh's results (TSV: metric, target, repetition, value) into Markdown.

Each cell is the median over the repetitions with min-max. Ratios are taken per repetition
(the targets ran interleaved in it) and the median of those is shown, so drift between
repetitions cancels. The run's settings come from RUN_* environment variables.
"""

import os
import statistics
import sys

# metric, label, higher is better
METRICS = [
    ("s1_mbps", "S1 download 1 blob, HTTP/1.1, MB/s", True),
    ("s1_cpu", "S1 proxy CPU s/GiB", False),
    ("s1_h2_mbps", "S1 download 1 blob, HTTP/2, MB/s", True),
    ("s1_h2_cpu", "S1 HTTP/2 proxy CPU s/GiB", False),
    ("s2_put_mbps", "S2 upload, monolithic PUT, MB/s", True),
    ("s2_put_cpu", "S2 PUT proxy CPU s/GiB", False),
    ("s2_patch_mbps", "S2 upload, chunked PATCH, MB/s", True),
    ("s2_patch_cpu", "S2 PATCH proxy CPU s/GiB", False),
    ("s3_bcrypt_rps", "S3 manifest GET, bcrypt user, req/s", True),
    ("s3_bcrypt_p50", "S3 bcrypt p50 ms", False),
    ("s3_bcrypt_p99", "S3 bcrypt p99 ms", False),
    ("s3_bcrypt_cpu_us", "S3 bcrypt CPU µs/req", False),
    ("s3_apr1_rps", "S3 manifest GET, APR1 user, req/s", True),
    ("s3_apr1_p50", "S3 APR1 p50 ms", False),
    ("s3_apr1_p99", "S3 APR1 p99 ms", False),
    ("s3_apr1_cpu_us", "S3 APR1 CPU µs/req", False),
    ("s4_mbps", "S4 16 parallel downloads, aggregate MB/s", True),
    ("s4_cpu", "S4 proxy CPU s/GiB", False),
    ("s4_h2_mbps", "S4 16 parallel downloads, HTTP/2, one connection, aggregate MB/s", True),
    ("s4_h2_cpu", "S4 HTTP/2 proxy CPU s/GiB", False),
    ("s5_peak_mib", "S5 peak RSS over S1–S4, MiB", False),
    ("s5_peak_anon_mib", "S5 peak anonymous memory (RssAnon) over S1–S4, MiB", False),
    ("s5_peak_file_mib", "S5 peak mapped files (RssFile + RssShmem: binary, libraries) over S1–S4, MiB", False),
    ("s5_idle_kib", "S5 memory per idle TLS connection, KiB", False),
    ("s6_conn_per_s", "S6 new TLS connections/s (1 request each)", True),
    ("s6_cpu_us", "S6 proxy CPU µs per connection", False),
    ("s6_h2_rps", "S6 HTTP/2 manifest GET req/s (h2load)", True),
]

COLUMNS = ["direct", "nginx", "nginx-tuned", "nginx-noauth", "caddy", "haproxy", "gate", "gate-b", "gate-cluster"]

# Ratio columns: (heading, numerator, denominator), shown when both targets ran.
RATIOS = [
    ("gate/nginx tuned", "gate", "nginx-tuned"),
    ("gate/caddy", "gate", "caddy"),
    ("gate/haproxy", "gate", "haproxy"),
    ("gate/direct", "gate", "direct"),
    ("gate-b/gate", "gate-b", "gate"),
    ("gate-cluster/gate", "gate-cluster", "gate"),
]


def load(path):
    data = {}
    for line in open(path):
        metric, target, rep, value = line.rstrip("\n").split("\t")
        data.setdefault(metric, {}).setdefault(target, {})[rep] = float(value)
    return data


def fmt(v):
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(values):
    if not values:
        return "—"
    vals = list(values.values())
    med = statistics.median(vals)
    if len(vals) == 1:
        return fmt(med)
    return f"{fmt(med)} ({fmt(min(vals))}–{fmt(max(vals))})"


def ratio(data, metric, num, den):
    """Median over repetitions of num/den, paired by repetition."""
    a = data.get(metric, {}).get(num, {})
    b = data.get(metric, {}).get(den, {})
    pairs = [a[r] / b[r] for r in a if r in b and b[r]]
    return statistics.median(pairs) if pairs else None


def median(data, metric, target):
    v = data.get(metric, {}).get(target, {})
    return statistics.median(v.values()) if v else None


def main():
    data = load(sys.argv[1])
    env = os.environ.get
    present = [c for c in COLUMNS if any(c in data.get(m, {}) for m, _, _ in METRICS)]
    out = []
    p = out.append
    others = [name for target, name in (("caddy", "Caddy"), ("haproxy", "HAProxy")) if target in present]
    p("## registry-gate vs nginx" + "".join(f" vs {o}" for o in others) + " vs the registry directly")
    p("")
    p(f"- date: {env('RUN_DATE')}, gate commit {env('RUN_COMMIT')}, release build"
      + (" — **quick mode: sizes and durations too small for meaningful numbers**" if env("RUN_QUICK") == "1" else ""))
    p(f"- machine: {env('RUN_NPROC')} CPUs, {env('RUN_CPU')}, AES-NI: {env('RUN_AES')}, kernel {env('RUN_KERNEL')}; "
      f"loadavg at start {env('RUN_LOAD_START')}, at end {env('RUN_LOAD_END')}")
    p(f"- versions: nginx {env('RUN_NGINX')}, "
      + "".join(f"{name} {env(var)}, " for name, var in (("caddy", "RUN_CADDY"), ("haproxy", "RUN_HAPROXY")) if env(var))
      + f"docker-registry {env('RUN_REGISTRY')}, {env('RUN_RUSTC')}, {env('RUN_CURL')}")
    p(f"- {env('RUN_REPS')} repetition(s), targets interleaved (rotated order); S1/S2 blob {env('RUN_BLOB_MIB')} MiB "
      f"(PATCH chunks {env('RUN_CHUNK_MIB')} MiB), S4 16 × {env('RUN_PAR_MIB')} MiB, wrk/h2load runs {env('RUN_DURATION')} s, "
      f"S5 {env('RUN_IDLE')} idle connections, S3 manifest {env('RUN_MANIFEST')} bytes")
    p(f"- downloads (S1, S4) verified by size and sha256 {env('RUN_DIGEST')}")
    if env("RUN_SUITES"):
        p(f"- TLS suite each proxy picks for curl: {env('RUN_SUITES')}")
    if "caddy" in present or "haproxy" in present:
        p("- caddy and haproxy cannot check the APR1 user (Caddy: bcrypt only; HAProxy: crypt(3), no $apr1$): "
          "their S3 APR1 cells are —, and they authenticate downloads, uploads and h2load as the bcrypt user "
          "(Caddy caches a verified password, HAProxy checks bcrypt on every request)")
    p("- cells: median (min–max) over repetitions; ratios: per repetition, then the median")
    p("")
    ratios = [(h, a, b) for h, a, b in RATIOS if a in present and b in present]
    head = ["metric"] + present + [h for h, _, _ in ratios]
    p("| " + " | ".join(head) + " |")
    p("|---|" + "---:|" * (len(head) - 1))
    for metric, label, _ in METRICS:
        if metric not in data:
            continue
        row = [label] + [cell(data[metric].get(t)) for t in present]
        row += [fmt(ratio(data, metric, a, b)) for _, a, b in ratios]
        p("| " + " | ".join(row) + " |")
    p("")

    # The targets, checked on this run's ratios.
    goals = []

    def goal(name, value, ok):
        if value is None:
            goals.append((name, "not measured", "—"))
        else:
            goals.append((name, fmt(value), "met" if ok(value) else "**NOT met**"))

    for s, m in (("S1", "s1"), ("S4", "s4")):
        goal(f"{s} MB/s ≥ 1.1 × nginx tuned", ratio(data, f"{m}_mbps", "gate", "nginx-tuned"), lambda v: v >= 1.1)
        goal(f"{s} CPU s/GiB ≤ 0.9 × nginx tuned", ratio(data, f"{m}_cpu", "gate", "nginx-tuned"), lambda v: v <= 0.9)
    for s, h1, h2 in (("S1", "s1_mbps", "s1_h2_mbps"), ("S4", "s4_mbps", "s4_h2_mbps")):
        a, b = median(data, h2, "gate"), median(data, h1, "gate")
        goal(f"{s} HTTP/2 MB/s ≥ HTTP/1.1 (gate)", a / b if a is not None and b else None, lambda v: v >= 1.0)
    goal("S2 PUT MB/s ≥ 0.95 × direct", ratio(data, "s2_put_mbps", "gate", "direct"), lambda v: v >= 0.95)
    goal("S2 PATCH MB/s ≥ 0.95 × direct", ratio(data, "s2_patch_mbps", "gate", "direct"), lambda v: v >= 0.95)
    goal("S3 bcrypt req/s ≥ 0.8 × direct", ratio(data, "s3_bcrypt_rps", "gate", "direct"), lambda v: v >= 0.8)
    goal("S3 APR1 req/s ≥ 0.9 × direct", ratio(data, "s3_apr1_rps", "gate", "direct"), lambda v: v >= 0.9)
    for kind in ("apr1", "bcrypt"):
        g = median(data, f"s3_{kind}_p99", "gate")
        n = median(data, "s3_apr1_p99", "nginx")
        goal(f"S3 {kind} p99 ≤ nginx APR1 p99 (gate ms / nginx ms)", g / n if g is not None and n else None,
             lambda v: v <= 1.0)
    peak = median(data, "s5_peak_mib", "gate")
    goal("S5 peak RSS ≤ 24 MiB (MiB)", peak, lambda v: v <= 24)
    goal("S5 per idle connection ≤ nginx", ratio(data, "s5_idle_kib", "gate", "nginx"), lambda v: v <= 1.0)
    goal("S6 handshakes/s ≥ nginx", ratio(data, "s6_conn_per_s", "gate", "nginx"), lambda v: v >= 1.0)
    p("| target (gate, ratio from this run) | value | |")
    p("|---|---:|---|")
    for name, value, verdict in goals:
        p(f"| {name} | {value} | {verdict} |")
    # The floor under the S3 ratios: the same TLS hop with no authentication at all.
    floor = [(label, ratio(data, f"s3_{kind}_rps", "nginx-noauth", "direct"))
             for kind, label in (("apr1", "APR1"), ("bcrypt", "bcrypt"))]
    if all(v is not None for _, v in floor):
        p("")
        p("S3 reference, the TLS proxy hop with no authentication (nginx-noauth/direct, same runs): "
          + ", ".join(f"{fmt(v)} in the {label} runs" for label, v in floor)
          + f"; gate/nginx-noauth {fmt(ratio(data, 's3_apr1_rps', 'gate', 'nginx-noauth'))} (APR1), "
          + f"{fmt(ratio(data, 's3_bcrypt_rps', 'gate', 'nginx-noauth'))} (bcrypt).")
    print("\n".join(out))


if __name__ == "__main__":
    main()
