"""A throwaway PostgreSQL cluster of a test's own: initdb, start, stop, restart, on a free
loopback port, so a test can stop and restart *the database* under a running `serve`.

    with PgCluster.create(tmp_root) as pg:      # initdb + start; stopped and removed afterwards
        url = pg.url("postgres")
        pg.stop(); pg.start(); pg.restart()      # pg_ctl stop/start/restart -m fast

initdb refuses to run as root (CI runs as root): when this process is root, every PostgreSQL
binary runs as the `postgres` user (`runuser -u postgres --`) in a directory owned by it.
`require_cluster()` skips with the reason when the binaries are missing, and fails instead under
CI=true. Reusable by the HA harness (a standby can be made with `pg_basebackup -R` the same way).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.liveserver import free_port

BIN_DIRS = [
    os.environ.get("AUTONOMY_TEST_PG_BIN", ""),
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
]
OS_USER = "postgres"


def bin_dir() -> Path | None:
    for candidate in BIN_DIRS:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def unavailable_reason() -> str | None:
    if bin_dir() is None:
        return "initdb/pg_ctl not found (set AUTONOMY_TEST_PG_BIN to PostgreSQL's bin directory)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"running as root and there is no {OS_USER!r} user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


def require_cluster() -> None:
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: these tests must run)")
    pytest.skip(reason)


class PgCluster:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.log = root / "server.log"
        bindir = bin_dir()
        assert bindir is not None
        self.bin = bindir

    # --- running the binaries as the right user ---------------------------------------------

    def _run(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", OS_USER, "--", *cmd]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root, env=_clean_env()
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                f"{self.server_log()}"
            )
        return done.stdout

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # --- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def create(cls, parent: Path | None = None, **settings: Any) -> PgCluster:
        """initdb a new cluster (trust auth, loopback only) and start it. `parent` (default the
        system temp dir) must be traversable by the postgres user; `settings` go to
        postgresql.auto.conf."""
        require_cluster()
        root = Path(tempfile.mkdtemp(prefix="pgcluster-", dir=parent))
        root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(root, OS_USER, OS_USER)
        cluster = cls(root, free_port())
        cluster._run(
            "initdb",
            "-D",
            str(cluster.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            timeout=120,
        )
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(cluster.port),
            "unix_socket_directories": f"'{root}'",
            "max_connections": "50",
            "shared_buffers": "16MB",
            "fsync": "off",
            "full_page_writes": "off",
            **{k: str(v) for k, v in settings.items()},
        }
        extra = "".join(f"{k} = {v}\n" for k, v in conf.items())
        conf_path = cluster.data / "postgresql.auto.conf"
        cluster._append(conf_path, extra)
        cluster.start()
        return cluster

    def _append(self, path: Path, text: str) -> None:
        if os.geteuid() == 0:
            subprocess.run(
                ["runuser", "-u", OS_USER, "--", "tee", "-a", str(path)],
                input=text,
                text=True,
                capture_output=True,
                check=True,
            )
        else:
            with path.open("a") as f:
                f.write(text)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w", "restart")

    def standby(self, parent: Path | None = None, **settings: Any) -> PgCluster:
        """A streaming standby of this cluster (`pg_basebackup -R`), started on a port of its
        own; its `application_name` is `standby<port>`. `settings` go to postgresql.auto.conf."""
        root = Path(tempfile.mkdtemp(prefix="pgstandby-", dir=parent))
        root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(root, OS_USER, OS_USER)
        standby = PgCluster(root, free_port())
        name = f"standby{standby.port}"
        self._run(
            "pg_basebackup",
            "-D",
            str(standby.data),
            "-R",
            "-X",
            "stream",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            f"application_name={name}",
            timeout=120,
        )
        conf = {
            "port": str(standby.port),
            "unix_socket_directories": f"'{root}'",
            **{k: str(v) for k, v in settings.items()},
        }
        standby._append(
            standby.data / "postgresql.auto.conf", "".join(f"{k} = {v}\n" for k, v in conf.items())
        )
        standby.start()
        return standby

    def promote(self) -> None:
        """`pg_ctl promote -w`: this standby becomes a primary."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")

    def is_running(self) -> bool:
        out = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
        )
        return out.returncode == 0

    def url(self, dbname: str = "postgres", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}" + (
            f"?{query}" if query else ""
        )

    def sql(self, statement: str, dbname: str = "postgres") -> Any:
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else None

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.destroy()


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8"
    return env
