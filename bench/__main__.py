"""``python -m bench [--quick|--tiny]``: run the benchmarks and write BENCHMARKS.md."""

import argparse
import asyncio
import sys

from bench.harness import Config, main

parser = argparse.ArgumentParser(prog="python -m bench")
parser.add_argument("--quick", action="store_true", help="a reduced run (under two minutes)")
parser.add_argument("--tiny", action="store_true", help="smallest sizes, no report (tests)")
ns = parser.parse_args()
config = Config.tiny() if ns.tiny else Config.quick() if ns.quick else Config.full()
asyncio.run(main(config))
sys.exit(0)
