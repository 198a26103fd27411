"""Horovod and the processes of a run: one module a job.

    horovod    hvd.init() with hvdgan's defaults, the launcher checks (plain srun), build facts
    launch     launcher command lines (horovodrun, mpirun, srun) for `hvdgan launch` and the tests
    supervise  `hvdgan launch` in front of its launcher: a stop passed on to every rank, exit 75
    resources  what a rank may use of its node: CPU threads and memory, as the allocation says
    layout     channels_last tensors through Horovod's collectives (contiguous copies)
    stop       USR1, TERM, INT, HUP: every rank stops at the same step, with a checkpoint (exit 75)
    watchdog   a hung rank ends the job instead of hanging it
    topology   where the ranks are (world.json) and whether their parameters still agree
"""
