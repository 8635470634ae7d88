"""Launchers: how the processes of a distributed run come to exist.

    SubprocessLauncher ('ddp')       this process is local rank 0; it re-runs the script for local ranks 1..N-1 with
                                     RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR=127.0.0.1/MASTER_PORT set, and watches them
    SpawnLauncher ('ddp_spawn')      torch.multiprocessing workers run the stage; this process waits and gets rank 0's
                                     results back as plain data (metrics, best checkpoint path, final weights)
    external (torchrun, SLURM, a preset LOCAL_RANK)   no launcher: every process runs the script itself

The rendezvous port is race-free: the launcher opens the TCPStore on port 0 and hands its port on. Failure: when any
rank raises, that rank prints its traceback once (prefixed with its rank) and exits at once, which releases its
peers' collectives; the launcher kills the remaining processes and the job exits non-zero, leaving no process behind.
"""

from __future__ import annotations

import atexit
import io
import marshal
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
import types
from typing import Any, Callable

from engine.errors import MisconfigurationException
from strategies.environment import LOOPBACK

__all__ = ["SubprocessLauncher", "SpawnLauncher", "RankFailedError", "worker_guard", "limit_threads",
           "WORKER_FLAG"]

WORKER_FLAG = "STATETRAIN_WORKER"  # set in the environment of the processes our launchers start
# a child's exit status that is not a failure: done, or stopped by an agreed SIGTERM after its checkpoint (every
# rank stops at the same boundary; engine.loops.context.EXIT_SIGNAL_CHECKPOINTED)
_CLEAN_EXITS = (0, 75)
_GRACE_S = 5.0  # after a rank failed: how long the launcher waits for its own stage to end before it exits hard


class RankFailedError(RuntimeError):
    """Another rank of the job failed; its own traceback was printed by that rank."""


def limit_threads() -> None:
    """One intra-op thread per process unless the user chose (OMP_NUM_THREADS): N ranks x N threads oversubscribe
    the cores (measured here: 2 x 2 threads is 7x slower than 2 x 1)."""
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)


def preload_ddp() -> None:
    """Import what the first DistributedDataParallel() imports lazily (torch._dynamo: 1.5-4 s here) while this
    process waits for its peers to start, instead of after they joined."""
    try:
        import torch._dynamo  # noqa: F401
        import torch.nn.parallel.distributed  # noqa: F401
    except Exception:  # noqa: BLE001 - only a head start; DDP() imports it again and reports real errors
        pass


_preloading: list[threading.Thread] = []


def start_preload() -> None:
    """`preload_ddp` in a background thread, once per process."""
    if not _preloading:
        thread = threading.Thread(target=preload_ddp, name="statetrain-ddp-preload", daemon=True)
        _preloading.append(thread)
        thread.start()


def is_secondary(exc: BaseException) -> bool:
    """Whether `exc` is a peer's failure seen through the process group (a closed connection, a timeout)."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "gloo", "Broken pipe"))


def worker_guard(rank: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a worker's stage; on failure print the traceback once with the rank and exit at once (which releases
    the peers), unless the failure is only a peer's failure seen through a collective (the launcher ends us)."""
    try:
        return fn(*args)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure of a worker ends the job
        if is_secondary(exc):
            time.sleep(_GRACE_S)  # the launcher kills this process; the original traceback is the failing rank's
            print(f"[rank {rank}] stopped: a peer rank failed ({type(exc).__name__})", file=sys.stderr, flush=True)
            os._exit(1)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        print(f"[rank {rank}] failed:\n{text}", file=sys.stderr, end="", flush=True)
        os._exit(1)


def _die_with_parent() -> None:
    """In a child before exec: SIGKILL it when the launcher dies, even by SIGKILL (Linux PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:  # noqa: BLE001 - not Linux: the launcher's own cleanup still applies
        pass


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL a child and everything it started (it leads its own session)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _script_command() -> list[str]:
    """How this program was started, to start it again: `python script.py args` or `python -m module args`."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        name = spec.name[:-len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return [sys.executable, "-m", name, *sys.argv[1:]]
    script = sys.argv[0] if sys.argv else ""
    if not script or script == "-c" or not os.path.isfile(script):
        raise MisconfigurationException(
            f"Trainer(strategy='ddp') re-runs your script for ranks 1..N-1, but this program has no script file "
            f"(sys.argv[0]={script!r}: an interactive session or `python -c`); use strategy='ddp_spawn', or run a "
            "script file")
    return [sys.executable, os.path.abspath(script), *sys.argv[1:]]


class SubprocessLauncher:
    """'ddp': this process is local rank 0 and also trains; it starts the script again for local ranks 1..N-1."""

    def __init__(self, num_processes: int, num_nodes: int, timeout_s: float) -> None:
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.timeout_s = timeout_s
        self.procs: list[subprocess.Popen] = []
        self.failed: tuple[int, int] | None = None  # (rank, exit code) of the first child that failed
        self.store: Any = None
        self.ended = False  # the job already ended with an exception raised in this process
        self._main_done = threading.Event()
        self._lock = threading.Lock()

    def start(self, node_rank: int) -> Any:
        """Open the rendezvous store on a free loopback port and start the other local ranks; returns the store
        (this process's process group joins through it)."""
        import torch.distributed as dist

        if self.num_nodes > 1:
            raise MisconfigurationException(
                f"Trainer(num_nodes={self.num_nodes}) with strategy='ddp': start one process per node with torchrun "
                "(e.g. `torchrun --nnodes=2 --nproc_per_node=N --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT "
                "script.py`), which statetrain detects")
        command = _script_command()
        world = self.num_processes * self.num_nodes
        from datetime import timedelta

        # port 0: the OS picks a free port and the store holds it, so no other program can take it in between
        self.store = dist.TCPStore(LOOPBACK, 0, world, is_master=True, wait_for_workers=False,
                                   timeout=timedelta(seconds=self.timeout_s))
        port = self.store.port
        os.environ.update(MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port), WORLD_SIZE=str(world),
                          NODE_RANK=str(node_rank))
        for local in range(1, self.num_processes):
            env = dict(os.environ, LOCAL_RANK=str(local), RANK=str(node_rank * self.num_processes + local))
            env[WORKER_FLAG] = "1"
            env.setdefault("OMP_NUM_THREADS", "1")
            self.procs.append(subprocess.Popen(command, env=env, start_new_session=True,
                                               preexec_fn=_die_with_parent))
        threading.Thread(target=self._watch, name="statetrain-ddp-watch", daemon=True).start()
        start_preload()
        atexit.register(self.wait)
        return self.store

    def _watch(self) -> None:
        """A child that fails ends the job: kill the other children, then give this process's stage a few
        seconds to fail through its collectives before exiting hard."""
        while True:
            alive = False
            for rank, proc in enumerate(self.procs, start=1):
                code = proc.poll()
                if code is None:
                    alive = True
                elif code not in _CLEAN_EXITS and self.failed is None:
                    with self._lock:
                        self.failed = (rank, code)
                    self.kill_all()
                    if not self._main_done.wait(_GRACE_S):
                        print(f"statetrain: {self._failure_text()}; stopping", file=sys.stderr, flush=True)
                        os._exit(1)
                    return
            if not alive:
                return
            time.sleep(0.05)

    def _failure_text(self) -> str:
        assert self.failed is not None
        rank, code = self.failed
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return f"rank {rank} {how} (its traceback, if any, is printed above)"

    def kill_all(self) -> None:
        for proc in self.procs:
            _kill(proc)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run rank 0's stage; a failure here kills the children, a child's failure becomes RankFailedError."""
        try:
            return fn(*args)
        except BaseException as exc:
            deadline = time.monotonic() + (2.0 if is_secondary(exc) else 0.0)
            while self.failed is None and time.monotonic() < deadline:
                time.sleep(0.05)  # a peer's failure seen here first: let the watcher name the rank
            self._main_done.set()
            failed = self.failed
            self.ended = True  # this process's own exception reports the failure; the exit hook stays quiet
            self.kill_all()
            if failed is not None and is_secondary(exc):
                raise RankFailedError(f"statetrain: {self._failure_text()}") from None
            raise

    def wait(self) -> None:
        """At exit: the children finish the same script; wait for them, kill what is left after the timeout."""
        self._main_done.set()
        if self.ended:
            return
        deadline = time.monotonic() + self.timeout_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(proc)
        if self.failed is None:
            bad = [(r, p.returncode) for r, p in enumerate(self.procs, start=1)
                   if p.returncode not in (*_CLEAN_EXITS, None)]
            if bad:
                self.failed = bad[0]
        if self.failed is not None:
            print(f"statetrain: {self._failure_text()}", file=sys.stderr, flush=True)
            os._exit(1)


# -- spawn ------------------------------------------------------------------------------------------------------------
def _rebuild_function(code: bytes, module: str, name: str, defaults: Any, cells: tuple, kwdefaults: Any) -> Any:
    import importlib

    fn = types.FunctionType(marshal.loads(code), importlib.import_module(module).__dict__, name, defaults,
                            tuple(types.CellType(c) for c in cells) if cells else None)
    fn.__kwdefaults__ = kwdefaults
    return fn


class _StagePickler(pickle.Pickler):
    """Pickle plus the local functions (closures) the run holds, rebuilt from their code in the worker (same
    interpreter); every other object pickles as usual."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.FunctionType and "<locals>" in obj.__qualname__:
            cells = tuple(c.cell_contents for c in obj.__closure__) if obj.__closure__ else ()
            return _rebuild_function, (marshal.dumps(obj.__code__), obj.__module__, obj.__name__, obj.__defaults__,
                                       cells, obj.__kwdefaults__)
        return NotImplemented


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _StagePickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def _spawn_worker(local_rank: int, payload: bytes, port: int, world: int, queue: Any) -> None:
    """A ddp_spawn worker: join the group through the launcher's store, run the stage, rank 0 sends results back."""
    import torch

    strategy, fn, args = pickle.loads(payload)
    os.environ.update(MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port))
    os.environ[WORKER_FLAG] = "1"
    strategy.set_spawned_rank(local_rank)
    out = worker_guard(local_rank, fn, *args)
    if strategy.global_rank == 0:
        buf = io.BytesIO()
        torch.save(strategy.results_for_parent(out, args), buf)
        queue.put(buf.getvalue())
    strategy.barrier("spawn_results")


class SpawnLauncher:
    """'ddp_spawn': start N workers with torch.multiprocessing (spawn) and wait; rank 0's results come back as
    bytes of plain data (no shared tensors: a worker's storages vanish when it exits)."""

    def __init__(self, num_processes: int, timeout_s: float) -> None:
        self.num_processes = num_processes
        self.timeout_s = timeout_s

    def launch(self, strategy: Any, fn: Callable[..., Any], *args: Any) -> Any:
        import torch
        import torch.distributed as dist
        import torch.multiprocessing as mp
        from datetime import timedelta

        store = dist.TCPStore(LOOPBACK, 0, self.num_processes, is_master=True, wait_for_workers=False,
                              timeout=timedelta(seconds=self.timeout_s))
        payload = _dumps((strategy, fn, args))
        ctx = mp.get_context("spawn")
        queue = ctx.SimpleQueue()
        saved = os.environ.get("OMP_NUM_THREADS")
        if saved is None:
            os.environ["OMP_NUM_THREADS"] = "1"  # the workers inherit it
        try:
            mp.start_processes(_spawn_worker, args=(payload, store.port, self.num_processes, queue),
                               nprocs=self.num_processes, start_method="spawn", join=True)
        except mp.ProcessExitedException as exc:
            how = (f"was killed by {signal.Signals(-exc.exit_code).name}" if exc.exit_code < 0
                   else f"exited with code {exc.exit_code}")
            raise RankFailedError(f"ddp_spawn: rank {exc.error_index} {how} (its traceback, if any, is printed "
                                  "above)") from None
        finally:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            del store
        if queue.empty():
            raise RankFailedError("ddp_spawn: rank 0 finished without sending its results")
        # bytes from our own worker over a local pipe, not a file from elsewhere
        data = torch.load(io.BytesIO(queue.get()), weights_only=False)
        return strategy.apply_results_from_worker(data, args)
