"""Generate the sample orders data set (the one `make demo` puts under the data directory).

    python samples/analysis/generate.py     # 50,000 rows into $CONVEYOR_DATA_DIR/analysis-sample
    python samples/analysis/generate.py --rows 1000000 --out data/big --parquet

Writes orders.csv, orders/orders-YYYY-MM.parquet (one partition per month) and, with
--parquet, orders.parquet. The rows are a pure function of their number (see
tasks/analysis/sample.py), so every run writes the same data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from config import get_settings
    from tasks.analysis import SAMPLE_ROWS
    from tasks.analysis.sample import generate
    from tasks.analysis.tasks import SAMPLE

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=SAMPLE_ROWS)
    parser.add_argument("--out", type=Path, default=None, help="default: <data dir>/analysis-sample")
    parser.add_argument("--parquet", action="store_true", help="also one orders.parquet file")
    args = parser.parse_args()
    out = args.out or get_settings().data_dir / SAMPLE
    for path in generate(out, args.rows, parquet=args.parquet):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
