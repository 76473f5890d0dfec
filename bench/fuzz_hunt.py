"""Hunt for server errors: schemathesis against a live server for N minutes, every phase.

    python bench/fuzz_hunt.py [--minutes 2] [--store sqlite|postgres|both] [--seed N]
                              [--checks not_a_server_error] [--workers 1] [--out DIR]

For each store, starts the real `autonomy-orchestrator serve` on 127.0.0.1 (PostgreSQL: a
throw-away database on AUTONOMY_TEST_POSTGRES_URL's server, dropped afterwards), seeds it like
tests/test_fuzz.py (releases, acks, events, rollout plans), then runs `schemathesis run` on
`/v1/openapi.json` with the phases examples, coverage, fuzzing and stateful (operation sequences
linked through the schema's links and ids), random examples from a fresh seed (printed), until
the time budget is spent. The default check is `not_a_server_error` (no 5xx); `--checks all`
adds the schema conformance checks.

Afterwards: the server log is searched for tracebacks, and per store OUT/<store>/ holds
schemathesis' JUnit report and `reproduce.py`, a pytest file replaying every failure it found:
turn each into a regression test in tests/test_fuzz_regressions.py. Exit status 0 when every
store came through with no failure and no traceback. Not a CI test (CI runs tests/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.liveserver import ServeProcess  # noqa: E402 - after the path setup above

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
PHASES = "examples,coverage,fuzzing,stateful"


def hunt_store(store: str, args: argparse.Namespace, out: Path, seed: int) -> bool:
    """One store: serve, seed, run schemathesis for the budget. True when nothing was found."""
    from tests.test_fuzz import seed as seed_server

    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"hunt-{store}-")))
        serve_args: list[str] = []
        if store == "postgres":
            from tests.pg import create_database, drop_database, unreachable_reason

            reason = unreachable_reason()
            if reason is not None:
                print(f"[{store}] skipped: {reason}")
                return False
            name, url = create_database("fuzz_hunt")
            stack.callback(drop_database, name)
            serve_args += ["--postgres-url", url]
        server = stack.enter_context(ServeProcess(work / "data", *serve_args))
        seed_server(server.base_url)
        command = [
            str(SCHEMATHESIS),
            "run",
            server.url("/v1/openapi.json"),
            "--phases",
            PHASES,
            "--max-time",
            str(int(args.minutes * 60)),
            "--seed",
            str(seed),
            "--checks",
            args.checks,
            "--workers",
            str(args.workers),
            "--suppress-health-check",
            "all",
            "--report",
            "junit,pytest",
            "--report-dir",
            str(out),
            "--report-pytest-path",
            str(out / "reproduce.py"),
            "--no-color",
        ]
        print(f"[{store}] {' '.join(command)}", flush=True)
        started = time.monotonic()
        result = subprocess.run(command, cwd=work, check=False)
        elapsed = time.monotonic() - started
        server.stop()
        log = server.logs()
        (out / "serve.log").write_text(log)
    tracebacks = log.count("Traceback")
    print(
        f"[{store}] schemathesis exit {result.returncode} after {elapsed:.0f} s; "
        f"tracebacks in the server log: {tracebacks}; report: {out}",
        flush=True,
    )
    return result.returncode == 0 and tracebacks == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="budget per store")
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--seed", type=int, default=None, help="replay a hunt (default: random)")
    parser.add_argument("--checks", default="not_a_server_error")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("fuzz-hunt-report"))
    args = parser.parse_args()
    if not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None:
        parser.error("schemathesis is not installed (pip install -r requirements/dev.txt)")
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(63)
    print(f"fuzz hunt seed: {seed} (replay with --seed {seed})", flush=True)
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    clean = [hunt_store(store, args, args.out / store, seed) for store in stores]
    return 0 if all(clean) else 1


if __name__ == "__main__":
    sys.exit(main())
