"""Kernels on a Slurm cluster's compute nodes, through its login node.

A host with a ``[hosts.NAME.slurm]`` table is a login node. relay asks Slurm there for an
allocation (``sbatch`` of a job whose batch step only sleeps, sized by ``relay connect NAME
--kernels N`` or grown one job per launch that finds no free slot), watches it with ``squeue``
and releases it with ``scancel`` when no kernel has used it for ``idle_timeout_s`` and on
shutdown. Each kernel is one job step (``srun --jobid --overlap --nodelist``), so it runs inside
the job: Slurm's limits, accounting and ``scancel`` reach it, and it has the job's environment.

The kernel's links need listeners on the compute node's own 127.0.0.1, so relay keeps one SSH
connection per node, through the login node as jump host, with a supervisor there: the same
guarantees as on any host (listeners closed once connected, only the user's processes
admitted, nothing outlives the connection). Sites allow that SSH login where the user has a
job on the node (pam_slurm_adopt); where they do not, the launch fails with the node's SSH
error in one line (README, "Slurm clusters").

``spec`` is Slurm's words (pure); ``allocation`` runs them and places kernels.
"""
