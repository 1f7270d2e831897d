"""The pytest plugin (gradcheck_cli/pytest_plugin.py), run by pytest itself in a scratch project:
collection and node ids, pass and fail output, invalid specs, JUnit properties, xdist, the
fixture and the marker, and that it stays out of the way when not configured."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy  # noqa: F401  (see below)
import pytest

import gradcheck_cli.api  # noqa: F401
from gradcheck_cli.pytest_plugin import SpecItem

# pytester's in-process runs forget the modules they imported; NumPy's C extension cannot be
# imported twice in one process, so it (and xentcheck's engine) is imported here, before them.

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]

KERNELS = '''
import numpy as np


def _ce(logits, labels, reduction, divide):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    grad = np.exp(logp)
    grad[rows, labels] -= 1.0
    losses = -logp[rows, labels]
    if reduction == "none":
        return losses, grad
    if reduction == "sum":
        return losses.sum(), grad
    return losses.mean(), grad / len(labels) if divide else grad


def good(logits, *, labels, reduction, loss="softmax_cross_entropy"):
    return _ce(logits, labels, reduction, True)


def no_mean(logits, *, labels, reduction, loss="softmax_cross_entropy"):
    """The mean's gradient not divided by N."""
    return _ce(logits, labels, reduction, False)
'''

# The wrong expectation is on line 6, column 3.
GOLDEN = """\
# the right loss is 0.4643687841
name: wrong-golden
logits: [1.0, 2.0, 0.5]
label: 1
expect:
  loss: 0.5
"""

BAD = """\
name: bad
logits: [1.0, 2.0, "x"]
label: 1
"""

CASES = """\
logits: [1.0, 2.0, 0.5]
cases:
  - name: fine
    label: 1
  - name: broken
    label: 7
"""

INI = '[tool.pytest.ini_options]\nxentcheck_specs = ["specs"]\n'
BUNDLED = ["specs/cat_dog_bird.yaml::cat-dog-bird"] + [
    f"specs/reductions.yaml::reduction-{r}" for r in ("mean", "sum", "none")
]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """Two bundled spec files (one of them with ``cases``) and a kernel module; not yet
    configured."""
    (pytester.path / "specs").mkdir()
    for name in ("cat_dog_bird.yaml", "reductions.yaml"):
        shutil.copy(ROOT / "specs" / name, pytester.path / "specs" / name)
    pytester.makepyfile(kernels=KERNELS)
    return pytester


@pytest.fixture
def configured(project: pytest.Pytester) -> pytest.Pytester:
    project.makepyprojecttoml(INI)
    return project


def node_ids(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if "::" in line]


def junit_cases(path: Path) -> dict[str, ET.Element]:
    tree = ET.parse(path)
    return {f"{c.get('classname')}::{c.get('name')}": c for c in tree.iter("testcase")}


def test_configured_specs_are_collected_one_item_per_spec_or_case(
    configured: pytest.Pytester,
) -> None:
    result = configured.runpytest("--collect-only", "-q")
    assert node_ids(result) == BUNDLED


def test_without_configuration_the_plugin_collects_nothing(project: pytest.Pytester) -> None:
    """Not even with [tool.xentcheck] specs (what `xentcheck run` checks) in pyproject.toml."""
    project.makepyprojecttoml('[tool.xentcheck]\nspecs = ["specs"]\n')
    project.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = project.runpytest("--collect-only", "-q")
    assert node_ids(result) == ["test_plain.py::test_plain"]


def test_this_repository_collects_no_spec_items(request: pytest.FixtureRequest) -> None:
    """Its own specs/ stay out of its test suite: the plugin is installed but not asked."""
    assert not request.config.getini("xentcheck_specs")
    assert not any(isinstance(item, SpecItem) for item in request.session.items)


def test_spec_paths_join_testpaths_unless_pytest_is_given_paths(project: pytest.Pytester) -> None:
    project.makepyprojecttoml(INI + 'testpaths = ["tests"]\n')
    project.mkdir("tests")
    project.makepyfile(**{"tests/test_plain": "def test_plain():\n    pass\n"})
    everything = ["tests/test_plain.py::test_plain", *BUNDLED]
    assert node_ids(project.runpytest("--collect-only", "-q")) == everything
    assert node_ids(project.runpytest("--collect-only", "-q", "tests")) == everything[:1]
    one = project.runpytest("--collect-only", "-q", "specs/reductions.yaml::reduction-sum")
    assert node_ids(one) == ["specs/reductions.yaml::reduction-sum"]


def test_the_command_line_option_collects_its_paths_only(configured: pytest.Pytester) -> None:
    result = configured.runpytest("--collect-only", "-q", "--xentcheck-specs", "specs/r*.yaml")
    assert node_ids(result) == BUNDLED[1:]


def test_items_carry_the_marker_and_their_spec_line(configured: pytest.Pytester) -> None:
    assert node_ids(configured.runpytest("--collect-only", "-q", "-m", "not xentcheck")) == []
    items = configured.inline_genitems()[0]
    (mean,) = [i for i in items if i.name == "reduction-mean"]
    assert mean.location == ("specs/reductions.yaml", 10, "xentcheck spec reduction-mean")


def test_cases_of_one_name_get_distinct_node_ids(configured: pytest.Pytester) -> None:
    (configured.path / "specs" / "twice.yaml").write_text(
        "logits: [1.0, 2.0]\nlabel: 0\ncases:\n  - name: same\n  - name: same\n"
    )
    ids = node_ids(configured.runpytest("--collect-only", "-q"))
    assert ids[-2:] == ["specs/twice.yaml::same", "specs/twice.yaml::same#2"]


def test_the_bundled_specs_pass(configured: pytest.Pytester) -> None:
    configured.runpytest().assert_outcomes(passed=4)


def test_a_wrong_golden_value_fails_with_the_short_summary(configured: pytest.Pytester) -> None:
    (configured.path / "specs" / "golden.yaml").write_text(GOLDEN)
    result = configured.runpytest("-ra")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ xentcheck spec wrong-golden _*",
            "specs/golden.yaml:6:3: expect.loss: 0.4643687841 vs expected 0.5: |Δ| = 0.0356, "
            "allowed 5.01e-07",
            "FAILED specs/golden.yaml::wrong-golden - specs/golden.yaml:6:3: expect.loss*",
        ]
    )
    assert "Traceback" not in result.stdout.str() and "gradcheck_cli" not in result.stdout.str()


def test_a_buggy_implementation_fails_with_worst_element_and_diagnosis(
    configured: pytest.Pytester,
) -> None:
    result = configured.runpytest("--xentcheck-impl", "kernels.py:no_mean")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ xentcheck spec reduction-mean _*",
            "specs/reductions.yaml:8:5: impl kernels.py:no_mean vs reference: 8 elements outside "
            "rtol 1e-09 / atol 5e-14; worst [[]1, 1[]]: -0.8940548135 vs -0.4470274067 "
            "(|Δ| 0.447, rel 1)",
            "    diagnosis: the implementation's values are N = 2 times the reference: a mean "
            "not divided by N (a sum)?",
        ]
    )
    out = result.stdout.str()
    assert "Traceback" not in out and "engine.py" not in out and "gradcheck_cli" not in out


def test_an_implementation_that_does_not_load_fails_each_item_with_its_message(
    configured: pytest.Pytester,
) -> None:
    result = configured.runpytest("--xentcheck-impl", "nosuch.py:f")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(["--xentcheck-impl 'nosuch.py:f': no such file nosuch.py"])
    assert "Traceback" not in result.stdout.str()


def test_an_invalid_spec_fails_with_its_located_message(configured: pytest.Pytester) -> None:
    specs = configured.path / "specs"
    (specs / "bad.yaml").write_text(BAD)
    (specs / "cases.yaml").write_text(CASES)
    result = configured.runpytest("-q", "specs/bad.yaml", "specs/cases.yaml", "-rA")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "specs/bad.yaml:2:20: logits[[]2[]]: expected a number, found string 'x'",
            "specs/cases.yaml:6:12: cases[[]1[]].label: * 7 *",
            "PASSED specs/cases.yaml::fine",
            "FAILED specs/bad.yaml::bad - *",
            "FAILED specs/cases.yaml::cases[[]1[]] - *",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_a_spec_the_dtype_cannot_hold_is_skipped(configured: pytest.Pytester) -> None:
    shutil.copy(ROOT / "specs" / "huge_logits.yaml", configured.path / "specs")
    result = configured.runpytest("--xentcheck-dtype", "float16", "-rs")
    result.assert_outcomes(passed=4, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED *cannot run in float16: logit 1e+300*"])


def test_a_missing_spec_path_is_a_usage_error(project: pytest.Pytester) -> None:
    project.makepyprojecttoml('[tool.pytest.ini_options]\nxentcheck_specs = ["nope"]\n')
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: xentcheck_specs: */nope: no such file or directory"])


def test_pyproject_settings_give_the_implementation_and_the_command_line_wins(
    project: pytest.Pytester,
) -> None:
    project.makepyprojecttoml(INI + '\n[tool.xentcheck]\nimpl = "kernels.py:no_mean"\n')
    project.runpytest().assert_outcomes(passed=3, failed=1)
    project.runpytest("--xentcheck-impl", "kernels.py:good").assert_outcomes(passed=4)


def test_junitxml_lists_one_testcase_per_spec_with_its_metrics(
    configured: pytest.Pytester,
) -> None:
    xml = configured.path / "report.xml"
    configured.runpytest("--xentcheck-impl", "kernels.py:no_mean", f"--junitxml={xml}")
    cases = junit_cases(xml)
    assert sorted(cases) == [
        "specs.cat_dog_bird.yaml::cat-dog-bird",
        "specs.reductions.yaml::reduction-mean",
        "specs.reductions.yaml::reduction-none",
        "specs.reductions.yaml::reduction-sum",
    ]
    props = {
        p.get("name"): p.get("value")
        for p in cases["specs.reductions.yaml::reduction-mean"].iter("property")
    }
    # the gradient is twice the reference's: the error is the reference's 0.4470274067
    assert float(props["logits::impl::max_abs_error"]) == pytest.approx(0.4470274067, rel=1e-9)
    assert props["logits::impl::failed_elements"] == "8"
    assert float(props["logits::analytic::max_abs_error"]) < 1e-15
    assert {"logits::finite_difference::max_rel_error", "loss::impl::rtol"} <= set(props)
    failure = cases["specs.reductions.yaml::reduction-mean"].find("failure")
    assert failure is not None
    assert failure.get("message", "").startswith("specs/reductions.yaml:8:5: impl kernels.py")
    assert cases["specs.reductions.yaml::reduction-sum"].find("failure") is None


def test_xdist_gives_the_same_outcomes_and_junit(configured: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    (configured.path / "specs" / "golden.yaml").write_text(GOLDEN)
    serial, parallel = configured.path / "serial.xml", configured.path / "parallel.xml"
    configured.runpytest(f"--junitxml={serial}").assert_outcomes(passed=4, failed=1)
    result = configured.runpytest_subprocess(
        "-n", "2", "-p", "no:cacheprovider", f"--junitxml={parallel}"
    )
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(
        ["2 workers [[]5 items[]]", "specs/golden.yaml:6:3: expect.loss: *"]
    )

    def outcomes(path: Path) -> dict[str, tuple[bool, dict[str, str | None]]]:
        return {
            key: (
                case.find("failure") is not None,
                {p.get("name") or "": p.get("value") for p in case.iter("property")},
            )
            for key, case in junit_cases(path).items()
        }

    assert outcomes(parallel) == outcomes(serial)


FIXTURE_TESTS = """
import pytest

import kernels


def test_default_impl_is_the_sessions(xentcheck):
    assert xentcheck.impl == "kernels.py:no_mean"
    report = xentcheck.check("specs/reductions.yaml")
    assert [r.status for r in report.results] == ["fail", "pass", "pass"]


def test_each_call_overrides(xentcheck):
    xentcheck.assert_passes("specs/reductions.yaml", impl=kernels.good)


@pytest.mark.xentcheck(impl=kernels.good, specs="specs/reductions.yaml")
def test_marker_gives_defaults(xentcheck):
    assert len(xentcheck.assert_passes().results) == 3


@pytest.mark.xentcheck(specs=["specs/reductions.yaml", "specs/cat_dog_bird.yaml"])
def test_marker_failure_shows_the_summary(xentcheck):
    xentcheck.assert_passes()


@pytest.mark.xentcheck(imp="kernels.py:good")
def test_marker_typo(xentcheck):
    pass
"""


def test_the_fixture_and_the_marker(project: pytest.Pytester) -> None:
    project.makepyfile(test_fixture=FIXTURE_TESTS)
    result = project.runpytest("--xentcheck-impl", "kernels.py:no_mean")
    result.assert_outcomes(passed=3, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_marker_failure_shows_the_summary _*",
            "E       AssertionError: FAIL reduction-mean (specs/reductions.yaml)",
            "E         impl kernels.py:no_mean vs reference: 8 elements outside *",
            "E           diagnosis: the implementation's values are N = 2 times the reference*",
            "E       3 passed, 1 failed, 0 errors",
        ]
    )
    result.stdout.fnmatch_lines(
        ["@pytest.mark.xentcheck: unknown keyword imp (known: specs, impl, methods, *"]
    )
    assert "gradcheck_cli/" not in result.stdout.str()  # no frames inside xentcheck


def test_the_plugin_module_imports_no_numerics() -> None:
    """pytest loads it in every session of an environment with xentcheck installed."""
    code = (
        "import sys, gradcheck_cli.pytest_plugin; "
        "print(sorted(m for m in ('numpy', 'yaml', 'gradcheck_cli.api') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_docs_marker_example_runs(project: pytest.Pytester) -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n# test_marked\.py\n(.+?)```", text, re.S)
    assert code is not None
    shutil.copytree(ROOT / "examples", project.path / "examples")
    project.makepyfile(test_marked=code.group(1))
    project.runpytest("test_marked.py").assert_outcomes(passed=1)


def test_the_installed_distribution_registers_the_plugin() -> None:
    from importlib.metadata import entry_points

    (plugin,) = [e for e in entry_points(group="pytest11") if e.name == "xentcheck"]
    assert plugin.value == "gradcheck_cli.pytest_plugin"
    assert plugin.dist is not None and plugin.dist.name == "xentcheck"
