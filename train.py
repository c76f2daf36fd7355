"""Train the DCGAN (Radford et al., 2016) on a preprocessed image array.

    python preprocess.py --synthetic 2000 && python train.py --data data/synthetic_64.npy --ngf 32 --ndf 32 --batch-size 64 --max-steps 1500
    python train.py --size 128 --ema 0.999 --compile          # CelebA 128 px on a GPU (bf16, fused Adam)
    python train.py --resume --out runs/128px-celeba-20260101-120000 --max-steps 20000
    torchrun --nproc_per_node 4 train.py --size 128           # DDP; --batch-size stays the global batch
    python train.py --data data/flowers_64.npy --recipe best  # small folder: DiffAugment + EMA (README "Better faces")
    python train.py --tensorboard                             # and watch: tensorboard --logdir runs
    python train.py --recipe best --dry-run                   # print the resolved config and exit

This file is the command line only: every option defaults to None, meaning
"not typed"; ``training/config.py`` resolves the config as defaults
(training_loop's signature) < --recipe < the checkpoint's config on --resume
< typed flags (a --recipe typed on --resume counts as typing its options);
it is printed and handed to ``training.training_loop.training_loop(**config)``.

Signals: Ctrl-C (SIGINT) or SIGTERM finishes the current step (under
torchrun: up to the next log interval), saves the checkpoint and
generator.params, says where, and exits 130 (SIGINT) or 143 (SIGTERM). Every
file is written atomically, so a SIGKILL at any moment leaves the previous
files loadable.
"""
from __future__ import annotations

import argparse
import json

import utils
from training import augment, checkpoint, distributed
from training.config import RECIPES, FlagAdder, recipe_options, resolve_config, typed_options, validate
from training.loss import LOSSES, TOPK_DECAY
from training.training_loop import DEFAULTS, training_loop


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train the DCGAN on a preprocessed uint8 image array (see preprocess.py). Options left out "
                    "take the recipe's value, on --resume the checkpoint's.",
        formatter_class=utils.HelpFormatter,
    )
    flag = FlagAdder(p)
    flag("--size", type=int, choices=(64, 128), help="image size in pixels")
    flag("--data", help="image array from preprocess.py (default: data/celeba_{size}.npy; on --resume the checkpoint's)")
    flag("--epochs", type=int, help="epochs to train (total, across resumes); not applied when only --max-steps "
                                    "is given (default: 5 when neither is given; on --resume the checkpoint's)")
    flag("--max-steps", type=int, help="stop after this many TOTAL steps (counted across resumes); decides the "
                                       "length alone unless --epochs is also given, then the smaller wins")
    flag("--batch-size", type=int, help="GLOBAL batch size (split across DDP ranks)")
    flag("--lr", type=float, help="Adam learning rate for G and D")
    flag("--beta1", type=float, help="Adam beta1")
    flag("--beta2", type=float, help="Adam beta2")
    flag("--nz", type=int, help="latent size")
    flag("--ngf", type=int, help="generator width (32 trains ~4x faster on CPU)")
    flag("--ndf", type=int, help="discriminator width")
    flag("--seed", type=int, help="seed for weights, noise and data order")
    flag("--device", help="auto, cpu, cuda, cuda:N or mps")
    flag("--precision", choices=("auto", "fp32", "bf16", "fp16"),
         help="auto = bf16 autocast on GPUs with native bf16 (compute capability 8.0+: A100, RTX 30xx, H100), "
              "fp16 autocast with loss scaling on older CUDA GPUs (T4, V100, RTX 20xx), fp32 on CPU and MPS; "
              "fp16 steps with inf/NaN gradients are skipped and counted (skipped_d, skipped_g in metrics.jsonl)")
    flag("--compile", action="store_true", help="torch.compile G and D (first steps are slow)")
    flag("--ema", type=float, metavar="DECAY", help="keep an EMA of G's weights with this decay (e.g. 0.999; 0 = off)")
    flag("--out", help="run folder (default: runs/<size>px-<data>-<date-time>; on --resume the newest run in runs/)")
    flag("--params", help="where to write the generator export")
    flag("--resume", action="store_true", help="continue from --out's checkpoint (default: the newest run in runs/)")
    flag("--flip", action=argparse.BooleanOptionalAction, help="random horizontal flips of the real images")
    flag("--log-every", type=int, help="steps between metrics lines, NaN checks and, under torchrun, stop votes "
                                       "(read one interval late; loss.png is redrawn at each checkpoint)")
    flag("--sample-every", type=int, help="steps between samples/step_NNNNNN.png grids")
    flag("--checkpoint-every", type=int, help="steps between checkpoint.pt + --params saves (always saved at the end)")
    flag("--num-samples", type=int, help="images in each fixed-noise grid")
    flag("--fid-every", type=int, help="steps between FID evaluations (0 = off)")
    flag("--fid-n", type=int, help="generated images per FID evaluation")
    flag("--tensorboard", action="store_true",
         help="also write the metrics rows (losses, D's outputs, img/s, ADA's p, FID) and the sample grids as "
              "TensorBoard events into the run folder, so tensorboard --logdir runs shows every run "
              "(needs: pip install tensorboard)")
    flag("--channels-last", choices=("auto", "on", "off"),
         help="channels_last memory format (default: auto = on for CUDA and CPU, where it is faster; "
              "on --resume the checkpoint's)")
    flag("--deterministic", action=argparse.BooleanOptionalAction,
         help="deterministic kernels (cuDNN benchmark off): on a GPU a resumed run then matches an "
              "uninterrupted one, as it always does on CPU; slower")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit without training")

    g = p.add_argument_group("beyond the classic recipe (README 'Better faces'); a typed flag beats --recipe")
    flag = FlagAdder(g)
    flag("--recipe", choices=tuple(RECIPES),
         help="classic = the DCGAN paper's recipe; best = "
              + ", ".join(f"{k} {v}" for k, v in recipe_options("best").items() if v != DEFAULTS[k]))
    flag("--augment", nargs="?", const=augment.DEFAULT_POLICY, metavar="POLICY",
         help=f"DiffAugment every image D sees, real and fake; bare --augment = {augment.DEFAULT_POLICY} "
              f"(measured best on the CelebA sample; Zhao et al. add cutout for tiny sets), or a comma list of "
              f"{', '.join(augment.OPS)}; none = off")
    flag("--loss", choices=tuple(LOSSES),
         help="bce = classic non-saturating; hinge = SNGAN/BigGAN's relu(1 -+ D) for D, -D(G(z)) for G")
    flag("--sn", action=argparse.BooleanOptionalAction,
         help="spectral normalisation on every D conv; D then has no BatchNorm (as in SNGAN). Changes D: fixed for a run")
    flag("--lr-g", type=float, help="G's Adam learning rate (default: --lr; on --resume the checkpoint's); "
                                    "TTUR: lr-d > lr-g")
    flag("--lr-d", type=float, help="D's Adam learning rate (default: --lr; on --resume the checkpoint's)")
    flag("--r1", type=float, metavar="GAMMA", help="R1 penalty GAMMA/2 * E||grad D(x)||^2 on reals (e.g. 0.1-10; 0 = off)")
    flag("--r1-every", type=int, metavar="K",
         help="lazy R1: apply it every K steps, scaled by K (StyleGAN2's 16: ~1/16 of its cost)")
    flag("--ada", type=float, metavar="TARGET",
         help="with --augment: adaptive augmentation (ADA, Karras et al. 2020): each op on each image with "
              "probability p, p starts at 0 and moves to keep E[sign D(real)] at TARGET (their 0.6); 0 = off, "
              "every image augmented")
    flag("--ada-kimg", type=float, metavar="KIMG", help="with --ada: thousands of images for p to go from 0 to 1 "
                                                        "at the fastest")
    flag("--lecam", type=float, metavar="LAMBDA",
         help="LeCam regulariser on D (Tseng et al. 2021, for small data sets): LAMBDA * (E relu(D(x) - a_F)^2 "
              "+ E relu(a_R - D(G(z)))^2), a_R / a_F moving averages (0.99) of D's mean logits; their 0.3 "
              "with DiffAugment; 0 = off")
    flag("--topk", type=float, metavar="NU",
         help="top-k training (Sinha et al. 2020): G learns only from the fakes D scores highest, all of the "
              f"batch in epoch 1, x{TOPK_DECAY} each epoch, never below NU of it (their 0.5); 0 = off")
    flag("--ema-bn-recompute", action=argparse.BooleanOptionalAction,
         help="with --ema: re-estimate the EMA generator's BatchNorm statistics (512 fresh latents) "
              "before each sample grid, FID and export; training is unchanged")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    typed = typed_options(args)
    saved = path = None
    if typed.get("resume"):
        path = checkpoint.find(typed.get("out"))
        typed["out"], saved = str(path.parent), checkpoint.load(path)["config"]
    config = resolve_config(typed, saved, path)
    validate(config)
    if args.dry_run:
        print("dry run, would train with " + json.dumps(config, indent=2))
        return 0
    try:
        return training_loop(**config)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    utils.run_cli(main)
