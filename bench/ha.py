"""The HA fault matrix (docs/ha.md): three `serve` replicas on a throwaway PostgreSQL cluster
(tests/pgcluster.py; a streaming standby where the scenario needs one) under a bounded ingest
load, and one fault per scenario: leader kill -9, leader SIGSTOP, database stop/start (5 s),
`pg_ctl restart -m fast`, connection exhaustion, primary crash + standby promotion (asynchronous
and synchronous replication). Prints, per scenario, the answers by status, the longest gap
between two acknowledged writes, the acknowledged events missing afterwards, and its timings.

    .venv/bin/python bench/ha.py [--rounds N]

Needs PostgreSQL's binaries (initdb, pg_ctl, pg_basebackup); as root they run as `postgres`.
Loopback only. The figures depend on the machine and its load: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hafaults import database_fault, leader_kill, promotion
from tests.pgcluster import PgCluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds of each scenario")
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
        f"{platform.machine()}, Python {platform.python_version()}"
    )
    for round_no in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            with PgCluster.create() as pg:
                for name, sig in (
                    ("leader kill -9", signal.SIGKILL),
                    ("leader SIGSTOP", signal.SIGSTOP),
                ):
                    db = f"fleet_{sig}"
                    pg.sql(f"CREATE DATABASE {db}")
                    result = leader_kill(root / db, pg.url(db), sig)
                    print(f"{name} (round {round_no}): {json.dumps(result)}", flush=True)
            for kind in ("stop/start", "restart", "exhaustion"):
                result = database_fault(root / kind.replace("/", "-"), kind)
                print(f"database {kind} (round {round_no}): {json.dumps(result)}", flush=True)
            for synchronous in (False, True):
                result = promotion(root / f"promote-{synchronous}", synchronous=synchronous)
                kind = "sync" if synchronous else "async"
                print(
                    f"primary crash + promote, {kind} (round {round_no}): {json.dumps(result)}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
