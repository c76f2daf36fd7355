"""The 128 px DCGAN configuration: one more block on each side of the 64 px
net (generator starts at (ngf*16) x 4 x 4, discriminator ends there). A thin
wrapper over network.py's builder, never a copy.

    python train.py --size 128
"""
from network import Discriminator, Generator

SIZE = 128
CONFIG = {"size": SIZE, "nz": 100, "ngf": 64, "ndf": 64, "nc": 3}


def Generator128(nz: int = 100, ngf: int = 64, nc: int = 3) -> Generator:
    """z (B, nz) -> (B, nc, 128, 128) in [-1, 1]."""
    return Generator(size=SIZE, nz=nz, ngf=ngf, nc=nc)


def Discriminator128(ndf: int = 64, nc: int = 3) -> Discriminator:
    """(B, nc, 128, 128) -> (B,) logits."""
    return Discriminator(size=SIZE, ndf=ndf, nc=nc)
