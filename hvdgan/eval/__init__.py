"""Measuring a generator: one module a job (docs/evaluation.md writes the protocol down).

    inception  the TF 2015-12-05 Inception's pool features, from a local weights file (no download)
    scores     FID, KID and precision/recall from feature vectors (NumPy/PyTorch only, no files)
    features   Inception features of N generated or real images, shared among the ranks and gathered in
               order; reference features cached beside the data
    evaluate   `hvdgan evaluate` and `--eval-every`: the features, then the scores on every rank
"""
