"""--tensor-parallel (gradcheck_cli/tensor_parallel.py): shards, the reference vocab-parallel
example at P = 1..4, planted bugs caught and attributed to a rank, and failing workers that
leave no process behind."""

from __future__ import annotations

import html
import os
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradcheck_cli.cli import app
from gradcheck_cli.tensor_parallel import local_logits, shards

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vocab_parallel_ce.py"
HOSTILE = ROOT / "tests" / "data" / "impl" / "tp_kernels.py"

SPECS = """\
cases:
  - name: mean
    logits: [[1.0, 2.0, 0.5, -1.0, 3.0, 0.1, -0.4], [0.2, -0.3, 1.5, 2.5, 0.0, 1.1, 0.9]]
    label: [3, 4]
  - name: none-smoothing-ignore
    logits: [[1.0, 2.0, 0.5, -1.0, 3.0, 0.1, -0.4], [0.2, -0.3, 1.5, 2.5, 0.0, 1.1, 0.9],
             [4.0, 1.0, 0.0, -2.0, 1.0, 0.5, 0.5]]
    label: [6, 2, -100]
    ignore_index: -100
    label_smoothing: 0.2
    reduction: none
  - name: float32-sum-confident
    dtype: float32
    logits: [[9.0, 0.0, 0.5, -1.0, 0.3, 0.1, -0.4], [0.2, -0.3, 1.5, 12.0, 0.0, 1.1, 0.9]]
    label: [0, 3]
    reduction: sum
"""


def test_shards_cover_the_vocabulary_and_pad_the_last() -> None:
    split = shards(7, 3)
    assert [(s.start, s.end, s.width) for s in split] == [(0, 3, 3), (3, 6, 3), (6, 7, 3)]
    assert [(s.start, s.end) for s in shards(5, 4)] == [(0, 2), (2, 4), (4, 5), (5, 5)]
    z = np.arange(14.0).reshape(2, 7)
    last = local_logits(z, split[2])
    np.testing.assert_array_equal(last[:, 0], z[:, 6])
    np.testing.assert_array_equal(last[:, 1:], np.repeat(z.max(axis=1, keepdims=True), 2, 1))


def _run(tmp_path: Path, target: str, parallel: str, *extra: str, specs: str = SPECS):  # type: ignore[no-untyped-def]
    pytest.importorskip("torch", reason="torch is not installed")
    f = tmp_path / "tp.yaml"
    f.write_text(specs)
    args = ["run", "--impl", f"torch:{target}", "--tensor-parallel", parallel, str(f), *extra]
    return CliRunner().invoke(app, args)


#: Inherited by every worker this test session starts (and by their children), so that the
#: search for left-over processes finds this session's, not another session's on the machine.
TAG = f"XENTCHECK_TP_TEST={uuid.uuid4().hex}"
os.environ[TAG.split("=")[0]] = TAG.split("=")[1]


def _no_workers_left() -> bool:
    """No process carries this session's tag (read from /proc/*/environ), except this one."""
    mine = str(os.getpid())
    for environ in Path("/proc").glob("[0-9]*/environ"):
        if environ.parent.name == mine:
            continue
        try:
            if TAG.encode() in environ.read_bytes().split(b"\0"):
                return False
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return True


def test_the_reference_example_passes_at_every_size(tmp_path: Path) -> None:
    specs = "cases:\n  - name: " + "  - name: ".join(SPECS.split("  - name: ")[2:])
    result = _run(tmp_path, f"{EXAMPLE}:vocab_parallel_ce", "1,2,3,4", "-v", specs=specs)
    assert result.exit_code == 0, result.output
    assert "2 passed" in result.output
    for p in (1, 2, 3, 4):
        assert f"tp{p}_ranks_agree" in result.output
        assert f"rank {p - 1} of {p}" in result.output
    assert "(+1 pad)" in result.output  # 7 classes on 2 or 4 ranks
    assert "against TP=1" in result.output  # the side-by-side table
    assert _no_workers_left()


def test_the_table_compares_every_size_with_the_smallest(tmp_path: Path) -> None:
    import json

    specs = "cases:\n  - name: " + SPECS.split("  - name: ")[2]
    result = _run(
        tmp_path, f"{EXAMPLE}:vocab_parallel_ce", "3,1,2", "--views", "--format", "json",
        specs=specs,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report, _ = json.JSONDecoder().raw_decode(result.output[result.output.index("{") :])
    (spec,) = report["results"]
    runs = spec["parallel"]
    assert [r["parallel"] for r in runs] == [3, 1, 2]  # the order given
    assert [r["baseline"] for r in runs] == [1, None, 1]  # each against the smallest
    assert [(r["width"], r["padding"]) for r in runs] == [(3, 2), (7, 0), (4, 1)]
    for r in runs:
        assert r["passed"] and r["ranks_spread"] == 0.0
        assert r["grad_error"] < 1e-15 and r["loss_error"] < 1e-14
    assert runs[0]["grad_vs_baseline"] < 1e-15 and runs[0]["loss_vs_baseline"] < 1e-14
    names = {c["name"]: c["passed"] for c in spec["checks"]}
    for p in (1, 2, 3):
        for check in ("ranks_agree", "side_effects", "deterministic", "views"):
            assert names[f"tp{p}_{check}"], check


@pytest.mark.parametrize(
    ("kernel", "check", "message"),
    [
        ("shifts_in_place", "tp2_side_effects", "rank 1: it changed its logits"),
        ("drifts", "tp2_deterministic", "(rank 0)"),
        ("ignores_offset", "tp2_views", "result differs by at most"),
    ],
)
def test_rank_side_effects_nondeterminism_and_views_are_caught(
    tmp_path: Path, kernel: str, check: str, message: str
) -> None:
    import json

    specs = "cases:\n  - name: " + SPECS.split("  - name: ")[1]
    result = _run(tmp_path, f"{HOSTILE}:{kernel}", "2", "--views", "--format", "json", specs=specs)
    assert result.exit_code == 1, result.output
    report, _ = json.JSONDecoder().raw_decode(result.output[result.output.index("{") :])
    (spec,) = report["results"]
    failed = {c["name"]: c["detail"] for c in spec["checks"] if not c["passed"]}
    assert list(failed) == [check], failed
    assert message in failed[check]
    assert all(c["passed"] for c in spec["comparisons"])  # the first call was right
    assert not spec["parallel"][0]["passed"]
    assert _no_workers_left()


@pytest.mark.parametrize(
    ("bug", "case", "rank"),
    [
        ("bug_local_vocab", "none-smoothing-ignore", None),  # Megatron-LM #737
        ("bug_local_max", "mean", None),
        ("bug_boundary_target", "mean", None),  # label 4 is rank 1's first class at P = 2
        ("bug_padding_mass", "mean", "rank 1 of 2"),  # the padded last shard
    ],
)
def test_planted_bugs_fail_and_name_the_rank(
    tmp_path: Path, bug: str, case: str, rank: str | None
) -> None:
    one = SPECS.split("  - name: ")
    chosen = next(c for c in one[1:] if c.startswith(case))
    specs = "cases:\n  - name: " + chosen
    result = _run(tmp_path, f"{EXAMPLE}:{bug}", "2", specs=specs)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "of 2 (classes" in result.output
    if rank is not None:
        assert rank in result.output


@pytest.mark.parametrize(
    ("kernel", "extra", "message"),
    [
        ("hangs", ("--timeout", "3"), "did not finish within --timeout 3"),
        ("aborts", (), "rank 1 was killed by signal 6"),
        ("raises", (), "is not supported"),
    ],
)
def test_a_failing_worker_is_an_error_for_its_spec_and_leaves_no_process(
    tmp_path: Path, kernel: str, extra: tuple[str, ...], message: str
) -> None:
    specs = "cases:\n  - name: " + SPECS.split("  - name: ")[1]
    result = _run(tmp_path, f"{HOSTILE}:{kernel}", "2", *extra, specs=specs)
    assert result.exit_code == 2, result.output
    assert (
        message in result.output and "Traceback (most recent" not in result.output.split("rank")[0]
    )
    assert _no_workers_left()


def test_tensor_parallel_needs_a_torch_impl(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("logits: [1.0, 2.0]\nlabel: 0\n")
    result = CliRunner().invoke(app, ["run", "--tensor-parallel", "2", str(f)])
    assert result.exit_code == 2 and "--tensor-parallel needs --impl" in result.output
    bad = CliRunner().invoke(app, ["run", "--tensor-parallel", "0", str(f)])
    assert bad.exit_code == 2 and "--tensor-parallel 0" in bad.output


# --- --vocab-chunks: a kernel that reads the vocabulary in chunks, in this process ----------

ONLINE = ROOT / "examples" / "online_softmax_ce.py"
BATCH = ROOT / "specs" / "batch_mean.yaml"  # K = 5


def _chunks(kernel: str, counts: str, *extra: str):  # type: ignore[no-untyped-def]
    args = ["run", "--impl", f"{ONLINE}:{kernel}", "--vocab-chunks", counts, str(BATCH)]
    return CliRunner().invoke(app, [*args, "--format", "json", *extra])


def _failed_methods(output: str) -> set[str]:
    import json

    report, _ = json.JSONDecoder().raw_decode(output[output.index("{") :])  # stderr follows
    (spec,) = report["results"]
    return {c["method"] for c in spec["comparisons"] if not c["passed"]}


@pytest.mark.parametrize("fast", [False, True])
def test_vocab_chunks_check_each_count(fast: bool) -> None:
    extra = ("--fast",) if fast else ()
    good = _chunks("online_ce", "1,3,8", *extra)
    assert good.exit_code == 0, good.output
    for count in (1, 3, 8):
        assert f"[vocab_chunks={count}]" in good.output
    bad = _chunks("bug_no_rescale", "1,3", *extra)
    assert bad.exit_code == 1
    failed = _failed_methods(bad.output)
    assert any("[vocab_chunks=3]" in m for m in failed)
    assert not any("[vocab_chunks=1]" in m for m in failed)  # one chunk holds every maximum


def test_a_dropped_tail_chunk_fails_only_where_the_count_does_not_divide_k() -> None:
    assert _chunks("bug_drop_tail", "1,5").exit_code == 0
    failed = _failed_methods(_chunks("bug_drop_tail", "1,3").output)
    assert failed and all("[vocab_chunks=3]" in m for m in failed if "self-consistency" not in m)


def test_vocab_chunks_need_a_chunk_parameter() -> None:
    impls = ROOT / "tests" / "data" / "impl" / "impls.py"
    result = CliRunner().invoke(
        app, ["run", "--impl", f"{impls}:correct", "--vocab-chunks", "2", str(BATCH)]
    )
    assert result.exit_code == 2 and "--chunk-option NAME" in result.output
    named = _chunks("online_ce", "2", "--chunk-option", "vocab_chunks")
    assert named.exit_code == 0


def test_html_report_of_a_failing_rank(tmp_path: Path) -> None:
    """The TP table and the rank's failed row are on the page; a rank's gradient columns get
    no heat map (the shard's own map would number its classes from 0, not from its start)."""
    out = tmp_path / "tp.html"
    specs = "cases:\n  - name: " + next(
        c for c in SPECS.split("  - name: ")[1:] if c.startswith("mean")
    )
    result = _run(
        tmp_path, f"{EXAMPLE}:bug_padding_mass", "2", "-f", "html", "-o", str(out), specs=specs
    )
    assert result.exit_code == 1, result.output
    page = out.read_text(encoding="utf-8")
    text = html.unescape(re.sub(r"<[^>]+>", "", page))  # (long cells are split into spans)
    assert "tensor parallel: each size against the reference" in text
    assert "impl rank 1 of 2 (classes 4:7)" in text and "FAIL" in text
    figures = "".join(re.findall(r'<figure class="heatmap".*?</figure>', page, re.S))
    assert "rank" not in figures
    assert _no_workers_left()
