"""Acquisition policies: pick the next batch of perturbations from the pool."""

from acquisition.base import AcquisitionPolicy, Proposal, ProposedItem
from acquisition.registry import POLICIES, make_policy

__all__ = ["POLICIES", "AcquisitionPolicy", "Proposal", "ProposedItem", "make_policy"]
