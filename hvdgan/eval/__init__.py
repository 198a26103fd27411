"""Measuring a generator: one module a job (docs/evaluation.md writes the protocol down).

    inception  the TF 2015-12-05 Inception's pool features, from a local weights file (no download)
    scores     FID, KID and precision/recall from feature vectors (NumPy/PyTorch only, no files)
    features   Inception features of N generated or real images, shared among the ranks and gathered in
               order; reference features cached beside the data
    evaluate   `hvdgan evaluate` and `--eval-every`: the features, then the scores on every rank
"""

from ..errors import HvdganError

METRICS = ("fid", "kid", "pr")  # the scores (scores.compute), by `--metrics` name


def parse_metrics(text: str, where: str = "--metrics") -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower() for n in str(text).split(",") if n.strip()))
    bad = [n for n in names if n not in METRICS]
    if bad or not names:
        why = f"{', '.join(bad) or 'nothing'} is not one of {', '.join(METRICS)} (comma-separated, e.g. fid,kid,pr)"
        raise HvdganError(f"{where}: {why}", reason=why)
    return names
