"""Shared pytest setup: offline, importable from the repo root, tiny and CPU-only."""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # never download anything in tests (diffusers from_pretrained is local)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # import policy, config, ...
