"""A real redis-server on a loopback port, for tests that kill, pause and restart Redis."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """redis-server without persistence on 127.0.0.1; start() again restarts it on the same port.

    Started by the constructor unless start=False. Use as a context manager, or call stop().
    """

    def __init__(
        self,
        password: str | None = None,
        *,
        port: int | None = None,
        start: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not on PATH; the cache tests need a real Redis: "
                "install it with `apt-get install redis-server` (or set REDIS_URL)"
            )
        self.binary = binary
        self.password = password
        self.extra_args = list(extra_args)
        self._port_chosen = port is not None
        self.port = port if port is not None else free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="facescore-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        if start:
            try:
                self.start()
            except BaseException:
                shutil.rmtree(self.dir, ignore_errors=True)
                raise

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def client(self) -> redis.Redis:
        """A plain synchronous client, to look at what the code under test wrote."""
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        # Another process may grab a free port between free_port() and redis binding it;
        # a port chosen here (not a restart, not the caller's) can then simply be replaced.
        for attempt in range(3):
            if self._spawn(timeout):
                return
            if self._port_chosen or attempt == 2 or "Address already in use" not in self.logs():
                break
            self.port = free_port()
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{self.logs()}")

    def _spawn(self, timeout: float) -> bool:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.log_path),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        args = self._command(args + self.extra_args)
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self._answers_ping():
                return True
            time.sleep(0.02)
        self.kill()
        return False

    def _command(self, args: list[str]) -> list[str]:
        return args

    def _answers_ping(self) -> bool:
        try:
            with redis.Redis(
                host="127.0.0.1",
                port=self.port,
                password=self.password,
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
            ) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: a clean shutdown."""
        if self.running:
            assert self.process is not None
            self.resume()  # a stopped process would not handle SIGTERM
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL and wait: Redis vanishes abruptly, as in a crash."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers, as with a hung Redis."""
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGCONT)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisSentinel(RedisServer):
    """redis-server in Sentinel mode on 127.0.0.1, watching one master under `name`.

    Quick to act, for tests: a master that does not answer for 1 s is down.
    """

    def __init__(self, master: RedisServer, name: str = "mymaster") -> None:
        self.master, self.name = master, name
        super().__init__(start=False)
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self, args: list[str]) -> list[str]:
        # Sentinel rewrites its configuration file, so it must have one of its own.
        config = self.dir / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"logfile {self.log_path}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.name} 1000\n"
            f"sentinel failover-timeout {self.name} 10000\n"
            + (
                f"sentinel auth-pass {self.name} {self.master.password}\n"
                if self.master.password
                else ""
            )
        )
        return [self.binary, str(config), "--sentinel"]

    def master_port(self) -> int:
        with self.client() as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        return int(port)

    def replicas_ready(self) -> int:
        """Replicas Sentinel knows and would promote (linked to the master, not down)."""
        with self.client() as client:
            replicas = client.execute_command("SENTINEL", "REPLICAS", self.name)
        ready = 0
        for replica in replicas:
            info = (
                dict(zip(replica[::2], replica[1::2], strict=True))
                if isinstance(replica, list)
                else replica
            )
            flags = info.get(b"flags", info.get("flags", b""))
            link = info.get(b"master-link-status", info.get("master-link-status", b""))
            flags = flags.decode() if isinstance(flags, bytes) else str(flags)
            link = link.decode() if isinstance(link, bytes) else str(link)
            if "down" not in flags and "disconnected" not in flags and link == "ok":
                ready += 1
        return ready
