"""Aggregate LEQ runs into the paper's table format, with the paper's LEQ numbers beside ours, and plot learning curves.

    python benchmarks/results.py runs/                       # every run dir under runs/ (recursive)
    python benchmarks/results.py "runs/antmaze-*" --out results/table1.md

A run dir is one that leq_state.py or leq_pixel.py wrote: config.json and eval.csv (step,policy,episodes,mean,std).
Rows are (experiment = --exp-name, which the sweep files set to their name; task; setting = the arguments that
differ between that task's runs, e.g. tau=0.3). Ours: mean +- std (numpy's, ddof=0) over seeds of each run's final
score (the leq_final row, normalised x100 as the scripts report it); runs without one (unfinished) are left out
and counted. The BC policy's final score (leq_state.py's bc row) comes last, over the same runs. One learning-curve PNG per row: the periodic and final evaluations of each seed, and their mean.
"""

import argparse
import csv
import glob
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ANTMAZE = ["antmaze-umaze", "antmaze-umaze-diverse", "antmaze-medium-play", "antmaze-medium-diverse",
           "antmaze-large-play", "antmaze-large-diverse", "antmaze-ultra-play", "antmaze-ultra-diverse"]
MUJOCO = [f"{robot}-{level}" for robot in ("hopper", "walker2d", "halfcheetah")
          for level in ("random", "medium", "medium-replay", "medium-expert")]
NEORL = [f"{robot}-v3-{level}" for robot in ("Hopper", "Walker2d", "HalfCheetah") for level in ("low", "medium", "high")]
VD4RL = [f"{task}-{level}" for task in ("walker_walk", "cheetah_run")
         for level in ("random", "medium", "medium_replay", "medium_expert")]
TAUS = ["tau=0.1", "tau=0.3", "tau=0.4", "tau=0.5"]


def paper_table(env_ids: list, columns: list, numbers: str) -> dict:
    """{env id: {setting: (mean, std)}} from the paper's 'mean std' pairs, one line per env id in table order."""
    table = {}
    for env_id, line in zip(env_ids, numbers.strip().splitlines(), strict=True):
        values = [float(x) for x in line.split()]
        table[env_id] = {column: (values[2 * i], values[2 * i + 1]) for i, column in enumerate(columns)}
    return table


# The paper's LEQ results, copied from its tables (mean std over seeds).
MAIN = {
    **paper_table(ANTMAZE, [""], """
94.4 6.3\n71.0 12.3\n58.8 33.0\n46.2 23.2\n58.6 9.1\n60.2 18.3\n25.8 18.2\n55.8 18.3"""),  # Table 1
    **paper_table(NEORL, [""], """
24.2 2.3\n104.3 5.2\n95.5 13.9\n65.1 2.3\n45.2 19.4\n73.7 1.1\n33.4 1.6\n59.2 3.9\n71.8 8.0"""),  # Table 2
    **paper_table(MUJOCO, [""], """
32.4 0.3\n103.4 0.3\n103.9 1.3\n109.4 1.8\n21.5 0.1\n74.9 26.9\n98.7 6.0\n108.2 1.3
30.8 3.3\n71.7 4.4\n65.5 1.1\n102.8 0.4"""),  # Table 3
    **paper_table(VD4RL, [""], """
22.4 1.1\n43.1 3.2\n43.0 7.3\n87.2 2.4\n14.8 1.0\n37.9 8.0\n34.3 1.1\n25.1 6.6"""),  # Table 4
}
PAPER = {  # experiment (the sweep file's name, set as --exp-name) -> that table's LEQ numbers
    "table5_hstep": paper_table(ANTMAZE, [""], """
93.0 3.4\n60.7 10.4\n46.3 32.4\n0.0 0.0\n57.0 25.6\n33.3 43.0\n0.0 0.0\n0.0 0.0"""),  # Table 5, H-step / H-step
    "table5_onestep_q": paper_table(ANTMAZE, [""], """
89.6 4.8\n37.0 32.8\n55.8 28.7\n29.8 24.5\n34.2 13.4\n49.3 9.0\n42.2 13.2\n35.6 13.0"""),  # Table 5, 1-step / Q
    "table5_lambda_q": paper_table(ANTMAZE, [""], """
81.0 10.5\n46.2 16.8\n61.8 12.4\n40.6 11.4\n39.2 12.5\n40.5 11.7\n42.8 21.8\n47.5 5.9"""),  # Table 5, lambda / Q
    "table7_horizon": paper_table(ANTMAZE, ["horizon=5", "horizon=15"], """
95.2 1.7 98.6 0.5\n67.2 9.1 70.7 15.2\n46.4 31.9 76.3 17.2\n18.6 28.7 30.3 40.1\n48.6 15.4 62.0 9.9
35.2 8.7 33.0 3.2\n54.2 10.8 0.0 0.0\n39.4 6.1 0.0 0.0"""),  # Table 7, H = 5 and H = 15
    "table7_no_expansion": paper_table(ANTMAZE, [""], """
97.4 1.4\n63.0 23.2\n58.2 28.0\n28.6 33.7\n56.0 9.8\n57.0 4.5\n39.2 15.1\n36.0 12.0"""),  # Table 7 (= Table 18)
    "table18_no_ema": paper_table(ANTMAZE, [""], """
96.0 4.0\n65.6 5.1\n33.8 31.4\n21.2 26.1\n58.8 8.2\n62.2 15.0\n8.0 13.9\n33.5 35.1"""),  # Table 18, - EMA
    "table18_no_data_transitions": paper_table(ANTMAZE, [""], """
63.0 19.8\n75.3 4.2\n31.8 34.0\n28.0 27.0\n50.5 20.9\n57.5 8.6\n0.8 1.3\n6.0 5.1"""),  # Table 18, - data transitions
    "table19_no_pretrain": paper_table(ANTMAZE, [""], """
94.0 1.9\n65.6 6.8\n0.8 1.6\n3.8 7.6\n60.4 13.4\n59.8 12.5\n11.6 12.4\n26.2 22.4"""),  # Table 19, LEQ pretrain X
    "table20_mujoco_no_expansion": paper_table(MUJOCO, [""], """
17.6 8.6\n52.7 45.3\n103.7 1.3\n79.7 42.4\n20.5 2.2\n87.2 4.3\n78.7 35.5\n110.4 0.8
27.7 2.2\n71.6 3.8\n54.4 26.3\n83.9 28.0"""),  # Table 20, w/o dataset expansion
    "table15_antmaze_tau": paper_table(ANTMAZE, TAUS, """
94.4 6.3 39.0 28.1 0.2 0.4 3.0 5.5\n71.0 12.2 23.6 21.7 4.0 4.2 0.0 0.0\n50.2 39.9 58.8 33.0 36.0 21.8 0.6 1.2
46.2 23.2 13.2 13.3 11.6 14.8 10.6 13.3\n42.0 30.6 58.6 9.1 52.2 15.8 42.2 7.3\n60.6 32.1 60.2 18.3 48.8 5.8 36.8 9.7
25.8 18.2 10.8 8.8 11.6 12.5 9.2 11.5\n55.8 18.3 4.6 3.4 7.6 7.3 0.6 1.2"""),  # Table 15
    "table16_mujoco_tau": paper_table(MUJOCO, TAUS, """
32.4 0.3 13.7 9.1 16.4 9.3 12.5 10.1\n103.4 0.3 102.7 1.7 81.4 24.8 38.6 29.2\n103.2 1.0 103.9 1.3 71.5 34.7 103.8 1.9
109.4 1.8 108.0 8.7 64.2 35.8 33.7 0.5\n21.5 0.1 21.5 0.5 14.0 8.8 8.7 6.7\n26.3 37.4 74.9 26.9 60.3 40.9 34.8 34.3
48.6 19.5 60.5 27.4 88.5 3.5 98.7 6.0\n108.2 1.3 98.8 28.8 105.8 25.9 33.7 31.9\n23.8 1.8 30.8 3.3 29.0 2.9 30.2 2.5
65.3 2.0 71.7 4.4 58.5 23.8 55.5 16.7\n60.6 1.4 55.4 27.3 65.5 1.1 52.4 26.7\n102.8 0.4 81.5 19.6 58.1 26.1 46.3 17.7"""),
    "table17_vd4rl_tau": paper_table(VD4RL, TAUS, """
14.5 1.1 20.2 3.6 22.4 1.1 21.8 0.8\n43.1 3.2 37.2 5.3 35.0 3.7 26.6 1.9\n40.6 6.6 40.8 3.4 41.3 6.3 43.0 7.3
87.2 2.4 82.7 5.0 77.0 9.2 85.0 1.6\n12.1 1.9 14.8 1.0 14.2 1.6 14.6 2.9\n25.0 5.9 37.9 8.0 23.6 11.9 32.2 6.2
34.3 1.1 32.3 2.1 31.2 3.5 31.2 0.4\n23.9 4.7 18.9 3.9 25.1 6.6 24.3 7.6"""),  # Table 17
    "table23_vd4rl_horizon": paper_table(VD4RL, [""], """
15.4 1.5\n40.0 3.6\n45.4 7.5\n79.9 1.4\n15.5 3.0\n32.2 4.3\n36.4 2.1\n29.3 4.1"""),  # Table 23, H = 15
}
PER_RUN_ARGS = {"seed", "exp_name", "resume", "device", "compile", "cudagraphs", "bf16", "track", "wandb_project_name",
                "wandb_entity", "dataset_path", "world_model_path", "pretrain_path", "download"}


def find_run_dirs(patterns: list) -> list[Path]:
    """Run dirs named by the patterns (dirs or globs), searched recursively for config.json + eval.csv."""
    found = set()
    for pattern in patterns:
        for match in glob.glob(pattern) or [pattern]:
            path = Path(match)
            if not path.exists():
                raise SystemExit(f"{pattern}: no such run dir")
            found.update(csv_path.parent for csv_path in [*path.glob("eval.csv"), *path.rglob("*/eval.csv")]
                         if (csv_path.parent / "config.json").is_file())
    if not found:
        raise SystemExit(f"no run dirs (with config.json and eval.csv) under {' '.join(patterns)}")
    return sorted(found)


def read_run(run_dir: Path) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    with open(run_dir / "eval.csv") as file:
        rows = [{**row, "step": int(row["step"]), "mean": float(row["mean"])} for row in csv.DictReader(file)]
    final = [row["mean"] for row in rows if row["policy"] == "leq_final"]
    bc = [row["mean"] for row in rows if row["policy"] == "bc"]
    return {"dir": run_dir, "config": config, "curve": [(r["step"], r["mean"]) for r in rows if r["policy"] != "bc"],
            "final": final[-1] if final else None, "bc": bc[-1] if bc else None}


def group_runs(runs: list) -> dict:
    """{(experiment, task, setting): runs}; setting names the arguments that differ between a task's runs."""
    by_task = {}
    for run in runs:
        by_task.setdefault((run["config"]["args"]["exp_name"], run["config"]["env_id"]), []).append(run)
    groups = {}
    for (experiment, env_id), task_runs in by_task.items():
        keys = sorted({k for run in task_runs for k in run["config"]["args"]} - PER_RUN_ARGS)
        varied = [k for k in keys if len({json.dumps(run["config"]["args"].get(k)) for run in task_runs}) > 1]
        for run in task_runs:
            setting = ", ".join(f"{k}={run['config']['args'].get(k)}" for k in varied)
            groups.setdefault((experiment, env_id, setting), []).append(run)
    return dict(sorted(groups.items()))


def paper_score(experiment: str, env_id: str, setting: str) -> str:
    score = PAPER.get(experiment, MAIN).get(env_id, {}).get(setting)
    return f"{score[0]:.1f} ± {score[1]:.1f}" if score else "—"


def mean_std(scores: list) -> str:
    return f"{np.mean(scores):.1f} ± {np.std(scores):.1f}" if scores else "—"


def markdown_table(groups: dict) -> str:
    lines = ["| experiment | task | setting | ours (final score) | paper (LEQ) | seeds | unfinished | BC policy (ours) |",
             "|---|---|---|---|---|---|---|---|"]
    for (experiment, env_id, setting), runs in groups.items():
        finals = [run["final"] for run in runs if run["final"] is not None]
        bc = [run["bc"] for run in runs if run["final"] is not None and run["bc"] is not None]
        lines.append(f"| {experiment} | {env_id} | {setting or '—'} | {mean_std(finals)} | "
                     f"{paper_score(experiment, env_id, setting)} | {len(finals)} | {len(runs) - len(finals)} | "
                     f"{mean_std(bc)} |")
    return "\n".join(lines) + "\n"


def generated_data_note(runs: list) -> str:
    own = sorted({run["config"]["env_id"] for run in runs if str(run["config"].get("dataset", "")).startswith("minari:leq/")})
    return f"\nNote: {', '.join(own)} ran on data generated by this project, not the paper's datasets.\n" if own else ""


def plot_curve(key: tuple, runs: list, path: Path) -> None:
    """Score against step: one line per seed (periodic evaluations, then the final one), and the mean over seeds
    at the steps every seed was evaluated."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in sorted(runs, key=lambda run: run["config"]["seed"]):
        steps, scores = zip(*run["curve"]) if run["curve"] else ((), ())
        ax.plot(steps, scores, marker=".", alpha=0.5, label=f"seed {run['config']['seed']}")
    common = sorted(set.intersection(*(set(dict(run["curve"])) for run in runs)))
    if common:
        ax.plot(common, [np.mean([dict(run["curve"])[s] for run in runs]) for s in common], "k-", lw=2, label="mean")
    experiment, env_id, setting = key
    ax.set(xlabel="gradient step", ylabel="normalised score (x100)",
           title=f"{env_id} ({experiment}{', ' + setting if setting else ''})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="run dirs or globs (searched recursively)")
    parser.add_argument("--out", default="results/results.md", help="markdown file to write; curves go beside it")
    args = parser.parse_args(argv)
    runs = [read_run(run_dir) for run_dir in find_run_dirs(args.run_dirs)]
    groups = group_runs(runs)
    text = markdown_table(groups) + generated_data_note(runs)
    out = Path(args.out)
    curves = out.parent / "curves"
    curves.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    for key, group in groups.items():
        name = re.sub(r"[^\w.=-]+", "_", "__".join(part for part in key if part))
        plot_curve(key, group, curves / f"{name}.png")
    print(text + f"\nwrote {out} and {len(groups)} learning curves in {curves}/")
    return text


if __name__ == "__main__":
    main()
