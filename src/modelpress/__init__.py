"""ModelPress: compress ML models and ship them safely on Kubernetes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modelpress")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
