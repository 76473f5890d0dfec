"""`autonomy-orchestrator agent`: the reference node agent's command line (no Django here).

Exit status: 0 after a clean stop (SIGTERM/SIGINT) or a good `--once` cycle; 1 when a `--once`
cycle refused the desired state, failed to apply it, or could not reach the server; 2 for a bad
flag (one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from autonomy_agent.agent import Agent, AgentConfig
from autonomy_agent.client import Client
from autonomy_agent.errors import AgentError
from autonomy_agent.state import DEFAULT_SPOOL_MAX_BYTES
from autonomy_agent.verify import DEFAULT_CLOCK_SKEW, load_public_key_files

PROG = "autonomy-orchestrator agent"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(text: str) -> float:
    """`30s`, `500ms`, `2m`, `1h` or plain seconds, > 0."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 2m or 500ms")
    return float(match.group(1)) * _UNITS[match.group(2)]


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog=PROG,
        description="The reference node agent: polls the control plane for this node's desired "
        "state, accepts it only when signed by a pinned key (and, with --release-trust-key, "
        "signed offline), runs --apply-command, acks the result and sends telemetry, spooling "
        "it on disk while the server is unreachable. See docs/agent.md.",
    )
    p.add_argument(
        "--server",
        required=True,
        metavar="URL",
        help="the control plane, e.g. https://orchestrator:8443",
    )
    p.add_argument("--node-id", required=True, metavar="ID", help="this node's id")
    p.add_argument("--channel", default="stable", help="the release channel (default stable)")
    auth = p.add_argument_group("credentials (a node token, or a client certificate under mTLS)")
    auth.add_argument(
        "--token",
        default=env("AUTONOMY_AGENT_TOKEN"),
        help="a node bearer token "
        "(default AUTONOMY_AGENT_TOKEN; prefer --token-file: argv is visible to "
        "other users)",
    )
    auth.add_argument("--token-file", metavar="FILE", help="read the bearer token from FILE")
    auth.add_argument("--cert", metavar="FILE", help="client certificate (PEM) for mTLS")
    auth.add_argument("--key", metavar="FILE", help="the client certificate's private key (PEM)")
    auth.add_argument(
        "--ca",
        metavar="FILE",
        help="CA file that checks the server's certificate (default: the system's roots)",
    )
    trust = p.add_argument_group("trust")
    trust.add_argument(
        "--trust-key",
        action="append",
        required=True,
        metavar="FILE",
        help="PEM public key(s) whose desired-state signatures are accepted "
        "(repeatable; a file may hold several keys)",
    )
    trust.add_argument(
        "--release-trust-key",
        action="append",
        default=[],
        metavar="FILE",
        help="PEM public key(s) of the offline release key: every release must be "
        "signed by one of them (repeatable)",
    )
    trust.add_argument(
        "--clock-skew",
        type=duration,
        default=DEFAULT_CLOCK_SKEW,
        metavar="DUR",
        help="how long past expires_at an answer is still accepted (default 60s)",
    )
    run = p.add_argument_group("running")
    run.add_argument(
        "--apply-command",
        required=True,
        metavar="CMD",
        help="run with /bin/sh -c "
        "for each new release; exit 0 = active, else failed (docs/agent.md)",
    )
    run.add_argument(
        "--apply-timeout",
        type=duration,
        default=600.0,
        metavar="DUR",
        help="a longer apply is killed and acked failed (default 10m)",
    )
    run.add_argument(
        "--state-dir",
        required=True,
        metavar="DIR",
        help="where the agent keeps its state and event spool (created 0700)",
    )
    run.add_argument(
        "--interval",
        type=duration,
        default=30.0,
        metavar="DUR",
        help="time between polls, +-10%% jitter (default 30s)",
    )
    run.add_argument(
        "--max-backoff",
        type=duration,
        default=300.0,
        metavar="DUR",
        help="the longest wait between tries while the server is unreachable (default 5m)",
    )
    run.add_argument(
        "--spool-max-bytes",
        type=positive_int,
        default=DEFAULT_SPOOL_MAX_BYTES,
        metavar="N",
        help="bound of the event spool; beyond it the oldest events are dropped (default 16 MiB)",
    )
    run.add_argument(
        "--once",
        action="store_true",
        help="run one cycle and exit (status 1 "
        "when it refused, failed or could not reach the server)",
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def build(args: argparse.Namespace) -> Agent:
    """The Agent for parsed ARGS; ValueError/AgentError/OSError with one line when not."""
    token = args.token
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
        if not token:
            raise ValueError(f"the token file {args.token_file} is empty")
    if args.cert and token:
        raise ValueError("give a token or --cert/--key, not both")
    if args.key and not args.cert:
        raise ValueError("--key needs --cert")
    client = Client(
        args.server,
        args.node_id,
        token=token,
        cert=args.cert,
        key=args.key,
        ca=args.ca,
        trust_keys=load_public_key_files(args.trust_key),
        release_trust_keys=load_public_key_files(args.release_trust_key),
        clock_skew=args.clock_skew,
        retries=1,
        backoff_cap=min(5.0, args.max_backoff),
    )
    config = AgentConfig(
        apply_command=args.apply_command,
        state_dir=Path(args.state_dir),
        channel=args.channel,
        interval=args.interval,
        apply_timeout=args.apply_timeout,
        max_backoff=args.max_backoff,
        spool_max_bytes=args.spool_max_bytes,
    )
    return Agent(client, config)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s autonomy-agent: %(message)s",
        stream=sys.stderr,
    )
    os.umask(0o077)
    try:
        agent = build(args)
    except (ValueError, AgentError, OSError) as exc:
        p.error(str(exc))
    if args.once:
        with agent:
            agent.cycle()
            if agent.last_error is not None:
                sys.stderr.write(f"{PROG}: {agent.last_error}\n")
                return 1
            record = agent.state.channel(args.channel)
            return 1 if record.get("status") == "failed" else 0
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with agent:
        agent.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
