"""Shared pytest setup: offline, importable from the repo root, tiny and CPU-only."""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # never download anything in tests (diffusers from_pretrained is local)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # import policy, config, ...

import torch  # noqa: E402  (after the environment is set)

# One intra-op thread: the tests' tensors are tiny, where a second OpenMP thread only adds spin-waiting; on
# a shared 2-core machine two threads per process made the suite 10× slower.
torch.set_num_threads(1)
