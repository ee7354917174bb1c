"""Does it work? The paper's comparison (method.md §6) in the toy world, its report, and two user commands.

    python evaluate.py                                  # the main job: SFT → RM → 4 arms → out/eval/report.md
    python evaluate.py --compare_algos --n_seeds=3      # + the ReFL arms; every RL arm with seeds 0, 1, 2
    python evaluate.py --device=cuda --preset=gpu       # a real run on one GPU
    python evaluate.py score a.png b.jpg --rm=out/eval/work/rm/rm_stage3      # scores + degradation overlays
    python evaluate.py upscale lr.png --policy=out/eval/work/rl_pg_ccl_s0/policy_final --out_dir=out/sr

The main job runs the project in the faithful order (design.md "Data flow") through the scripts' own
`main(cfg)`, never a copy of their loops, and keeps every run under <out_dir>/work:
  work/sft                            train_rl.main(sft_only): the common start of every arm
  work/rm                             train_rm.main(policy=work/sft/policy_sft): RM_0 … RM_N
  work/rl_{algo}_{curriculum}_s{seed} train_rl.main(init_policy=work/sft/policy_sft): the RL arms
The arms: the SFT policy (no RL); RL on RM_0 only (curriculum=global, the paper's global-IQA baseline); RL on
RM_N from step 0 (curriculum=none, the "no CCL" ablation); RL under the co-evolutionary curriculum (ccl).
A run is reused only when its config.json equals the config it would get now and its final checkpoint
exists and is newer than the checkpoints it read (make's rule); anything else is deleted and run again.
Every arm is then judged on held-out photos by judges the reward models never learned from, and report.md
says which claims of the paper this run reproduces, by the explicit rules of `verdict`: the sentences come
from the numbers, never the other way round ("The honest toy world", method.md).
"""

import dataclasses
import json
import math
import os
import shlex
import shutil
import time
from dataclasses import dataclass

import torch

import config
import data
import train_rl
import train_rm
from apply import overlay, score, upscale
from metrics import label_map, psnr_y, ssim_map_y
from policy import load_policy


@dataclass
class Config:
    out_dir: str = "out/eval"  # report.md, figures, work/ (the runs it trains): a fresh out_dir = scratch
    data: str = "builtin"  # training source (evaluation: builtin's held-out photos); score/upscale: lr:DIR
    seed: int = 0  # SFT and RM use it; the RL arms use seed … seed + n_seeds − 1
    device: str = "auto"  # auto = cuda when present
    preset: str = "cpu"  # cpu | gpu: also selects train_rm's and train_rl's preset of the same name
    n_seeds: int = 1  # RL seeds per arm; > 1 adds ± (std over seeds) to every number of the arm table
    compare_algos: bool = False  # also the other algorithm's arms (refl beside pg)
    algo: str = "pg"  # the algorithm of the four default arms (train_rl's default)
    arm_steps: int = 60  # RL steps per arm, THE budget knob: ≈ 1.8 min per arm on 2 CPU cores (≈ 1.8 s/step)
    sft_steps: int = 0  # SFT steps; 0 = train_rl's default for the preset
    rm_steps: tuple = ()  # train_rm's steps per stage RM_0 … RM_N, e.g. 120,60,60,150; empty = its default
    rm_args: str = ""  # more train_rm flags, e.g. "--widths=8,16,16,16 --batch=8" (the tests' tiny models)
    rl_args: str = ""  # more train_rl flags for SFT and every arm, e.g. "--group=8 --lam_px=1"
    eval_n: int = 32  # held-out crops: the first half with clean LR, the second half degraded
    eval_crop: int = 64  # HR crop size (the acceptance checks' 64×64; LR is 16×16)
    eval_degrade: float = 0.5  # strength of the degraded half: train_rl's degrade_max, the LR RL saw
    eval_seeds: int = 2  # sampling seeds per arm: every metric is averaged over them
    n_show: int = 3  # held-out crops in the figures (2–4 read well)
    # --- the user commands (apply.py)
    rm: str = ""  # score: an RM stage directory, e.g. out/eval/work/rm/rm_stage3
    policy: str = ""  # upscale: a policy directory, e.g. out/eval/work/rl_pg_ccl_s0/policy_final
    tile: int = 0  # tile side in input pixels; 0 = 256 for score, 128 (LR px) for upscale; overlap = tile/8
    tile_batch: int = 8  # tiles per forward pass (bounds memory on large images)
    steps: int = 0  # upscale: DDIM steps K; 0 = the policy's own default
    eta: float = -1.0  # upscale: DDIM eta; < 0 = the policy's own default (1.0, as RL trained it)


PRESETS = {
    "cpu": {},
    # One GPU: train_rm/train_rl switch to their gpu presets too; longer arms, more held-out crops and seeds.
    "gpu": {"arm_steps": 1000, "eval_n": 128, "n_seeds": 3},
}
CURRICULA = ("global", "none", "ccl")  # the three RL arms, in the order of method.md §6's story
# The verdict's thresholds [ours]: explicit, so a reader can disagree with a rule rather than with a sentence.
T_SIG = 2.0  # |paired t| over the held-out crops above which a difference is beyond noise (≈ 95 %)
Z_MIN = 0.1  # … and at least a tenth of the SFT outputs' std, else it is too small to mean anything
STABLE_RATIO = 1.25  # "less stable": a tail std of reward_final more than 25 % above the other arm's


# ----------------------------------------------------------------------------------------------------
# 1. The runs: SFT → RM → RL arms, each through its script's own main(cfg), reused when up to date


def sub_config(cls, presets: dict, preset: str, args: str, **fixed):
    """A train_rm / train_rl Config as its CLI would build it (preset, then `args`), then evaluate's knobs."""
    sub = config.parse(cls, [f"--preset={preset}", *shlex.split(args)], presets)
    return dataclasses.replace(sub, **fixed)


def run_once(main_fn, cfg, final: str, inputs: list, log: list) -> None:
    """main_fn(cfg) unless cfg.out_dir holds a finished run of exactly this config, newer than its inputs."""
    path = os.path.join(cfg.out_dir, "config.json")
    want = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))  # as config.save_config wrote it
    done = os.path.isfile(final) and os.path.isfile(path)
    if done:
        with open(path) as f:
            same = json.load(f) == want
        done = same and all(os.path.getmtime(final) >= os.path.getmtime(i) for i in inputs)
    if done:
        log.append((cfg.out_dir, "reused", 0.0))
        print(f"reusing {cfg.out_dir} (same config, newer than its inputs)")
        return
    shutil.rmtree(cfg.out_dir, ignore_errors=True)  # stale: e.g. train_sft would reuse an old policy_sft
    t0 = time.time()
    main_fn(cfg)
    log.append((cfg.out_dir, "trained", time.time() - t0))


def train_all(cfg: Config, log: list):
    """Train (or reuse) everything. Returns (rm_dir, arms): arms maps a name to a list (one per seed) of
    (run_dir or None for SFT, policy_dir, RL config)."""
    work = os.path.join(cfg.out_dir, "work")
    common = {"data": cfg.data, "device": cfg.device}
    rl = sub_config(train_rl.Config, train_rl.PRESETS, cfg.preset, cfg.rl_args, seed=cfg.seed, **common)
    if cfg.sft_steps:
        rl = dataclasses.replace(rl, sft_steps=cfg.sft_steps)
    # SFT once: the start of every arm (and the policy whose samples join the RM's SR zoo).
    sft_dir = os.path.join(work, "sft")
    sft_policy = os.path.join(sft_dir, "policy_sft")
    sft_done = os.path.join(sft_policy, "policy.json")
    run_once(train_rl.main, dataclasses.replace(rl, out_dir=sft_dir, sft_only=True), sft_done, [], log)
    rl = dataclasses.replace(rl, sft_only=False)  # whatever rl_args said: the arms do RL
    # The RM stages, trained with the SFT policy's samples in the zoo (method.md §2: "several diffusion SR
    # models"; design.md: SFT → RM → RL).
    steps = {"stage_steps": tuple(cfg.rm_steps)} if cfg.rm_steps else {}
    rcfg = sub_config(train_rm.Config, train_rm.PRESETS, cfg.preset, cfg.rm_args, **common, **steps)
    rm_dir = os.path.join(work, "rm")
    rcfg = dataclasses.replace(rcfg, out_dir=rm_dir, policy=sft_policy, seed=cfg.seed)
    rm_done = os.path.join(rm_dir, f"rm_stage{rcfg.n_stages}", "rm.json")
    run_once(train_rm.main, rcfg, rm_done, [sft_done], log)
    # The RL arms: same start, same seeds, same budget; only the reward schedule (and the algorithm) differ.
    arms = {"SFT": [(None, sft_policy, rl)]}
    for algo in [cfg.algo] + ([a for a in ("pg", "refl") if a != cfg.algo] if cfg.compare_algos else []):
        for cur in CURRICULA:
            arms[f"{algo}/{cur}"] = []
            for seed in range(cfg.seed, cfg.seed + cfg.n_seeds):
                out = os.path.join(work, f"rl_{algo}_{cur}_s{seed}")
                acfg = dataclasses.replace(rl, out_dir=out, init_policy=sft_policy, rm_dir=rm_dir, seed=seed)
                acfg = dataclasses.replace(acfg, algo=algo, curriculum=cur, steps=cfg.arm_steps)
                final = os.path.join(out, "policy_final")
                run_once(train_rl.main, acfg, os.path.join(final, "policy.json"), [sft_done, rm_done], log)
                arms[f"{algo}/{cur}"].append((out, final, acfg))
    return rcfg, arms


# ----------------------------------------------------------------------------------------------------
# 2. The arithmetic of the comparison: pure functions, pinned by hand examples in tests/test_evaluate.py


def hacking_gap(proxy, proxy_sft, quality, quality_sft) -> tuple[float, float, float]:
    """(gap, Δproxy_z, Δquality_z): each improvement over the SFT start in units of its (sample) std over
    the SFT outputs; gap = Δproxy_z − Δquality_z. Positive = the proxy rose more than the gold quality
    supports: reward hacking ("The honest toy world", method.md). Inputs: per-sample values, any shape."""
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


def trailing_mean(v: torch.Tensor, w: int) -> torch.Tensor:
    """Mean of the last ≤ w values at every index (the training curves' smoothing), by cumulative sums."""
    c = torch.cat([v.new_zeros(1), v.cumsum(0)])
    i = torch.arange(1, len(v) + 1)
    lo = (i - w).clamp(min=0)
    return (c[i] - c[lo]) / (i - lo)


def paired_t(a, b) -> tuple[float, float]:
    """(mean(a − b), paired t statistic) over matched samples (the same held-out crops)."""
    d = (torch.as_tensor(a) - torch.as_tensor(b)).double().flatten()
    se = d.std() / math.sqrt(len(d)) if len(d) > 1 else torch.tensor(math.nan)
    return float(d.mean()), float(d.mean() / se.clamp_min(1e-12))


def direction(t: float, dz: float) -> int:
    """+1 rose, −1 fell, 0 no change. A change must be beyond noise (paired |t| > T_SIG) and not negligible
    (|Δz| ≥ Z_MIN, Δ in units of the std over the SFT outputs): every arm is sampled with the same noise
    seeds on the same crops, so a consistent shift of 1e-4 can have a large t and still mean nothing."""
    if math.isnan(t) or math.isnan(dz) or abs(t) <= T_SIG or abs(dz) < Z_MIN:
        return 0
    return 1 if dz > 0 else -1


# ----------------------------------------------------------------------------------------------------
# 3. Judging the arms on held-out crops


def eval_set(cfg: Config):
    """The fixed held-out set: eval_n crops of the built-in held-out photos (data.HELDOUT_PHOTOS, never
    trained on). First half: clean bicubic LR (strength 0, the classical protocol); second half: degraded
    at eval_degrade (real-world LR, as SFT and RL saw it). One generator seed: the same set for every arm."""
    g = torch.Generator().manual_seed(cfg.seed + 3000)
    hr = data.load_pool("builtin", "val", cfg.eval_crop).crops(cfg.eval_n, cfg.eval_crop, g)
    half = cfg.eval_n // 2
    lr = torch.cat([data.degrade(hr[:half], 0.0, g), data.degrade(hr[half:], cfg.eval_degrade, g)])
    return hr, lr


@torch.no_grad()
def sample(policy_dir: str, lr, K: int, eta: float, n_seeds: int, dev) -> torch.Tensor:
    """(n_seeds, B, 3, 4h, 4w) samples with the arm's training K and eta, one fixed generator per seed."""
    pol = load_policy(policy_dir, dev)
    gens = [torch.Generator(dev).manual_seed(s) for s in range(n_seeds)]
    return torch.stack([pol.upscale(lr.to(dev), K, eta, g).cpu() for g in gens])


@torch.no_grad()
def judge(sr, hr, rms, dev, iqa=None) -> dict:
    """Per-sample numbers (S·B,) of samples sr (S, B, 3, H, W) against HR (B, 3, H, W), all batched."""
    x, ref = sr.flatten(0, 1).to(dev), hr.repeat(sr.shape[0], 1, 1, 1).to(dev)
    M = label_map(x, ref)  # the gold judge (method.md §2), lower = better
    ssim = ssim_map_y(x, ref).mean((1, 2, 3))  # = metrics.ssim_y, from its map
    out = {
        "psnr": psnr_y(x, ref),
        "ssim": ssim,
        "gold": M.mean((1, 2, 3)),
        "area": (M > 0.1).float().mean((1, 2, 3)),  # share of pixels the gold judge calls degraded
        # Independent judges: the RMs learned from label_map(α = 0.5), never from these two. 1 − SSIM is
        # the SSIM column read as a degradation (lower = better), beside the label function's pixel term.
        "judge_ssim": 1 - ssim,
        "judge_pix": label_map(x, ref, alpha=1.0).mean((1, 2, 3)),  # the pixel term alone
    }
    for k, rm in enumerate(rms):
        out[f"rm{k}"] = rm(x)[0]  # the proxy: what RM_k says, no HR
    for name, m in (iqa or {}).items():  # pyiqa, where present: LPIPS is full-reference, the rest are not
        out[name] = (m(x, ref) if name == "lpips" else m(x)).flatten()
    return {k: v.float().cpu() for k, v in out.items()}


def load_iqa(dev):
    """pyiqa's LPIPS / MUSIQ / MANIQA / CLIPIQA (the paper's metrics, §6) if pyiqa and its weights are
    present offline; else None and one line saying so. Returns (metrics or None, message)."""
    try:
        import pyiqa

        return {n: pyiqa.create_metric(n, device=dev) for n in ("lpips", "musiq", "maniqa", "clipiqa")}, ""
    except Exception as e:  # not installed, or its weights are not on disk (nothing is downloaded here)
        msg = f"pyiqa metrics (LPIPS/MUSIQ/MANIQA/CLIPIQA) skipped: {type(e).__name__}: {str(e)[:100]}"
        print(msg)
        return None, msg


def rl_rows(run_dir: str) -> list:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r.get("phase") == "rl"]


def evaluate_arms(cfg, arms, rms, dev, iqa):
    """Sample and judge every arm (SFT first: every improvement is measured from it). Returns
    (results: name → list of per-seed dicts of floats, per_image: name → metric → (B,), samples)."""
    hr, lr = eval_set(cfg)
    N = len(rms) - 1
    results, per_image, shown, sft = {}, {}, {}, None
    for name, runs in arms.items():  # "SFT" comes first: every improvement is measured from it
        seeds, imgs = [], []
        for run_dir, policy_dir, acfg in runs:
            sr = sample(policy_dir, lr, acfg.sample_steps, acfg.eta, cfg.eval_seeds, dev)
            per = judge(sr, hr, rms, dev, iqa)
            sft = per if sft is None else sft
            r = {k: float(v.mean()) for k, v in per.items()}
            rows = rl_rows(run_dir) if run_dir else []
            # The proxy: the RM stage the arm optimised last, as its log says (global: RM_0; none and ccl:
            # RM_N, unless a plateau-switched curriculum stopped short); SFT: RM_N.
            k = rows[-1]["stage"] if rows else N
            r["gap"], r["proxy_z"], r["quality_z"] = hacking_gap(
                per[f"rm{k}"], sft[f"rm{k}"], 1 - per["gold"], 1 - sft["gold"]
            )
            r["proxy_stage"] = k
            if rows:  # instability of the training curve (SFT has none)
                r["tail_std"], r["max_drop"] = instability([x["reward_final"] for x in rows])
            seeds.append(r)
            imgs.append({m: v.view(cfg.eval_seeds, -1).mean(0) for m, v in per.items()})  # (B,) per crop
            shown.setdefault(name, sr[0])  # the first sampling seed of the first training seed, for figures
        results[name] = seeds
        per_image[name] = {m: torch.stack([d[m] for d in imgs]).mean(0) for m in imgs[0]}
    return results, per_image, (hr, lr, shown)


# ----------------------------------------------------------------------------------------------------
# 4. Tables, verdict, figures, report


COLUMNS = [("psnr", "PSNR-Y ↑"), ("ssim", "SSIM-Y ↑"), ("gold", "gold M̄ ↓"), ("area", "artifact area ↓")]
COLUMNS += [("judge_ssim", "1−SSIM ↓"), ("judge_pix", "pixel judge ↓")]  # ↑ higher / ↓ lower is better


def md_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def cell(vals: list) -> str:
    """Mean over seeds, ± their std when there are several; '—' for a missing or NaN value."""
    v = [x for x in vals if x is not None and x == x]
    if not v:
        return "—"
    m = sum(v) / len(v)
    return f"{m:.4g}" if len(v) == 1 else f"{m:.4g} ± {torch.tensor(v).std().item():.2g}"


def arm_table(results: dict, n_rm: int, extra: list) -> str:
    cols = COLUMNS + [(f"rm{k}", f"RM_{k} ↑") for k in range(n_rm)] + [(k, k.upper()) for k in extra]
    cols += [("proxy_z", "Δproxy z"), ("quality_z", "Δgold z"), ("gap", "hacking gap ↓")]
    cols += [("tail_std", "tail std ↓"), ("max_drop", "max drop ↓")]
    rows = [[name] + [cell([r.get(k) for r in runs]) for k, _ in cols] for name, runs in results.items()]
    return md_table(["arm"] + [h for _, h in cols], rows)


def rm_table(rows: list) -> str:
    keys = [k for k in rows[0] if k != "stage"]
    body = [[f"RM_{r['stage']}"] + ["—" if r[k] is None else f"{r[k]:.3f}" for k in keys] for r in rows]
    return md_table(["stage"] + keys, body)


def verdict(results: dict, per_image: dict, algo: str) -> list:
    """The paper's claims (method.md §6) checked by explicit rules; one sentence each, from the numbers.

    A change counts when it is beyond noise AND not negligible (`direction`). "gold" is the gold quality
    1 − mean label map; the proxy is the RM stage the arm optimised last (global: RM_0; none, ccl: RM_N).
    (1) hacking under the global reward: the global arm's proxy rose AND its gold quality fell (vs SFT).
    (2) FinPercep-RM + CCL: the ccl arm's proxy rose AND its gold quality rose (vs SFT); separately, its
        gold quality exceeds the global arm's.
    (3) no curriculum: less stable = the none arm's tail std of reward_final > STABLE_RATIO × the ccl arm's;
        ends worse = its gold quality is below the ccl arm's. Both: reproduced; one: partly."""
    word = {1: "rose", -1: "fell", 0: "did not change beyond noise"}
    rep = {True: "reproduced", False: "not reproduced"}
    q = {a: 1 - per_image[a]["gold"] for a in per_image}  # gold quality per held-out crop
    avg = lambda a, key: sum(r[key] for r in results[a]) / len(results[a])  # noqa: E731  (over seeds)

    def vs_sft(a):  # (proxy stage, proxy direction, gold-quality direction) against the SFT start
        k = results[a][0]["proxy_stage"]
        t_p = paired_t(per_image[a][f"rm{k}"], per_image["SFT"][f"rm{k}"])[1]
        t_q = paired_t(q[a], q["SFT"])[1]
        return k, direction(t_p, avg(a, "proxy_z")), direction(t_q, avg(a, "quality_z"))

    def vs(a, b):  # gold-quality direction of arm a against arm b (Δz in the same SFT units)
        return direction(paired_t(q[a], q[b])[1], avg(a, "quality_z") - avg(b, "quality_z"))

    g, c, n = f"{algo}/global", f"{algo}/ccl", f"{algo}/none"
    k, dp, dq = vs_sft(g)
    s1 = (
        f"[{algo}] Hacking with the global reward: {rep[dp == 1 and dq == -1]}"
        f" — the global arm's proxy RM_{k} {word[dp]} and its gold quality {word[dq]} versus SFT."
    )
    k, dp, dq = vs_sft(c)
    beat = vs(c, g) == 1
    s2 = (
        f"[{algo}] FinPercep-RM + CCL improves both: {rep[dp == 1 and dq == 1]}"
        f" — the ccl arm's proxy RM_{k} {word[dp]} and its gold quality {word[dq]} versus SFT; CCL's gold "
        f"improvement {'exceeds' if beat else 'does not exceed'} the global arm's "
        f"({rep[beat]})."
    )
    std_n, std_c = avg(n, "tail_std"), avg(c, "tail_std")
    less_stable = None if math.isnan(std_n + std_c) else std_n > STABLE_RATIO * std_c
    worse = vs(n, c) == -1
    tag = "reproduced" if less_stable and worse else ("partly reproduced" if less_stable or worse else "")
    s3 = (
        f"[{algo}] Without the curriculum it is less stable and ends worse: {tag or 'not reproduced'} — "
        f"tail std of reward_final {std_n:.3g} (none) vs {std_c:.3g} (ccl): "
        f"{'undetermined' if less_stable is None else ('less' if less_stable else 'not less')} stable; "
        f"its gold quality {'is' if worse else 'is not'} below the ccl arm's."
    )
    return [s1, s2, s3]


def image_grid(plt, cols: list, path: str) -> None:
    """A grid figure: cols = [(title, images (n, C, H, W), labels or None)]; 1-channel maps in magma."""
    n = len(cols[0][1])
    fig, axes = plt.subplots(n, len(cols), figsize=(1.9 * len(cols), 2.0 * n), squeeze=False)
    for j, (title, x, labels) in enumerate(cols):
        axes[0, j].set_title(title, fontsize=8)
        for i, ax in enumerate(axes[:, j]):
            if x.shape[1] == 1:
                ax.imshow(x[i, 0].numpy(), cmap="magma", vmin=0, vmax=1)
            else:
                ax.imshow(x[i].clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_xlabel(labels[i] if labels else "", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@torch.no_grad()
def figures(cfg, arms, rms, shown, val, out_dir: str) -> None:
    """curves.png (the paper's Fig. 1b), samples.png (Fig. 1c) and rm_maps.png in out_dir."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    # Fig. 1b: reward_final (RM_N's score, comparable across arms) and gold against RL steps.
    # Per-step values are noisy (a few samples each): faint, with a trailing mean over 5 steps on top.
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, (name, runs) in enumerate((n, r) for n, r in arms.items() if n != "SFT"):
        for j, (run_dir, _, _) in enumerate(runs):
            rows = rl_rows(run_dir)
            steps = [x["step"] for x in rows]
            for ax, key in zip(axes, ("reward_final", "gold")):
                v = torch.tensor([x[key] for x in rows], dtype=torch.float64)
                ax.plot(steps, v, color=f"C{i}", alpha=0.2, lw=0.8)
                ax.plot(steps, trailing_mean(v, 5), color=f"C{i}", lw=1.5, label=name if j == 0 else None)
            if name.endswith("/ccl") and j == 0:  # dotted: where the curriculum moved to the next RM stage
                for step in [b["step"] for a, b in zip(rows, rows[1:]) if b["stage"] != a["stage"]]:
                    for ax in axes:
                        ax.axvline(step, color=f"C{i}", ls=":", lw=0.8)
    for ax, t in zip(axes, ("reward_final (RM_N score) ↑", "gold (mean label map vs HR) ↓")):
        ax.set(xlabel="RL step", title=t)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curves.png"), dpi=110)
    # Fig. 1c: LR | bicubic | SFT | arms | HR, the gold judge's map as a red overlay on every SR column.
    hr, lr, srs = shown
    idx = torch.linspace(0, len(hr) - 1, cfg.n_show).round().long()  # spread over clean and degraded halves
    h = hr[idx]
    cols = [("LR", data.upsample(lr[idx], "nearest"), None)]
    for name, x in [("bicubic", data.upsample(lr[idx]))] + [(n, s[idx]) for n, s in srs.items()]:
        M = label_map(x, h)
        cols.append((name, overlay(x, M), [f"gold {m:.3f}" for m in M.mean((1, 2, 3)).tolist()]))
    image_grid(plt, cols + [("HR", h, None)], os.path.join(out_dir, "samples.png"))
    # RM maps on held-out FGR examples: image | label map | RM_1 … RM_N maps.
    order = val["dmap_syn"].mean((1, 2, 3)).argsort(descending=True)
    pick = order[torch.linspace(0, len(order) // 2, cfg.n_show).long()]  # clear cases, not only the easiest
    x, dev = val["syn"][pick], next(rms[0].parameters()).device
    cols = [("image", x, None), ("label map", val["dmap_syn"][pick], None)]
    cols += [(f"RM_{k}", rm(x.to(dev))[1].cpu(), None) for k, rm in enumerate(rms) if k > 0]
    image_grid(plt, cols, os.path.join(out_dir, "rm_maps.png"))
    plt.close("all")


def main(cfg: Config) -> str:
    t0 = time.time()
    if data.parse_source(cfg.data)[0] == "lr":  # no HR: nothing to train on or judge against
        raise config.ConfigError(f"--data={cfg.data} is for `evaluate.py score` / `upscale`: it has no HR")
    dev = config.pick_device(cfg.device)
    os.makedirs(cfg.out_dir, exist_ok=True)
    config.save_config(cfg, cfg.out_dir)
    log = []
    rcfg, arms = train_all(cfg, log)
    t_train = time.time() - t0
    rms = train_rl.load_rms(rcfg.out_dir, dev)  # every stage, frozen
    iqa, iqa_msg = load_iqa(dev)
    results, per_image, shown = evaluate_arms(cfg, arms, rms, dev, iqa)
    # The reward-model table: train_rm's own validation on its own fixed held-out set, every stage.
    val = train_rm.make_val_set(rcfg.data, rcfg.val_n, rcfg.crop, rcfg.seed)
    rm_rows = [{"stage": k, **train_rm.validate(rm, val)} for k, rm in enumerate(rms)]
    figures(cfg, arms, rms, shown, val, cfg.out_dir)
    algos = sorted({a.split("/")[0] for a in arms if "/" in a}, key=lambda a: a != cfg.algo)
    sentences = [s for a in algos for s in verdict(results, per_image, a)]
    extra = list(iqa or {})
    t_all = time.time() - t0
    runs = [(os.path.relpath(p, cfg.out_dir), s, f"{t:.0f}") for p, s, t in log]
    report = f"""# FinPercep-RM in the toy world: the comparison of method.md §6

Generated by `python evaluate.py` in {t_all / 60:.1f} min ({t_train / 60:.1f} min training) on {dev};
{cfg.arm_steps} RL steps per arm, {cfg.n_seeds} seed(s), algorithm(s) {", ".join(algos)}.

## Verdict (generated from the numbers below by the rules in `evaluate.verdict`)
{chr(10).join(sentences)}

Rules: a change counts when its paired t over the {cfg.eval_n} held-out crops exceeds {T_SIG} and it is at
least {Z_MIN} std of the SFT outputs; gold quality = 1 − mean label map against HR; the proxy is the RM
stage the arm optimised last (global: RM_0, else RM_N); "less stable" = tail std more than {STABLE_RATIO}×.

## The arms on held-out crops
{cfg.eval_n} crops of {cfg.eval_crop}×{cfg.eval_crop} px from the held-out photos
({", ".join(data.HELDOUT_PHOTOS)}), ×4; the first half from clean bicubic LR, the second from LR degraded
at strength {cfg.eval_degrade}; each arm sampled with its training K and eta, averaged over
{cfg.eval_seeds} sampling seeds.

{arm_table(results, len(rms), extra)}

PSNR/SSIM on Y (border 4); gold M̄ = mean label map vs HR (the gold judge); artifact area = share of pixels
with label map > 0.1; judges the RMs never learned from: 1 − SSIM-map mean and the label function's pixel
term alone (α = 1); RM_k = mean score of stage k (the proxies); Δproxy z, Δgold z = change from SFT in stds
of the SFT outputs, hacking gap = their difference; tail std = std of reward_final over the last 20 % of RL
steps; max drop = largest fall between consecutive means of 5 logged steps. {iqa_msg}

## Reward-model stages (train_rm.validate on its held-out triplets)
{rm_table(rm_rows)}

## Figures
![training curves](curves.png)

![samples: LR, bicubic, SFT, arms, HR; red = gold degradation map](samples.png)

![RM maps on held-out examples](rm_maps.png)

## Runs
{md_table(["run", "", "seconds"], runs)}
"""
    with open(os.path.join(cfg.out_dir, "report.md"), "w") as f:
        f.write(report)
    print(arm_table(results, len(rms), extra) + "\n\n" + train_rm.format_table(rm_rows))
    print("\n".join(sentences) + f"\nreport: {os.path.join(cfg.out_dir, 'report.md')} ({t_all / 60:.1f} min)")
    return cfg.out_dir


def cli(argv=None):
    """`python evaluate.py [score|upscale IMAGES...] --key=value ...`: no command runs the comparison."""
    cfg, args = config.parse(Config, argv, PRESETS, positional_ok=True)
    if not args:
        return main(cfg)
    if args[0] not in ("score", "upscale"):
        raise config.ConfigError(f"unknown command '{args[0]}'; use score IMAGES --rm=DIR, upscale IMAGES "
                                 "--policy=DIR, or no command for the comparison")  # fmt: skip
    return (score if args[0] == "score" else upscale)(cfg, args[1:])


if __name__ == "__main__":
    cli()
