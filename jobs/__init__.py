"""What runs in the ML image: the compression job and the serving runtime.

Installed as ``modelpress.jobs``. Heavy imports (torch, onnxruntime) stay inside the
submodules that need them so ``import modelpress.jobs`` itself is cheap.
"""
