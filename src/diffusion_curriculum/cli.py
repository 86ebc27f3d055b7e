"""The ``diffusion-curriculum`` command (also ``python -m diffusion_curriculum``).

Every problem a person can fix (a bad key or value, a missing dataset, an unusable checkpoint) is printed as
one sentence with exit status 2, never a traceback; a non-finite loss stops training with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from . import __version__
from .checks import first_line
from .errors import ConfigError


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
        "--method", choices=["auto", "ddpm", "ddim", "heun"], help="generation method (default: the run's)"
    )
    s.add_argument("--steps", type=int, help="generation steps (default: the run's eval.steps)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--npz", help="also save the samples as an .npz (key 'images', NCHW in [-1, 1])")


def _add_compare(sub) -> None:
    """The ``compare`` subcommand's options."""
    c = sub.add_parser(
        "compare", help="train several strategies side by side and measure each one's speed-up"
    )
    c.add_argument(
        "--methods",
        required=True,
        help="comma-separated methods, each a preset, a sampler with parameters (ddc:clustering=snr,patience=100), "
        "a weighting (min-snr) or mdlrc, joined with + (clts+mdlrc)",
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
        "--eval-samples",
        type=int,
        help="measure quality offline on every kept checkpoint with this many samples (results-nN.*) instead "
        "of the runs' own evaluations",
    )
    c.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    _add_config_args(c)


def _add_evaluate(sub) -> None:
    """The ``evaluate`` subcommand's options."""
    ev = sub.add_parser(
        "evaluate", help="measure every kept checkpoint of runs offline (EMA model, any sample count)"
    )
    ev.add_argument("--run", nargs="+", required=True, metavar="RUN", help="run directories")
    ev.add_argument("--samples", type=int, help="samples per checkpoint (default: the run's eval.samples)")
    ev.add_argument("--inception-weights", help="local FID Inception-v3 weights file: adds 'fid'")
    ev.add_argument("--device", default="cpu", help="where to sample (default cpu)")


def _add_presets(sub) -> None:
    """The ``presets`` subcommand (no options)."""
    sub.add_parser("presets", help="list the shipped presets")


def _add_analyze(sub) -> None:
    """The ``analyze`` subcommand and its three kinds' options."""
    an = sub.add_parser("analyze", help="reproduce the papers' analyses (entropy, difficulty, consistency)")
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
    ad.add_argument("--mode", choices=["per-interval", "per-bucket"], default="per-interval")
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
    return args


def _default_out(preset: str | None, config_file: str | None) -> Path:
    stem = preset or (Path(config_file).stem if config_file else "digits")
    return Path("runs") / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def cmd_train(args) -> int:
    """``train``: build the run from the preset/config/overrides (a new ``--out`` or ``--resume``), train it, print the summary."""
    from . import config
    from .training import RESUMABLE_KEYS, Trainer, rundir

    if (args.resume or args.resume_if_present) and not args.out:
        raise ConfigError("--resume needs --out DIR, the run directory to continue")
    out = Path(args.out) if args.out else _default_out(args.preset, args.config)
    saved = out / "config.yaml"
    present = saved.is_file() or rundir.RunDir(out).holds_run()
    if args.resume and not present:
        # a typo in the path must not cost a whole run trained in the wrong place
        what = "holds no run (no config.yaml, metrics or checkpoints)" if out.exists() else "does not exist"
        raise ConfigError(
            f"--resume: {str(out)!r} {what}; check the path, or pass --resume-if-present to start a run there "
            "when none is"
        )
    args.resume = args.resume or (args.resume_if_present and present)
    if args.resume and saved.is_file():
        base = rundir.load_config(out)
        cfg = config.validate(config.apply_overrides(base, args.overrides))
        if args.preset or args.config:
            given = config.resolve(args.preset, args.config, args.overrides)
            changed = [k for k in given if k not in RESUMABLE_KEYS and given[k] != cfg.get(k)]
            if changed:
                raise ConfigError(
                    f"cannot resume {str(out)!r} with different settings for {', '.join(changed)}; "
                    "drop --preset/--config to use the run's own config.yaml"
                )
        changed = [k for k in cfg if k not in RESUMABLE_KEYS and cfg[k] != base.get(k)]
        if changed:
            raise ConfigError(
                f"{', '.join(changed)} cannot change when resuming; only {', '.join(RESUMABLE_KEYS)} may"
            )
    else:
        cfg = config.resolve(args.preset, args.config, args.overrides)
    trainer = Trainer(cfg, out, resume=args.resume)
    if trainer.rank == 0:  # under torchrun every process runs this; rank 0 speaks for the run
        print(f"run directory: {out}", file=sys.stderr)
    summary = trainer.run()
    if trainer.rank == 0:
        print(json.dumps(final_line(summary)))
    return 0


def final_line(summary: dict) -> dict:
    """What ``train`` prints last: steps, the final loss, the final evaluation's numbers (``eval_loss`` and the
    quality metrics such as ``fd``, when measured) and the training speed."""
    quality = {
        k: v
        for k, v in summary.get("final_eval", {}).items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return {
        "steps": summary["steps"],
        "final_loss": summary["final_loss"],
        **quality,
        "train_time_s": summary["train_time_s"],
        "steps_per_s": summary["steps_per_s"],
    }


def cmd_sample(args) -> int:
    """``sample``: load a run's (or one checkpoint's) EMA model and write a PNG grid (and optionally an npz) of samples."""
    from . import checkpoint, data, generate
    from .training import build_components, resolve_device, rundir

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps {args.steps} is invalid; allowed: a positive integer")
    path = Path(args.checkpoint)
    if not path.exists():
        raise ConfigError(f"--checkpoint {str(path)!r} does not exist")
    if (path / checkpoint.STATE).is_file():
        ckpts, run = [path], path.parent.parent
    else:
        run = path
        ckpts = checkpoint.list_checkpoints(run / "checkpoints")
        if not ckpts:
            raise ConfigError(
                f"{str(run)!r} holds no checkpoints (expected {str(run / 'checkpoints')}/step_*)"
            )
    if args.n < 1:
        raise ConfigError(f"--n {args.n} is invalid; allowed: a positive integer")
    cfg = rundir.load_config(run)
    comps = build_components(cfg)
    device = resolve_device(cfg["device"])
    model = comps.model.to(device)
    rundir.load_newest_ema(model, ckpts, run, warn=lambda msg: print(msg, file=sys.stderr))
    ec = cfg["eval"]
    x = generate.sample(
        model,
        comps.process,
        args.n,
        comps.dataset.shape,
        method=args.method or ec["method"],
        steps=args.steps or ec["steps"],
        eta=ec["eta"],
        prediction=cfg["prediction"],
        seed=args.seed,
        device=device,
        batch_size=ec["batch_size"],
    )
    out = Path(args.out) if args.out else run / "samples" / "sample.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    data.save_grid(x, out)
    if args.npz:
        import numpy as np

        np.savez(args.npz, images=x.cpu().numpy())
    print(str(out))
    return 0


def _runs_of(args) -> dict:
    """How an analysis that trains runs of its own builds and schedules them: the command line's preset,
    config file, overrides and ``--jobs`` (a ConfigError unless it is positive)."""
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs} is invalid; allowed: a positive integer")
    return dict(preset=args.preset, config_file=args.config, overrides=args.overrides, jobs=args.jobs)


def cmd_compare(args) -> int:
    """``compare``: train every method × seed side by side and print the speed-up table (exit 1 if a run failed)."""
    from . import compare

    methods = compare.split_methods(args.methods)
    runs = _runs_of(args)
    if args.eval_samples is not None and args.eval_samples < 2:
        raise ConfigError(f"--eval-samples {args.eval_samples} is invalid; allowed: an integer >= 2")
    res = compare.compare(
        methods,
        out=args.out,
        seeds=args.seeds,
        steps=args.steps,
        metric=args.metric,
        baseline=args.baseline,
        eval_samples=args.eval_samples,
        **runs,
    )
    print(compare.format_table(res))
    failed = [lab for lab, r in res["methods"].items() if any("error" in e for e in r["per_seed"])]
    if failed:
        print(f"error: some runs failed ({', '.join(failed)}); see their train.log", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args) -> int:
    """``evaluate``: offline metrics of every kept checkpoint of each run (``<run>/eval-n<N>.jsonl``)."""
    from . import evaluate

    for run in args.run:
        recs = evaluate.evaluate_run(
            run,
            samples=args.samples,
            inception_weights=args.inception_weights,
            device=args.device,
            log=lambda m: print(m, file=sys.stderr),
        )
        keys = [k for k in recs[0] if k not in ("step", "samples")] if recs else []
        print(f"{run}\nstep\t" + "\t".join(keys))
        for r in recs:
            print(f"{r['step']}\t" + "\t".join(f"{r[k]:.4g}" for k in keys))
    return 0


def cmd_analyze(args) -> int:
    """``analyze entropy|difficulty|consistency``: run one of the papers' analyses, write its table and plot."""
    from . import config

    out = Path(args.out) if args.out else Path("runs") / f"analyze-{args.kind}"
    cfg = config.resolve(args.preset, args.config, args.overrides)
    if args.kind == "entropy":
        from .analysis import entropy

        for flag, value, low in (
            ("--stride", args.stride, 1),
            ("--samples-per-t", args.samples_per_t, 2),
            ("--subsample", args.subsample, 0),
            ("--sigmas", args.sigmas, 2),
        ):
            if value < low:
                raise ConfigError(f"{flag} {value} is invalid; allowed: an integer >= {low}")
        res = entropy.run(
            cfg,
            out,
            stride=args.stride,
            samples_per_t=args.samples_per_t,
            subsample=args.subsample or None,
            seed=args.seed,
            sigmas=args.sigmas,
        )
        cols = ("t", "kl", "kl_stderr", "kl_gaussian")
    elif args.kind == "difficulty":
        from .analysis import difficulty

        if args.mode == "per-bucket":
            cfg = config.resolve(args.preset, args.config, [*difficulty.QUIET, *args.overrides])
        res = difficulty.run(
            cfg,
            out,
            mode=args.mode,
            intervals=args.intervals,
            final_window=args.final_window,
            **_runs_of(args),
        )
        cols = ("interval", "initial", "final", "steps_90", "steps_95", "steps_99")
    else:
        from .analysis import consistency

        res = consistency.run(
            cfg,
            out,
            checkpoints=args.checkpoints,
            b_overrides=args.b_override,
            seed_offset=args.seed_offset,
            n=args.n,
            n_real=args.n_real,
            t_points=args.t_points,
            sample_seed=args.sample_seed,
            **_runs_of(args),
        )
        print(
            f"paired distance {res['paired_distance']:.4g}, unpaired {res['unpaired_distance']:.4g}, "
            f"ratio {res['ratio']:.4g}"
        )
        cols = ("t", "cosine", "rel_error")

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)

    print("\t".join(cols))
    for r in res["rows"]:
        print("\t".join(fmt(r.get(c)) for c in cols))
    print(f"wrote {out}/{args.kind}.csv, .json, .png", file=sys.stderr)
    return 0


def cmd_presets(args) -> int:
    """``presets``: list the shipped presets, each with the first sentence of its file's opening comment."""
    from . import config

    names = config.preset_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {config.preset_description(name)}".rstrip())
    return 0


def _plain_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings on the command line: one plain line, not a source location and a line of code."""
    print(f"warning: {first_line(message)}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """The ``diffusion-curriculum`` entry point: returns the exit status (0 ok, 1 training failure or bug, 2 bad input, 130 interrupted by Ctrl-C or SIGTERM); every error is one line on stderr."""
    import os
    import warnings

    from .checkpoint import CheckpointError
    from .data import DataError
    from .errors import Interrupted, TrainingError

    warnings.showwarning = _plain_warning
    args = parse_args(argv)
    if args.command is None:
        args.print_help()
        return 2
    handler = {
        "train": cmd_train,
        "sample": cmd_sample,
        "compare": cmd_compare,
        "presets": cmd_presets,
        "analyze": cmd_analyze,
        "evaluate": cmd_evaluate,
    }[args.command]
    try:
        return handler(args)
    except TrainingError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 1
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    except ValueError as e:  # a builder's check of a named section's parameter (sampler, model, process, ...)
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        where = e.filename or "file system"
        print(
            f"error: {e.strerror or first_line(e)} ({where}); nothing already written was removed",
            file=sys.stderr,
        )
        return 2
    except Interrupted:  # the trainer has said what it saved: once is enough
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not a person's mistake: still one sentence, the traceback on request
        if os.environ.get("DIFFUSION_CURRICULUM_DEBUG"):
            raise
        print(
            f"error: unexpected {type(e).__name__}: {first_line(e)} (this is a bug; rerun with "
            "DIFFUSION_CURRICULUM_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
