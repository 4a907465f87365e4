"""Side-by-side timing for the scripts in bench/check: every mode runs once
per round, in turn, the order reversed every other round (so neither mode
always runs first on a warm or a cold machine)."""
import statistics


def medians(modes, rounds, measure):
    """Runs `measure(mode)` `rounds` times for each of `modes`, alternating;
    returns {mode: median of its results}."""
    modes = list(modes)
    results = {m: [] for m in modes}
    for r in range(rounds):
        for m in modes if r % 2 == 0 else reversed(modes):
            results[m].append(measure(m))
    return {m: statistics.median(v) for m, v in results.items()}
