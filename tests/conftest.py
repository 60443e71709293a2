"""Suite-wide settings: pinned threads so timings and results are stable on 2 shared cores."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:  # the operator-only install has no torch; the full suite does
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
except ImportError:
    pass
