"""The score of a mutmut run (.ci/mutation runs it in its copy of the project; run it there by hand too).

    python .ci/mutation_score.py "admin.* train_toy.x_loss_of__*"     # in the copy: mutants/ beside it

A mutant that survives is a missing test, unless it is equivalent: listed by name, with why, in
.ci/mutation-equivalents, or found here to reword a message. A reworded message is equivalent for the
reader: the tests check what an error names (the bad value, what is allowed), not its words. Found
here, not listed by hand: the mutant changes only string literals with a space in them (prose, not a
name or a key), each inside a `raise`, or in a function whose text only ever goes into one (MESSAGES) or
the arguments of one (MESSAGE_CALLS),
and only by mutmut's XX…XX around one or by the case of its plain words (a case change in a name of code,
e.g. fixed_first=True, names a wrong fix: not a rewording). Exit 0 only when every other mutant is killed.
"""

import ast
import fnmatch
import json
import sys
from pathlib import Path

MESSAGES = {"x_called_twice_message", "x_first_bad_step"}  # admin.py: their strings end up in a raise
MESSAGE_CALLS = {"whole_number"}  # admin.py: its string arguments other than the value go into a raise


def prose_of(function: ast.FunctionDef, whole: bool) -> tuple[str, list[str]]:
    """The function's tree, its name left out, with every prose string of a message blanked (those in a
    `raise` or a call of MESSAGE_CALLS, or all of them where `whole`: a function of MESSAGES), and those
    strings in order."""
    function = ast.parse(ast.unparse(function)).body[0]  # a copy
    function.name, prose = "", []
    roots = [function] if whole else [n for n in ast.walk(function) if isinstance(n, ast.Raise) or (
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in MESSAGE_CALLS)]
    for root in roots:
        for node in ast.walk(root):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and " " in node.value:
                prose.append(node.value)
                node.value = "…"
    return ast.dump(function), prose


def plain_word(token: str) -> bool:
    """A word of prose (letters and punctuation), not a name of code such as fixed_first=True."""
    return all(ch.isalpha() or ch in "'’,;:.!?()-" for ch in token)


def reworded(text: str, mutant: str) -> bool:
    """mutmut's changes to a string that only reword it: XX…XX around (part of) it, or words re-cased,
    where every word whose case changed is prose (a name of code cased otherwise would name a wrong fix)."""
    if mutant.replace("XX", "") == text.replace("XX", "") and mutant.count("XX") == text.count("XX") + 2:
        return True  # XX…XX around one of the strings Python joined into this one
    pairs = list(zip(text.split(" "), mutant.split(" ")))
    return (mutant.lower() == text.lower() and len(text.split(" ")) == len(pairs)
            and all(a == b or plain_word(a) for a, b in pairs))


def rewords_a_message(name: str, functions: dict) -> bool:
    """Whether mutant `name` (e.g. admin.x_fold__mutmut_7) changes nothing but the words of a message."""
    module, _, mutant = name.partition(".")
    stem = mutant.rsplit("__mutmut_", 1)[0]
    original, changed = functions[module].get(stem + "__mutmut_orig"), functions[module].get(mutant)
    if original is None or changed is None:
        return False
    whole = module == "admin" and stem in MESSAGES
    (tree, texts), (mutant_tree, mutant_texts) = prose_of(original, whole), prose_of(changed, whole)
    return tree == mutant_tree and all(reworded(a, b) for a, b in zip(texts, mutant_texts))


def main(patterns: list[str]) -> int:
    equivalent = {}  # .ci/mutation-equivalents: "NAME why", a line each
    for line in Path(".ci/mutation-equivalents").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, why = line.partition(" ")
            equivalent[name] = why.strip()
    status = {}  # mutmut's exit codes: 1 and 3 killed, 0 survived, 5 and 33 no test ran it, others timeout
    for meta in Path("mutants").rglob("*.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if code is not None and any(fnmatch.fnmatchcase(name, p) for p in patterns):
                status[name] = code
    functions = {}  # module -> {mutmut's function name: its tree}, from mutmut's copy of each file
    for path in Path("mutants").glob("*.py"):
        tree = ast.parse(path.read_text())
        functions[path.stem] = {n.name: n for n in ast.walk(tree)
                                if isinstance(n, ast.FunctionDef) and "__mutmut_" in n.name}
    killed = sorted(n for n, c in status.items() if c in (1, 3))
    survived = sorted(n for n, c in status.items() if c in (0, 5, 33))  # no test ran it: nothing checks it
    # a reworded message is equivalent whatever its verdict, a timeout too (a survivor runs every test)
    reworded = [n for n in status if n not in killed and n not in equivalent and rewords_a_message(n, functions)]
    other = sorted(n for n in status if n not in killed and n not in survived and n not in reworded)  # timeouts
    missing = [n for n in survived if n not in equivalent and n not in reworded]
    listed = [n for n in survived if n in equivalent]
    stale = sorted(n for n in equivalent if n in killed)
    print(f"mutation score: {len(killed)} killed of {len(killed) + len(missing)} non-equivalent mutants = "
          f"{100 * len(killed) / max(1, len(killed) + len(missing)):.1f}% ({len(status)} ran to a verdict or "
          f"a timeout; equivalent: {len(reworded)} reword a message, {len(listed)} listed in "
          f".ci/mutation-equivalents; {len(other)} other)")
    for title, names in (("reword a message (equivalent for the reader)", reworded),
                         ("not killed (mutmut show NAME, in the copy, shows the change)", missing),
                         ("timed out or crashed (not in the score: run them again with MUTANTS=)", other),
                         ("listed as equivalent but killed now: take them off the list", stale)):
        if names:
            print(title + ":")
            print("\n".join(f"  {n}" for n in names))
    return 1 if missing or other or stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1].split()))
