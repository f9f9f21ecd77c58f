"""Prose words of tutorial.md, section by section: words outside code.

    python .ci/prose_words.py                 # every part, then the core (start to "# Going deeper")
    python .ci/prose_words.py 12              # Section 12 alone
    python .ci/prose_words.py 1-8 --code      # Sections 1-8, and the words of their code and output

Prose is every line outside ``` fences, less indented code (a line of 4+ spaces after a blank line or
after another such line) and figures (![...](...)); a word is a whitespace-separated token with a
letter or digit in it. Headings and tables count: a teacher reads them out. The last figure, "tokens
outside fences", is the coarser count issue 25 used (every whitespace-separated token outside ```
fences, equations, figure captions and table bars included): 4,089 for the core at commit 73fdf9f.
"""

import re
import sys
from pathlib import Path

WORD = re.compile(r"\w")


def parts(text: str) -> list[tuple[str, list[str], list[str], list[str]]]:
    """(title, prose lines, code lines, lines outside fences) for the preamble and each heading."""
    found, title, prose, code, outside = [], "preamble", [], [], []
    fenced, indented, previous_blank = False, False, True
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            code.append(line)
            continue
        if re.match(r"^#{1,2} ", line):
            found.append((title, prose, code, outside))
            title, prose, code, outside = line.lstrip("# "), [], [], []
        outside.append(line)
        indented = bool(line.strip()) and line.startswith("    ") and (previous_blank or indented)
        previous_blank = not line.strip()
        if indented:
            code.append(line)
        elif not line.lstrip().startswith("!["):
            prose.append(line)
    found.append((title, prose, code, outside))
    return found


def words(lines: list[str]) -> int:
    return sum(1 for line in lines for token in line.split() if WORD.search(token))


def main(argv: list[str]) -> None:
    found = parts(Path(__file__).resolve().parent.parent.joinpath("tutorial.md").read_text())
    want = next((a for a in argv if not a.startswith("--")), None)
    if want:
        first, _, last = want.partition("-")
        numbers = set(range(int(first), int(last or first) + 1))
        chosen = [p for p in found if re.match(r"(\d+)\. ", p[0]) and int(p[0].split(".")[0]) in numbers]
        label = ("Sections " if last else "Section ") + want
    else:
        for title, prose, code, _ in found:
            print(f"{words(prose):6d} prose {words(code):6d} code  {title[:60]}")
        end = next(i for i, p in enumerate(found) if p[0] == "Going deeper")
        chosen, label = found[:end], "the core (title, Before you start, Sections 1-8)"
    line = f"{sum(words(p) for _, p, _, _ in chosen)} prose words in {label}"
    if "--code" in argv:
        line += f", {sum(words(c) for _, _, c, _ in chosen)} words of code and output"
    line += f"; {sum(len(x.split()) for *_, o in chosen for x in o)} tokens outside fences"
    print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
