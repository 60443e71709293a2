"""Tree ensembles (scikit-learn, XGBoost, LightGBM, ONNX TreeEnsemble graphs).

Sources are converted to ONNX when loaded (:mod:`.loaders`, reading and converting in a
child process, :mod:`.convert`), so trees take the same path as every other ONNX model;
the tree compression methods edit the ``ai.onnx.ml`` TreeEnsemble node (:mod:`.ensemble`).
"""
