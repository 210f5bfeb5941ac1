#!/usr/bin/env python3
"""The documentation's links and paths resolve: in README.md, docs/*.md and bench/*.md, every
relative Markdown link (and its #anchor, against the target's headings), and every backquoted
path into the tree (a word that starts with a top-level folder of the repository, with {a,b}
alternatives expanded and a trailing :line or glob suffix dropped). Exit 1 with one line per
broken reference."""
import itertools
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOP = ("cuda/", "host/", "tests/", "bench/", "cmake/", "fuzz/", "slurm/", "docs/", ".ci/")


def anchors(md: pathlib.Path):
    out = set()
    for line in md.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower(), flags=re.UNICODE)
            out.add(text.replace(" ", "-"))
    return out


def expand(path: str):
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return list(itertools.chain.from_iterable(
        expand(path[: m.start()] + alt + path[m.end():]) for alt in m.group(1).split(",")))


CHECKED = [0]


def check(md: pathlib.Path):
    text = md.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        CHECKED[0] += 1
        file, _, anchor = target.partition("#")
        dest = (md.parent / file).resolve() if file else md
        if not dest.exists():
            broken.append(f"{md.relative_to(ROOT)}: link {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{md.relative_to(ROOT)}: link {target}: no heading #{anchor}")
    for word in re.findall(r"`([^`\s]+)`", text):
        if not word.startswith(TOP) or "<" in word or "$" in word:
            continue
        word = re.sub(r":\d+(-\d+)?$", "", word).rstrip(".,;")
        for p in expand(word):
            p = p.split("*")[0]
            CHECKED[0] += 1
            if not (ROOT / p).exists():
                broken.append(f"{md.relative_to(ROOT)}: path {p} does not exist")
    return broken


def main():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "bench").glob("*.md"))]
    broken = [b for f in files for b in check(f)]
    for b in broken:
        print(b)
    print(f"{len(files)} documents, {CHECKED[0]} links and paths, {len(broken)} broken")
    return 1 if broken or CHECKED[0] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
