"""Quality bench: held-out FID, KID, precision and recall of training recipes (benchmarks/quality.py;
its report: benchmarks/quality_report.py).

    python bench_quality.py --size 64 --variants classic best --steps 2000 --eval-every 500
    python bench_quality.py --size 64 --report                  # table + assets/quality_celeba_64.png
"""
import utils
from benchmarks import quality

build_parser = quality.build_parser


def main(argv=None) -> int:
    return quality.main(argv)


if __name__ == "__main__":
    utils.run_cli(main)
