"""Real services for the test suite, started by the tests themselves.

Everything here listens on 127.0.0.1 only, on ports nobody else chose, and is stopped by the PID
(or process group) it was started with: the suite must never touch a Redis, database or worker it
did not create.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

T = TypeVar("T")

#: The repository root: Celery workers run from here so ``tests.*`` and ``examples.*`` import.
REPO_ROOT = Path(__file__).resolve().parent.parent

_HOST = "127.0.0.1"
_REDIS_READY_TIMEOUT = 10.0
_REDIS_STOP_TIMEOUT = 5.0
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 40


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    interval: float = _POLL_INTERVAL,
    message: str,
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that.

    Raises AssertionError with ``message`` and the last value if ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (after {timeout:g}s; last value: {value!r})")
        time.sleep(interval)


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:])


def _await_ready(
    is_ready: Callable[[], bool],
    exit_status: Callable[[], int | None],
    *,
    timeout: float,
    what: str,
    log_path: Path,
) -> None:
    """Poll ``is_ready`` until true; fail early, with the log tail, if the process ends."""
    deadline = time.monotonic() + timeout
    while True:
        # Exit first: a port that answers after our process died belongs to someone else.
        status = exit_status()
        if status is not None:
            raise RuntimeError(
                f"{what} exited (status {status}) before it was ready; "
                f"log {log_path}:\n{_log_tail(log_path)}"
            )
        if is_ready():
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"{what} was not ready after {timeout:g}s; log {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(_POLL_INTERVAL)


def _fresh_log_path(log_dir: Path, stem: str) -> Path:
    """A log file name not used before, so readiness is never read from an earlier run's log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{stem}.log"
    run = 1
    while path.exists():
        run += 1
        path = log_dir / f"{stem}.{run}.log"
    return path


# --------------------------------------------------------------------------------------- Redis


class _PortTaken(RuntimeError):
    """redis-server could not bind its port: someone took it between free_port() and start."""


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 without persistence, owned by one test."""

    def __init__(self, tmp_dir: Path, port: int) -> None:
        self.tmp_dir = tmp_dir
        self.port = port
        self.log_path = tmp_dir / f"redis-{port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, tmp_dir: Path, port: int | None = None) -> RedisServer:
        """Start a server on ``port`` (a free one if None) and return once it answers PING."""
        # free_port() cannot reserve the port and another process may take it before
        # redis-server binds it; only a port we picked may be swapped for a new one.
        retries = 2 if port is None else 0
        while True:
            server = cls(tmp_dir, free_port() if port is None else port)
            try:
                server._launch()
            except _PortTaken:
                if retries == 0:
                    raise
                retries -= 1
                continue
            return server

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        """The URL of logical database ``db`` on this server."""
        return f"redis://{_HOST}:{self.port}/{db}"

    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 5 s. A no-op if it is not running."""
        if not self.is_running():
            return
        process = self._require_process()
        process.terminate()
        try:
            process.wait(timeout=_REDIS_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server: a crash, from the clients' point of view."""
        if not self.is_running():
            return
        process = self._require_process()
        process.kill()
        process.wait()

    def shutdown_nosave(self) -> None:
        """Ask the server to exit via ``SHUTDOWN NOSAVE`` and wait until it has."""
        client = self._client(timeout=_REDIS_STOP_TIMEOUT)
        try:
            client.shutdown(nosave=True)
        finally:
            client.close()
        self._require_process().wait(timeout=_REDIS_STOP_TIMEOUT)

    def restart(self) -> None:
        """Start a new server on the same port with the same options (stopping it first if up)."""
        self.stop()
        self._launch()

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError(f"redis-server on port {self.port} was never started")
        return self._process

    def _command(self) -> list[str]:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(
                "redis-server is not on PATH; the integration tests start their own. Install it "
                "(Debian/Ubuntu: `sudo apt-get install redis-server`, macOS: `brew install redis`) "
                "or run `bash scripts/test.sh`, which installs it when run as root."
            )
        return [
            executable,
            "--port", str(self.port),
            "--bind", _HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.tmp_dir),
            "--daemonize", "no",
        ]  # fmt: skip

    def _launch(self) -> None:
        command = self._command()
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Appending keeps the log of every start on this port in one file, in order.
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            _await_ready(
                self._answers_ping,
                self._process.poll,
                timeout=_REDIS_READY_TIMEOUT,
                what=f"redis-server on port {self.port}",
                log_path=self.log_path,
            )
        except RuntimeError as exc:
            self.kill()
            if "Address already in use" in _log_tail(self.log_path):
                raise _PortTaken(str(exc)) from exc
            raise

    def _client(self, timeout: float) -> redis.Redis:
        # No retries: redis-py's default backoff would stretch every failed probe to seconds.
        return redis.Redis(
            host=_HOST,
            port=self.port,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def _answers_ping(self) -> bool:
        client = self._client(timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


# ---------------------------------------------------------------------------------- PostgreSQL


def _libpq_url(url: str) -> str:
    """``url`` as libpq accepts it: SQLAlchemy's ``+driver`` suffix removed from the scheme."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=parts.scheme.split("+", 1)[0]))


def _database_url(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    if parts.scheme.split("+", 1)[0] not in ("postgres", "postgresql"):
        raise ValueError(f"expected a postgresql:// URL, got {admin_url!r}")
    return urlunsplit(parts._replace(scheme="postgresql+psycopg", path=f"/{name}"))


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(_libpq_url(admin_url), autocommit=True) as admin:
        # Connections the test leaked (pools, workers) would otherwise block DROP DATABASE.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        drop = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
        # FORCE (PostgreSQL 13+) also covers backends that connect after the terminate above.
        if admin.info.server_version >= 130000:
            drop = sql.SQL("{} WITH (FORCE)").format(drop)
        admin.execute(drop)


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A new, empty database on the server of ``admin_url``, dropped again on exit.

    Yields its SQLAlchemy URL (``postgresql+psycopg://``, same host and user, database
    ``gz_<random hex>``). On exit every connection still using it is terminated first.
    """
    name = f"gz_{secrets.token_hex(8)}"
    url = _database_url(admin_url, name)
    with psycopg.connect(_libpq_url(admin_url), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url
    finally:
        _drop_database(admin_url, name)


# -------------------------------------------------------------------------------------- Celery


class _ProcStat(NamedTuple):
    pid: int
    state: str
    ppid: int
    pgrp: int


def _process_table() -> list[_ProcStat]:
    """Every process visible in /proc (Linux only)."""
    table = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # it exited while we were looking
        # Field 2 (comm) is in parentheses and may itself contain spaces and ')'.
        state, ppid, pgrp = raw[raw.rindex(")") + 2 :].split()[:3]
        table.append(_ProcStat(int(entry.name), state, int(ppid), int(pgrp)))
    return table


def _worker_command(
    *, name: str, include: Sequence[str], pool: str, concurrency: int, queues: Sequence[str] | None
) -> list[str]:
    command = [
        sys.executable, "-m", "celery", "-A", "gleitzeit.worker", "worker",
        "-I", ",".join(include),
        "-P", pool,
        "-c", str(concurrency),
        "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-l", "info",
    ]  # fmt: skip
    if queues:
        command += ["-Q", ",".join(queues)]
    return command


def _worker_env(
    broker_url: str, database_url: str, extra: Mapping[str, str] | None
) -> dict[str, str]:
    env = dict(os.environ)
    env["CELERY_BROKER_URL"] = broker_url
    env["GLEITZEIT_DATABASE_URL"] = database_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # Output a task prints just before a crash must still reach the log.
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class CeleryWorker:
    """A ``celery worker`` for ``gleitzeit.worker``, leader of a process group of its own.

    The main process is never reaped before its group has been killed: while it is unreaped
    its PID, and so the group id, cannot be reused, so killing the group only ever hits
    processes this worker started.
    """

    def __init__(self, process: subprocess.Popen[bytes], name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._process = process

    @classmethod
    def start(
        cls,
        *,
        broker_url: str,
        database_url: str,
        log_dir: Path,
        include: Sequence[str] = ("tests.tasks",),
        concurrency: int = 2,
        pool: str = "prefork",
        queues: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> CeleryWorker:
        """Start the worker process (not waiting for it: see ``wait_ready``)."""
        name = name or f"gz-{secrets.token_hex(4)}"
        command = _worker_command(
            name=name, include=include, pool=pool, concurrency=concurrency, queues=queues
        )
        log_path = _fresh_log_path(log_dir, f"worker-{name}")
        return cls._spawn(command, _worker_env(broker_url, database_url, env), name, log_path)

    @classmethod
    @contextlib.contextmanager
    def running(cls, **options: Any) -> Iterator[CeleryWorker]:
        """A worker started with ``options`` (as :meth:`start`), ready; stopped after."""
        worker = cls.start(**options)
        try:
            worker.wait_ready(timeout=60)
            yield worker
        finally:
            worker.stop()

    @classmethod
    def _spawn(
        cls, command: Sequence[str], env: Mapping[str, str], name: str, log_path: Path
    ) -> CeleryWorker:
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(process, name, log_path)

    @property
    def pid(self) -> int:
        """PID of the main worker process (also its process group id)."""
        return self._process.pid

    def wait_ready(self, timeout: float = 30) -> None:
        """Block until Celery logs ``<name>@<host> ready.``; raise with the log tail if the
        process exits or ``timeout`` seconds pass first."""
        _await_ready(
            self._logged_ready,
            self._exit_status,
            timeout=timeout,
            what=f"celery worker {self.name}",
            log_path=self.log_path,
        )

    def log_text(self) -> str:
        """Everything the worker has written so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def child_pids(self) -> list[int]:
        """Live processes whose parent is the main process: the pool's children."""
        return sorted(
            proc.pid for proc in _process_table() if proc.ppid == self.pid and proc.state != "Z"
        )

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the main process only (e.g. SIGTERM for a warm shutdown)."""
        if self._process.returncode is not None:
            raise ProcessLookupError(f"celery worker {self.name} has already been reaped")
        os.kill(self.pid, sig)

    def is_running(self) -> bool:
        """Whether the main process is still alive."""
        return self._exit_status() is None

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL to the whole group for whatever is left."""
        if self.is_running():
            self.signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.is_running() and time.monotonic() < deadline:
                time.sleep(_POLL_INTERVAL)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and pool) and reap the main process."""
        if self._process.returncode is not None:
            return  # reaped by an earlier stop()/kill(), which killed the group already
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self._await_group_gone()
        self._process.wait()

    def _await_group_gone(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self._group_members() and time.monotonic() < deadline:
            time.sleep(_POLL_INTERVAL)

    def _group_members(self) -> list[int]:
        """Live members of our process group other than the (unreaped) main process."""
        return [
            proc.pid
            for proc in _process_table()
            if proc.pgrp == self.pid and proc.pid != self.pid and proc.state != "Z"
        ]

    def _exit_status(self) -> int | None:
        """The main process's exit status once it has ended, without reaping it."""
        if self._process.returncode is not None:
            return self._process.returncode
        result = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return None if result is None else result.si_status

    def _logged_ready(self) -> bool:
        node = f"{self.name}@"
        return any(
            node in line and line.rstrip().endswith("ready.")
            for line in self.log_text().splitlines()
        )


class CeleryBeat(CeleryWorker):
    """``celery -A gleitzeit.worker beat``: sends ``gleitzeit.reconcile`` on its schedule."""

    @classmethod
    def start_beat(
        cls,
        *,
        broker_url: str,
        database_url: str,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> CeleryBeat:
        name = f"beat-{secrets.token_hex(4)}"
        command = [
            sys.executable, "-m", "celery", "-A", "gleitzeit.worker", "beat",
            "-s", str(log_dir / f"{name}-schedule"),
            "-l", "info",
        ]  # fmt: skip
        log_path = _fresh_log_path(log_dir, name)
        beat = cls._spawn(command, _worker_env(broker_url, database_url, env), name, log_path)
        assert isinstance(beat, CeleryBeat)
        return beat

    def _logged_ready(self) -> bool:
        return "beat: Starting..." in self.log_text()


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target``, which the test can cut and restore.

    ``cut()`` closes every proxied connection and refuses new ones, as a network partition
    between the clients and the server would; ``restore()`` lets connections through again.
    ``cut_after(n)`` cuts once ``n`` more bytes have gone to the server: in the middle of a
    write, a request the server may have taken in part.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._budget: int | None = None  # bytes still allowed upstream; None: no limit
        self._listener = socket.create_server((_HOST, self.port))
        self._listener.settimeout(0.1)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        userinfo = netloc[0] + "@" if len(netloc) == 2 else ""
        return urlunsplit(parts._replace(netloc=f"{userinfo}{_HOST}:{self.port}"))

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def cut_after(self, n_bytes: int) -> None:
        with self._lock:
            self._budget = n_bytes

    def restore(self) -> None:
        with self._lock:
            self._budget = None
        self._cut.clear()

    def close(self) -> None:
        self._stopped.set()
        self.cut()
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, server))
            for source, sink, upstream in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, sink, upstream), daemon=True
                ).start()

    def _spend(self, chunk: bytes) -> tuple[bytes, bool]:
        """What of ``chunk`` may still go to the server, and whether the budget is spent."""
        with self._lock:
            if self._budget is None:
                return chunk, False
            allowed = chunk[: self._budget]
            self._budget -= len(allowed)
            return allowed, self._budget == 0

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while chunk := source.recv(65536):
                spent = False
                if upstream:
                    chunk, spent = self._spend(chunk)
                sink.sendall(chunk)
                if spent:
                    self.cut()
                    return
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
