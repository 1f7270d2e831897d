"""``--tensor-parallel P``: a vocabulary-parallel loss run on a real ``torch.distributed`` process
group, rank by rank.

The parent writes the inputs once (``inputs.pkl`` in a temporary directory), starts P worker
processes (``python -m gradcheck_cli.tensor_parallel WORKDIR RANK P TARGET``) that join a gloo
process group through a file store in that directory (NCCL with ``device="cuda"``), and waits for
each within ``timeout`` seconds. Rank r gets the logits of classes [r S, min(V, (r + 1) S)) with
S = ceil(V / P); the last shard is padded to width S with copies of each row's largest logit (a
kernel that counts padding as classes is visibly wrong) and told its real ``vocab_end``. The
function is called as ``f(local_logits, labels, *, group, vocab_start, vocab_end, **options)``
(plus ``vocab_size`` = V when it takes it), returns the loss, and is back-propagated with the
run's ``grad_output``; each rank writes its loss and local gradient (``out-R.npz``).

A worker that raises, exits, is killed by a signal or outlives the timeout makes the whole
launch fail with a :class:`ParallelError` naming the rank and the last lines of its stderr; every
worker is killed and reaped before :func:`launch` returns or raises (no process is left).

Only this module's worker imports torch; the parent needs NumPy only.
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradcheck_cli.errors import XentcheckError

#: Default seconds a launch may take (``--timeout``).
DEFAULT_TIMEOUT = 120.0
#: Lines of a failed worker's stderr quoted in the error.
TAIL_LINES = 8


class ParallelError(XentcheckError):
    """A worker raised, died or timed out."""


@dataclass(frozen=True)
class Shard:
    """Rank ``rank``'s slice of the vocabulary: classes [start, end), held in ``width``
    columns (``width > end - start`` on a padded last shard)."""

    rank: int
    start: int
    end: int
    width: int


@dataclass(frozen=True)
class RankOutput:
    """What one rank returned: its loss (shape of the reduced loss) and its local gradient
    (N, width) in float64."""

    shard: Shard
    loss: np.ndarray
    grad: np.ndarray


def shards(vocab: int, parallel: int) -> list[Shard]:
    """The P shards of a vocabulary of V classes: width ceil(V / P) each, the last padded.
    A rank whose slice would start past V (V < P) holds padding only (start = end = V)."""
    width = math.ceil(vocab / parallel)
    return [
        Shard(r, min(r * width, vocab), min((r + 1) * width, vocab), width) for r in range(parallel)
    ]


def local_logits(logits: np.ndarray, shard: Shard) -> np.ndarray:
    """Rank ``shard.rank``'s logits (N, width): its columns, then padding copies of each
    row's largest logit."""
    part = logits[:, shard.start : shard.end]
    pad = shard.width - part.shape[1]
    if pad == 0:
        return np.ascontiguousarray(part)
    top = np.max(logits, axis=1, keepdims=True)
    return np.concatenate([part, np.repeat(top, pad, axis=1)], axis=1)


def launch(
    target: str,
    logits: np.ndarray,
    labels: np.ndarray,
    options: dict[str, Any],
    grad_output: np.ndarray,
    parallel: int,
    *,
    device: str = "cpu",
    timeout: float = DEFAULT_TIMEOUT,
) -> list[RankOutput]:
    """Run ``target`` (a ``module:function`` or ``file.py:function``) on ``parallel`` ranks;
    every rank's output, in rank order. Raises :class:`ParallelError`."""
    vocab = logits.shape[1]
    with tempfile.TemporaryDirectory(prefix="xentcheck-tp-") as tmp:
        work = Path(tmp)
        with open(work / "inputs.pkl", "wb") as fh:
            pickle.dump(
                {
                    "logits": logits,
                    "labels": labels,
                    "options": options,
                    "grad_output": grad_output,
                    "device": device,
                    "timeout": timeout,
                },
                fh,
            )
        procs = []
        try:
            for rank in range(parallel):
                err = open(work / f"err-{rank}.txt", "w")  # noqa: SIM115 (closed below)
                procs.append(
                    (
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "gradcheck_cli.tensor_parallel",
                                tmp,
                                str(rank),
                                str(parallel),
                                target,
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=err,
                            start_new_session=True,
                        ),
                        err,
                    )
                )
            _wait(procs, work, timeout)
        finally:
            for proc, err in procs:
                if proc.poll() is None:
                    _kill(proc)
                err.close()
        out = []
        for shard in shards(vocab, parallel):
            with np.load(work / f"out-{shard.rank}.npz") as data:
                out.append(RankOutput(shard, data["loss"], data["grad"]))
        return out


def _wait(procs: list[tuple[subprocess.Popen[bytes], Any]], work: Path, timeout: float) -> None:
    """Wait for every worker; the first that fails or the timeout raises (the caller kills the
    rest)."""
    deadline = time.monotonic() + timeout
    pending = dict(enumerate(p for p, _ in procs))
    while pending:
        for rank, proc in list(pending.items()):
            code = proc.poll()
            if code is None:
                continue
            del pending[rank]
            if code != 0:
                rank, code = _first_cause(procs, work, rank, code)
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                raise ParallelError(f"rank {rank} {how}{_tail(work, rank)}")
        if pending and time.monotonic() > deadline:
            ranks = ", ".join(str(r) for r in sorted(pending))
            raise ParallelError(
                f"rank {ranks} did not finish within --timeout {timeout:g} s (a hang in a "
                f"collective?); the workers were killed{_tail(work, min(pending))}"
            )
        time.sleep(0.02)


#: What a rank's stderr says when it failed only because another rank died first.
COLLATERAL = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def _first_cause(
    procs: list[tuple[subprocess.Popen[bytes], Any]], work: Path, rank: int, code: int
) -> tuple[int, int]:
    """The failed rank to blame: after a moment for the others to fail too, one whose error is
    not only a lost connection to a rank that died (else ``rank`` itself)."""
    time.sleep(0.3)
    for other, (proc, _) in enumerate(procs):
        other_code = proc.poll()
        if other_code not in (None, 0) and not any(c in _tail(work, other) for c in COLLATERAL):
            return other, other_code
    return rank, code


def _tail(work: Path, rank: int) -> str:
    try:
        lines = (work / f"err-{rank}.txt").read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    if not lines:
        return ""
    return ": " + " | ".join(line.strip() for line in lines[-TAIL_LINES:])


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill a worker's whole session (it may have started children) and reap it."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


# --- the comparison (in the parent) ---------------------------------------------------------


def check(
    spec: Any,
    impl: Any,
    logits: np.ndarray,
    ref_loss: np.ndarray,
    reference: np.ndarray,
    natural: Any,
    dtype: str,
    parallel: tuple[int, ...],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    rtol: float | None = None,
    atol: float | None = None,
) -> tuple[list[Any], list[Any], dict[str, str]]:
    """Each P of ``parallel``: launch, then compare on every rank the loss with ``ref_loss``
    and the rank's gradient columns with the matching columns of ``reference`` (the plain
    gradient (N, V), scaled here by the run's grad_output; padding columns must be 0), and
    check that the ranks agree on the loss. Returns (comparisons, checks, notes); raises
    ImplError for a launch that fails (the spec's error names the rank)."""
    from dataclasses import replace

    from gradcheck_cli import impl as impl_module
    from gradcheck_cli.compare import Tolerance, compare
    from gradcheck_cli.model import Check

    if impl.native is None or not impl.name.startswith("torch:"):
        raise impl_module.ImplError(
            "--tensor-parallel runs a torch:module:function or torch:file.py:function "
            f"implementation on a torch.distributed process group, not {impl.name!r}"
        )
    if spec.labels is None or spec.loss != "softmax_cross_entropy":
        raise impl_module.ImplError(
            "--tensor-parallel checks a softmax cross-entropy with class labels"
        )
    n, vocab = logits.shape
    shape: tuple[int, ...] = (n,) if spec.reduction == "none" else ()
    upstream = impl_module.upstream_for(impl, spec, shape)
    assert upstream is not None
    factor = upstream[:, None] if upstream.ndim == 1 else upstream
    scaled = reference * factor
    kwargs = impl_module.options_for(spec, dtype)
    kwargs.pop("loss", None)
    labels = kwargs.pop("labels")  # class weights stay: each worker slices its own

    def tol(which: str, values: np.ndarray) -> Tolerance:
        return impl_module.scaled_tolerance(which, dtype, natural, values, factor, rtol, atol)

    rows: list[Any] = []
    found: list[Any] = []
    notes: dict[str, str] = {}
    target = impl.name[len("torch:") :]
    for p in parallel:
        split = shards(vocab, p)
        started = time.perf_counter()
        try:
            outs = launch(
                target, logits, labels, kwargs, upstream, p, device=impl.device, timeout=timeout
            )
        except ParallelError as exc:
            raise impl_module.ImplError(f"--tensor-parallel {p}: {exc}") from None
        pad = split[-1].width * p - vocab
        notes[f"tensor-parallel {p}"] = (
            f"{p} ranks of {split[0].width} classes"
            + (f" (the last shard padded with {pad} columns)" if pad else "")
            + f", {time.perf_counter() - started:.2f} s with start-up"
        )
        losses = []
        for out in outs:
            sh = out.shard
            name = f"impl rank {sh.rank} of {p} (classes {sh.start}:{sh.end})"
            got_loss = np.asarray(out.loss, dtype=np.float64).reshape(ref_loss.shape)
            losses.append(got_loss)
            rows.append(
                compare(
                    name,
                    got_loss,
                    "reference loss",
                    ref_loss,
                    tol("loss", ref_loss),
                    "loss",
                    dtype=dtype,
                )
            )
            want = np.zeros((n, sh.width))
            want[:, : sh.end - sh.start] = scaled[:, sh.start : sh.end]
            row = compare(name, out.grad, "reference", want, tol("grad", scaled), dtype=dtype)
            if row.worst_index:  # the global (row, class); padding columns past V
                i, j = row.worst_index
                row = replace(row, worst_index=(i, sh.start + j))
            rows.append(row)
        mine = rows[-2 * len(outs) :]
        worst_loss = max(r.max_abs_error for r in mine if r.quantity == "loss")
        worst_grad = max(mine[1::2], key=lambda r: r.max_abs_error)
        notes[f"tensor-parallel {p}"] += (
            f"; worst loss |Δ| {worst_loss:.3g}, worst gradient |Δ| "
            f"{worst_grad.max_abs_error:.3g} at {list(worst_grad.worst_index)}"
        )
        spread = max(float(np.max(np.abs(x - losses[0]))) for x in losses) if losses else 0.0
        agree = tol("loss", ref_loss)
        allowed = agree.atol + agree.rtol * float(np.max(np.abs(ref_loss)))
        found.append(
            Check(
                f"tp{p}_ranks_agree",
                bool(spread <= allowed) or all(np.array_equal(x, losses[0]) for x in losses),
                f"the {p} ranks' losses differ by at most {spread:.3g} (allowed {allowed:.3g})",
            )
        )
    return rows, found, notes


# --- the worker (runs in its own process) ----------------------------------------------------


def _worker(tmp: str, rank: int, parallel: int, target: str) -> None:
    import datetime
    import inspect

    import torch
    import torch.distributed as dist

    from gradcheck_cli.impl import _import_function

    work = Path(tmp)
    with open(work / "inputs.pkl", "rb") as fh:
        given = pickle.load(fh)
    device = given["device"]
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"file://{work / 'store'}",
        rank=rank,
        world_size=parallel,
        timeout=datetime.timedelta(seconds=given["timeout"]),
    )
    try:
        function = _import_function(target, target)
        logits = given["logits"]
        shard = shards(logits.shape[1], parallel)[rank]
        z = torch.tensor(local_logits(logits, shard), device=device).requires_grad_(True)
        labels = torch.tensor(given["labels"], dtype=torch.int64, device=device)
        raw = dict(given["options"])
        if raw.get("weight") is not None:  # this rank's classes' weights, 0 on padding
            w = np.zeros(shard.width)
            w[: shard.end - shard.start] = raw["weight"][shard.start : shard.end]
            raw["weight"] = w.astype(raw["weight"].dtype)
        options = {
            k: torch.tensor(v, device=device) if isinstance(v, np.ndarray) else v
            for k, v in raw.items()
        }
        params = inspect.signature(function).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if takes_all or "vocab_size" in params:
            options["vocab_size"] = logits.shape[1]
        loss = function(
            z, labels, group=dist.group.WORLD, vocab_start=shard.start, vocab_end=shard.end,
            **options,
        )  # fmt: skip
        upstream = torch.tensor(given["grad_output"], dtype=loss.dtype, device=device)
        (grad,) = torch.autograd.grad(loss, z, upstream)
        np.savez(
            work / f"out-{rank}.npz",
            loss=loss.detach().double().cpu().numpy(),
            grad=grad.double().cpu().numpy(),
        )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
