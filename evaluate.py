"""Does it work? The paper's comparison (docs/method.md §6) in the toy world, bracketed by controls.

    python evaluate.py                                  # the main job: SFT → RM → RL arms × 2 algos × 3 seeds
    python evaluate.py --controls=all                   # + the gold-score oracle and the online RM refresh
    python evaluate.py --algos=pg                       # pg's arms only (ReFL's: --algos=refl)
    python evaluate.py --from_scratch                   # the RM without the shipped base: all from nothing
    python evaluate.py --device=cuda --preset=gpu       # a real run on one GPU
    python evaluate.py score a.png b.jpg --rm=out/eval/work/rm/rm_stage3      # scores + degradation overlays
    python evaluate.py upscale lr.png --policy=out/eval/work/rl_pg_ccl_s0/policy_final --out_dir=out/sr

The main job runs the project in the run order, SFT → RM → RL, through the scripts' own `main(cfg)`, never a
copy of their loops, and keeps every run under <out_dir>/work (reused while up to date: report.run_once):
  work/sft                         train_rl.main(sft_only): the common start of every arm
  work/rm                          train_rm.main(policy=work/sft/policy_sft): RM_0 … RM_N
  work/rl_{algo}_{arm}_s{seed}     train_rl.main(init_policy=work/sft/policy_sft): the RL arms, per algorithm
Every RL arm (ARMS) runs n_seeds training seeds. Every arm is then judged on held-out photos by judges the
reward models never learned from, and the claims (CLAIMS, per algorithm) are decided by one rule: a difference
between two arms counts when it exceeds K_SE standard errors over training seeds (a paired t over crops sees
only sampling noise; RL seeds differ more). report.py turns the numbers into tables, figures, report.md and
results.json; apply.py holds the score / upscale commands.
"""

import dataclasses
import math
import os
import time

import torch

import apply
import config
import data
import images
import report
import rundir
import train_rl
import train_rm
from metrics import label_map, psnr_y, ssim_map_y
from rm import load_stages


@dataclasses.dataclass
class Config:
    out_dir: str = "out/eval"  # report.md, results.json, figures, work/ (its runs): a fresh out_dir = scratch
    data: str = "builtin"  # training source (evaluation: builtin's held-out photos); score/upscale: lr:DIR
    seed: int = 0  # SFT and RM use it; the RL arms use seed … seed + n_seeds − 1
    device: str = "auto"  # auto = cuda when present
    preset: str = "cpu"  # cpu | gpu: also selects train_rm's and train_rl's preset of the same name
    n_seeds: int = 3  # RL training seeds per arm: the verdicts need their spread (≥ 3; docs/method.md)
    controls: str = "default"  # default (placebo + oracle_map) | all (+ oracle_score, ccl_coevolve)
    # pg (ours: map-based per-pixel penalties), refl (the paper's). The first's arms keep their plain names.
    algos: str = "pg,refl"  # RL algorithms, each with every arm; the others' arms are '<algo>_<arm>'
    from_scratch: bool = False  # train the RM without the shipped base (train_rm's scratch preset)
    arm_steps: int = 40  # RL steps per arm, THE budget knob (30 RL runs must fit the 20-minute CPU budget)
    sft_steps: int = 0  # SFT steps; 0 = train_rl's default for the preset
    rm_steps: tuple = ()  # train_rm's steps per stage RM_0 … RM_N, e.g. 120,60,60,150; empty = its default
    rm_args: str = ""  # more train_rm flags, e.g. "--widths=8,16,16,16 --batch=8" (the tests' tiny models)
    rl_args: str = ""  # more train_rl flags for SFT and every arm, e.g. "--group=8 --lam_px=1"
    eval_n: int = 32  # held-out crops: the first half with clean LR, the second half degraded
    eval_crop: int = 64  # HR crop size (the acceptance checks' 64×64; LR is 16×16)
    eval_degrade: float = 0.5  # strength of the degraded half: train_rl's degrade_max, the LR RL saw
    eval_seeds: int = 1  # sampling seeds per policy (the training seeds already average sampling noise)
    n_show: int = 3  # held-out crops in the figures (2–4 read well)
    # --- the user commands (apply.py)
    rm: str = ""  # score: an RM stage directory, e.g. out/eval/work/rm/rm_stage3
    policy: str = ""  # upscale: a policy directory, e.g. out/eval/work/rl_pg_ccl_s0/policy_final
    tile: int = 0  # tile side in input px; 0 = the RM's crop (score), 128 LR px (upscale); overlap 1/8
    tile_batch: int = 8  # tiles per forward pass (bounds memory on large images)
    steps: int = 0  # upscale: DDIM steps K; 0 = the policy's own (the K it was trained to sample with)
    eta: float = -1.0  # upscale: DDIM eta; < 0 = the policy's own

    def __post_init__(self):  # every flag value is checked where it is parsed: a one-line error each
        c = config
        c.check(
            self, n_seeds=c.at_least(1), controls=c.one_of("default", "all"),
            algos=((lambda v: sorted(v.split(",")) in (["pg"], ["refl"], ["pg", "refl"])),
                   "give pg, refl or both, e.g. --algos=pg,refl"),
            arm_steps=c.at_least(1), sft_steps=c.at_least(0), eval_n=c.at_least(2),
            eval_crop=c.multiple_of(16), eval_degrade=c.UNIT, eval_seeds=c.at_least(1), n_show=c.at_least(1),
            tile=c.at_least(0), tile_batch=c.at_least(1), steps=c.at_least(0),
            eta=((lambda v: v <= 1), "use a value ≤ 1 (< 0: the policy's own)"),
        )  # fmt: skip


# GPU presets (docs/scaling.md; gpu: minutes on one H200, gpu_full: a long run): train_rm's, train_rl's too.
PRESETS = {"cpu": {}, "gpu": {"arm_steps": 200, "eval_n": 64, "eval_crop": 128},
           "gpu_full": {"arm_steps": 1000, "eval_n": 128, "eval_crop": 256}}  # fmt: skip
# The RL arms (bicubic and SFT: no RL), the controls first (docs/method.md "Controls first"), then the paper's
# comparison: the reward source and curriculum each trains with (train_rl --reward / --curriculum).
ARMS = {
    "placebo": dict(reward="placebo", curriculum="global"),  # control: random rewards, no map
    "global": dict(reward="rm", curriculum="global"),  # RM_0 only: the global-IQA baseline
    "none": dict(reward="rm", curriculum="none"),  # RM_N from step 0: no curriculum ("no CCL")
    "ccl": dict(reward="rm", curriculum="ccl"),  # RM_0 → … → RM_N: the method, the paper's curriculum (CCL)
    "oracle_map": dict(reward="gold", curriculum="none"),  # ceiling: gold score + gold map (toy world)
}
# --controls=all adds the global reward's ceiling and the online RM refresh (--coevolve): past the CPU budget.
CONTROLS_ALL = {
    "oracle_score": dict(reward="gold", curriculum="global"),
    "ccl_coevolve": dict(reward="rm", curriculum="ccl", coevolve=True),
}
K_SE = 2.0  # the noise rule [ours]: a difference counts when it exceeds K_SE standard errors over seeds
# The claims (docs/method.md §6 and "Controls first"): (claim, arm a, arm b, metric, sign). Holds when
# sign · (a − b) > K_SE · SE; sign −1 for "lower is better" metrics (gold, tail std of reward_final).
CLAIMS = [
    ("RL works: the oracle (gold map) beats SFT on gold", "oracle_map", "sft", "gold", -1),
    ("RM_N + CCL beats the global reward on gold", "ccl", "global", "gold", -1),
    ("RM_N + CCL beats the placebo on gold", "ccl", "placebo", "gold", -1),
    ("RM_N + CCL beats SFT on gold (not worse: no hacking)", "ccl", "sft", "gold", -1),
    ("No curriculum is less stable (tail std of reward_final)", "none", "ccl", "tail_std", 1),
    ("No curriculum ends worse on gold", "none", "ccl", "gold", 1),
    ("The map carries the signal: oracle_map beats oracle_score", "oracle_map", "oracle_score", "gold", -1),
    ("The online refresh helps: ccl_coevolve beats ccl on gold", "ccl_coevolve", "ccl", "gold", -1),
]  # fmt: skip
HACK_CLAIM = "The global reward hacks: its proxy RM_0 rises above the placebo's, its gold does not improve"


# ----------------------------------------------------------------------------------------------------
# 1. The runs: SFT → RM → RL arms, each through its script's own main(cfg), reused when up to date


def arm_list(cfg: Config) -> list:
    """[(arm name, algo, train_rl overrides)]: the first algorithm's arms plain, later ones' <algo>_<arm>."""
    arms = {**ARMS, **(CONTROLS_ALL if cfg.controls == "all" else {})}
    return [(p + a, algo, kw) for algo, p in prefixes(cfg).items() for a, kw in arms.items()]


def prefixes(cfg) -> dict:
    """{algo: the arm-name prefix of its arms}: none for the first of --algos, else '<algo>_'."""
    return {a: f"{a}_" if i else "" for i, a in enumerate(cfg.algos.split(","))}


def train_all(cfg: Config, log: list):
    """Train (or reuse) everything. Returns (rm config, arms): arms maps a name to a list (one per seed) of
    (run_dir or None, policy_dir or None for bicubic, RL config)."""
    work = os.path.join(cfg.out_dir, "work")
    common = {"data": cfg.data, "device": cfg.device}
    rl = report.sub_config(train_rl, cfg.preset, cfg.rl_args, seed=cfg.seed, **common)
    if cfg.sft_steps:
        rl = dataclasses.replace(rl, sft_steps=cfg.sft_steps)
    # SFT once: the start of every arm (and the policy whose samples join the RM's SR zoo).
    sft_dir = os.path.join(work, "sft")
    sft_policy = os.path.join(sft_dir, "policy_sft")
    sft_done = os.path.join(sft_policy, "policy.json")
    report.run_once(train_rl.main, dataclasses.replace(rl, out_dir=sft_dir, sft_only=True), sft_done, [], log)
    rl = dataclasses.replace(rl, sft_only=False)  # whatever rl_args said: the arms do RL
    # The RM stages, trained with the SFT policy's samples in the zoo (docs/method.md §2: "several diffusion
    # SR models"): the run order, SFT → RM → RL.
    steps = train_rm.PRESETS["scratch"] if cfg.from_scratch else {}  # RM_0 trained too, not the shipped base
    steps = {**steps, "stage_steps": tuple(cfg.rm_steps)} if cfg.rm_steps else steps
    rcfg = report.sub_config(train_rm, cfg.preset, cfg.rm_args, **common, **steps)
    rm_dir = os.path.join(work, "rm")
    rcfg = dataclasses.replace(rcfg, out_dir=rm_dir, policy=sft_policy, seed=cfg.seed)
    rm_done = os.path.join(rm_dir, f"rm_stage{rcfg.n_stages}", "rm.json")
    report.run_once(train_rm.main, rcfg, rm_done, [sft_done], log)
    # The RL arms: same start, same seeds, same budget; only the reward (and the algorithm) differ.
    arms = {"bicubic": [(None, None, rl)], "sft": [(None, sft_policy, rl)]}
    for name, algo, kw in arm_list(cfg):
        arms[name] = []
        for seed in range(cfg.seed, cfg.seed + cfg.n_seeds):
            out = os.path.join(work, f"rl_{algo}_{name.removeprefix(prefixes(cfg)[algo])}_s{seed}")
            acfg = dataclasses.replace(rl, out_dir=out, init_policy=sft_policy, rm_dir=rm_dir, seed=seed)
            acfg = dataclasses.replace(acfg, algo=algo, steps=cfg.arm_steps, **kw)
            final = os.path.join(out, "policy_final")
            report.run_once(train_rl.main, acfg, os.path.join(final, "policy.json"), [sft_done, rm_done], log)
            arms[name].append((out, final, acfg))
    return rcfg, arms


# ----------------------------------------------------------------------------------------------------
# 2. The noise rule: mean ± SE over training seeds; a difference counts beyond K_SE SE (tests: by hand)


def mean_se(vals: list, trained: bool = True) -> tuple[float, float]:
    """(mean, standard error of the mean) over training seeds. An arm that is not trained (bicubic, SFT: one
    fixed policy) has no seed noise: SE 0. A trained arm with one seed has an unknown SE: NaN."""
    v = torch.tensor([x for x in vals if x == x], dtype=torch.float64)
    if len(v) == 0:
        return math.nan, math.nan
    if not trained:
        return float(v.mean()), 0.0
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else math.nan


def compare(a: list, b: list, a_trained: bool = True, b_trained: bool = True) -> tuple[float, float]:
    """(mean(a) − mean(b), its standard error sqrt(SE_a² + SE_b²)): two arms' per-seed values."""
    (ma, sa), (mb, sb) = mean_se(a, a_trained), mean_se(b, b_trained)
    return ma - mb, math.sqrt(sa**2 + sb**2)


def outcome(d: float, se: float) -> str:
    """The one noise rule: d (signed so that d > 0 is the claim) beyond K_SE·SE → "reproduced", beyond
    −K_SE·SE → "not reproduced", else (or with an unknown SE: one seed) "within noise"."""
    if math.isnan(d) or math.isnan(se) or abs(d) <= K_SE * se:
        return "within noise"
    return "reproduced" if d > 0 else "not reproduced"


# ----------------------------------------------------------------------------------------------------
# 3. Judging the arms on held-out crops


def eval_set(cfg: Config):
    """The fixed held-out set: eval_n crops of the built-in held-out photos (images.HELDOUT_PHOTOS, never
    trained on). First half: clean bicubic LR (strength 0, the classical protocol); second half: degraded
    at eval_degrade (real-world LR, as SFT and RL saw it). One generator seed: the same set for every arm."""
    g = config.generator("eval/set", cfg.seed)
    hr = images.heldout_pool("builtin", cfg.eval_crop).crops(cfg.eval_n, cfg.eval_crop, g)
    half = cfg.eval_n // 2
    lr = torch.cat([data.degrade(hr[:half], 0.0, g), data.degrade(hr[half:], cfg.eval_degrade, g)])
    return hr, lr


@torch.no_grad()
def judge(sr, hr, rms, dev, iqa=None) -> dict:
    """Per-sample numbers (S·B,) of samples sr (S, B, 3, H, W) against HR (B, 3, H, W), all batched."""
    x, ref = sr.flatten(0, 1).to(dev), hr.repeat(sr.shape[0], 1, 1, 1).to(dev)
    M = label_map(x, ref)  # the gold judge (docs/method.md §2), lower = better
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
        "proxy0": rms[0](x)[0],  # the proxies: what RM_0 and RM_N say, without HR
        "proxyN": rms[-1](x)[0],
    }
    for name, m in (iqa or {}).items():  # pyiqa, where present: LPIPS is full-reference, the rest are not
        out[name] = (m(x, ref) if name == "lpips" else m(x)).flatten()
    return {k: v.float().cpu() for k, v in out.items()}


def evaluate_arms(cfg, arms, rms, dev, iqa):
    """Sample and judge every arm. Returns (results: name → metric → [one float per seed], shown samples).

    Per seed: judge()'s held-out means, report.arm_measures (hacking gap; an RL arm's tail_std, max_drop) and
    `gain` = (gold_SFT − gold_arm) / (gold_SFT − mean gold_oracle_map): 0 = no better than SFT, 1 = oracle."""
    hr, lr = eval_set(cfg)
    results, shown, sft = {}, {}, None
    for name, runs in arms.items():  # "bicubic" and "sft" first: the improvements are measured from SFT
        res = {}
        for run_dir, policy_dir, acfg in runs:
            sr = apply.sample(policy_dir, lr, cfg.eval_seeds, dev)
            per = judge(sr, hr, rms, dev, iqa)
            sft = per if name == "sft" else sft
            r = {k: float(v.mean()) for k, v in per.items()} | report.arm_measures(per, sft, run_dir, acfg)
            for k, v in r.items():
                res.setdefault(k, []).append(v)
            shown.setdefault(name, sr[0])  # the first sampling seed of the first training seed, for figures
        results[name] = res
    if "oracle_map" in results:
        g_sft, g_or = results["sft"]["gold"][0], mean_se(results["oracle_map"]["gold"])[0]
        for res in results.values():
            res["gain"] = [(g_sft - g) / (g_sft - g_or) if g_sft != g_or else math.nan for g in res["gold"]]
    return results, (hr, lr, shown)


def verdicts(results: dict, trained: set, prefixes=("",)) -> dict:
    """{claim: (outcome, difference, its SE)} for every claim whose arms ran (CLAIMS, HACK_CLAIM), once per
    algorithm's arm-name prefix ("", "refl_" …), tagged with it ("refl: RM_N + CCL …"); SFT is shared."""
    out = {}
    for p in prefixes:
        arm = lambda a, p=p: a if a in ("sft", "bicubic") else p + a  # noqa: E731
        tag = f"{p[:-1]}: " if p else ""
        for claim, a, b, key, sign in CLAIMS:
            a, b = arm(a), arm(b)
            if a in results and b in results:
                d, se = compare(results[a][key], results[b][key], a in trained, b in trained)
                out[tag + claim] = (outcome(sign * d, se), d, se)
        g, pl = arm("global"), arm("placebo")
        if g in results and pl in results:  # hacking = the proxy up, the gold judge not
            dp, sp = compare(results[g]["proxy0"], results[pl]["proxy0"])
            dq, sq = compare(results[pl]["gold"], results[g]["gold"])  # > 0: global's gold better
            up, better = outcome(dp, sp), outcome(dq, sq)
            o = "within noise" if up == "within noise" else "reproduced"
            o = "not reproduced" if up == "not reproduced" or better == "reproduced" else o
            out[tag + HACK_CLAIM] = (o, dp, sp)
    return out


def main(cfg: Config) -> str:
    t0 = time.time()
    if images.parse_source(cfg.data)[0] == "lr":  # no HR: nothing to train on or judge against
        raise config.ConfigError(f"--data={cfg.data} is for `evaluate.py score` / `upscale`: it has no HR")
    dev = config.pick_device(cfg.device)
    rundir.claim(cfg, "evaluate")  # refuses a dir of another script's run
    log = []
    rcfg, arms = train_all(cfg, log)
    t_train = time.time() - t0
    rms = load_stages(rcfg.out_dir, dev)  # every stage, frozen
    iqa, iqa_msg = report.load_iqa(dev)
    results, shown = evaluate_arms(cfg, arms, rms, dev, iqa)
    found = verdicts(results, {n for n, r in arms.items() if r[0][0]}, list(prefixes(cfg).values()))
    report.write(cfg, dev, t0, t_train, rcfg, arms, rms, results, shown, found, K_SE, log, iqa, iqa_msg)
    return cfg.out_dir


def cli(argv=None):
    """`python evaluate.py [score|upscale IMAGES...] --key=value ...`: no command runs the comparison."""
    cfg, args = config.parse(Config, argv, PRESETS, positional_ok=True)
    return apply.command(cfg, args) if args else main(cfg)


if __name__ == "__main__":
    cli()
