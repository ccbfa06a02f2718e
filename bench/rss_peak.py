#!/usr/bin/env python3
"""Peak anonymous and file-backed memory of each target, sampled while the scenarios run.

Usage: rss_peak.py OUT TARGET=PID[,PID...] ...

VmHWM is the peak of RssAnon + RssFile + RssShmem together, and RssFile is not what a
process uses: on kernels that cache files in large folios, a fault maps a whole folio of
the executable, so most of a binary's text counts as resident whether it runs or not (a
binary copied to tmpfs, which uses small pages, maps a fraction). This sampler reads
/proc/PID/status four times a second, without starting a process per sample, and on
SIGTERM writes "TARGET<TAB>peak RssAnon KiB<TAB>peak RssFile + RssShmem KiB" per target to
OUT (a binary started from tmpfs counts as RssShmem).
"""
import signal
import sys
import time


def read_kib(pid, fields):
    out = dict.fromkeys(fields, 0)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in out:
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass  # the process is gone: it counts nothing
    return out


def main():
    out_path = sys.argv[1]
    targets = {}
    for arg in sys.argv[2:]:
        name, _, pids = arg.partition("=")
        targets[name] = [p for p in pids.split(",") if p]
    peak = {t: [0, 0] for t in targets}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        for t, pids in targets.items():
            anon = file_ = 0
            for p in pids:
                v = read_kib(p, ("RssAnon", "RssFile", "RssShmem"))
                anon += v["RssAnon"]
                file_ += v["RssFile"] + v["RssShmem"]
            peak[t][0] = max(peak[t][0], anon)
            peak[t][1] = max(peak[t][1], file_)
        time.sleep(0.25)
    with open(out_path, "w") as f:
        for t, (anon, file_) in peak.items():
            f.write(f"{t}\t{anon}\t{file_}\n")


if __name__ == "__main__":
    main()
