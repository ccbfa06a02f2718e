#!/usr/bin/env python3
"""Open N TLS connections to HOST:PORT, finish every handshake, then hold them idle.

Used by bench/run.sh (scenario S5) to measure a proxy's memory per idle TLS connection.
Prints "ready N" on stdout once all N handshakes are done (or "failed K" and exits 1 when
some could not be made), then sleeps until it is killed or stdin closes. No request is ever
sent; the certificate is verified against --cacert.

Usage: idle_conns.py --cacert CA.pem [--parallel 200] HOST PORT N
"""

import argparse
import asyncio
import resource
import ssl
import sys


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cacert", required=True)
    parser.add_argument("--parallel", type=int, default=200)
    parser.add_argument("--alpn", default="http/1.1")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("n", type=int)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.n + 64), hard))

    context = ssl.create_default_context(cafile=args.cacert)
    context.check_hostname = False  # the certificate names localhost and 127.0.0.1 alike
    context.set_alpn_protocols([args.alpn])

    held = []
    failures = 0
    gate = asyncio.Semaphore(args.parallel)

    async def one() -> None:
        nonlocal failures
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(args.host, args.port, ssl=context), timeout=30
                )
                held.append((reader, writer))
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
                failures += 1
                if failures <= 3:
                    print(f"idle_conns: connection failed: {e!r}", file=sys.stderr)

    await asyncio.gather(*(one() for _ in range(args.n)))
    if failures:
        print(f"failed {failures}", flush=True)
        return 1
    print(f"ready {len(held)}", flush=True)
    # Hold until killed or stdin closes.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
