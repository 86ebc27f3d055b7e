"""What each command does once its arguments are parsed (``cmd_<command>(args) -> exit status``)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

from ..checks import atomic_path, first_line
from ..errors import ConfigError


def _default_out(preset: str | None, config_file: str | None) -> Path:
    stem = preset or (Path(config_file).stem if config_file else "digits")
    return Path("runs") / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def cmd_train(args) -> int:
    """``train``: build the run from the preset/config/overrides (a new ``--out`` or ``--resume``), train it, print the summary."""
    from .. import config
    from ..training import RESUMABLE_KEYS, Trainer, rundir
    from ..training.state import with_recorded_choices

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
            given["dataset"] = with_recorded_choices(given["dataset"], cfg["dataset"])
            changed = [
                k for k in given if k not in RESUMABLE_KEYS and not config.same_setting(given[k], cfg.get(k))
            ]
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
        print(result_sentence(summary, out, cfg["eval"]["samples"]), file=sys.stderr)
        print(json.dumps(final_line(summary)))
    return 0


def result_sentence(summary: dict, out: Path, samples: int) -> str:
    """The line ``train`` says last, for a person: the steps and time, the final quality (FD, or the validation
    loss when nothing measured samples) and where the samples are; the JSON line after it is for programs."""
    ev = summary.get("final_eval", {})
    minutes = summary.get("train_time_s", 0.0) / 60
    head = f"done: {summary['steps']} steps ({minutes:.1f} min of training)"
    if isinstance(ev.get("fd"), (int, float)):
        what = f"FD {ev['fd']:.3g} of {samples} samples on the library's feature net (lower is better)"
    elif isinstance(ev.get("val_loss"), (int, float)):
        what = f"validation loss {ev['val_loss']:.4g} (no sample metric was measured)"
    else:
        what = "no quality measured"
    return f"{head}; {what}; samples: {out / 'samples'}"


def final_line(summary: dict) -> dict:
    """What ``train`` prints last: steps, the final loss, the final evaluation's numbers (``eval_loss``, the
    validation loss's means — its per-bucket values are in ``summary.json`` — and the quality metrics such as
    ``fd``, when measured) and the training speed."""
    quality = {
        k: v
        for k, v in summary.get("final_eval", {}).items()
        if k != "step" and "/" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)
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
    from .. import checkpoint, data, generate, guidance
    from ..training import build_components, resolve_device, rundir

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
    if len(ckpts) == 1 and path == ckpts[0]:  # one checkpoint named: it, or a sentence saying what to do
        try:
            rundir.load_ema_weights(model, path)
        except checkpoint.CheckpointError as e:
            raise checkpoint.CheckpointError(
                f"{first_line(e)}; name another checkpoint, or the run directory {str(run)!r} to use its newest "
                "readable one"
            ) from None
    else:
        used, step = rundir.load_newest_ema(model, ckpts, run, warn=lambda msg: print(msg, file=sys.stderr))
        if used != ckpts[0]:
            print(f"sampling from {used.name} (step {step}), the newest readable checkpoint", file=sys.stderr)
    ec = cfg["eval"]
    method = args.method or ec["method"]
    cond = guidance.run_labels(
        comps.num_classes, args.n, args.labels, args.guidance, ec["guidance"], comps.dataset.classes
    )
    x = generate.sample(
        model,
        comps.process,
        args.n,
        comps.dataset.shape,
        method=method,
        steps=args.steps
        if args.steps is not None
        else generate.config_steps(comps.process, method, ec["steps"]),
        eta=ec["eta"],
        prediction=cfg["prediction"],
        seed=args.seed,
        device=device,
        batch_size=ec["batch_size"],
        clip_x0=comps.clip,
        **cond,
    )
    out = Path(args.out) if args.out else run / "samples" / "sample.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    data.save_grid(x, out)
    if args.npz:
        import numpy as np

        extra = {"labels": cond["labels"].numpy()} if cond else {}  # the class each sample was drawn for
        with atomic_path(args.npz) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no suffix
            np.savez(f, images=x.cpu().numpy(), **extra)
    print(str(out))
    return 0


def _runs_of(args) -> dict:
    """How an analysis that trains runs of its own builds and schedules them: the command line's preset,
    config file, overrides and ``--jobs`` (a ConfigError unless it is positive)."""
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs} is invalid; allowed: a positive integer")
    return dict(preset=args.preset, config_file=args.config, overrides=args.overrides, jobs=args.jobs)


def cmd_compare(args) -> int:
    """``compare``: train every method × seed side by side (or, with ``--summarize-only``, read them from disk)
    and print the speed-up table, the paired tables and the FD noise line; exit 1 if a run failed or is missing
    or unfinished. With ``--launcher slurm --no-wait`` it submits the jobs, prints the command that builds the
    table later and exits 0."""
    from .. import compare, launchers

    methods = compare.split_methods(args.methods)
    runs = _runs_of(args)
    if args.eval_samples is not None and args.eval_samples < 2:
        raise ConfigError(f"--eval-samples {args.eval_samples} is invalid; allowed: an integer >= 2")
    if args.progress_every < 0:
        raise ConfigError(f"--progress-every {args.progress_every:g} is invalid; allowed: seconds >= 0")
    launcher = None
    if not args.summarize_only:
        launcher = launchers.make(
            args.launcher,
            threads=args.threads,
            partition=args.slurm_partition,
            gpus_per_run=args.slurm_gpus_per_run,
            time=args.slurm_time,
            extra=args.slurm_extra,
            wait=not args.no_wait,
        )
        launcher.summarize_hint = summarize_command(args.argv)
    res = compare.compare(
        methods,
        out=args.out,
        seeds=args.seeds,
        steps=args.steps,
        metric=args.metric,
        baseline=args.baseline,
        against=args.against,
        eval_samples=args.eval_samples,
        fd_noise=not args.no_fd_noise,
        launcher=launcher,
        summarize_only=args.summarize_only,
        progress_every=args.progress_every,
        **runs,
    )
    if res is None:  # submitted, not waited for
        print(f"jobs submitted; when they have finished, build the tables with:\n  {launcher.summarize_hint}")
        return 0
    print(compare.format_report(res))
    failed = [lab for lab, r in res["methods"].items() if any("error" in e for e in r["per_seed"])]
    if failed and args.summarize_only:
        print(
            f"error: some runs are missing or unfinished ({', '.join(failed)}); train them with the same "
            "command without --summarize-only, or wait for their jobs",
            file=sys.stderr,
        )
        return 1
    if failed:
        print(f"error: some runs failed ({', '.join(failed)}); see their train.log", file=sys.stderr)
        return 1
    return 0


#: compare options that choose where and how fast runs train, and take a value: not part of a summary
_LAUNCH_OPTIONS = ("--launcher", "--slurm-partition", "--slurm-gpus-per-run", "--slurm-time", "--slurm-extra")
_LAUNCH_OPTIONS += ("--jobs", "--threads", "--progress-every")


def summarize_command(argv: list[str]) -> str:
    """The ``compare --summarize-only`` command line that builds the tables of the comparison ``argv`` (a
    ``compare`` command line) describes: the same methods, seeds, output and settings, without the options
    that only say where and how the runs train."""
    import shlex

    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _LAUNCH_OPTIONS:
            skip = True
        elif a.split("=", 1)[0] not in (*_LAUNCH_OPTIONS, "--no-wait", "--summarize-only"):
            kept.append(a)
    return shlex.join(["diffusion-curriculum", *kept, "--summarize-only"])


def cmd_evaluate(args) -> int:
    """``evaluate``: offline metrics of every kept checkpoint of each run (``<run>/eval-n<N>.jsonl``)."""
    from .. import evaluate

    for run in args.run:
        recs = evaluate.evaluate_run(
            run,
            samples=args.samples,
            inception_weights=args.inception_weights,
            device=args.device,
            guidance=args.guidance,
            log=lambda m: print(m, file=sys.stderr),
        )
        keys = [k for k in recs[0] if k not in ("step", "samples", "guidance")] if recs else []
        print(f"{run}\nstep\t" + "\t".join(keys))
        for r in recs:
            print(f"{r['step']}\t" + "\t".join(f"{r[k]:.4g}" for k in keys))
    return 0


def cmd_analyze(args) -> int:
    """``analyze entropy|difficulty|consistency|optimal-loss``: run one of the papers' analyses, write its table
    and plot."""
    from .. import config

    if args.kind == "optimal-loss":
        return _analyze_optimal_loss(args)
    out = Path(args.out) if args.out else Path("runs") / f"analyze-{args.kind}"
    cfg = config.resolve(args.preset, args.config, args.overrides)
    if args.kind == "entropy":
        from ..analysis import entropy

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
        if res["note"]:
            print(f"note: {res['note']}", file=sys.stderr)
        cols = ("t", "kl", "kl_stderr", "kl_gaussian")
    elif args.kind == "difficulty":
        from ..analysis import difficulty

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
        from ..analysis import consistency

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


def _analyze_optimal_loss(args) -> int:
    """``analyze optimal-loss``: print J* and the excess loss per bucket at each chosen checkpoint."""
    from ..analysis import optimal_loss

    steps = None
    if args.steps:
        try:
            steps = [int(s) for s in args.steps.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(
                f"--steps {args.steps!r} is invalid; give checkpoint steps such as 500,4000"
            ) from None
    out = Path(args.out) if args.out else Path(args.run) / "analyze-optimal-loss"
    res = optimal_loss.run(args.run, out, steps=steps)
    cols = ["bucket", "low", "high", "optimal"]
    for s in res["steps"]:
        cols += [f"loss@{s}", f"excess@{s}"]
    cols.append("left")
    print(
        f"optimal loss J* of the training data and the run's loss per noise-level bucket ({res['on']} data)"
    )
    print("\t".join(cols))
    for r in res["rows"]:
        print("\t".join("" if r[c] is None else f"{r[c]:.4g}" for c in cols))
    print(f"wrote {out}/optimal-loss.csv, .json, .png", file=sys.stderr)
    return 0


def cmd_presets(args) -> int:
    """``presets``: list the shipped presets, each with the first sentence of its file's opening comment."""
    from .. import config

    names = config.preset_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {config.preset_description(name)}".rstrip())
    return 0
