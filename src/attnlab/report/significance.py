"""Is a row's BLEU different from the base row's? sacreBLEU's paired tests on the hypotheses.

With several seeds, each seed's hypotheses are paired with the base's of the same seed and the
pairs are concatenated (the references repeated once per seed), so the test resamples the same
sentences in both systems. The test measures test-set sampling noise; the spread over training
seeds is what the table's +- std shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

TESTS = {"bs": "paired bootstrap resampling", "ar": "approximate randomization"}
SENTENCE_METRICS = {"bleu": ("BLEU", lambda: BLEU(force=True)), "chrf": ("chrF2", CHRF)}  # what the tests resample


@dataclass(frozen=True)
class Significance:
    p_value: float
    delta: float
    """BLEU of the concatenated system minus the base's, on the same concatenation."""
    seeds: int
    signature: str


def paired_test(base: list[list[str]], system: list[list[str]], references: list[str], test: str = "bs",
                samples: int = 0, metric: str = "bleu") -> Significance:
    """p-value of `system` against `base` on `metric` (bleu or chrf): both lists hold one
    hypothesis list per seed, in the same seed order; `references` are the split's references
    (once)."""
    if test not in TESTS:
        raise ValueError(f"significance test {test!r} is not one of {', '.join(TESTS)}")
    if not base or len(base) != len(system):
        raise ValueError(f"need the same number of seeds for both systems, got {len(base)} and {len(system)}")
    for hyps in (*base, *system):
        if len(hyps) != len(references):
            raise ValueError(f"{len(hyps)} hypotheses for {len(references)} references")
    base_all = [h for hyps in base for h in hyps]
    system_all = [h for hyps in system for h in hyps]
    refs_all = references * len(base)
    name, make = SENTENCE_METRICS[metric]
    signatures, scores = PairedTest([("base", base_all), ("system", system_all)], {name: make()},
                                    [refs_all], test_type=test, n_samples=samples)()
    base_score, score = scores[name]
    delta = float(score.score - base_score.score)
    # sacreBLEU counts resamples whose difference strictly exceeds the observed one, so a
    # difference of exactly zero (identical outputs) comes out "significant" (p = 1/(n+1)).
    # No difference is no evidence of one: p = 1.
    p_value = 1.0 if delta == 0 else float(score.p_value)
    return Significance(p_value=p_value, delta=delta, seeds=len(base), signature=str(signatures[name]))


def marker(p_value: float | None) -> str:
    """** p < 0.01, * p < 0.05, else nothing."""
    if p_value is None:
        return ""
    return "**" if p_value < 0.01 else "*" if p_value < 0.05 else ""
