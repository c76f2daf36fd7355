"""Benchmarks: how fast, how good, and whether a GPU does what the README says.

    harness     what the others share: one measurement per fresh process, peak memory, the machine, the rows
    speed       our pipeline against the classic DCGAN loop, in img/s (python bench.py)
    quality     held-out FID, KID, precision and recall of training recipes (python bench_quality.py)
    gpu_check   the GPU check, every stage in its own process and time limit (python bench.py --gpu-check)
    host_sync   the check's probe for host syncs in a training step (.item(), data-dependent shapes, copies)
"""
