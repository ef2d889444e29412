"""Worlds that answer experiments by replaying held-out real data (or a labelled synthetic world).

The Perturb-seq and pair worlds import anndata/scipy; they load on first use
(``from simulators import PerturbSeqReplay`` works as usual), so importing the screen replay
stays light.
"""

from importlib import import_module

from simulators.screen_replay import ScreenReading, ScreenReplay

_LAZY = {
    "PairReading": "simulators.pair_replay",
    "PairReplay": "simulators.pair_replay",
    "read_norman2019": "simulators.pair_replay",
    "PerturbSeqReading": "simulators.perturbseq_replay",
    "PerturbSeqReplay": "simulators.perturbseq_replay",
    "INTERACTION_TYPES": "simulators.synthetic_grn",
    "SyntheticGRN": "simulators.synthetic_grn",
    "classify_interaction": "simulators.synthetic_grn",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'simulators' has no attribute {name!r}")


__all__ = ["ScreenReading", "ScreenReplay", *_LAZY]
