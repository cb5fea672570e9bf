"""Run Debian's nginx as the yardstick: proxy_cache on one port, plain proxy_pass on another."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template

from benchkit.procs import Proc, Processes, free_port, pinned, wait_until

TEMPLATE = Path(__file__).resolve().parent.parent / "nginx.conf.template"


def binary() -> str | None:
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def version(nginx: str) -> str:
    done = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


def render(prefix: Path, upstream_port: int, cache_port: int, pass_port: int) -> str:
    # As root, nginx would drop its worker to `nobody`, which cannot write our temp dir.
    user_line = "user root;" if os.geteuid() == 0 else ""
    return Template(TEMPLATE.read_text()).substitute(
        prefix=str(prefix),
        user_line=user_line,
        upstream_port=upstream_port,
        cache_port=cache_port,
        pass_port=pass_port,
    )


@dataclass
class Nginx:
    proc: Proc
    cache_port: int
    pass_port: int

    @property
    def cache_url(self) -> str:
        return f"http://127.0.0.1:{self.cache_port}"

    @property
    def pass_url(self) -> str:
        return f"http://127.0.0.1:{self.pass_port}"


def start(procs: Processes, nginx: str, upstream_port: int, cpu: int | None) -> Nginx:
    prefix = procs.workdir / "nginx"
    prefix.mkdir()
    cache_port, pass_port = free_port(), free_port()
    while pass_port == cache_port:
        pass_port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(render(prefix, upstream_port, cache_port, pass_port))
    check = subprocess.run(
        [nginx, "-t", "-q", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check.returncode != 0:
        raise RuntimeError(f"nginx rejected the generated {conf}:\n{check.stderr}")
    cmd = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    proc = procs.start("nginx", pinned(cmd, cpu))
    ng = Nginx(proc, cache_port, pass_port)

    def listening() -> bool:
        proc.check_alive()
        for port in (cache_port, pass_port):
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        return True

    wait_until(listening, "nginx", timeout=20)
    return ng
