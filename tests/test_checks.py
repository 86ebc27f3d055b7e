"""The shared helpers: value checks with one message format, first lines of errors, atomic writes."""

import os
import stat

import numpy as np
import pytest

from diffusion_curriculum import checks


def test_is_int_rejects_bools_and_non_integers():
    assert checks.is_int(3) and checks.is_int(-1)
    assert not checks.is_int(True) and not checks.is_int(3.0) and not checks.is_int("3")
    assert not checks.is_int(np.int64(3))
    assert checks.is_int(np.int64(3), exact=False) and not checks.is_int(np.bool_(True), exact=False)


def test_is_number_is_finite_and_not_bool():
    assert checks.is_number(1) and checks.is_number(0.5)
    assert not checks.is_number(True) and not checks.is_number(float("nan"))
    assert not checks.is_number(float("inf")) and not checks.is_number("1")
    assert not checks.is_number(10**400)  # too large for a float: not finite, and no OverflowError
    assert checks.is_number(np.float32(0.5), exact=False)


def test_one_message_format():
    with pytest.raises(ValueError, match=r"^momentum\.beta=2 is invalid; allowed: a number in \[0, 1\)$"):
        checks.checker("momentum.")("beta", 2, False, "a number in [0, 1)")
    checks.checker("momentum.")("beta", 0.5, True, "a number in [0, 1)")
    with pytest.raises(
        ValueError, match=r"^sampler parameter clusters=0 is invalid; allowed: an integer >= 2$"
    ):
        checks.check_param("clusters", 0, False, "an integer >= 2")

    class Mine(ValueError):
        pass

    with pytest.raises(Mine, match=r"^lr='x' is invalid; allowed: a number$"):
        checks.check_value("lr", "x", False, "a number", Mine)


def test_unknown_suggests_the_nearest_name():
    assert checks.unknown("sampler.name", "dcc", ["ddc", "uniform"]) == (
        "sampler.name='dcc' is not known (did you mean 'ddc'?); allowed: ddc, uniform"
    )
    with pytest.raises(
        ValueError, match=r"sampler\.clustrs is not a parameter of X \(did you mean 'clusters'\?\)"
    ):
        checks.check_params("sampler", "X", lambda self, clusters=2: None, {"clustrs": 3})


def test_first_line():
    assert checks.first_line(RuntimeError("one\ntwo")) == "one"
    assert checks.first_line(KeyError()) == "KeyError"
    long = checks.first_line(ValueError("x" * 600))
    assert len(long) == 500 and long.endswith("...")
    assert checks.first_line(ValueError("x" * 300), 200) == "x" * 197 + "..."


def test_atomic_write_honours_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        checks.atomic_write(tmp_path / "a.txt", "héllo\n")
        checks.atomic_write(tmp_path / "sub" / "b.bin", b"\x00\x01")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "sub"]  # no temporary file left


def test_atomic_path_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with checks.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
