"""Downstream evaluation: frozen features, linear / SGD / kNN probes, retrieval, fine-tuning.

Modules: ``features`` (test-transform features, caching), ``probe``, ``retrieval``, ``finetune``,
``heads`` (probe and fine-tune heads, layer-wise lr decay), ``report`` (metrics, confusion matrices).
Heavy dependencies (torch, sklearn, h5py) are imported by the submodules, not here.
"""
