"""`skel benchmark`: FLOPs (flops.py), throughput (throughput.py), the report (report.py) and the
straightforward reference MAMP model used as a baseline (reference.py). Import the submodules."""
