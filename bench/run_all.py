"""All benchmarks, one after the other (what `make bench` runs).

The reader and publish benchmarks use the configured database's live version: run
`make pipeline DATA=../shared/data/ml-latest-small` first.
"""

from __future__ import annotations

import subprocess
import sys

MODULES = ["bench.pipeline_stages", "bench.publish_copy", "bench.load"]


def main() -> None:
    for module in MODULES:
        print(f"== {module}", flush=True)
        subprocess.run([sys.executable, "-m", module], check=True)


if __name__ == "__main__":
    main()
