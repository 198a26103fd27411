"""One training run around the GAN step (hvdgan.gan): one module a job.

    loop        `hvdgan train`: the Trainer, set-up, the loop over batches, resume and preemption
    checkpoint  checkpoint files: atomic writes, safe loading, keep-last-K, the newest readable one
    history     a resumed run's history stays linear (later checkpoints, records, grids moved aside)
    resume      where a resumed run continues: the data position and every rank's random streams
    stats       named statistics summed per log window, gathered from every rank in one allgather
    runlog      what a user looks at: metrics.jsonl, TensorBoard, sample grids, the loss plot, fd8
"""
