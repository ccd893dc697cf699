"""Judge runs by issue 13's two learning rules (README, Status), one line per run and a verdict per rule.

    python benchmarks/learning/learning_rules.py runs/*__leq_state__*      # the run dirs of one setting

The protocol rule, on the runs shorter than 20,000 LEQ steps: the mean final score is at least 60, and at most one
seed ends below its BC policy's score + 30. The long-run rule, on each run of at least 20,000 steps: its final
score is at least 0.8 times its best evaluation (the periodic ones and the final) and at least its score at step
2000. Pass the runs of one setting: the script does not group them. Runs without a final score (unfinished) are
listed and left out of both rules.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results import find_run_dirs, read_run  # noqa: E402

LONG_RUN_STEPS, PROTOCOL_MEAN, BC_MARGIN, MAX_BELOW_BC, BEST_SHARE, EARLY_STEP = 20_000, 60.0, 30.0, 1, 0.8, 2000


def long_run_verdict(curve: list, final: float) -> tuple[bool, str]:
    """(passes, reason) for one run: final >= 0.8 x its best evaluation and >= its score at step 2000."""
    best = max(score for _, score in curve)
    early = [score for step, score in curve[:-1] if step == EARLY_STEP]
    failures = []
    if final < BEST_SHARE * best:
        failures.append(f"final {final:g} < {BEST_SHARE:g} x best {best:g}")
    if not early:
        failures.append(f"no evaluation at step {EARLY_STEP}")
    elif final < early[0]:
        failures.append(f"final {final:g} < its {EARLY_STEP}-step score {early[0]:g}")
    return not failures, "; ".join(failures) or f"final {final:g} >= {BEST_SHARE * best:g} and >= {early[0]:g}"


def protocol_verdict(runs: list) -> tuple[bool, str]:
    """(passes, reason) for the short runs together: mean final >= 60, at most one seed below BC + 30."""
    finals = [run["final"] for run in runs]
    mean = sum(finals) / len(finals)
    below = [f"seed {run['config']['args']['seed']} ({run['final']:g} < BC {run['bc']:g} + {BC_MARGIN:g})"
             for run in runs if run["bc"] is not None and run["final"] < run["bc"] + BC_MARGIN]
    unscored = [run for run in runs if run["bc"] is None]
    passes = mean >= PROTOCOL_MEAN and len(below) <= MAX_BELOW_BC and not unscored
    reason = (f"mean final {mean:.1f} over {len(runs)} seeds (needs >= {PROTOCOL_MEAN:g}); below BC + {BC_MARGIN:g}: "
              f"{', '.join(below) or 'none'} (at most {MAX_BELOW_BC})")
    if unscored:
        reason += f"; {len(unscored)} run(s) have no BC score"
    return passes, reason


def main(argv: list) -> str:
    runs = [read_run(run_dir) for run_dir in find_run_dirs(argv)]
    lines, short, long = [], [], []
    for run in sorted(runs, key=lambda run: (run["config"]["args"]["total_steps"], run["config"]["args"]["seed"])):
        args = run["config"]["args"]
        periodic = run["curve"][:-1] if run["final"] is not None else run["curve"]
        evaluations = " ".join(f"{score:g}" for _, score in periodic) or "-"
        bc = "-" if run["bc"] is None else f"{run['bc']:g}"
        final = "unfinished" if run["final"] is None else f"{run['final']:g}"
        lines.append(f"seed {args['seed']:>3} | {args['total_steps']:>7} steps | evaluations {evaluations} | "
                     f"final {final} | BC {bc} | {run['dir'].name}")
        if run["final"] is not None:
            (long if args["total_steps"] >= LONG_RUN_STEPS else short).append(run)
    if short:
        passes, reason = protocol_verdict(short)
        lines.append(f"protocol rule: {'PASS' if passes else 'FAIL'}: {reason}")
    verdicts = [long_run_verdict(run["curve"], run["final"]) for run in long]
    for run, (passes, reason) in zip(long, verdicts):
        lines.append(f"long-run rule, seed {run['config']['args']['seed']}: {'PASS' if passes else 'FAIL'}: {reason}")
    if long:
        lines.append(f"long-run rule: {sum(passes for passes, _ in verdicts)} of {len(long)} runs pass")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
