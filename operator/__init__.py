"""The ModelPress controller (kopf). Installed as ``modelpress.operator``; torch-free."""
