"""Speed bench and GPU check (benchmarks/speed.py, benchmarks/gpu_check.py).

    python bench.py --steps 3 --sizes 64 --small --synthetic 256     # smoke run, seconds on a CPU
    python bench.py --device cuda --steps 50 --sizes 64 128 --out-json bench.json
    python bench.py --gpu-check --out gpu_check                      # the GPU check (docs/gpu_check.md)
"""
import utils
from benchmarks import speed

build_parser = speed.build_parser


def main(argv=None) -> int:
    return speed.main(argv)


if __name__ == "__main__":
    utils.run_cli(main)
