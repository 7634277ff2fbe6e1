"""Batches larger than one call, one process or one machine: conv2d mapped over a Dask array.

Run:  pip install '.[dask]' && python examples/dask_batches.py
The batch axis is split into chunks; each chunk is one bnns_py.conv2d call. The same graph runs on
Dask's threaded scheduler (C calls release the GIL, so chunks run in parallel in one process) and
on a dask.distributed LocalCluster of 2 worker processes (each process creates its own BNNS
filters). Both results are checked against a single call over the whole batch.
"""
import sys

import numpy as np

import bnns_py

try:
    import dask.array as da
    from dask.distributed import Client, LocalCluster
except ImportError:
    print("skipped: dask is not installed (pip install '.[dask]')")
    sys.exit(0)

BATCH, CHUNK = 24, 4
rng = np.random.default_rng(0)
weight = (0.1 * rng.standard_normal((16, 8, 3, 3))).astype(np.float32)
bias = rng.standard_normal(16).astype(np.float32)


def convolve_block(block):
    """One chunk of the batch: an ordinary bnns_py call on a numpy array."""
    return bnns_py.conv2d(block, weight, bias, stride=1, padding=1, activation="relu")


def lazy_convolution(images):
    """The graph: conv2d over every batch chunk; channels and image size change, the batch does not."""
    out_chunks = (images.chunks[0], (weight.shape[0],), images.chunks[2], images.chunks[3])
    return images.map_blocks(convolve_block, dtype=np.float32, chunks=out_chunks)


def main():
    images_np = rng.standard_normal((BATCH, 8, 20, 20)).astype(np.float32)
    # In a real job the chunks would come from storage (da.from_zarr, da.from_delayed, ...) and
    # never be in memory together; here they are cut from one array so that the result can be
    # checked against a single call.
    images = da.from_array(images_np, chunks=(CHUNK, -1, -1, -1))
    expected = bnns_py.conv2d(images_np, weight, bias, stride=1, padding=1, activation="relu")
    graph = lazy_convolution(images)

    threaded = graph.compute(scheduler="threads", num_workers=2)
    error = float(np.abs(threaded - expected).max())
    print(f"threaded scheduler: {threaded.shape}, {images.numblocks[0]} chunks, "
          f"max |chunked - single call| = {error:.1e}")
    bnns_py.assert_close(threaded, expected, rtol=1e-6, msg="threaded chunks vs one call")

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        distributed = client.compute(graph).result()
        workers = client.run(lambda: bnns_py.backend_info()["backend"])
    error = float(np.abs(distributed - expected).max())
    print(f"LocalCluster, {len(workers)} worker processes ({sorted(set(workers.values()))} backend): "
          f"max |chunked - single call| = {error:.1e}")
    bnns_py.assert_close(distributed, expected, rtol=1e-6, msg="distributed chunks vs one call")
    print("OK")


if __name__ == "__main__":   # worker processes re-import this file: run only in the parent
    main()
