"""Configuration: presets, overrides, validation and its one-sentence errors."""

import pytest

from diffusion_curriculum import config
from diffusion_curriculum.errors import ConfigError


def test_default_is_digits_preset_and_validates():
    cfg = config.resolve()
    assert cfg["dataset"]["name"] == "digits"
    assert cfg["sampler"] == {"name": "uniform"}
    assert set(config.preset_names()) >= {"digits", "toy2d", "cifar10-ddpm"}
    for name in config.preset_names():
        config.resolve(preset=name)
    assert {"digits-ddc", "digits-clts-mdlrc", "digits-speed", "mnist5k"} <= set(config.preset_names())


def test_overrides_dotted_and_typed():
    cfg = config.resolve(
        overrides=[
            "lr=2e-4",
            "sampler.name=lognormal",
            "sampler.P_std=1.5",
            "optim.grad_clip=0",
            "model.channel_mult=[1,2,2]",
            "steps=10",
            "progress=false",
        ]
    )
    assert cfg["lr"] == 2e-4 and isinstance(cfg["lr"], float)
    assert cfg["sampler"] == {"name": "lognormal", "P_std": 1.5}
    assert cfg["model"]["channel_mult"] == [1, 2, 2]
    assert cfg["steps"] == 10 and cfg["progress"] is False


def test_switching_a_named_section_drops_the_old_parameters():
    base = config.merge(config.DEFAULTS, {"sampler": {"name": "lognormal", "P_std": 1.0}})
    out = config.apply_overrides(base, ["sampler.name=uniform"])
    assert out["sampler"] == {"name": "uniform"}
    out = config.apply_overrides(base, ["sampler=uniform"])
    assert out["sampler"] == {"name": "uniform"}


@pytest.mark.parametrize(
    "override,pattern",
    [
        ("stepz=10", r"unknown key 'stepz' \(did you mean 'steps'\?\)"),
        ("optim.grad_clp=1", r"unknown key 'optim.grad_clp' \(did you mean 'grad_clip'\?\)"),
        ("steps=-1", r"steps=-1 is invalid; allowed: an integer in \[1, "),
        ("steps=ten", r"steps='ten' is invalid"),
        ("steps=true", r"steps=True is invalid"),
        ("lr=0", r"lr=0 is invalid; allowed: a finite number > 0"),
        ("lr=.nan", r"lr=nan is invalid"),
        ("lr=nan", r"lr=.nan. is invalid"),
        ("batch_size=1e30", r"batch_size=1e\+30 is invalid"),
        ("prediction=noise", r"prediction='noise' is invalid; allowed: one of 'eps', 'v', 'x0'"),
        ("ema.decay=2", r"ema.decay=2 is invalid"),
        ("sampler.name=", r"sampler.name must be a non-empty string"),
        ("device=", r"device=None is invalid"),
        ("steps", r"must look like key=value"),
        ("=3", r"empty key"),
        ("optim=3", r"optim must be a mapping"),
        ("momentum.enabled=maybe", r"momentum must be a mapping with enabled"),
    ],
)
def test_bad_overrides_are_one_sentence(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        config.resolve(overrides=[override])
    assert "\n" not in str(e.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.resolve(config_file=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.resolve(config_file=bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        config.resolve(config_file=lst)
    good = tmp_path / "good.yaml"
    good.write_text("steps: 7\nsampler: lognormal\n")
    cfg = config.resolve(config_file=good)
    assert cfg["steps"] == 7 and cfg["sampler"] == {"name": "lognormal"}
    with pytest.raises(ConfigError, match="preset 'digit' is not known.*did you mean 'digits'"):
        config.resolve(preset="digit")
    with pytest.raises(ConfigError, match="either --preset or --config"):
        config.resolve(preset="digits", config_file=good)


def test_dump_roundtrips(tmp_path):
    cfg = config.resolve(overrides=["lr=3e-4"])
    f = tmp_path / "c.yaml"
    f.write_text(config.dump(cfg))
    assert config.validate(config.merge(config.DEFAULTS, config.load_yaml(f))) == cfg


def test_integral_floats_are_taken_for_integer_keys():
    """`steps=1e3` was refused as "steps=1000.0 is invalid"; an integral float now stands for its integer."""
    cfg = config.resolve(overrides=["steps=1e3", "eval_every=2.0", "eval.samples=1e2"])
    assert cfg["steps"] == 1000 and type(cfg["steps"]) is int
    assert cfg["eval_every"] == 2 and cfg["eval"]["samples"] == 100 and type(cfg["eval"]["samples"]) is int
    assert "steps: 1000\n" in config.dump(cfg)
    with pytest.raises(ConfigError, match=r"steps=1.5 is invalid"):
        config.resolve(overrides=["steps=1.5"])
    assert type(config.resolve(overrides=["lr=1"])["lr"]) is int  # a float key keeps what was given


def test_yaml_parse_errors_name_the_line(tmp_path):
    """The YAML error used to say what was wrong but not where."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\n  lr: [1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"not valid YAML: .* \(line 2, column \d+\)") as e:
        config.resolve(config_file=bad)
    assert "\n" not in str(e.value)


def test_preset_descriptions_are_the_first_sentence_of_their_comment():
    assert config.preset_description("cifar10-ddpm").startswith("CIFAR-10 DDPM (Ho et al. 2020")
    assert config.preset_description("cifar10-ddpm").endswith("for GPU users.")
    assert all(config.preset_description(n) for n in config.preset_names())


@pytest.mark.parametrize(
    "overrides,section,expected",
    [
        (["sampler.clusters=4", "sampler.name=ddc"], "sampler", {"name": "ddc", "clusters": 4}),
        (["weighting.gamma=2", "weighting.name=min-snr"], "weighting", {"name": "min-snr", "gamma": 2}),
        (["process.shift=3", "process.name=flow"], "process", {"name": "flow", "shift": 3}),
        (["dataset.path=x.npz", "dataset.name=npz"], "dataset", {"name": "npz", "path": "x.npz"}),
        (["sampler.name=ddc", "sampler.clusters=4"], "sampler", {"name": "ddc", "clusters": 4}),
    ],
)
def test_a_parameter_typed_before_its_strategy_is_kept(overrides, section, expected):
    """Choosing a section's strategy clears the preset's parameters, never one the same command line gave
    (it used to train DDC with 20 clusters after `sampler.clusters=4 sampler.name=ddc`)."""
    cfg = config.apply_overrides(config.merge(config.DEFAULTS, config.load_preset("digits")), overrides)
    assert cfg[section] == expected


def test_a_parameter_of_a_strategy_switched_away_is_refused_not_dropped():
    from diffusion_curriculum.training import components

    with pytest.raises(ValueError, match="sampler.clusters is not a parameter of the 'uniform' sampler"):
        components.build_components(config.resolve(overrides=["sampler.clusters=4", "sampler.name=uniform"]))


@pytest.mark.parametrize("process", [["process.name=flow", "prediction=v"], ["process.name=edm"]])
def test_the_default_preset_switches_process_with_one_key(process):
    """The presets leave the evaluation's generator to the process (`eval.method: auto`)."""
    from diffusion_curriculum.training import components

    cfg = config.resolve(overrides=process)
    assert cfg["eval"]["method"] == "auto"
    components.build_components(cfg)
