"""Reward functions that misbehave when a completion says so (loaded by file path in test_workers.py)."""

import ctypes
import os
import time

_HOARD = []


def evil(prompts, completions, **columns):
    out = []
    for c in completions:
        if c == "hang":
            time.sleep(3600)
        elif c == "loop":
            while True:
                pass
        elif c == "segfault":
            ctypes.string_at(0)
        elif c == "exit":
            os._exit(7)
        elif c == "raise":
            raise KeyError("boom")
        elif c == "leak":
            while True:
                _HOARD.append(bytearray(64 << 20))
        elif c == "print":
            print("noise on stdout that must not break the worker protocol")
        out.append(float(len(c)))
    return out


def wrong_length(prompts, completions, **columns):
    return [1.0]


def not_numbers(prompts, completions, **columns):
    return ["high"] * len(completions)
