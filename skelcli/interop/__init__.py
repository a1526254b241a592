"""Interoperability with other code bases: import of official MAMP / SLiM checkpoints
(:mod:`skelcli.interop.official`) and export (safetensors, ONNX, TorchScript)."""
