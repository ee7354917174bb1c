"""evaluate.py's plumbing and output, so that evaluate.py reads as the experiment: the runs' configs and reuse
(sub_config, run_once), the measures read off each arm beside the judges' (hacking_gap, instability), the
diagnostics beside the verdicts (load_iqa, rm_on_policies), and the output — the arm and reward-model
tables, the figures, report.md and results.json — made from the numbers evaluate.py computed, never the
other way round.

    report.figures(cfg, arms, rms, shown, val, out_dir)     # the paper's Fig. 1b / 1c in the toy world
    report.write(cfg, dev, t0, t_train, rcfg, arms, ...)    # RM tables, figures, report.md, results.json

What a reader should see (docs/method.md "The honest toy world"):
- curves.png: one row per algorithm; per RL step the proxy each arm optimised (the RM stage it ends on — RM_0
  for global, RM_N otherwise — scoring its samples) minus the placebo's score by the same stage, the gold
  judge, and gold minus the placebo's: the paired differences take out the batch, which every arm of a seed
  shares. One faint line per training seed, their mean bold; the controls dashed. Reward hacking is a proxy
  curve that rises while the gold curve rises too (lower gold is better).
- samples.png: the held-out crops where the arms differ most: every arm's SR (LR, SFT and HR beside them)
  above its difference from SFT's SR (×4, so small local changes show).
- hacked.png: per algorithm, the global arm's most-rewarded held-out sample (highest RM_0 score) beside its
  gold map, and SFT's sample of the same crop with its gold map: what a high proxy bought.
- rm_maps.png: held-out FGR examples, their label map, and what each RM stage's map makes of them.
Kept apart from evaluate.py, which trains and judges, so both read on their own (a file: at most 450 lines).
"""

import dataclasses
import json
import math
import os
import shlex
import shutil
import time

import torch

import config
import data
import images
import rundir
import train_rm
import validation
from metrics import label_map
from policy import load_policy
from validation import format_table, policy_metrics, validate

# ----------------------------------------------------------------------------------------------------
# The runs: evaluate.train_all's sub-configs and reuse rule (make's), and what each run logged


def sub_config(script, preset: str, args: str, **fixed):
    """A train_rm / train_rl (the module: script) Config as its CLI would build it (preset, then `args`),
    then evaluate's knobs."""
    sub = config.parse(script.Config, [f"--preset={preset}", *shlex.split(args)], script.PRESETS)
    return dataclasses.replace(sub, **fixed)


def run_once(main_fn, cfg, final: str, inputs: list, log: list) -> None:
    """main_fn(cfg) unless cfg.out_dir holds a finished run of exactly this config, newer than its inputs.
    Appends (out_dir, "reused" | "trained", seconds) to log: the report's Runs table."""
    path = os.path.join(cfg.out_dir, "config.json")
    want = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))  # as rundir.save_config wrote it
    done = os.path.isfile(final) and os.path.isfile(path)
    if done:
        with open(path) as f:
            saved = {k: v for k, v in json.load(f).items() if k != "_script"}  # rundir.save_config's tag
        same = saved == want
        done = same and all(os.path.getmtime(final) >= os.path.getmtime(i) for i in inputs)
    if done:
        log.append((cfg.out_dir, "reused", 0.0))
        print(f"reusing {cfg.out_dir} (same config, newer than its inputs)")
        return
    shutil.rmtree(cfg.out_dir, ignore_errors=True)  # stale: e.g. train_sft would reuse an old policy_sft
    t0 = time.time()
    main_fn(cfg)
    log.append((cfg.out_dir, "trained", time.time() - t0))


def rl_rows(run_dir: str) -> list:
    """The RL rows of a run's metrics.jsonl (train_rl.py: one per step), in step order."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r.get("phase") == "rl"]


def summary(run_dir: str) -> tuple:
    """("a → b" of reward_final, of gold): means over the first and the last 10 % of a run's RL rows — did RL
    raise RM_N's score, and did the gold judge agree (hacking = proxy up, gold not)? ("", "") if not RL."""
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = rl_rows(run_dir) if os.path.isfile(path) else []
    if not rows:
        return "", ""
    n = max(1, len(rows) // 10)
    mean = lambda part, key: sum(r[key] for r in part) / len(part)  # noqa: E731
    return tuple(f"{mean(rows[:n], k):.3f} → {mean(rows[-n:], k):.3f}" for k in ("reward_final", "gold"))


def trailing_mean(v: torch.Tensor, w: int) -> torch.Tensor:
    """Mean of the last ≤ w values at every index (the training curves' smoothing), by cumulative sums."""
    c = torch.cat([v.new_zeros(1), v.cumsum(0)])
    i = torch.arange(1, len(v) + 1)
    lo = (i - w).clamp(min=0)
    return (c[i] - c[lo]) / (i - lo)


# ----------------------------------------------------------------------------------------------------
# Measures evaluate.evaluate_arms reads off each arm beside the judges': pure functions, pinned by hand
# examples in tests/test_evaluate.py


def hacking_gap(proxy, proxy_sft, quality, quality_sft) -> tuple[float, float, float]:
    """(gap, Δproxy_z, Δquality_z): each improvement over the SFT start in units of its (sample) std over
    the SFT outputs; gap = Δproxy_z − Δquality_z. Positive = the proxy rose more than the gold quality
    supports: reward hacking ("The honest toy world", docs/method.md). Inputs: per-sample values, any
    shape."""
    dp = float((proxy.mean() - proxy_sft.mean()) / proxy_sft.std().clamp_min(1e-8))
    dq = float((quality.mean() - quality_sft.mean()) / quality_sft.std().clamp_min(1e-8))
    return dp - dq, dp, dq


def instability(values, tail: float = 0.2, window: int = 5) -> tuple[float, float]:
    """(tail_std, max_drop) of a training curve (reward_final per logged RL step).

    tail_std: sample std over the last `tail` share of the rows (at least 2): how much it still shakes.
    max_drop: the "logged means" are means over consecutive, non-overlapping windows of `window` rows (a
    trailing partial window is dropped); max_drop is the largest fall from one window mean to the next, ≥ 0
    (0 for a curve that never falls). NaN where there are too few rows (< 2 rows, or < 2 full windows)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = len(v)
    tail_std = float(v[-max(2, math.ceil(tail * n)) :].std()) if n >= 2 else math.nan
    w = n // window
    if w < 2:
        return tail_std, math.nan
    means = v[: w * window].view(w, window).mean(1)
    return tail_std, float((means[:-1] - means[1:]).max().clamp_min(0))


def arm_measures(per: dict, sft, run_dir, acfg) -> dict:
    """One seed of one arm, beside judge()'s means: `gap`, the hacking gap against the SFT outputs (once SFT
    is judged; proxy = the RM stage the arm optimised last: RM_0 for global and the placebo, else RM_N), and
    for an RL arm its training curve's tail_std / max_drop (instability of reward_final). per, sft: judge()'s
    per-sample numbers; run_dir, acfg: the arm's run (None for bicubic and SFT) and its RL config."""
    r = {}
    if sft is not None:
        proxy = "proxy0" if run_dir and acfg.curriculum == "global" else "proxyN"
        r["gap"] = hacking_gap(per[proxy], sft[proxy], 1 - per["gold"], 1 - sft["gold"])[0]
    if run_dir:  # instability of the training curve (bicubic, SFT have none)
        r["tail_std"], r["max_drop"] = instability([x["reward_final"] for x in rl_rows(run_dir)])
    return r


# ----------------------------------------------------------------------------------------------------
# Diagnostics beside the verdicts: the paper's IQA metrics where present, the RMs on the policies' samples


def load_iqa(dev):
    """pyiqa's LPIPS / MUSIQ / MANIQA / CLIPIQA (the paper's metrics, docs/method.md §6) if pyiqa and its
    weights are present offline; else None and one line saying so. Returns (metrics or None, message)."""
    try:
        import pyiqa

        return {n: pyiqa.create_metric(n, device=dev) for n in ("lpips", "musiq", "maniqa", "clipiqa")}, ""
    except Exception as e:  # not installed, or its weights are not on disk (nothing is downloaded here)
        msg = f"pyiqa metrics (LPIPS/MUSIQ/MANIQA/CLIPIQA) skipped: {type(e).__name__}: {str(e)[:100]}"
        print(msg)
        return None, msg


POLICY_TABLE = ("sft", "placebo", "global", "ccl", "ccl_coevolve")  # whose samples the RMs are checked on


@torch.no_grad()
def rm_on_policies(cfg, arms, rms, hr, lr, dev) -> list:
    """Does the RM see what RL paints? For each policy of POLICY_TABLE (training seed 0) G = 4 samples of
    every other held-out crop (hr, lr: evaluate.eval_set's), and every RM stage's map AUROC against the gold
    map and within-group rank correlation with gold (policy_metrics; the global arm's policy is the hacked
    one)."""
    rows, g = [], config.generator("eval/policy_groups", cfg.seed)
    for name in (n for n in POLICY_TABLE if n in arms):
        groups = train_rm.policy_groups(load_policy(arms[name][0][1], dev), hr[::2], lr[::2], 4, g)
        rows += [{"policy": name, "stage": k, **policy_metrics(rm, groups)} for k, rm in enumerate(rms)]
    return rows


# ----------------------------------------------------------------------------------------------------
# Tables: every cell is a mean over training seeds with their std (cell); ↑ higher / ↓ lower is better


COLUMNS = [("gold", "gold M̄ ↓"), ("gain", "oracle-norm. gain ↑"), ("psnr", "PSNR-Y ↑"), ("ssim", "SSIM-Y ↑")]
COLUMNS += [("area", "artifact area ↓"), ("judge_ssim", "1−SSIM ↓"), ("judge_pix", "pixel judge ↓")]
COLUMNS += [("proxy0", "RM_0 ↑"), ("proxyN", "RM_N ↑"), ("gap_vs_placebo", "hacking gap − placebo's ↓")]
COLUMNS += [("tail_std", "tail std ↓")]


def md_table(header: list, rows: list) -> str:
    """A Markdown table (report.md renders it; the terminal prints it as is)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def cell(vals) -> str:
    """Mean over seeds, ± their std when there are several; '—' for a missing or NaN value."""
    v = [x for x in vals or [] if x is not None and x == x]
    if not v:
        return "—"
    m = sum(v) / len(v)
    return f"{m:.4g}" if len(v) == 1 else f"{m:.4g} ± {torch.tensor(v).std().item():.2g}"


def arm_table(results: dict, extra: list) -> str:
    """One row per arm (bicubic, SFT, the controls, the RL arms) and the COLUMNS (+ pyiqa's, if present).
    The hacking gap is shown minus the placebo's: random rewards move a policy too, and only the part of the
    gap beyond that is the reward's doing."""
    gaps = results.get("placebo", {}).get("gap", [])
    gap0 = sum(gaps) / len(gaps) if gaps else float("nan")  # the placebo's mean gap: what noise alone does
    cols = COLUMNS + [(k, k.upper()) for k in extra]
    rows = []
    for name, res in results.items():
        res = {**res, "gap_vs_placebo": [g - gap0 for g in res.get("gap", [])]}
        rows.append([name] + [cell(res.get(k)) for k, _ in cols])
    return md_table(["arm"] + [h for _, h in cols], rows)


def rm_table(rows: list) -> str:
    """Rows of dicts with a "stage" (validation.validate, .policy_metrics) as a table; None reads '—'."""
    keys = [k for k in rows[0] if k != "stage"]
    f = lambda x: "—" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))  # noqa: E731
    return md_table(["stage"] + keys, [[f"RM_{r['stage']}"] + [f(r[k]) for k in keys] for r in rows])


def image_grid(plt, titles: list, rows: list, path: str) -> None:
    """A grid figure: rows of cells (image (C, H, W) or None, label); 1-channel maps in magma, [0, 1]."""
    fig, axes = plt.subplots(
        len(rows), len(titles), figsize=(1.7 * len(titles), 1.8 * len(rows)), squeeze=False
    )
    for j, t in enumerate(titles):
        axes[0, j].set_title(t, fontsize=8)
    for i, row in enumerate(rows):
        for ax, (x, label) in zip(axes[i], row):
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_frame_on(x is not None)
            if x is not None:
                kw = dict(cmap="magma", vmin=0, vmax=1) if x.shape[0] == 1 else {}
                ax.imshow(x[0].numpy() if x.shape[0] == 1 else x.clamp(0, 1).permute(1, 2, 0).numpy(), **kw)
            ax.set_xlabel(label, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@torch.no_grad()
def figures(cfg, arms, rms, shown, val, out_dir: str) -> None:
    """curves.png (the paper's Fig. 1b), samples.png (Fig. 1c), hacked.png and rm_maps.png in out_dir."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    # Fig. 1b, one row per algorithm: the proxy each arm optimised — the RM stage it ends on, RM_0 for global,
    # RM_N otherwise, scoring its samples (logged as reward0 / reward_final) — and gold per RL step; each
    # seed faint, the mean over seeds (trailing mean of 5 steps) bold; the controls dashed. Every arm of one
    # seed sees the same batches (seeded by seed and step), so the raw curves move with the batch; the paired
    # panels take that out: the arm minus the same algorithm's placebo, same seed, same step.
    # series[arm][key]: (seeds, steps) of the RL arms' logged curves; groups: algorithm → its arms.
    series, steps, proxy, groups = {}, {}, {}, {}
    for name, runs in ((n, r) for n, r in arms.items() if r[0][0]):  # RL arms only
        curves = [rl_rows(run_dir) for run_dir, _, _ in runs]  # one curve per training seed
        steps[name] = [x["step"] for x in curves[0]]
        series[name] = {k: torch.tensor([[x[k] for x in c] for c in curves], dtype=torch.float64)
                        for k in ("reward0", "reward_final", "gold")}  # fmt: skip
        proxy[name] = "reward0" if runs[0][2].curriculum == "global" else "reward_final"
        groups.setdefault(runs[0][2].algo, []).append(name)
    panels = [("dproxy", "proxy (RM_0 for global, else RM_N) − the placebo's ↑"),
              ("gold", "gold (mean label map vs HR) ↓"),
              ("delta", "gold − its placebo's, same batches ↓")]  # fmt: skip
    fig, axes = plt.subplots(len(groups), 3, figsize=(16.5, 3.6 * len(groups)), squeeze=False)
    for row, (algo, names) in zip(axes, groups.items()):
        placebo = next((n for n in names if arms[n][0][2].reward == "placebo"), None)
        for i, name in enumerate(names):
            arm, v_of = name.removeprefix(f"{algo}_"), series[name]
            if placebo is not None:  # paired with the placebo on the same batches (its own delta: the 0 line)
                pl = series[placebo]
                v_of["delta"] = v_of["gold"] - pl["gold"]
                if name != placebo:  # its proxy is random numbers: no proxy curve of its own
                    v_of["dproxy"] = v_of[proxy[name]] - pl[proxy[name]]  # the placebo's samples, same stage
            ls = "--" if arm in ("placebo", "oracle_map", "oracle_score") else "-"
            for ax, (key, _) in zip(row, panels):
                if key not in v_of:
                    continue
                for seed_curve in v_of[key]:
                    ax.plot(steps[name], seed_curve, color=f"C{i}", alpha=0.15, lw=0.7)
                mean = trailing_mean(v_of[key].mean(0), 5)
                ax.plot(steps[name], mean, color=f"C{i}", lw=1.6, ls=ls, label=arm)
        for ax, (_, t) in zip(row, panels):
            ax.set(xlabel="RL step", title=f"{algo}: {t}")
        row[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curves.png"), dpi=110)
    # Fig. 1c: the crops where the arms differ most (largest spread of per-crop gold over the arms): a row of
    # images (LR, SFT, every RL arm's SR, HR) and below it each SR's difference from SFT's, ×4 and centred
    # on grey, so that the local changes RL made — and the artifacts it painted — are visible.
    hr, lr, srs = shown
    golds = torch.stack([label_map(s, hr).mean((1, 2, 3)) for s in srs.values()])  # (arms, crops)
    idx = golds.std(0).argsort(descending=True)[: cfg.n_show].sort().values
    names = ["sft"] + [n for n in srs if n not in ("sft", "bicubic")]
    gold_of = dict(zip(srs, golds))  # arm → per-crop gold
    rows = []
    for i in idx.tolist():
        rows.append([(data.upsample(lr[i : i + 1], "nearest")[0], "LR")] + [(srs[n][i], "") for n in names])
        rows[-1].append((hr[i], "HR"))
        diffs = [((srs[n][i] - srs["sft"][i]) * 4 + 0.5).clamp(0, 1) if n != "sft" else None for n in names]
        rows.append([(None, "")] + [(d, f"gold {gold_of[n][i]:.3f}") for d, n in zip(diffs, names)])
        rows[-1].append((None, ""))
    image_grid(plt, ["LR"] + names + ["HR"], rows, os.path.join(out_dir, "samples.png"))
    # What a high proxy bought: each algorithm's global arm, its most-rewarded held-out sample (RM_0, the
    # proxy it optimised) beside its gold map, then SFT's sample of the same crop and its gold map.
    rows, dev = [], next(rms[0].parameters()).device
    proxy = lambda x: rms[0](x.to(dev))[0].cpu()  # noqa: E731
    hacked = [
        n for n, r in arms.items() if r[0][0] and (r[0][2].reward, r[0][2].curriculum) == ("rm", "global")
    ]
    for g in hacked:  # the global arm of each algorithm: RM_0 was its reward
        i = int(proxy(srs[g]).argmax())
        row = []
        for n in (g, "sft"):
            m = label_map(srs[n][i : i + 1], hr[i : i + 1])[0]
            row += [
                (srs[n][i], f"{n}: RM_0 {float(proxy(srs[n][i : i + 1])):.3f}"),
                (m, f"gold {m.mean():.3f}"),
            ]
        rows.append(row + [(hr[i], "HR")])
    if rows:
        titles = ["most-rewarded sample", "its gold map", "SFT, same crop", "its gold map", "HR"]
        image_grid(plt, titles, rows, os.path.join(out_dir, "hacked.png"))
    # RM maps on held-out FGR examples: image | label map | RM_1 … RM_N maps.
    order = val["dmap_syn"].mean((1, 2, 3)).argsort(descending=True)
    pick = order[torch.linspace(0, len(order) // 2, cfg.n_show).long()]  # clear cases, not only the easiest
    # RM_0 has no map: the columns start at RM_1 (the coarsest map, upsampled) and end at RM_N (full size).
    x, dev = val["syn"][pick], next(rms[0].parameters()).device
    cols = [x, val["dmap_syn"][pick]] + [rm(x.to(dev))[1].cpu() for rm in rms[1:]]
    rows = [[(c[i], "") for c in cols] for i in range(len(pick))]
    titles = ["image", "label map"] + [f"RM_{k}" for k in range(1, len(rms))]
    image_grid(plt, titles, rows, os.path.join(out_dir, "rm_maps.png"))
    plt.close("all")


def report_text(cfg, dev, t_all, t_train, found, k_se, table, rm_rows, pol_rows, runs, iqa_msg) -> str:
    """report.md, from the same numbers as results.json: the verdicts first (each claim, its outcome, the
    difference and its SE), then the rule that decided them, the arm table with a legend, the RM tables, the
    figures and the runs (reused or trained, seconds, each RL run's first → last 10 %: summary)."""
    # One line per claim: the outcome is evaluate.outcome's, the numbers are the two arms' per-seed means.
    lines = [
        f"- **{c}: {o}** — difference {d:+.4g} ± {se:.2g} (SE over seeds)" for c, (o, d, se) in found.items()
    ]
    return f"""# FinPercep-RM in the toy world: the comparison of docs/method.md §6

Generated by `python evaluate.py` in {t_all / 60:.1f} min ({t_train / 60:.1f} min training) on {dev};
{cfg.arm_steps} RL steps per arm, {cfg.n_seeds} training seeds per RL arm, algorithms {cfg.algos} (arms of the
first by their plain names, the others' prefixed with the algorithm).

## Verdicts (generated from the numbers below by `evaluate.verdicts`)
{chr(10).join(lines)}

The rule, one for every claim: a difference between two arms counts when it exceeds {k_se} standard errors
over training seeds (SE = sqrt(SE_a² + SE_b²); bicubic and SFT are single fixed policies with SE 0; one seed
gives no SE, so "within noise"). "reproduced" = beyond noise in the claim's direction, "not reproduced" =
beyond noise against it. Hacking: the global arm's RM_0 score exceeds the placebo's beyond noise while its
gold is not better beyond noise.

## The arms on held-out crops
{cfg.eval_n} crops of {cfg.eval_crop}×{cfg.eval_crop} px from the held-out photos
({", ".join(images.HELDOUT_PHOTOS)}), ×4; the first half from clean bicubic LR, the second from LR degraded
at strength {cfg.eval_degrade}; each policy sampled with the K and eta it was trained with,
{cfg.eval_seeds} sampling seed(s). Mean ± std over training seeds.

{table}

gold M̄ = mean label map vs HR (the gold judge, lower = better); oracle-normalised gain = (gold_SFT −
gold_arm) / (gold_SFT − gold_oracle_map): 0 = SFT, 1 = the oracle; artifact area = share of pixels with label
map > 0.1; judges the RMs never learned from: 1 − SSIM and the label function's pixel term alone (α = 1);
RM_0, RM_N = the proxies' mean scores; hacking gap = Δproxy z − Δgold z against SFT (in stds of the SFT
outputs; proxy = the stage the arm optimised last), shown minus the placebo's (what noise alone does);
tail std = std of reward_final over the last 20 % of RL steps. {iqa_msg}

## Reward-model stages (validation.validate on train_rm's held-out triplets)
{rm_table(rm_rows)}

## Reward models on what the policies paint (validation.policy_metrics)
G = 4 samples of each of {cfg.eval_n // 2} held-out LR crops per policy (training seed 0): pol_auroc = the
map's AUROC against the gold map (> 0.1), pol_rank = within-group rank correlation of the score with gold
quality (what the RL advantage compares). The global arm's policy is the one that hacked RM_0.

{rm_table(pol_rows)}

## Figures
![training curves](curves.png)

![where the arms differ most: every arm's SR; below each, its difference from SFT's, ×4](samples.png)

![what a high proxy bought: the global arm's most-rewarded sample, its gold map; SFT's](hacked.png)

![RM maps on held-out examples](rm_maps.png)

## Runs
{md_table(["run", "", "seconds", "reward_final first → last 10 %", "gold first → last 10 %"], runs)}
"""


def write(cfg, dev, t0, t_train, rcfg, arms, rms, results, shown, found, k_se, log, iqa, iqa_msg) -> None:
    """After evaluate.main has judged the arms and decided the claims: the reward-model tables, the figures,
    report.md and results.json in cfg.out_dir, and the tables and verdicts printed. t0: the job's start."""
    # The reward-model table: train_rm's own validation on its own fixed held-out set, every stage.
    val = validation.make_val_set(rcfg.data, rcfg.val_n, rcfg.crop, rcfg.seed)
    rm_rows = [{"stage": k, **validate(rm, val)} for k, rm in enumerate(rms)]
    pol_rows = rm_on_policies(cfg, arms, rms, *shown[:2], dev)  # on eval_set's crops (shown: hr, lr, …)
    figures(cfg, arms, rms, shown, val, cfg.out_dir)
    t_all = time.time() - t0
    table = arm_table(results, list(iqa or {}))
    runs = [(os.path.relpath(p, cfg.out_dir), s, f"{t:.0f}", *summary(p)) for p, s, t in log]
    text = report_text(cfg, dev, t_all, t_train, found, k_se, table, rm_rows, pol_rows, runs, iqa_msg)
    with open(os.path.join(cfg.out_dir, "report.md"), "w") as f:
        f.write(text)
    keys = ("gold", "psnr", "ssim", "proxy0", "proxyN", "gain", "tail_std")  # results.json: per seed
    out = {
        "wall_s": t_all,
        "n_seeds": cfg.n_seeds,
        "arms": {n: {k: res[k] for k in keys if k in res} for n, res in results.items()},
        "verdicts": {c: o for c, (o, _, _) in found.items()},
        "rm_on_policies": pol_rows,
    }
    rundir.write_json(os.path.join(cfg.out_dir, "results.json"), out)
    print(table + "\n\n" + format_table(rm_rows) + "\n")
    print("\n".join(f"{c}: {o}" for c, (o, _, _) in found.items()))
    print(f"report: {os.path.join(cfg.out_dir, 'report.md')} ({t_all / 60:.1f} min)")
