"""Hypothesis profiles for the whole suite.

    python -m pytest                                   # "suite": 20 examples a property, a few seconds
    python -m pytest --hypothesis-profile=thorough     # 10x the examples, once in a while
    python -m pytest --hypothesis-profile=mutation     # as "suite", a failure not shrunk (.ci/mutation)

No example database in any: a run never replays what an earlier run left behind in .hypothesis/,
so a fresh checkout and a used one run the same tests (a failing example is printed with its seed,
and `--hypothesis-seed=N` reproduces it).
"""

from hypothesis import Phase, settings

settings.register_profile("suite", max_examples=20, deadline=None, database=None)
settings.register_profile("thorough", settings.get_profile("suite"), max_examples=200)
# .ci/mutation's: the suite's examples, a failure not shrunk (a mutant is killed by the first failing
# example; shrinking it can outlast mutmut's timeout, which would leave the mutant without a verdict)
settings.register_profile("mutation", settings.get_profile("suite"),
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
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
