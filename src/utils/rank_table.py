"""This server's devices in an HCCL rank table (the JSON that hccl_tools.py writes for Ascend clusters).

    python -m src.utils.rank_table RANK_TABLE_FILE      prints RANK_SIZE, then "device_id rank_id" lines

A rank table lists every server of the job (``server_list[].server_id``, usually the host's address)
with its devices (``device[].device_id`` local to the server, ``rank_id`` global). Each server starts
only its own ranks: the server is chosen by $SERVER_ID (a server_id of the table, or its 0-based position
in server_list), else by matching the table's server_ids against this host's names and addresses; a
one-server table needs neither. RANK_SIZE is the job's size, all servers together.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from typing import Iterable, List, Optional, Sequence, Set, Tuple

from src.errors import ConfigError


class RankTableError(ConfigError):
    """A rank table that cannot be read, or that does not name this server."""


def host_addresses() -> Set[str]:
    """Names and IPv4 addresses this host is known by (best effort, no network access)."""
    names = {socket.gethostname(), socket.getfqdn()}
    found = set(names)
    for name in names:
        try:
            found.update(socket.gethostbyname_ex(name)[2])
        except OSError:
            pass
    return {a for a in found if a}


def read_table(path: str) -> List[dict]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            table = json.load(f)
        servers = table["server_list"]
        for server in servers:
            for device in server["device"]:
                int(device["device_id"]), int(device["rank_id"])
    except FileNotFoundError:
        raise RankTableError(f"rank table not found: {path}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise RankTableError(f"{path}: not an HCCL rank table (expected server_list[].device[] with device_id and "
                             f"rank_id): {type(e).__name__}: {e}") from None
    if not servers:
        raise RankTableError(f"{path}: server_list is empty")
    return servers


def select_server(servers: Sequence[dict], path: str, server_id: Optional[str] = None,
                  addresses: Optional[Iterable[str]] = None) -> dict:
    ids = [str(s.get("server_id", "")) for s in servers]
    if server_id:
        if server_id in ids:
            return servers[ids.index(server_id)]
        if server_id.isdigit() and int(server_id) < len(servers):
            return servers[int(server_id)]
        raise RankTableError(f"SERVER_ID={server_id} is not in {path}: its servers are {', '.join(ids)} "
                             f"(or give a position 0..{len(servers) - 1})")
    if len(servers) == 1:
        return servers[0]
    mine = set(host_addresses() if addresses is None else addresses)
    matches = [s for s, i in zip(servers, ids) if i in mine]
    if len(matches) != 1:
        raise RankTableError(f"{path} lists {len(servers)} servers ({', '.join(ids)}) and this host "
                             f"({', '.join(sorted(mine)) or 'no address found'}) matches {len(matches)} of them: "
                             f"set SERVER_ID to this server's server_id or position")
    return matches[0]


def local_ranks(path: str, server_id: Optional[str] = None,
                addresses: Optional[Iterable[str]] = None) -> Tuple[int, List[Tuple[int, int]]]:
    """(RANK_SIZE of the whole job, [(device_id, rank_id)] of this server in rank order)."""
    servers = read_table(path)
    server = select_server(servers, path, server_id, addresses)
    devices = sorted(((int(d["device_id"]), int(d["rank_id"])) for d in server["device"]), key=lambda d: d[1])
    if not devices:
        raise RankTableError(f"{path}: server {server.get('server_id')} lists no devices")
    rank_size = sum(len(s["device"]) for s in servers)
    return rank_size, devices


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m src.utils.rank_table RANK_TABLE_FILE", file=sys.stderr)
        return 2
    try:
        rank_size, devices = local_ranks(argv[0], os.environ.get("SERVER_ID") or None)
    except RankTableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(rank_size)
    for device_id, rank_id in devices:
        print(device_id, rank_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
