"""Measuring a generator: one module a job (docs/evaluation.md writes the protocol down).

    inception  the TF 2015-12-05 Inception's pool features, from a local weights file (no download)
    scores     FID, KID and precision/recall from feature vectors (NumPy/PyTorch only, no files)
    evaluate   `hvdgan evaluate` and `--eval-every`: generate or read images on every rank, gather the
               features, score them; reference features cached beside the data
"""
