"""Shared pytest setup: offline, importable from the repo root, tiny and CPU-only."""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # never download anything in tests (diffusers from_pretrained is local)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # import policy, config, ...

import pytest  # noqa: E402
import torch  # noqa: E402  (after the environment is set)

from rm import FinPercepRM, RMConfig, save_rm  # noqa: E402

# One intra-op thread: the tests' tensors are tiny, where a second OpenMP thread only adds spin-waiting; on
# a shared 2-core machine two threads per process made the suite 10× slower.
torch.set_num_threads(1)


# The default rm_dir of the pretrained-policy tests (test_byo_ldm, test_byo_sd); test files that need trained
# stages define their own rm_dir, which takes precedence in that file.
@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    """Four tiny RM stages as train_rm would write them (untrained: only shapes and plumbing matter here)."""
    out = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    for k in range(4):
        save_rm(FinPercepRM(RMConfig(widths=(4, 8, 8, 8), stage=k)), str(out / f"rm_stage{k}"))
    return str(out)
