"""One training run around the GAN step (hvdgan.gan): one module a job.

    loop          `hvdgan train`: the Trainer, built in phases, and the loop over batches
    actions       what the loop does after a step (progress, log, checkpoint, stop, sample, evaluate);
                  a feature that acts between steps adds an Action
    state         the RunState (step, epoch, position in the epoch, best FID, random streams) and how a
                  resume on another world or batch size remaps it
    checkpointer  restore (--resume) and save, both collective; the run's history and keep-last-K
    checkpoint    checkpoint files: atomic writes, safe loading, the newest readable one
    lock          one training a run directory: rank 0's lock, naming its holder
    history       a resumed run's history stays linear (later checkpoints, records, grids moved aside)
    stats         named statistics summed per log window, gathered from every rank in one allgather
    runlog        what a user looks at: metrics.jsonl, TensorBoard, sample grids, the loss plot, fd8
"""
