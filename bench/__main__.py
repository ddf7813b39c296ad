"""``python -m bench [--quick|--tiny]``: run the benchmarks and write BENCHMARKS.md."""

import argparse
import asyncio
import sys

from bench.harness import Config, main

parser = argparse.ArgumentParser(prog="python -m bench")
parser.add_argument("--quick", action="store_true", help="a reduced run (under two minutes)")
parser.add_argument("--tiny", action="store_true", help="smallest sizes, no report (tests)")
parser.add_argument(
    "--only",
    choices=["pool", "link", "single", "footprint", "lookup"],
    help="one table, printed and not written to BENCHMARKS.md (a scratch check)",
)
parser.add_argument("--rtts", help="with --only: emulated RTTs in ms, e.g. 0,50")
parser.add_argument("--sizes", help="with --only pool: kernel counts, e.g. 8,32")
parser.add_argument("--ways", help="with --only pool: some of relay,tunnel,controlmaster")
parser.add_argument("--rounds", type=int, help="with --only link: interleaved rounds")
parser.add_argument("--mib", type=int, help="with --only link: MiB of bulk each way")
ns = parser.parse_args()
config = Config.tiny() if ns.tiny else Config.quick() if ns.quick else Config.full()
if ns.only:
    config.only, config.write_report = ns.only, False
    if ns.rtts:
        config.rtts_ms = [int(x) for x in ns.rtts.split(",")]
    elif ns.only == "link":
        config.rtts_ms = [0, *config.link_rtts_ms]
    if ns.only == "link":  # on loopback, then at the emulated RTTs asked for
        config.rtts_ms = sorted({0, *config.rtts_ms})
        config.link_rtts_ms = tuple(rtt for rtt in config.rtts_ms if rtt)
    if ns.sizes:
        config.pool_sizes = tuple(int(x) for x in ns.sizes.split(","))
    if ns.ways:
        config.pool_ways = tuple(ns.ways.split(","))
    if ns.rounds:
        config.link_rounds = ns.rounds
    if ns.mib:
        config.bulk_bytes = ns.mib << 20
asyncio.run(main(config))
sys.exit(0)
