"""torch.distributed on the embedded cluster without a port on any other interface.

Ray Train's own setup makes torch's TCPStore listen on every interface (``::``) and lets gloo pick the
host's address. On the embedded (one-machine) cluster this backend instead binds the store's socket to
127.0.0.1 before handing it to the TCPStore (``master_listen_fd``) and puts gloo on the loopback device;
a single-worker trial gets no process group at all (the engine trains it as world size 1). It runs only
where every worker is on this machine: a multi-node cluster uses Ray Train's own setup.
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Optional

import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

_STORE_SOCKET: Optional[socket.socket] = None
"""Rank 0's listening socket, kept open (in its worker process) until its TCPStore takes it over."""


def _bind_store_socket() -> int:
    global _STORE_SOCKET
    _STORE_SOCKET = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    _STORE_SOCKET.bind(("127.0.0.1", 0))
    _STORE_SOCKET.listen(128)
    return _STORE_SOCKET.getsockname()[1]


def _join_group(world_rank: int, world_size: int, port: int, backend: str, timeout_s: int) -> None:
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's pair sockets on 127.0.0.1
    timeout = timedelta(seconds=timeout_s)
    if world_rank == 0:
        assert _STORE_SOCKET is not None
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=True, timeout=timeout,
                              master_listen_fd=_STORE_SOCKET.fileno(), wait_for_workers=False)
    else:
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        worker_group.execute(_set_torch_distributed_env_vars)
        n = len(worker_group)
        if n == 1:
            return
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus else "gloo")
        port = worker_group.execute_single(0, _bind_store_socket)
        ray.get([worker_group.execute_single_async(i, _join_group, world_rank=i, world_size=n, port=port, backend=backend,
                                                   timeout_s=backend_config.timeout_s) for i in range(n)])


class LoopbackTorchConfig(TorchConfig):
    @property
    def backend_cls(self):
        return _LoopbackTorchBackend
