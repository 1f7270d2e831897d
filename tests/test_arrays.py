"""Arrays from .npy / .npz files: loading, header checks, located errors."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from gradcheck_cli.engine import run_spec
from gradcheck_cli.errors import SpecError
from gradcheck_cli.model import Spec
from gradcheck_cli.spec import load_file


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def only(items: list[object]) -> object:
    (item,) = items
    return item


def test_every_array_can_come_from_a_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 7))
    y = rng.integers(0, 7, 5)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    ref = run_spec(
        Spec(name="r", file="r", logits=z, single=False, labels=y, weight=np.arange(1.0, 8.0))
    )
    grad = ref.gradients["exact"]
    np.savez(tmp_path / "golden.npz", grad=grad, w=np.arange(1.0, 8.0))
    spec = only(
        load_file(
            write_spec(
                tmp_path,
                "logits: {file: z.npy}\nlabel: {file: y.npy}\n"
                "weight: {file: golden.npz, key: w}\n"
                "expect: {grad: {file: golden.npz, key: grad}, rtol: 0, atol: 0}\n",
            )
        )
    )
    assert isinstance(spec, Spec)
    np.testing.assert_array_equal(spec.logits, z)
    np.testing.assert_array_equal(spec.labels, y)
    result = run_spec(spec)
    assert result.status == "pass", [c for c in result.checks if not c.passed]


def test_paths_are_relative_to_the_spec(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "z.npy", np.array([1.0, 2.0, 0.5]))
    spec = only(load_file(write_spec(tmp_path, "logits: {file: data/z.npy}\nlabel: 1\n")))
    assert isinstance(spec, Spec) and spec.logits.shape == (1, 3)


def message(tmp_path: Path, text: str) -> str:
    item = only(load_file(write_spec(tmp_path, text), "s.yaml"))
    assert isinstance(item, SpecError)
    return str(item)


def test_truncated_file_is_refused_before_reading(tmp_path: Path) -> None:
    np.save(tmp_path / "z.npy", np.zeros((32, 1000)))
    data = (tmp_path / "z.npy").read_bytes()
    (tmp_path / "z.npy").write_bytes(data[:4000])
    assert message(tmp_path, "logits: {file: z.npy}\nlabel: 0\n") == (
        "s.yaml:1:16: logits.file: z.npy: the header says shape (32, 1000) of float64 "
        "(256,000 bytes of data) but the file holds 3,872 bytes after the header"
    )


def test_forged_huge_header_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "z.npy", np.zeros(3))
    data = (
        (tmp_path / "z.npy").read_bytes().replace(b"(3,)", b"(9999999999,)".ljust(4, b" ")[:4], 1)
    )
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (999999999999,), }"
    forged = b"\x93NUMPY\x01\x00" + len(header.ljust(118) + b"\n").to_bytes(2, "little")
    forged += header.ljust(118) + b"\n" + data[-24:]
    (tmp_path / "z.npy").write_bytes(forged)
    assert "more than the limit of 640 MiB (--max-array-mb)" in message(
        tmp_path, "logits: {file: z.npy}\nlabel: 0\n"
    )


def test_pickled_objects_are_never_loaded(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert message(tmp_path, "logits: {file: o.npy}\nlabel: 0\n") == (
        "s.yaml:1:16: logits.file: o.npy holds dtype object; expected numbers "
        "(pickled objects are never loaded)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("logits: {file: nope.npy}\nlabel: 0\n", "1:16: logits.file: no such file {tmp}/nope.npy"),
        (
            "logits: {file: a.npz}\nlabel: 0\n",
            "1:16: logits.file: a.npz is an .npz archive: say which array with 'key'",
        ),
        (
            "logits: {file: a.npz, key: x}\nlabel: 0\n",
            "1:16: logits.file: no array 'x' in a.npz (arrays: z)",
        ),
        (
            "logits: {file: a.npz, key: z, extra: 1}\nlabel: 0\n",
            "1:31: logits.extra: unknown key (known keys: file, key)",
        ),
        (
            "logits: {key: z}\nlabel: 0\n",
            "1:9: logits.file: missing required key: path to a .npy or .npz file",
        ),
        (
            "logits: {file: b.npy}\nlabel: 0\n",
            "1:9: logits: expected K numbers, or N lists of K numbers, found an array of booleans",
        ),
        (
            "logits: {file: three.npy}\nlabel: 0\n",
            "1:9: logits: expected K numbers, or N lists of K numbers, found an array of shape "
            "(2, 2, 2)",
        ),
        (
            "logits: [1, 2]\nlabel: {file: f.npy}\n",
            "2:8: label: expected integer class indices, found dtype float64",
        ),
        (
            "logits: [[1, 2], [3, 4]]\nlabel: {file: i.npy}\n",
            "2:8: label[1]: class index 5 out of range: expected 0 to 1",
        ),
        (
            "logits: {file: bad.npy}\nlabel: 0\n",
            "1:16: logits.file: bad.npy is not a valid .npy file",
        ),
    ],
)
def test_file_errors(tmp_path: Path, text: str, expected: str) -> None:
    np.savez(tmp_path / "a.npz", z=np.ones(3))
    np.save(tmp_path / "b.npy", np.array([True, False]))
    np.save(tmp_path / "three.npy", np.zeros((2, 2, 2)))
    np.save(tmp_path / "f.npy", np.array([0.0]))
    np.save(tmp_path / "i.npy", np.array([0, 5]))
    (tmp_path / "bad.npy").write_bytes(b"not numpy at all")
    got = message(tmp_path, text)
    assert got.startswith("s.yaml:" + expected.format(tmp=tmp_path)), got


def test_npz_member_checked_like_a_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", z=np.ones((4, 4)))
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        member = zf.read("z.npy")
    with zipfile.ZipFile(tmp_path / "cut.npz", "w") as zf:
        zf.writestr("z.npy", member[:-16])
    assert (
        "the header says shape (4, 4) of float64 (128 bytes of data) but the file holds 112"
        in message(tmp_path, "logits: {file: cut.npz, key: z}\nlabel: 0\n")
    )
