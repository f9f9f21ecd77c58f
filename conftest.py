"""Hypothesis profiles for the whole suite.

    python -m pytest                                   # "suite": 20 examples a property, a few seconds
    python -m pytest --hypothesis-profile=thorough     # 10x the examples, once in a while

No example database in either: a run never replays what an earlier run left behind in .hypothesis/,
so a fresh checkout and a used one run the same tests (a failing example is printed with its seed,
and `--hypothesis-seed=N` reproduces it).
"""

from hypothesis import settings

settings.register_profile("suite", max_examples=20, deadline=None, database=None)
settings.register_profile("thorough", settings.get_profile("suite"), max_examples=200)
settings.load_profile("suite")  # --hypothesis-profile, read after this file, takes precedence


def devices_line() -> str:
    import torch

    found = [d for d, here in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available()))
             if here]  # the accelerators the device checks run on

    if not found:
        return "devices: cpu only — no CUDA or MPS device here, so the device checks ran on the CPU alone"
    return f"devices: cpu and {', '.join(found)} — the device checks ran on each"


def pytest_terminal_summary(terminalreporter):
    """Said at the end of every run, -q included: which devices the device checks ran on."""
    terminalreporter.write_line(devices_line())
