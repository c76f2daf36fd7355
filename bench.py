"""Speed bench, GPU check and the explorer's load test (benchmarks/speed.py, gpu_check.py, explorer_load.py).

    python bench.py --steps 3 --sizes 64 --small --synthetic 256     # smoke run, seconds on a CPU
    python bench.py --device cuda --steps 50 --sizes 64 128 --out-json bench.json
    python bench.py --gpu-check --out gpu_check                      # the GPU check (docs/gpu_check.md)
    python bench.py --explorer                                       # the face explorer under load (docs/explorer.md)
"""
import utils
from benchmarks import speed

build_parser = speed.build_parser


def main(argv=None) -> int:
    return speed.main(argv)


if __name__ == "__main__":
    utils.run_cli(main)
