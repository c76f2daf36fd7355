"""Benchmarks: how fast, how good, and whether a GPU does what the README says.

    harness             what the others share, without torch: one measurement per fresh process, peak memory,
                        commands run as a user runs them, the preprocess row, the images, the machine
    rows                the measured rows that use torch: our training step, the classic loop, feeder, FID features
    speed               our pipeline against the classic DCGAN loop, in img/s (python bench.py)
    quality             held-out FID, KID, precision and recall of training recipes (python bench_quality.py)
    quality_report      its tables, curves and sample grids, from the rows file
    gpu_check           the GPU check's runner: every stage in its own process and time limit (bench.py --gpu-check)
    gpu_check_registry  each stage registered once: name, budget, function, summary line, measures
    gpu_check_context   what a stage function gets: settings, time left, save, commands, log counts
    gpu_check_stages    the stage functions
    gpu_check_report    the targets of docs/gpu_check.md and the markdown table
    host_sync           the check's probe for host syncs in a training step (.item(), data-dependent shapes, copies)
    explorer_load       the face explorer under load (python bench.py --explorer)
    alignment           how well preprocessing.align puts faces back where CelebA has them (python -m benchmarks.alignment)
"""
