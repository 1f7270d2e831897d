"""--isolate (gradcheck_cli/isolation.py) and the in-process guard (gradcheck_cli/guard.py): a
hostile implementation loses only its own spec's result, leaves no process behind, cannot
corrupt the JSON on stdout, and cannot change process-wide state for later specs.

Each hostile implementation (tests/data/impl/hostile.py) misbehaves only on the spec whose
first logit is 13.0; it runs between two good specs, which must still pass.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradcheck_cli import guard
from gradcheck_cli.cli import app
from gradcheck_cli.isolation import last_words, parse_memory

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ROOT / "tests" / "data" / "impl" / "hostile.py"
TORCH_KERNELS = ROOT / "tests" / "data" / "impl" / "torch_kernels.py"

SPECS = """\
cases:
  - name: good-first
    logits: [[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]]
    label: [1, 2]
  - name: hostile
    logits: [[13.0, 2.0, 0.5], [0.3, -1.0, 2.0]]
    label: [1, 2]
  - name: good-last
    logits: [[0.5, 2.0, 1.5], [2.3, -1.0, 0.0]]
    label: [0, 2]
"""

#: Inherited by every worker this module starts and by their children: the search for
#: left-over processes finds this session's, not another's on the same machine.
TAG = f"XENTCHECK_ISOLATION_TEST={uuid.uuid4().hex}"
os.environ[TAG.split("=")[0]] = TAG.split("=")[1]

runner = CliRunner()
CLI = [sys.executable, "-m", "gradcheck_cli", "run", "--impl"]


def _left_over() -> list[str]:
    """Processes (other than this one) that carry this module's tag: their command lines."""
    mine, found = str(os.getpid()), []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        if environ.parent.name == mine:
            continue
        try:
            if TAG.encode() in environ.read_bytes().split(b"\0"):
                found.append((environ.parent / "cmdline").read_bytes().replace(b"\0", b" "))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return [c.decode(errors="replace") for c in found]


def _no_process_left(wait: float = 3.0) -> list[str]:
    """Left-over processes after giving the dying a moment to be reaped."""
    deadline = time.monotonic() + wait
    while (left := _left_over()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _shared_folders() -> set[Path]:
    found = set()
    for where in (Path("/dev/shm"), Path(tempfile.gettempdir())):
        found |= set(where.glob("xentcheck-iso-*")) if where.is_dir() else set()
    return found


def _specs(tmp_path: Path) -> Path:
    f = tmp_path / "specs.yaml"
    f.write_text(SPECS)
    return f


def _run_json(tmp_path: Path, target: str, *extra: str) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    result = runner.invoke(
        app, ["run", "--impl", target, "-f", "json", str(_specs(tmp_path)), *extra]
    )
    return result.exit_code, json.loads(result.stdout), result.stderr


def _by_name(report: dict) -> dict:  # type: ignore[type-arg]
    return {r["name"]: r for r in report["results"]}


# (function, extra arguments, the status of the hostile spec, what its report must say)
CORPUS = [
    ("aborts", (), "error", "killed by SIGABRT (signal 6) during its call"),
    ("segfaults", (), "error", "killed by SIGSEGV (signal 11) during its call"),
    ("exits", (), "error", "sys.exit(3) was called"),
    ("exits_hard", (), "error", "worker exited with code 5 during its call; its last output:"),
    ("loops", ("--timeout", "5"), "error", "its call did not finish within --timeout 5 s"),
    ("allocates", ("--max-memory", "4G"), "error", "over the worker's --max-memory of 4.0 GiB"),
    ("sets_errstate", (), "fail", "changed NumPy's error state (divide: warn -> ignore"),
    ("spawns_and_hangs", ("--timeout", "2"), "error", "did not finish within --timeout 2 s"),
]


@pytest.mark.parametrize(
    ("function", "extra", "status", "said"), CORPUS, ids=[c[0] for c in CORPUS]
)
def test_a_hostile_implementation_loses_only_its_own_spec(
    tmp_path: Path, function: str, extra: tuple[str, ...], status: str, said: str
) -> None:
    started, folders = time.perf_counter(), _shared_folders()
    code, report, stderr = _run_json(tmp_path, f"{HOSTILE}:{function}", "--isolate", *extra)
    results = _by_name(report)
    assert results["good-first"]["status"] == "pass", stderr
    assert results["good-last"]["status"] == "pass", stderr
    hostile = results["hostile"]
    assert hostile["status"] == status, hostile
    where = hostile["message"] if status == "error" else json.dumps(hostile["checks"])
    assert said in where, where
    assert code == (2 if status == "error" else 1)
    assert report["summary"]["total"] == 3
    assert _no_process_left() == []
    assert _shared_folders() <= folders  # nothing left in /dev/shm, even after a crash
    if "--timeout" in extra:  # killed at the time-out, not at the sleep's end
        assert time.perf_counter() - started < 60


def test_a_crash_names_the_last_lines_the_worker_printed(tmp_path: Path) -> None:
    code, report, _ = _run_json(tmp_path, f"{HOSTILE}:aborts", "--isolate")
    message = _by_name(report)["hostile"]["message"]
    assert "about to abort" in message  # what it printed to stderr just before
    assert "hostile.py" in message and "in aborts" in message  # the frame it died in
    assert code == 2


def test_ten_thousand_printed_lines_keep_the_json_valid(tmp_path: Path) -> None:
    """Through a real stdout (a subprocess): the lines go under the spec, the JSON parses."""
    for isolate in ("--isolate", "--no-isolate"):
        proc = subprocess.run(
            [*CLI, f"{HOSTILE}:prints", isolate, "-f", "json", str(_specs(tmp_path))],
            capture_output=True,
            text=True,
            timeout=120,
        )
        report = json.loads(proc.stdout)
        assert proc.returncode == 0, proc.stderr
        assert report["summary"]["passed"] == 3
        output = _by_name(report)["hostile"]["output"]
        assert output["lines"] == 10_000 and output["dropped"] == 10_000 - 50
        kept = output["text"].splitlines()
        assert kept[0] == "debug line 0: {not json" and kept[-1] == "debug line 9999: {not json"
        assert kept[20] == "[... 9,950 lines dropped ...]"
        assert _by_name(report)["good-first"]["output"] is None
        assert "debug line" not in proc.stderr
    assert _no_process_left() == []


def test_a_background_thread_printing_after_its_call_cannot_corrupt_the_json(
    tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [*CLI, f"{HOSTILE}:prints_later", "--no-isolate", "-f", "json", str(_specs(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(proc.stdout)["summary"]["passed"] == 3, proc.stderr
    # (a line printed during a later call is captured as that call's output, inside the JSON)
    assert not [ln for ln in proc.stdout.splitlines() if ln.startswith("background line")]


def test_printed_lines_are_shown_under_their_spec_in_the_table(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--impl", f"{HOSTILE}:prints", str(_specs(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "printed by the implementation (10,000 lines, 9,950 dropped) under hostile:" in (
        result.stdout
    )
    assert "  debug line 9999: {not json" in result.stdout


def test_torch_default_dtype_is_restored_and_reported(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    before = torch.get_default_dtype()
    for isolate in ("--isolate", "--no-isolate"):
        code, report, stderr = _run_json(
            tmp_path, f"torch:{TORCH_KERNELS}:sets_default_dtype", isolate
        )
        results = _by_name(report)
        assert results["good-first"]["status"] == "pass", stderr
        assert results["good-last"]["status"] == "pass", stderr
        failed = [c for c in results["hostile"]["checks"] if not c["passed"]]
        assert [c["name"] for c in failed] == ["impl_global_state"]
        assert "changed torch's default dtype to float64 (was float32)" in failed[0]["detail"]
        assert code == 1
        assert torch.get_default_dtype() == before
    assert _no_process_left() == []


def test_numpy_error_state_is_restored_in_process(tmp_path: Path) -> None:
    before = np.geterr()
    code, report, _ = _run_json(tmp_path, f"{HOSTILE}:sets_errstate", "--no-isolate")
    assert np.geterr() == before
    assert [r["status"] for r in report["results"]] == ["pass", "fail", "pass"]
    assert code == 1


@pytest.fixture
def drained():  # type: ignore[no-untyped-def]
    """The guard's records empty before and after (a failed test leaves none for the next)."""
    guard.drain_changes(), guard.drain_output()
    yield
    guard.drain_changes(), guard.drain_output()


def test_the_guard_restores_state_and_names_the_call(drained: None) -> None:
    rng, position = np.random.get_state()[1].copy(), np.random.get_state()[2]
    python_rng = random.getstate()
    with guard.calling("forward"):
        np.seterr(over="ignore")
        np.random.random(3)
        random.random()
    with guard.calling("backward"):
        np.seterr(over="ignore")
    assert np.geterr()["over"] == "warn"  # restored after each call
    assert np.random.get_state()[2] != position  # the spec goes on: not yet put back
    changes = guard.drain_changes()
    assert np.array_equal(np.random.get_state()[1], rng)
    assert random.getstate() == python_rng
    assert changes == [
        (
            True,
            "the implementation changed NumPy's error state (over: warn -> ignore) "
            "(in its forward, backward); restored",
        ),
        (
            False,
            "the implementation drew from NumPy's global random generator (in its "
            "forward); restored when the spec ended",
        ),
        (
            False,
            "the implementation drew from Python's global random generator (in its "
            "forward); restored when the spec ended",
        ),
    ]
    assert guard.drain_changes() == []


def test_a_filter_set_while_importing_is_noted_not_restored(drained: None) -> None:
    """A module imported during the call may set its own filters: the change is said, and
    left (restoring would undo the module's); without an import it fails and is undone."""
    sys.modules.pop("colorsys", None)
    before = list(warnings.filters)
    try:
        with guard.calling("call"):
            import colorsys  # noqa: F401

            warnings.simplefilter("ignore", ResourceWarning)
        (change,) = guard.drain_changes()
        assert change[0] is False
        assert re.search(r"while importing \(\d+ new modules?; not restored", change[1])
    finally:
        warnings.filters[:] = before
    with guard.calling("call"):
        warnings.simplefilter("ignore", ResourceWarning)
    (change,) = guard.drain_changes()
    assert change[0] is True and "changed the warnings filters" in change[1]
    assert warnings.filters == before


def test_the_guard_captures_output_and_turns_sys_exit_into_an_error(drained: None) -> None:
    with pytest.raises(guard.ExitCalled, match=r"sys.exit\(3\) was called"), guard.calling("call"):
        print("from Python")
        os.write(1, b"from descriptor 1\n")
        sys.exit(3)
    printed = guard.drain_output()
    assert "from Python" in printed and "from descriptor 1" in printed


def test_truncation_keeps_the_first_and_last_lines() -> None:
    assert guard.truncate("") is None
    short = guard.truncate("a\nb\n")
    assert short is not None and (short.text, short.lines, short.dropped) == ("a\nb", 2, 0)
    long = guard.truncate("\n".join(f"{i}" for i in range(51)) + "\n" + "x" * 1000)
    assert long is not None and (long.lines, long.dropped) == (52, 2)
    kept = long.text.splitlines()
    assert kept[:2] == ["0", "1"] and kept[20] == "[... 2 lines dropped ...]"
    assert kept[-1] == "x" * guard.LINE_CHARS + " [...]"


def test_memory_sizes_parse_and_bad_ones_are_named() -> None:
    assert parse_memory("512M") == 512 * 2**20
    assert parse_memory("16G") == 16 * 2**30
    assert parse_memory("none") is None
    for bad in ("lots", "-1G", "0", "nanG"):
        with pytest.raises(ValueError):
            parse_memory(bad)


def test_last_words_keep_the_fault_and_the_innermost_frames() -> None:
    log = "\n".join(
        [
            "some output",
            "Fatal Python error: Aborted",
            "",
            "Current thread 0x1 (most recent call first):",
        ]
        + [f'  File "/x/f{i}.py", line {i} in f{i}' for i in range(8)]
        + ["", "Extension modules: numpy (total: 1)"]
    )
    words = "\n".join(last_words(log))
    assert "some output" in words and "Fatal Python error: Aborted" in words
    assert 'File "/x/f0.py", line 0 in f0' in words
    assert "f7.py" not in words  # only the innermost frames
    assert "Extension modules" not in words


def test_ctrl_c_stops_the_worker_and_writes_no_output(tmp_path: Path) -> None:
    out, specs = tmp_path / "report.json", str(_specs(tmp_path))
    proc = subprocess.Popen(
        [*CLI, f"{HOSTILE}:spawns_and_hangs", "--isolate", "-f", "json", "-o", str(out), specs],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not any("time.sleep(600)" in c for c in _left_over()):  # the hang has begun
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.decode().endswith("xentcheck: interrupted\n")
    assert not out.exists()
    assert _no_process_left() == []


def test_arrays_cross_by_file_and_keep_their_layout(tmp_path: Path) -> None:
    """Large arrays go as files (removed once mapped), a spec's memory-mapped .npy as its own
    file and offset, and a broadcast view (a linear spec's logits) as its one element."""
    from gradcheck_cli.isolation import dump, load_blob

    np.save(tmp_path / "z.npy", np.arange(3 * 2**18, dtype=np.float32).reshape(3, 2**18))
    on_disk = np.load(tmp_path / "z.npy", mmap_mode="r")
    broadcast = np.broadcast_to(np.float64(0.5), (8, 8000))
    large, small = np.linspace(0, 1, 2**18), np.arange(5)
    folder = tmp_path / "shared"
    folder.mkdir()
    blob = dump([on_disk, on_disk[1:], broadcast, large, small], folder)
    assert len(blob) < 2000  # no array's values in the message itself
    assert len(list(folder.iterdir())) == 1  # only `large` was written out
    (disk, tail, view, big, few), _ = load_blob(blob)
    assert list(folder.iterdir()) == []
    assert isinstance(disk, np.memmap) and Path(disk.filename) == tmp_path / "z.npy"
    np.testing.assert_array_equal(disk, on_disk)
    np.testing.assert_array_equal(tail, on_disk[1:])
    assert view.strides == (0, 0) and view.shape == (8, 8000) and view[7, 7999] == 0.5
    np.testing.assert_array_equal(big, large)
    np.testing.assert_array_equal(few, small)


def _hang(tmp_path: Path, function: str = "spawns_and_hangs") -> subprocess.Popen[bytes]:
    """A run whose hostile spec is hanging (its worker, and the child it spawned, running)."""
    specs = str(_specs(tmp_path))
    proc = subprocess.Popen(
        [*CLI, f"{HOSTILE}:{function}", "--isolate", "-f", "json", specs],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    needle = "time.sleep(600)" if function == "spawns_and_hangs" else "isolation_worker"
    while not any(needle in c for c in _left_over()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    time.sleep(0.5)  # inside the call
    return proc


def test_sigterm_and_a_second_ctrl_c_stop_the_worker_and_its_children(tmp_path: Path) -> None:
    proc = _hang(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert _no_process_left() == []
    proc = _hang(tmp_path)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)  # while the parent waits for the worker to quit
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert _no_process_left() == []


def test_a_parent_killed_outright_takes_its_worker_with_it(tmp_path: Path) -> None:
    proc = _hang(tmp_path, "loops")
    proc.kill()
    proc.communicate(timeout=30)
    assert _no_process_left() == []  # the kernel killed the worker (PR_SET_PDEATHSIG)


def test_the_current_directory_cannot_shadow_the_workers_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mmap.py").write_text("raise ImportError('shadowed')\n")
    monkeypatch.chdir(tmp_path)
    _, report, stderr = _run_json(tmp_path, f"{HOSTILE}:aborts", "--isolate")
    assert [r["status"] for r in report["results"]] == ["pass", "error", "pass"], stderr
