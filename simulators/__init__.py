"""Worlds that answer experiments by replaying held-out real data (or a labelled synthetic world)."""

from simulators.screen_replay import ScreenReading, ScreenReplay

__all__ = ["ScreenReading", "ScreenReplay"]
