"""The command line's arguments: one sub-parser per command; options and ``key=value`` overrides in any order."""

from __future__ import annotations

import argparse
import sys

from .. import __version__


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", help="a shipped preset (default: digits); see `diffusion-curriculum presets`")
    g.add_argument("--config", help="a YAML config file")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. sampler.name=uniform"
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="diffusion-curriculum",
        description="Train diffusion models faster with timestep curricula and momentum schedules.",
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_train, _add_sample, _add_compare, _add_evaluate, _add_presets, _add_analyze):
        add(sub)
    return ap


def _add_train(sub) -> None:
    """The ``train`` subcommand's options."""
    t = sub.add_parser("train", help="train a model (no arguments: the embedded digits default)")
    _add_config_args(t)
    t.add_argument("--out", help="run directory (default: runs/<preset>-<time>)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (which must hold one) from its newest usable checkpoint",
    )
    t.add_argument(
        "--resume-if-present",
        action="store_true",
        help="resume the run in --out if there is one, else start it there (for schedulers and job arrays)",
    )


def _add_sample(sub) -> None:
    """The ``sample`` subcommand's options."""
    s = sub.add_parser("sample", help="draw samples from a trained run's EMA model into a PNG grid")
    s.add_argument(
        "--checkpoint", required=True, help="a run directory or one of its checkpoints/step_* folders"
    )
    s.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--out", help="PNG file (default: <run>/samples/sample.png)")
    s.add_argument(
        "--method",
        choices=["auto", "ddpm", "ddim", "heun", "flow-euler", "flow-heun"],
        help="generation method (default: the run's)",
    )
    s.add_argument("--steps", type=int, help="generation steps (default: the run's eval.steps)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--npz",
        help="also save the samples as an .npz (key 'images', NCHW, the data's scale: images in [-1, 1] where DDPM/DDIM "
        "clamp x0 (eval.clip); EDM's Heun and the flow samplers do not clamp, so theirs can fall slightly outside)",
    )
    s.add_argument(
        "--labels",
        help="a class-conditional run: the classes to draw, as indices or the names the run announced, e.g. 0,1,7 "
        "or square,circle (spread over --n), or all for a class-balanced grid (default: all)",
    )
    s.add_argument(
        "--guidance",
        type=float,
        help="a class-conditional run: the classifier-free guidance scale w (1 conditional, 0 unconditional; "
        "default: the run's eval.guidance)",
    )


def _add_compare(sub) -> None:
    """The ``compare`` subcommand's options."""
    c = sub.add_parser(
        "compare", help="train several strategies side by side and measure each one's speed-up"
    )
    c.add_argument(
        "--methods",
        required=True,
        help="comma-separated methods, each a preset, a sampler with parameters (ddc:clustering=snr,patience=100), "
        "a weighting (min-snr), a noise assignment (knn:k=4) or mdlrc, joined with + (clts+mdlrc, "
        "loss-second-moment+knn:k=4)",
    )
    c.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    c.add_argument("--steps", type=int, help="training steps per run (default: the preset's)")
    c.add_argument("--jobs", type=int, help="runs in parallel (default: the number of CPU cores)")
    c.add_argument(
        "--metric",
        default="auto",
        help="quality key, lower is better (default: fd, else swd, else eval_loss)",
    )
    c.add_argument(
        "--baseline", default="uniform", help="the method speed-ups are measured against (default uniform)"
    )
    c.add_argument(
        "--against",
        metavar="METHOD",
        help="a second reference: a paired table of every method against it too (trained when not in --methods)",
    )
    c.add_argument(
        "--no-fd-noise",
        action="store_true",
        help="skip scoring the baseline's final checkpoints with a second sample seed (the FD noise line; one "
        "extra evaluation per baseline seed)",
    )
    c.add_argument(
        "--eval-samples",
        type=int,
        help="measure quality offline on every kept checkpoint with this many samples (results-nN.*) instead "
        "of the runs' own evaluations",
    )
    c.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    c.add_argument(
        "--threads",
        type=int,
        help="CPU threads per run (default: an exported OMP_NUM_THREADS/MKL_NUM_THREADS, else cores / jobs)",
    )
    c.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a progress line per running run this often (default 30; 0: none)",
    )
    c.add_argument(
        "--summarize-only",
        action="store_true",
        help="train nothing: build the tables from the runs on disk and name those missing or unfinished",
    )
    _add_launcher_args(c)
    _add_config_args(c)


def _add_launcher_args(c: argparse.ArgumentParser) -> None:
    """``compare``'s launcher options: where the runs train (this machine or a Slurm cluster)."""
    c.add_argument(
        "--launcher",
        default="processes",
        help="where runs train: processes (default: subprocesses here, one per GPU on a multi-GPU machine), "
        "submitit-local (submitit jobs here) or slurm (submitit jobs on a Slurm cluster)",
    )
    c.add_argument("--slurm-partition", help="slurm: the partition (default: the cluster's default)")
    c.add_argument("--slurm-gpus-per-run", type=int, help="slurm: GPUs per run, 0 or 1 (default 1)")
    c.add_argument(
        "--slurm-time", help="slurm: each job's time limit, minutes or [D-]HH:MM:SS (default 24:00:00)"
    )
    c.add_argument(
        "--slurm-extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="slurm: another SlurmExecutor parameter (repeatable), e.g. cpus_per_task=8 account=proj mem=32G",
    )
    c.add_argument(
        "--no-wait",
        action="store_true",
        help="slurm: submit the jobs and return; summarize later with --summarize-only",
    )


def _add_evaluate(sub) -> None:
    """The ``evaluate`` subcommand's options."""
    ev = sub.add_parser(
        "evaluate", help="measure every kept checkpoint of runs offline (EMA model, any sample count)"
    )
    ev.add_argument("--run", nargs="+", required=True, metavar="RUN", help="run directories")
    ev.add_argument("--samples", type=int, help="samples per checkpoint (default: the run's eval.samples)")
    ev.add_argument("--inception-weights", help="local FID Inception-v3 weights file: adds 'fid'")
    ev.add_argument("--device", default="cpu", help="where to sample (default cpu)")
    ev.add_argument(
        "--guidance",
        type=float,
        help="a class-conditional run: the guidance scale to sample at (default: the run's eval.guidance)",
    )


def _add_presets(sub) -> None:
    """The ``presets`` subcommand (no options)."""
    sub.add_parser("presets", help="list the shipped presets")


def _add_analyze(sub) -> None:
    """The ``analyze`` subcommand and its four kinds' options."""
    an = sub.add_parser(
        "analyze", help="reproduce the papers' analyses (entropy, difficulty, consistency, optimal-loss)"
    )
    asub = an.add_subparsers(dest="kind", metavar="KIND", required=True)
    ae = asub.add_parser("entropy", help="D_KL(p_{t-1} || p_t) between consecutive noised data marginals")
    ae.add_argument("--stride", type=int, default=10, help="evaluate every stride-th t (default 10)")
    ae.add_argument("--samples-per-t", type=int, default=256, help="Monte Carlo samples per t (default 256)")
    ae.add_argument("--subsample", type=int, default=2000, help="data points used, M (default 2000; 0 = all)")
    ae.add_argument(
        "--sigmas", type=int, default=100, help="sigma grid size for an EDM process (default 100)"
    )
    ae.add_argument("--seed", type=int, default=0)
    ad = asub.add_parser("difficulty", help="convergence speed of the loss per timestep interval")
    ad.add_argument(
        "--mode",
        choices=["per-interval", "per-bucket"],
        default="per-interval",
        help="per-interval: one model per noise interval (the paper's study); per-bucket: one model, its loss "
        "tracked per bucket (default per-interval)",
    )
    ad.add_argument("--intervals", type=int, default=10, help="intervals / buckets N (default 10)")
    ad.add_argument(
        "--jobs", type=int, help="per-interval runs in parallel (default: the number of CPU cores)"
    )
    ad.add_argument(
        "--final-window", type=int, default=3, help="logged losses averaged as the final loss (default 3)"
    )
    ac = asub.add_parser("consistency", help="do two independently trained models agree on the same noise?")
    ac.add_argument(
        "--checkpoints", nargs=2, metavar="RUN", help="two run directories to load instead of training"
    )
    ac.add_argument(
        "--b-override",
        action="append",
        default=[],
        metavar="key=value",
        help="extra override for model B only",
    )
    ac.add_argument("--seed-offset", type=int, default=1, help="model B's seed = seed + this (default 1)")
    ac.add_argument("--n", type=int, default=64, help="samples per model (default 64)")
    ac.add_argument(
        "--n-real", type=int, default=256, help="real images for the per-t agreement (default 256)"
    )
    ac.add_argument("--t-points", type=int, default=20, help="t values for the per-t agreement (default 20)")
    ac.add_argument("--sample-seed", type=int, default=0)
    ac.add_argument("--jobs", type=int, help="models trained in parallel (default: the number of CPU cores)")
    for p in (ae, ad, ac):
        p.add_argument("--out", help="output directory (default runs/analyze-<kind>)")
        _add_config_args(p)
    ao = asub.add_parser(
        "optimal-loss",
        help="a trained run's loss per noise level against its training set's exact optimal loss, per checkpoint",
    )
    ao.add_argument("--run", required=True, help="the run directory (its config and kept checkpoints)")
    ao.add_argument("--steps", help="comma-separated checkpoint steps (default: every kept checkpoint)")
    ao.add_argument("--out", help="output directory (default <run>/analyze-optimal-loss)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line with options and ``key=value`` overrides in any order on every subcommand
    (``train seed=3 --out DIR steps=40``): argparse takes one run of positionals, so the overrides it leaves
    over after an option are added to ``overrides`` in the order given. Anything else left over is an error
    (exit status 2), as ``parse_args`` makes it."""
    ap = _parser()
    args, extra = ap.parse_known_args(argv)
    if hasattr(args, "overrides"):
        more = [a for a in extra if "=" in a and not a.startswith("-")]
        args.overrides = [*args.overrides, *more]
        extra = [a for a in extra if not ("=" in a and not a.startswith("-"))]
    if extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    args.print_help = ap.print_help
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args
