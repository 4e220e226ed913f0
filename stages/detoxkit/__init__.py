"""Shared helpers of the detox pipeline: settings, data, models, scoring, PPO engine, statistics.

Stage scripts in `stages/` import from here; nothing here reads files or loads models at import time.
"""
