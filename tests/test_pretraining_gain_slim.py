"""SLiM's pretraining gain (small preset since 2026-12-03: teacher temperature 0.01, EMA from 0.98, 24
epochs; AMD EPYC, seed-0 data: training seed 0 +5.6 / +6.1, training seed 1 +8.0 / +10.6; the older numbers
below are the 12-epoch preset) through the CLI, on the demo's data (helpers.MEDIUM_SYNTH); the teacher
encoder is probed, CLS || mean-patch features.

Measured against the seed-0 random encoder of SLiM's shape (linear 0.798, kNN 0.684) with the small
preset of docs/slim.md "Fidelity settings" (per-submodule clipping, trainable prototype norm): training
seed 0 gives 0.862 / 0.777 (+6.4 / +9.3 points) on an Intel Xeon and 0.867 / 0.750 (+6.9 / +6.6) on an
AMD EPYC. Variants of the recipe one change apart gave +6.9 / +8.5, +7.7 / +9.0 and (index-order bone
scaling, AMD) +5.9 / +5.3 on the same data, so a run moves by 1-3 points with a change of CPU, kernel or
order. The margin (3 points, 11 test clips) sits 3.4 points under the smallest gain of this preset. SLiM is
the least robust of the four: on the seed-1 data it gains +3.5 / +3.4 (Intel) and +2.1 / +4.0 (AMD)
(docs/benchmarks.md "The demo").

``slow`` (`make test-slow`, not `make test`): a 1,128-step pretraining, about 170 CPU-seconds on an AMD EPYC.
"""

import pytest
from helpers import assert_gain, pretrain_small, probe_vs_random

pytestmark = pytest.mark.slow

MARGIN = 0.03


def test_slim_pretraining_beats_a_random_encoder_in_linear_and_knn_probes(medium_h5, tmp_path):
    ckpt = pretrain_small(medium_h5, "slim", tmp_path / "slim")
    assert_gain(probe_vs_random(medium_h5, ckpt, tmp_path), MARGIN)
