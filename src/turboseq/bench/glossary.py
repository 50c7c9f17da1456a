"""Glossary terms on the trained Marian (``bench.trained``): how often a required target term appears, and
whether it takes the place of the word the model would have written (``models.glossary``).

The trained task maps each word through a fixed bijection and reverses the order, so every source word has one
right target word at one right place. For each held-out sentence one source word gets a glossary entry whose
target is another vocabulary word (a client's term the model never learned for it). The ideal output is the
reference with that one word replaced. Measured with and without the glossary, greedy and beam 4:
``term``: the term appears; ``in place``: the output is the ideal one (term where the model's own word was,
every other word right); ``rest``: the output without the term is the reference (the term added, nothing
replaced: what a rule that only requires the term gives).

    python -m turboseq.bench.glossary [--n 200] [--seed 7]
"""

from __future__ import annotations

import argparse
import random


def measure(n: int = 200, seed: int = 7, num_beams: int = 1) -> dict:
    import turboseq
    from turboseq.bench.trained import _bijection, task_pairs, trained_model

    model = turboseq.load(trained_model("marian"))
    mapping = _bijection()
    rng = random.Random(seed)
    targets = list(mapping.values())
    cases = []
    for source, reference in task_pairs(n, seed):
        word = rng.choice(source.split())
        term = rng.choice([t for t in targets if t not in reference.split()])
        ideal = " ".join(term if w == mapping[word] else w for w in reference.split())
        cases.append((source, word, term, ideal))
    sources = [c[0] for c in cases]
    pairs = task_pairs(n, seed)
    plain = model.translate(sources, num_beams=num_beams)
    constrained = [
        model.translate([source], glossary={word: term}, num_beams=num_beams)[0] for source, word, term, _ in cases
    ]

    def rates(outputs: list[str]) -> dict:
        term = sum(c[2] in o.split() for c, o in zip(cases, outputs)) / n
        in_place = sum(o.strip() == c[3] for c, o in zip(cases, outputs)) / n
        rest = sum(_without(o, c[2]) == r for c, o, (_, r) in zip(cases, outputs, pairs)) / n
        return {"term": term, "in_place": in_place, "rest": rest}

    return {"n": n, "num_beams": num_beams, "plain": rates(plain), "glossary": rates(constrained)}


def _without(output: str, term: str) -> str:
    """``output`` with the first occurrence of the word ``term`` taken out."""
    words = output.split()
    if term in words:
        words.remove(term)
    return " ".join(words)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="held-out sentences")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    print(
        "| search | glossary | term appears | term in place, every other word right | output without the term = reference |"
    )
    print("|---|---|---|---|---|")
    for beams in (1, 4):
        result = measure(args.n, args.seed, beams)
        search = "greedy" if beams == 1 else f"beam {beams}"
        p, g = result["plain"], result["glossary"]
        for name, r in (("no", p), ("yes", g)):
            print(f"| {search} | {name} | {r['term']:.1%} | {r['in_place']:.1%} | {r['rest']:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
