"""Running the heavy work on a Dask cluster: blocked deconvolution, replicates, response blocks.

Nothing here imports Dask at import time; a module that needs it imports it inside the function
that talks to the cluster, so a run without a client never loads Dask.

* :mod:`.cluster`: a ``LocalCluster`` on 127.0.0.1 or a connection to a running scheduler;
* :mod:`.blocks`: a dataset split into blocks of data bins, each described by what re-creates
  it (:class:`~.blocks.BlockSpec`), and the actors that hold the blocks on the workers;
* :mod:`.fit`: :class:`~.fit.DistributedJointData`, the fit's view of blocks spread over the
  workers (maps out, partial products back, reduced in block order);
* :mod:`.tasks`: independent tasks (bootstrap replicates, sky-pixel blocks of a Galactic
  response) mapped over the workers, results in submission order.
"""
