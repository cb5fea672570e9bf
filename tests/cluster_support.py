"""A real Redis Cluster on loopback for the tests: three masters, each with one replica.

Started once per test session (`redis_cluster` in tests/conftest.py): six `redis-server
--cluster-enabled yes` processes on free ports below 32768 (cluster bus ports too), data in a
temporary folder and never saved, joined by `redis-cli --cluster create`. The replicas are there
for the failover test; everything else sees three masters.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.e2e.harness import free_port

__all__ = ["LocalCluster"]

MASTERS = 3
# Short, so a failover after a master dies is quick; long enough that a busy machine does not
# take a slow node for a dead one.
NODE_TIMEOUT_MS = 2000


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports free now (`free_port`: below 32768, in this process's slice)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class LocalCluster:
    """Six nodes (three masters, three replicas) in `workdir`; `start` blocks until the
    cluster answers on every slot."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if exe is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed for a Redis Cluster")
        self.exe, self.cli = exe, cli
        self.workdir = workdir
        pairs = _free_ports(2 * 2 * MASTERS)  # a port and a bus port for each node
        self.ports = pairs[0::2]
        self.bus_ports = pairs[1::2]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """One node's URL: what REDIS_URL names with REDIS_CLUSTER=true."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5)

    def start_node(self, port: int) -> None:
        bus = self.bus_ports[self.ports.index(port)]
        folder = self.workdir / str(port)
        folder.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [self.exe, "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
             "--dir", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._wait(lambda: bool(self.node(port).ping()), f"node {port} to answer")

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )  # fmt: skip
        self.wait_healthy()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(10)
        self.procs.clear()

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(10)

    def masters(self) -> dict[int, list[tuple[int, int]]]:
        """Port of each live master -> its slot ranges, as the cluster sees it now."""
        out: dict[int, list[tuple[int, int]]] = {}
        for port in self.procs:
            try:
                shards = self.node(port).execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            except redis.RedisError:
                continue
            for start, end, master, *_ in shards:
                out.setdefault(int(master[1]), []).append((int(start), int(end)))
            return out
        raise RuntimeError("no node answers")

    def master_of(self, slot: int) -> int:
        for port, ranges in self.masters().items():
            if any(start <= slot <= end for start, end in ranges):
                return port
        raise RuntimeError(f"slot {slot} is not served")

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until every live node reports the cluster ok and every master a replica in sync
        (or none is left for it), and all agree on who serves what."""

        def healthy() -> bool:
            views = []
            for port in self.procs:
                node = self.node(port)
                info = node.execute_command("CLUSTER", "INFO").decode()  # type: ignore[no-untyped-call]
                if "cluster_state:ok" not in info:
                    return False
                # A replica that never finished its first sync cannot take over when its master
                # dies: the failover tests would then leave the cluster failed for the session.
                replication = node.info("replication")
                if replication.get("role") == "slave" and (
                    replication.get("master_link_status") != "up"
                ):
                    return False
                slots = node.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
                views.append(sorted(map(str, slots)))
            return all(view == views[0] for view in views)

        self._wait(healthy, "the cluster to be healthy", timeout)

    @staticmethod
    def _wait(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (redis.RedisError, OSError) as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {what} (last error: {last!r})")

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key starting with `prefix`, on every master."""
        for port in self.masters():
            node = self.node(port)
            try:
                for key in node.scan_iter(match=prefix + "*", count=1000):
                    node.delete(key)
            finally:
                node.close()

    def migrate_slot(
        self, slot: int, to_port: int, between: Callable[[], None] = lambda: None
    ) -> int:
        """Move `slot` to the master on `to_port` as `redis-cli --cluster reshard` does (IMPORTING
        and MIGRATING, keys moved in batches by MIGRATE, then the new owner announced), calling
        `between` after each batch. Returns how many keys moved."""
        source_port = self.master_of(slot)
        source, target = self.node(source_port), self.node(to_port)
        ids = {}
        for port, node in ((source_port, source), (to_port, target)):
            ids[port] = node.execute_command("CLUSTER", "MYID").decode()  # type: ignore[no-untyped-call]
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source_port])  # type: ignore[no-untyped-call]
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to_port])  # type: ignore[no-untyped-call]
        moved = 0
        while True:
            keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 5)  # type: ignore[no-untyped-call]
            if not keys:
                break
            source.execute_command(  # type: ignore[no-untyped-call]
                "MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "REPLACE", "KEYS", *keys
            )
            moved += len(keys)
            between()
        for node in (
            target,
            source,
            *(self.node(p) for p in self.masters() if p not in (source_port, to_port)),
        ):
            node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to_port])  # type: ignore[no-untyped-call]
        return moved
