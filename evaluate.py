"""FID (and optionally KID) of a generator against real images, equal to
``python -m pytorch_fid`` on the same images.

    python evaluate.py --params runs/64px-celeba-.../generator.params        # 50k samples vs data/celeba_64.npy
    python evaluate.py --params generator.params -n 10000 --kid --seed 1
    python evaluate.py --params generator.params -n 10000 --pr --nn 4          # + precision/recall, copies
    python evaluate.py --real data/celeba_64.npy --fake samples/            # folders, .npy, or .npz statistics

The command line over ``metrics/``: the FID Inception-v3 network
(pytorch-fid's, TensorFlow 2015-12-05 weights, 2048-d pool3 features) comes
from ``metrics/inception.py``; ``metrics/features.py`` feeds it (generated
images rounded as their saved PNGs would be) and caches the real set's
statistics beside its data as ``<data>.fid.npz``, recomputed when the data,
the extractor, the image size or the device's numerics change;
``metrics/fid.py`` takes the distances.

``--pr`` adds precision and recall (k = 3) and density and coverage (k = 5)
of the generated features against the real ones
(``metrics/precision_recall.py``); the real features and their k-NN radii are
cached as ``<data>.features.npz``. ``--nn K`` draws 32 samples beside their K
nearest training faces and reports the copy share. Each score of --params is
appended to ``results.jsonl`` beside it.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import utils
from dataloader import load_images
from editing.classifier import load_classifier, predict
from metrics.attribute_balance import attribute_balance, attribute_shares, balance_lines
from metrics.features import (K_DC, K_PR, first_generated_images, generated_batches, generated_features, load_folder,
                              manifold_scores, nearest_neighbour_picture, path_statistics, statistics_from_features,
                              write_statistics)
from metrics.fid import SmallSampleWarning, float64_device, frechet_distance, kernel_inception_distance, warn_if_small_sample
from metrics.inception import FID_WEIGHTS_FILE, load_inception
from metrics.precision_recall import copy_share
from network import load_generator
from utils import UserError
from utils.paths import CLASSIFIER, shown

NN_SAMPLES = 32  # generated faces in the --nn picture


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="FID (and KID) of a generator or of two image sets, equal to pytorch-fid's.",
        formatter_class=utils.HelpFormatter,
    )
    parser.add_argument("--params", default="generator.params", help="generator.params to evaluate")
    parser.add_argument("--data", default="data/celeba_{size}.npy",
                        help="real images (.npy from preprocess.py, a folder, or a statistics .npz); "
                             "{size} is the generator's size")
    parser.add_argument("-n", "--num-samples", type=int, default=50000, help="generated images")
    parser.add_argument("--batch-size", type=int, default=200, help="images per generator + Inception forward pass")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the generated images")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--kid", action="store_true", help="also report the Kernel Inception Distance")
    parser.add_argument("--inception-weights", default=None,
                        help=f"FID Inception weights file ({FID_WEIGHTS_FILE}) for offline machines; "
                             f"default: the torch hub cache, downloaded on first use")
    parser.add_argument("--save-stats", default=None,
                        help="write the generated (or --fake) statistics here as .npz; with --real "
                             "alone, write the statistics of --real and stop")
    parser.add_argument("--real", default=None,
                        help="the real set: with --fake, compare two image sets; alone, score --params against it "
                             "(as --data; a folder of other-size photos is cropped and resized as preprocess.py does)")
    parser.add_argument("--fake", default=None, help="the set to score against --real")
    parser.add_argument("--no-ema", action="store_true", help="evaluate the raw generator, not its EMA weights")
    parser.add_argument("--pr", action="store_true",
                        help=f"also precision and recall (k = {K_PR}), density and coverage (k = {K_DC}) "
                             f"against the real set; its features are cached beside a .npy")
    parser.add_argument("--nn", type=int, default=0, metavar="K",
                        help=f"memorisation check (with --params): {NN_SAMPLES} samples beside their K nearest "
                             f"--data faces in Inception features, and the copy share; 0: off")
    parser.add_argument("--attrs", action="store_true",
                        help="also the attribute balance: the share of each attribute among the generated and "
                             "the real faces by --classifier, and the mean absolute difference of the shares")
    parser.add_argument("--classifier", default=shown(CLASSIFIER),
                        help="attribute classifier for --attrs (`attributes.py train`)")
    parser.add_argument("--nn-out", default=None,
                        help="the --nn picture; default: nearest_neighbours.png beside --params")
    return parser


def _validate(args) -> None:
    if args.num_samples < 2:
        raise UserError(f"-n must be at least 2 (got {args.num_samples})")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive (got {args.batch_size})")
    if args.inception_weights is not None and not Path(args.inception_weights).is_file():
        raise UserError(f"Inception weights file not found: {args.inception_weights}")
    if args.fake is not None and args.real is None:
        raise UserError("--fake needs --real (the set to compare it with)")
    if args.real is None and args.save_stats is None and not Path(args.params).exists():
        raise UserError(f"params file not found: {args.params} (pass --params, or --real/--fake)")
    for path in (args.real, args.fake):
        if path is not None and not Path(path).exists():
            raise UserError(f"not found: {path}")
    if args.save_stats is not None and Path(args.save_stats).is_dir():
        raise UserError(f"--save-stats {args.save_stats} is a folder; give a file name ending in .npz")
    if args.nn < 0:
        raise UserError(f"--nn must be 0 (off) or a number of neighbours (got {args.nn})")
    if args.nn and args.real is not None:
        raise UserError("--nn needs --params (generated samples to check against --data), not --real/--fake")
    if args.attrs and args.real is not None:
        raise UserError("--attrs needs --params (generated faces to label beside --data), not --real/--fake")
    if args.attrs and not Path(args.classifier).is_file():
        raise UserError(f"--classifier {args.classifier} not found: --attrs needs the attribute classifier "
                        f"({shown(CLASSIFIER)}, or `python attributes.py train`)")
    if args.pr or args.nn or args.attrs:
        for path in (args.real, args.fake) if args.real is not None else (args.data,):
            if path is not None and Path(path).suffix == ".npz":
                raise UserError(f"{path} holds statistics only; --pr, --nn and --attrs need the images (a "
                                f"folder or a .npy)")


def _kid_features(stats: dict, what: str):
    if stats.get("kid_features") is None:
        raise UserError(f"--kid needs activations, but {what} is a statistics file with only mu and sigma")
    return stats["kid_features"]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.real is not None and args.fake is None and args.save_stats is None:
        if not Path(args.params).exists():
            raise UserError(f"--real {args.real} alone scores --params against it, but {args.params} was not found; "
                            f"to compare two image sets add --fake B")
        args.data, args.real = args.real, None  # --params P --real FOLDER: FOLDER is the real set
    _validate(args)
    with warnings.catch_warnings(record=True) as caught:  # each shown once, as one line (no source line)
        warnings.simplefilter("always", SmallSampleWarning)
        try:
            return _run(args)
        finally:
            for message in dict.fromkeys(str(warning.message) for warning in caught):
                print(f"warning: {message}", file=sys.stderr)


def _run(args) -> int:
    start = time.time()
    device = utils.resolve_device(args.device)
    if args.real is not None:
        return _compare_sets(args, device, start)

    if args.save_stats is not None and not Path(args.params).exists():  # --data + --save-stats: real stats only
        return _save_real(args, device, start)
    generator, config = load_generator(args.params, device, use_ema=not args.no_ema)
    size = int(config["size"])
    data = Path(args.data.format(size=size))
    if not data.exists():
        raise UserError(f"real data not found: {data} (make it with `python preprocess.py --sizes {size}`)")
    model = load_inception(device, args.inception_weights)
    knn = ((K_PR, K_DC) if args.pr else ()) if args.pr or args.nn else None
    real = path_statistics(data, model, device, args.batch_size, size=size, knn=knn)
    if args.nn and args.nn >= real["n"]:
        raise UserError(f"--nn {args.nn} needs more than {args.nn} training images in {data} (got {real['n']})")
    nz = int(config["nz"])
    acts = generated_features(generator, nz, args.num_samples, model, device, args.batch_size, args.seed)
    fake = statistics_from_features(acts, seed=args.seed, size=size, extractor=model.extractor_id)
    warn_if_small_sample(args.num_samples, real.get("n"))
    fid = frechet_distance(fake["mu"], fake["sigma"], real["mu"], real["sigma"], device=device)
    kid = None
    if args.kid:
        kid = kernel_inception_distance(acts, _kid_features(real, str(data)), seed=args.seed, device=device)
    scores = manifold_scores(real, acts, device) if args.pr else {}
    if args.nn:
        shown = min(NN_SAMPLES, args.num_samples)
        picture = Path(args.nn_out or Path(args.params).parent / "nearest_neighbours.png")
        samples = first_generated_images(generator, nz, args.num_samples, device, shown, args.seed)
        nearest_neighbour_picture(samples, acts[:shown], real, args.nn, picture, device)
        dev = float64_device(device)
        share, flags = copy_share(acts.to(dev), real["features"].to(dev))
        scores.update(copy_share=share, nn_k=args.nn, nn_picture=str(picture))
        print(f"copy share {share:.4f}: {int(flags.sum())} of {args.num_samples} generated faces are closer to a "
              f"training face than it is to its nearest other one; {shown} beside their {args.nn} nearest "
              f"in {data}: {picture}")
    if args.attrs:
        scores.update(_attribute_balance(args, generator, nz, data, size, device))
    if args.save_stats:
        write_statistics(fake, args.save_stats)
    seconds = time.time() - start
    real_n = real.get("n")
    print(_result_line(fid, kid, model, f"n={args.num_samples} generated vs {real_n or '?'} real, {size} px, "
                                        f"seed {args.seed}, {seconds:.0f} s",
                       _pr_text(scores, data) if args.pr else ""))
    record = {
        "fid": fid, "kid_mean": kid and kid[0], "kid_std": kid and kid[1], "n": args.num_samples, "seed": args.seed,
        "real_n": real_n, "size": size, "params": str(Path(args.params)), "weights": config["weights"],
        "data": str(data), "data_fingerprint": real.get("fingerprint"), "extractor": model.extractor_id,
        "inception_weights": model.weights_label, "real_inception_weights": model.real_weights, "device": str(device), "seconds": round(seconds, 1), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **{k: v for k, v in scores.items() if k != "real_n"},
    }
    utils.append_jsonl(record, Path(args.params).parent / "results.jsonl")
    return 0


def _attribute_balance(args, generator, nz: int, data: Path, size: int, device) -> dict:
    """--attrs: label the generated faces (the FID's seeds) and the real ones with
    the classifier, print the shares and their balance, return the record's fields."""
    classifier, cconfig = load_classifier(args.classifier, device)
    names = list(cconfig["attributes"])
    fake = np.concatenate([predict(classifier, batch.permute(0, 2, 3, 1).cpu(), cconfig["size"], device=device)
                           for batch in generated_batches(generator, nz, args.num_samples, device, args.batch_size,
                                                          args.seed, progress=False)])
    real = load_folder(data, size) if data.is_dir() else load_images(data, size)
    shares = attribute_shares(fake)
    reference = attribute_shares(predict(classifier, real, cconfig["size"], device=device))
    balance = attribute_balance(shares, reference)
    print(f"attribute balance {balance:.3f}: mean |generated - real| share of {len(names)} attributes by "
          f"{args.classifier} ({len(fake)} generated vs {len(real)} real in {data})")
    print("\n".join(balance_lines(names, shares, reference)))
    return {"attr_balance": balance, "attr_classifier": str(args.classifier),
            "attr_shares": {name: round(float(v), 4) for name, v in zip(names, shares)},
            "attr_shares_real": {name: round(float(v), 4) for name, v in zip(names, reference)}}


def _save_real(args, device, start) -> int:
    data = Path(args.data)
    if "{size}" in args.data:
        raise UserError("--save-stats without --params needs an explicit --data (or --real) file")
    model = load_inception(device, args.inception_weights)
    stats = path_statistics(data, model, device, args.batch_size)
    write_statistics(stats, args.save_stats)
    print(f"saved statistics of {stats['n']} images of {data} to {args.save_stats} ({time.time() - start:.0f} s)")
    return 0


def _compare_sets(args, device, start) -> int:
    model = load_inception(device, args.inception_weights)
    knn = (K_PR, K_DC) if args.pr else None
    real = path_statistics(args.real, model, device, args.batch_size, knn=knn)
    if args.fake is None:
        if args.save_stats is None:
            raise UserError("--real needs --fake (or --save-stats to write its statistics)")
        write_statistics(real, args.save_stats)
        print(f"saved statistics of {real['n']} images of {args.real} to {args.save_stats}")
        return 0
    fake = path_statistics(args.fake, model, device, args.batch_size, knn=() if args.pr else None)
    warn_if_small_sample(fake.get("n"), real.get("n"))
    fid = frechet_distance(fake["mu"], fake["sigma"], real["mu"], real["sigma"], device=device)
    kid = None
    if args.kid:
        kid = kernel_inception_distance(_kid_features(fake, args.fake), _kid_features(real, args.real),
                                        seed=args.seed, device=device)
    if args.save_stats:
        write_statistics(fake, args.save_stats)
    pr_text = _pr_text(manifold_scores(real, fake["features"], device), args.real, args.fake) if args.pr else ""
    print(_result_line(fid, kid, model, f"{fake.get('n') or '?'} in {args.fake} vs {real.get('n') or '?'} in "
                                        f"{args.real}, {time.time() - start:.0f} s", pr_text))
    return 0


# --------------------------------------------------------------------------- #
# The result lines
# --------------------------------------------------------------------------- #
def _result_line(fid, kid, model, details: str, extra: str = "") -> str:
    """One line: the scores, then what they were computed from, the Inception weights last."""
    kid_text = f"  KID {kid[0]:.5f} ± {kid[1]:.5f}" if kid is not None else ""
    return f"FID {fid:.2f}{kid_text}{extra}  ({details}; {model.weights_label})"


def _pr_text(scores: dict, real_name, fake_name=None) -> str:
    """The --pr part of the result line; the real set is named first."""
    fake = f"fake: {fake_name}, {scores['fake_n']}" if fake_name else f"generated: {scores['fake_n']}"
    return (f"  precision {scores['precision']:.3f} recall {scores['recall']:.3f} density {scores['density']:.3f} "
            f"coverage {scores['coverage']:.3f} (real: {real_name}, {scores['real_n']}; {fake})")


if __name__ == "__main__":
    utils.run_cli(main)
