"""The conv_rewrite benchmark suite: op-level shapes from real models and model-level runs, on CUDA or CPU.

Run ``python -m bench --help`` from the repository root.
"""
