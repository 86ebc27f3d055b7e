"""Every public module, function, class and method of the package has a docstring; docs/API.md is generated
from them by ``tools/gen_api.py``."""

import importlib.util
import inspect
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gen_api", ROOT / "tools" / "gen_api.py")
gen_api = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_api)


def test_walk_finds_the_package():
    mods = {m.__name__ for m in gen_api.public_modules()}
    assert {
        "diffusion_curriculum.train",
        "diffusion_curriculum.timesteps.ddc",
        "diffusion_curriculum.optim",
    } <= mods
    names = {q for q, _ in gen_api.public_objects()}
    assert {
        "diffusion_curriculum.optim.MomentumDecay",
        "diffusion_curriculum.timesteps.base.TimestepSampler.sample",
    } <= names


def test_every_public_object_has_a_docstring():
    missing = [q for q, obj in gen_api.public_objects() if not (inspect.getdoc(obj) or "").strip()]
    assert not missing, "no docstring: " + ", ".join(missing)


def test_api_page_renders_every_object():
    text = gen_api.render()
    for q, _ in gen_api.public_objects():
        assert f"`{q}" in text, q


def test_api_page_is_up_to_date():
    """docs/API.md is what tools/gen_api.py renders now (regenerate it after changing a docstring)."""
    assert (ROOT / "docs" / "API.md").read_text() == gen_api.render(), (
        "run: PYTHONPATH=src python tools/gen_api.py"
    )
