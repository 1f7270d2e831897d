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

import json
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
    effects: tuple[str, ...] = ()
    """What the function did besides computing (changed inputs, a gradient in the logits'
    storage), each a sentence."""
    spread: float = 0.0
    """The largest difference between two identical calls (0: deterministic)."""
    views: float | None = None
    """The largest difference on a non-contiguous logits view and offset labels (None: not
    checked)."""


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
    views: bool = False,
) -> list[RankOutput]:
    """Run ``target`` (a ``module:function`` or ``file.py:function``) on ``parallel`` ranks;
    every rank's output, in rank order (``views``: each rank also calls it on a view, see
    :func:`_rank_calls`). Raises :class:`ParallelError`."""
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
                    "views": views,
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
            found = json.loads((work / f"checks-{shard.rank}.json").read_text())
            with np.load(work / f"out-{shard.rank}.npz") as data:
                loss, grad = data["loss"], data["grad"]
            out.append(
                RankOutput(
                    shard, loss, grad, tuple(found["effects"]), found["spread"], found["views"]
                )
            )
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
    native: Any = None,
) -> tuple[list[Any], list[Any], list[Any]]:
    """Each P of ``parallel``: launch, then compare on every rank the loss with ``ref_loss``
    and the rank's gradient columns with the matching columns of ``reference`` (the plain
    gradient (N, V), scaled here by the run's grad_output; padding columns must be 0), and
    check that the ranks agree on the loss, that no rank's call had side effects, that two
    identical calls agreed and (``native.views``) that views gave the same result
    (``native``: the run's :class:`~gradcheck_cli.impl.NativeChecks`). Returns (comparisons,
    checks, :class:`~gradcheck_cli.model.ParallelRun` per size, each compared with the
    smallest size); raises ImplError for a launch that fails (the spec's error names the
    rank)."""
    from gradcheck_cli import impl as impl_module
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
    native = native or impl_module.NativeChecks()
    n, vocab = logits.shape
    shape: tuple[int, ...] = (n,) if spec.reduction == "none" else ()
    upstream = impl_module.upstream_for(impl, spec, shape)
    assert upstream is not None
    factor = upstream[:, None] if upstream.ndim == 1 else upstream
    scaled = reference * factor
    kwargs = impl_module.options_for(spec, dtype)
    kwargs.pop("loss", None)
    labels = kwargs.pop("labels")  # class weights stay: each worker slices its own

    def tol(which: str, values: np.ndarray) -> Any:
        return impl_module.scaled_tolerance(which, dtype, natural, values, factor, rtol, atol)

    rows: list[Any] = []
    found: list[Check] = []
    runs: list[Any] = []
    target = impl.name[len("torch:") :]
    baseline: tuple[int, list[RankOutput]] | None = None
    for p in sorted(parallel, key=lambda q: (q != min(parallel), parallel.index(q))):
        started = time.perf_counter()
        try:
            outs = launch(
                target, logits, labels, kwargs, upstream, p, device=impl.device,
                timeout=timeout, views=native.views,
            )  # fmt: skip
        except ParallelError as exc:
            raise impl_module.ImplError(f"--tensor-parallel {p}: {exc}") from None
        seconds = time.perf_counter() - started
        mine = _rank_rows(outs, p, ref_loss, scaled, tol, dtype)
        losses = [np.asarray(o.loss, dtype=np.float64).reshape(ref_loss.shape) for o in outs]
        spread = _ranks_spread(losses)
        checks = _rank_checks(outs, p, ref_loss, spread, tol, native)
        rows += mine
        found += checks
        runs.append(_summary(outs, p, vocab, seconds, mine, checks, spread, baseline))
        if baseline is None:
            baseline = (p, outs)
    order = {p: i for i, p in enumerate(parallel)}  # the table in the order given
    runs.sort(key=lambda r: order[r.parallel])
    return rows, found, runs


def _rank_rows(
    outs: list[RankOutput],
    p: int,
    ref_loss: np.ndarray,
    scaled: np.ndarray,
    tol: Any,
    dtype: str,
) -> list[Any]:
    """Each rank's loss and gradient-columns comparisons (worst index global)."""
    from dataclasses import replace

    from gradcheck_cli.compare import compare

    n = scaled.shape[0]
    rows = []
    for out in outs:
        sh = out.shard
        name = f"impl rank {sh.rank} of {p} (classes {sh.start}:{sh.end})"
        got_loss = np.asarray(out.loss, dtype=np.float64).reshape(ref_loss.shape)
        loss_tol = tol("loss", ref_loss)
        rows.append(
            compare(name, got_loss, "reference loss", ref_loss, loss_tol, "loss", dtype=dtype)
        )
        want = np.zeros((n, sh.width))
        want[:, : sh.end - sh.start] = scaled[:, sh.start : sh.end]
        row = compare(name, out.grad, "reference", want, tol("grad", scaled), dtype=dtype)
        if row.worst_index:  # the global (row, class); padding columns past V
            i, j = row.worst_index
            # (the shard's heat map would number its columns from 0: it goes)
            row = replace(row, worst_index=(i, sh.start + j), heat=None)
        rows.append(row)
    return rows


def _rank_checks(
    outs: list[RankOutput], p: int, ref_loss: np.ndarray, spread: float, tol: Any, native: Any
) -> list[Any]:
    """The checks of one size over its ranks: they agree on the loss; no side effects; two
    identical calls agree; with ``native.views``, views give the same result."""
    from gradcheck_cli.model import Check

    agree = tol("loss", ref_loss)
    allowed = agree.atol + agree.rtol * float(np.max(np.abs(ref_loss), initial=0.0))
    checks = [
        Check(
            f"tp{p}_ranks_agree",
            bool(spread <= allowed),
            f"{_ranks(p)}' losses differ by at most {spread:.3g} (allowed {allowed:.3g})"
            if p > 1
            else "one rank: nothing to agree with",
        )
    ]
    effects = [
        f"rank {o.shard.rank}: {e}"
        for o in outs
        for e in o.effects
        if not (native.allow_inplace and "shares storage" in e)
    ]
    checks.append(
        Check(
            f"tp{p}_side_effects",
            not effects,
            "; ".join(effects)
            if effects
            else f"on {_ranks(p)}: inputs unchanged, gradient in its own storage",
        )
    )
    allowed_spread = native.nondeterministic_tol
    worst = max(outs, key=lambda o: o.spread)
    checks.append(
        Check(
            f"tp{p}_deterministic",
            worst.spread <= allowed_spread,
            f"two identical calls differ by at most {worst.spread:.3g}"
            + (f" (rank {worst.shard.rank})" if worst.spread else "")
            + f" (allowed {allowed_spread:g})",
        )
    )
    if native.views:
        viewed = max(outs, key=lambda o: o.views or 0.0)
        v = viewed.views or 0.0
        checks.append(
            Check(
                f"tp{p}_views",
                v <= allowed_spread,
                "on a non-contiguous view of each shard and labels[1:] of a longer tensor the "
                f"result differs by at most {v:.3g}"
                + (f" (rank {viewed.shard.rank})" if v else "")
                + f" (allowed {allowed_spread:g})",
            )
        )
    return checks


def _ranks(p: int) -> str:
    return "the one rank" if p == 1 else f"all {p} ranks"


def _ranks_spread(losses: list[np.ndarray]) -> float:
    """The largest difference between rank 0's loss and another rank's (see
    :func:`_largest_difference`)."""
    return max((_largest_difference(x, losses[0])[0] for x in losses[1:]), default=0.0)


def _largest_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, tuple[int, ...]]:
    """``max |a - b|`` and where (equal values, nan and nan included, count as 0; a nan
    against a number counts as inf)."""
    with np.errstate(invalid="ignore"):
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        diff = np.nan_to_num(np.where(same, 0.0, np.abs(a - b)), nan=np.inf)
    if diff.size == 0:
        return 0.0, ()
    at = np.unravel_index(int(np.argmax(diff)), diff.shape)
    return float(diff[at]), tuple(int(i) for i in at)


def _summary(
    outs: list[RankOutput],
    p: int,
    vocab: int,
    seconds: float,
    rows: list[Any],
    checks: list[Any],
    spread: float,
    baseline: tuple[int, list[RankOutput]] | None,
) -> Any:
    """The :class:`~gradcheck_cli.model.ParallelRun` of one size: its worst errors against the
    reference and, unless it is the baseline, against the baseline size's results."""
    from gradcheck_cli.model import ParallelRun

    loss_rows, grad_rows = rows[0::2], rows[1::2]
    worst_loss = max(range(len(outs)), key=lambda r: loss_rows[r].max_abs_error)
    worst_grad = max(range(len(outs)), key=lambda r: grad_rows[r].max_abs_error)
    width = outs[0].shard.width
    run = ParallelRun(
        parallel=p,
        width=width,
        padding=width * p - vocab,
        seconds=seconds,
        loss_error=loss_rows[worst_loss].max_abs_error,
        loss_rank=worst_loss,
        grad_error=grad_rows[worst_grad].max_abs_error,
        grad_rank=worst_grad,
        grad_at=tuple(grad_rows[worst_grad].worst_index),
        ranks_spread=spread,
        passed=all(r.passed for r in rows) and all(c.passed for c in checks),
    )
    if baseline is None:
        return run
    base_p, base = baseline
    full = np.concatenate([o.grad[:, : o.shard.end - o.shard.start] for o in base], axis=1)
    worst: float = 0.0
    at: tuple[int, ...] = ()
    for o in outs:
        sh = o.shard
        got = o.grad[:, : sh.end - sh.start]
        d, idx = _largest_difference(got, full[:, sh.start : sh.end])
        if d > worst or not at:
            worst, at = d, (idx[0], sh.start + idx[1]) if idx else ()
    loss_d, _ = _largest_difference(
        np.asarray(outs[0].loss, dtype=np.float64), np.asarray(base[0].loss, dtype=np.float64)
    )
    from dataclasses import replace

    return replace(
        run,
        baseline=base_p,
        loss_vs_baseline=loss_d,
        grad_vs_baseline=worst,
        grad_vs_baseline_at=at,
    )


# --- the worker (runs in its own process) ----------------------------------------------------


def _worker(tmp: str, rank: int, parallel: int, target: str) -> None:
    """Rank ``rank``: join the group, call the function on its shard three times (the checked
    call, an identical one for determinism, and, with ``views``, one on a non-contiguous logits
    view with offset labels; every rank makes the same calls, so the collectives match), and
    write ``out-R.npz`` (loss, gradient) and ``checks-R.json`` (side effects, spreads)."""
    import datetime

    import torch.distributed as dist

    work = Path(tmp)
    with open(work / "inputs.pkl", "rb") as fh:
        given = pickle.load(fh)
    backend = "nccl" if given["device"].startswith("cuda") else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"file://{work / 'store'}",
        rank=rank,
        world_size=parallel,
        timeout=datetime.timedelta(seconds=given["timeout"]),
    )
    try:
        loss, grad, found = _rank_calls(given, rank, parallel, target, dist.group.WORLD)
        np.savez(work / f"out-{rank}.npz", loss=loss, grad=grad)
        (work / f"checks-{rank}.json").write_text(json.dumps(found))
    finally:
        dist.destroy_process_group()


def _rank_calls(
    given: dict[str, Any], rank: int, parallel: int, target: str, group: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The calls of :func:`_worker` on rank ``rank``: its loss and local gradient (N, width)
    in float64, and what the side-effect, determinism and views checks found."""
    import inspect

    import torch

    from gradcheck_cli.impl import _import_function
    from gradcheck_cli.torch_native import _first_change, _shares_storage, _spread

    function = _import_function(target, target)
    device = given["device"]
    logits = given["logits"]
    shard = shards(logits.shape[1], parallel)[rank]
    mine = local_logits(logits, shard)
    raw = dict(given["options"])
    if raw.get("weight") is not None:  # this rank's classes' weights, 0 on padding
        w = np.zeros(shard.width)
        w[: shard.end - shard.start] = raw["weight"][shard.start : shard.end]
        raw["weight"] = w.astype(raw["weight"].dtype)
    params = inspect.signature(function).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = {"vocab_size": logits.shape[1]} if takes_all or "vocab_size" in params else {}

    def call(view: bool) -> tuple[Any, Any, dict[str, Any], Any, Any]:
        z = torch.tensor(mine, device=device)
        labels = torch.tensor(given["labels"], dtype=torch.int64, device=device)
        if view:  # every other column of a wider tensor; labels[1:] of a longer one
            wide = torch.zeros((z.shape[0], 2 * z.shape[1]), dtype=z.dtype, device=device)
            wide[:, ::2] = z
            z = wide[:, ::2]
            longer = torch.zeros(labels.shape[0] + 1, dtype=labels.dtype, device=device)
            longer[1:] = labels
            labels = longer[1:]
        z.requires_grad_(True)
        options = {
            k: torch.tensor(v, device=device) if isinstance(v, np.ndarray) else v
            for k, v in raw.items()
        }
        loss = function(
            z, labels, group=group, vocab_start=shard.start, vocab_end=shard.end,
            **options, **extra,
        )  # fmt: skip
        upstream = torch.tensor(given["grad_output"], dtype=loss.dtype, device=device)
        (grad,) = torch.autograd.grad(loss, z, upstream)
        return z, labels, options, loss, grad

    def numpy(t: Any) -> np.ndarray:
        return np.asarray(t.detach().double().cpu().numpy())

    z, labels, options, loss, grad = call(view=False)
    effects = []
    if not torch.equal(z.detach(), torch.tensor(mine, device=device)):
        effects.append(f"it changed its logits ({_first_change(torch.tensor(mine), z.detach())})")
    if not torch.equal(labels.cpu(), torch.tensor(given["labels"], dtype=torch.int64)):
        effects.append("it changed the labels")
    for key, value in raw.items():
        if isinstance(value, np.ndarray) and not torch.equal(
            options[key].cpu(), torch.tensor(value)
        ):
            effects.append(f"it changed its argument {key!r}")
    if _shares_storage(grad, z):
        effects.append("the gradient it returned shares storage with the logits")
    loss64, grad64 = numpy(loss), numpy(grad)
    del z, labels, options, loss, grad
    *_, loss2, grad2 = call(view=False)
    found: dict[str, Any] = {
        "effects": effects,
        "spread": max(_spread(loss64, numpy(loss2)), _spread(grad64, numpy(grad2))),
        "views": None,
    }
    del loss2, grad2
    if given["views"]:
        *_, loss3, grad3 = call(view=True)
        found["views"] = max(_spread(loss64, numpy(loss3)), _spread(grad64, numpy(grad3)))
    return loss64, grad64, found


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
