"""The options beyond the classic recipe (DiffAugment, hinge, spectral
norm, TTUR, lazy R1, ADA, LeCam, top-k, EMA BatchNorm recompute, --recipe). Each changes what it
should, round-trips through checkpoint and generator.params, resumes exactly,
and the classic recipe stays bit-identical to the plain DCGAN step written out below.
CPU, tiny nets, seconds."""
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import network
import train
import utils
from conftest import make_trainer, torchrun
from training import augment
from training import loss as losses
from training.config import recipe_options, resolve_config, typed_options
from training.loss import Loss
from training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--ngf", "8", "--ndf", "8", "--nz", "16", "--batch-size", "8", "--device", "cpu"]
TINY_CONFIG = {"ngf": 8, "ndf": 8, "nz": 16}
ALL_OPTIONS = ["--augment", "--loss", "hinge", "--sn", "--lr-g", "1e-4", "--lr-d", "4e-4", "--r1", "1.0",
               "--r1-every", "3", "--ema", "0.9", "--ema-bn-recompute", "--ada", "0.05", "--ada-kimg", "0.05",
               "--lecam", "0.3", "--topk", "0.5"]

pytestmark = pytest.mark.usefixtures("one_thread")


def make_data(tmp_path, n=32, size=64):
    path = tmp_path / f"faces_{size}.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    return path


def argv(tmp_path, data, *extra, out="run", params="generator.params"):
    return ["--data", str(data), *TINY, "--out", str(tmp_path / out), "--params", str(tmp_path / params), *extra]


def resolved(flags):
    return resolve_config(typed_options(train.build_parser().parse_args(flags)))


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def images(b=4, size=16, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------- #
# The plain DCGAN step and nets, written out: the reference the classic recipe equals
# --------------------------------------------------------------------------- #
def classic_step(self, real):
    """The classic DCGAN step on a Trainer's nets and optimisers: BCE, D on reals then fakes, then G."""
    criterion = nn.BCEWithLogitsLoss()
    b = real.shape[0]
    z = torch.randn(b, self.config["nz"], 1, 1, device=self.device)
    self.optD.zero_grad(set_to_none=True)
    with self._autocast():
        out_real = self.D(real).float()
        loss_real = criterion(out_real, torch.ones_like(out_real))
    loss_real.backward()
    with self._autocast():
        fake = self.G(z)
        out_fake = self.D(fake.detach()).float()
        loss_fake = criterion(out_fake, torch.zeros_like(out_fake))
    loss_fake.backward()
    self.optD.step()
    self.optG.zero_grad(set_to_none=True)
    with self._autocast():
        out_gen = self.D(fake).float()
        loss_g = criterion(out_gen, torch.ones_like(out_gen))
    loss_g.backward()
    self.optG.step()
    if self.netG_ema is not None:
        self.update_ema()
    return {"loss_D": (loss_real + loss_fake).detach(), "loss_G": loss_g.detach(),
            "D_x": torch.sigmoid(out_real.detach()).mean(), "D_G_z1": torch.sigmoid(out_fake.detach()).mean(),
            "D_G_z2": torch.sigmoid(out_gen.detach()).mean()}


def classic_discriminator(size=64, ndf=8, nc=3):
    """The classic DCGAN discriminator's layer stack (network.Discriminator without --sn)."""
    levels = network.num_levels(size)
    widths = [ndf * 2**i for i in range(levels)]
    layers = [nn.Conv2d(nc, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
    for i, o in zip(widths[:-1], widths[1:]):
        layers += [nn.Conv2d(i, o, 4, 2, 1, bias=False), nn.BatchNorm2d(o), nn.LeakyReLU(0.2, True)]
    layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)]
    d = nn.Sequential(*layers)
    d.apply(network.init_weights)
    return d


def test_classic_trainer_is_bit_identical_to_the_plain_classic_step_and_nets():
    """Trainer with every option at its default == the plain G, D, Adam and
    step: same weights, BN buffers, Adam moments and EMA, bit for bit, and
    the same RNG position afterwards (no extra draws)."""
    real = torch.rand(3, 8, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.manual_seed(0)
    new = make_trainer({**TINY_CONFIG, "ema": 0.9}, "cpu")
    for batch in real:
        new.step(batch)
    rng_new = torch.get_rng_state()

    torch.manual_seed(0)
    ref = make_trainer({**TINY_CONFIG, "ema": 0.9}, "cpu")
    torch.manual_seed(0)  # the plain nets, from the same seed
    g = network.Generator(64, nz=16, ngf=8).to(memory_format=torch.channels_last)
    d = classic_discriminator().to(memory_format=torch.channels_last)
    ref.netD.main = d
    ref.netG.load_state_dict(g.state_dict())
    ref.netG_ema.load_state_dict(g.state_dict())
    ref.optD = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for batch in real:
        classic_step(ref, batch)
    assert torch.equal(rng_new, torch.get_rng_state())
    assert tensors_equal(new.netG.state_dict(), ref.netG.state_dict())
    assert tensors_equal(new.netD.state_dict(), ref.netD.state_dict())
    assert tensors_equal(new.netG_ema.state_dict(), ref.netG_ema.state_dict())
    assert torch.equal(new.optD.state_dict()["state"][0]["exp_avg_sq"], ref.optD.state_dict()["state"][0]["exp_avg_sq"])


def test_recipe_classic_run_is_bit_identical_to_the_default_and_the_plain_step(tmp_path, monkeypatch):
    data = make_data(tmp_path)
    common = ["--max-steps", "5", "--ema", "0.9", "--flip"]
    assert train.main(argv(tmp_path, data, *common, out="default", params="default.params")) == 0
    assert train.main(argv(tmp_path, data, *common, "--recipe", "classic", out="classic", params="classic.params")) == 0
    monkeypatch.setattr(Trainer, "step", classic_step)
    assert train.main(argv(tmp_path, data, *common, out="plain", params="plain.params")) == 0
    blobs = [utils.torch_load(tmp_path / f"{name}.params") for name in ("default", "classic", "plain")]
    for blob in blobs[1:]:
        assert tensors_equal(blob["generator"], blobs[0]["generator"])
        assert tensors_equal(blob["generator_ema"], blobs[0]["generator_ema"])  # no BN recompute in classic
    ckpts = [utils.torch_load(tmp_path / name / "checkpoint.pt") for name in ("default", "classic", "plain")]
    assert all(tensors_equal(c["trainer"]["netD"], ckpts[0]["trainer"]["netD"]) for c in ckpts[1:])
    config = ckpts[1]["config"]
    assert (config["recipe"], config["loss"], config["sn"], config["augment"], config["r1"]) == \
        ("classic", "bce", False, "none", 0.0)
    assert config["lr_g"] == config["lr_d"] == 2e-4 and config["ema_bn_recompute"] is False


# --------------------------------------------------------------------------- #
# DiffAugment
# --------------------------------------------------------------------------- #
def test_augment_is_differentiable_per_image_and_keeps_shape_and_format():
    x = images(4, 8).double().requires_grad_(True)  # 8 px: translation still shifts by 1 px, gradcheck stays quick

    def seeded(t):
        torch.manual_seed(3)  # the same random parameters on every gradcheck call
        return augment.diff_augment(t, augment.DEFAULT_POLICY)

    assert torch.autograd.gradcheck(seeded, (x[:2],), eps=1e-6, atol=1e-5)
    same = images(1, 16).expand(6, -1, -1, -1).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    out = augment.diff_augment(same)
    assert out.shape == same.shape and out.dtype == same.dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert len({out[i].sum().item() for i in range(6)}) == 6  # each image its own parameters
    assert augment.diff_augment(x, "none") is x and augment.AugmentPipe("none")(x) is x
    torch.manual_seed(0)
    piped = augment.AugmentPipe(augment.DEFAULT_POLICY)(same)
    torch.manual_seed(0)
    assert torch.equal(piped, augment.diff_augment(same))  # the pipe draws and applies as diff_augment does
    with pytest.raises(utils.UserError, match="unknown --augment op 'blur'"):
        augment.parse_policy("color,blur")


def test_translation_shifts_with_zero_fill_and_cutout_zeroes_one_square():
    x = images(8, 16) + 3  # no zeros in the input: zeros come from the ops
    torch.manual_seed(0)
    moved = augment.translation(x)
    for i in range(8):  # each image is its input shifted by at most 2 px (16 / 8), zero filled
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                shifted = torch.zeros_like(x[i])
                src = x[i][:, max(0, -dy):16 - max(0, dy), max(0, -dx):16 - max(0, dx)]
                shifted[:, max(0, dy):16 - max(0, -dy), max(0, dx):16 - max(0, -dx)] = src
                matches.append(torch.equal(moved[i], shifted))
        assert sum(matches) == 1, i
    cut = augment.cutout(x)
    for i in range(8):
        zero = (cut[i] == 0).all(dim=0)
        rows, cols = zero.any(dim=1).nonzero().view(-1), zero.any(dim=0).nonzero().view(-1)
        assert 0 < zero.sum() <= 64 and zero.sum() == len(rows) * len(cols)  # one (clipped) 8x8 square
        assert torch.equal(cut[i][:, ~zero], x[i][:, ~zero])


def test_augment_with_probability_p_augments_that_share_and_leaves_the_rest_untouched():
    x = images(64, 16) + 3  # no zeros in the input: cutout's zeros mark an augmented image
    torch.manual_seed(0)
    assert torch.equal(augment.diff_augment(x, "cutout", torch.tensor(0.0)), x)
    assert all((img == 0).any() for img in augment.diff_augment(x, "cutout", torch.tensor(1.0)))
    cut = augment.diff_augment(x, "cutout", torch.tensor(0.5))
    augmented = torch.tensor([bool((img == 0).any()) for img in cut])
    assert 16 <= augmented.sum() <= 48  # Binomial(64, 0.5): outside this range with p < 1e-4
    assert torch.equal(cut[~augmented], x[~augmented])
    half = torch.tensor(0.5, dtype=torch.float64)

    def seeded(t):
        torch.manual_seed(3)
        return augment.diff_augment(t, augment.DEFAULT_POLICY, half)

    assert torch.autograd.gradcheck(seeded, (images(4, 8).double().requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_ada_moves_p_by_the_sign_of_d_on_reals_every_interval_and_resumes_exactly():
    ada = augment.AdaptiveAugment(target=0.6, kimg=0.1, device="cpu", interval=4)  # 100 images: 0 -> 1
    sure, unsure = torch.full((10,), 3.0), torch.tensor([2.0, -1.0, -0.5, 1.0])  # r = 1 and r = 0
    for expected in (0.0, 0.0, 0.0, 0.4):  # p moves once per 4 steps, by the images seen / 100
        ada.observe(sure)
        assert ada.p.item() == pytest.approx(expected)
    for _ in range(8):
        ada.observe(sure)
    assert ada.p.item() == 1.0  # clamped
    for _ in range(4):
        ada.observe(unsure)  # D unsure of the reals: less augmentation
    assert ada.p.item() == pytest.approx(1.0 - 16 / 100)
    ada.observe(sure)
    copy_ = augment.AdaptiveAugment(target=0.6, kimg=0.1, device="cpu", interval=4)
    copy_.load_state_dict(ada.state_dict())  # mid-interval: one of four observed
    for a in (ada, copy_):
        for _ in range(3):
            a.observe(unsure)
    assert ada.p.item() == copy_.p.item() == pytest.approx(0.84 - 22 / 100)


def test_trainer_with_ada_reports_p_and_augments_once_d_is_sure_of_the_reals(monkeypatch):
    seen = []
    original = augment.apply
    monkeypatch.setattr(augment, "apply", lambda x, names, draws, p=None: seen.append(p) or original(x, names, draws, p))
    torch.manual_seed(0)
    trainer = make_trainer({**TINY_CONFIG, "augment": "translation", "ada": 0.6, "ada_kimg": 0.016}, "cpu")
    monkeypatch.setattr(trainer, "D", lambda x: torch.full((x.shape[0], 1), 5.0, requires_grad=True))  # D sure
    ps = [trainer.step(torch.rand(8, 3, 64, 64) * 2 - 1)["aug_p"].item() for _ in range(8)]
    assert ps == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # 4 steps of 8 images, 16 move p from 0 to 1
    assert len(seen) == 24 and [p.item() for p in seen[:12]] == [0.0] * 12 and seen[12].item() == 1.0
    assert make_trainer({**TINY_CONFIG, "ada": 0.6}, "cpu").augment.ada is None  # no --augment: nothing to adapt


def test_augment_is_applied_to_every_batch_d_sees_real_and_fake(monkeypatch):
    calls, seen = [], []
    original = augment.apply

    def recorder(x, names, draws, p=None):
        out = original(x, names, draws, p)
        calls.append((x.detach().clone(), x.requires_grad, names, out))
        return out

    monkeypatch.setattr(augment, "apply", recorder)
    torch.manual_seed(0)
    trainer = make_trainer({**TINY_CONFIG, "augment": "translation,cutout"}, "cpu")
    trainer.netD.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    real = torch.rand(8, 3, 64, 64) * 2 - 1
    trainer.step(real)
    assert len(calls) == len(seen) == 3  # D step: real, fake; G step: fake
    assert all(s is c[3] for s, c in zip(seen, calls))  # D saw exactly the augmented batches
    assert all(c[2] == ("translation", "cutout") for c in calls)
    assert torch.equal(calls[0][0], real)
    assert torch.equal(calls[1][0], calls[2][0]) and not calls[1][1] and calls[2][1]  # same fakes; G's keeps grad
    assert not torch.equal(calls[1][3], calls[2][3])  # fresh random parameters on each call
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.netG.parameters())


def test_augment_draws_then_applies_like_the_ops_themselves():
    """draw + apply (what --compile runs) makes the same RNG draws in the same
    order as the ops drawing their own, so the images and the RNG state after
    them are the same; with p each op's keep draw comes first."""
    x = images(6, 16).contiguous(memory_format=torch.channels_last)
    names = augment.parse_policy("color,translation,cutout")
    for p in (None, torch.tensor(0.5)):
        torch.manual_seed(1)
        own = x
        for op in (augment.brightness, augment.saturation, augment.contrast, augment.translation, augment.cutout):
            if p is None:
                own = op(own)
            else:
                keep = torch.rand(6, 1, 1, 1) >= p
                own = torch.where(keep, own, op(own))
        state = torch.get_rng_state()
        torch.manual_seed(1)
        drawn = augment.apply(x, names, augment.draw(x, names, with_p=p is not None), p)
        assert torch.equal(drawn, own.contiguous(memory_format=torch.channels_last))
        assert torch.equal(torch.get_rng_state(), state)


def counting_compile(frames: list, backend="aot_eager"):
    """torch.compile whose every compiled graph appends to one list per compiled object."""
    from torch._dynamo.testing import CompileCounterWithBackend

    real_compile = torch.compile

    def compile_(fn, **kwargs):
        counter = CompileCounterWithBackend(backend)
        frames.append(counter)
        return real_compile(fn, backend=counter)

    return compile_


def test_compiled_augmentation_gives_eager_images_without_recompiles_as_p_moves(monkeypatch):
    """--compile: D's augmentation is compiled code (two graphs: input without
    and with grad), its draws eager, so a compiled step equals the eager step
    bit for bit (aot_eager runs the traced graphs as they are) with cutout,
    ADA, R1 (through the pipe's eager twin) and the EMA; a moving ADA p
    recompiles nothing."""
    import torch._dynamo

    policy, trainers, counters = "color,translation,cutout", [], []
    for compile in (False, True):
        torch._dynamo.reset()
        if compile:
            monkeypatch.setattr(torch, "compile", counting_compile(counters))
        torch.manual_seed(0)
        trainer = make_trainer({**TINY_CONFIG, "augment": policy, "ema": 0.9, "ada": 0.05, "ada_kimg": 0.01,
                                "r1": 1.0, "r1_every": 2}, "cpu", compile=compile)
        for step in range(6):
            if step >= 2:
                trainer.augment.ada.p = torch.tensor(step / 10)  # a new p tensor every step
            with torch._dynamo.config.patch(error_on_recompile=step > 0):  # step 0 builds every graph
                trainer.step(images(8, 64, seed=step))
        trainers.append(trainer)
    eager, compiled = trainers
    assert [c.frame_count for c in counters] == [2, 1, 2]  # the augmentation; G; D: no graph breaks
    assert tensors_equal(eager.netD.state_dict(), compiled.netD.state_dict())
    assert tensors_equal(eager.netG.state_dict(), compiled.netG.state_dict())
    assert tensors_equal(eager.netG_ema.state_dict(), compiled.netG_ema.state_dict())
    pipe, x = compiled.augment, images(8, 64).contiguous(memory_format=torch.channels_last)
    assert pipe.eager is not pipe and pipe.eager.ada is pipe.ada  # R1's: the same policy and ADA state
    torch.manual_seed(5)
    out = pipe(x)
    torch.manual_seed(5)
    assert torch.equal(out, pipe.eager(x))
    torch._dynamo.reset()


def test_compile_recipe_best_runs_with_inductor_on_cpu(tmp_path):
    """The real thing: --compile --recipe best on CPU with inductor (C++), five
    graphs in all (G; D and the augmentation, each without and with grad), no
    graph break; its augmentation gives eager's images to float rounding.
    Tens of seconds the first time, seconds with inductor's cache."""
    import shutil

    import torch._dynamo
    from torch._dynamo.utils import counters
    from torch._inductor import cpp_builder

    if shutil.which(cpp_builder.get_cpp_compiler()) is None:
        pytest.skip("inductor on CPU needs a C++ compiler")
    torch._dynamo.reset()
    counters.clear()
    data = make_data(tmp_path)
    assert train.main(argv(tmp_path, data, "--recipe", "best", "--compile", "--max-steps", "2")) == 0
    assert counters["stats"]["unique_graphs"] == 5 and not counters["graph_break"]
    names = augment.parse_policy(augment.DEFAULT_POLICY)
    x = images(8, 64).contiguous(memory_format=torch.channels_last)  # the run's batch: its compiled graph serves
    draws = augment.draw(x, names, with_p=False)
    out = torch.compile(augment.apply)(x, names, draws, None)
    assert counters["stats"]["unique_graphs"] == 5  # the run's graph, not a new one
    torch.testing.assert_close(out, augment.apply(x, names, draws, None), rtol=0, atol=1e-6)
    torch._dynamo.reset()


# --------------------------------------------------------------------------- #
# Losses, R1, spectral norm, TTUR
# --------------------------------------------------------------------------- #
def loss_of(kind="bce", r1=0.0, r1_every=16, lecam=0.0, topk=0.0):
    return Loss(kind, r1, r1_every, lecam, topk)


def test_hinge_and_bce_values_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    hinge = loss_of("hinge")
    (loss_real, total_real), (loss_fake, total_fake) = hinge.d_real(real), hinge.d_fake(fake)
    assert loss_real.item() == pytest.approx((0 + 0.5 + 2.0) / 3) and total_real is loss_real  # no LeCam
    assert loss_fake.item() == pytest.approx((0 + 1.0 + 2.5) / 3) and total_fake is loss_fake
    loss_g, total_g = hinge.g(fake)
    assert loss_g.item() == pytest.approx(0.5 / 3) and total_g is loss_g  # one process: backpropagate the loss
    bce, classic = nn.BCEWithLogitsLoss(), loss_of("bce")
    assert torch.equal(classic.d_real(real)[0], bce(real, torch.ones(3)))
    assert torch.equal(classic.d_fake(fake)[0], bce(fake, torch.zeros(3)))
    assert classic.g(fake)[0].item() == pytest.approx(torch.nn.functional.softplus(-fake).mean().item())
    with pytest.raises(ValueError, match="unknown loss 'wasserstein'"):
        loss_of("wasserstein")


def test_r1_on_closed_forms_and_in_fp32_under_bf16_autocast():
    x = images(5, 8)
    # D(x) = 1/2 ||x||^2 -> grad x -> E||x||^2
    quad = lambda t: 0.5 * t.square().sum(dim=(1, 2, 3))  # noqa: E731
    torch.testing.assert_close(losses.r1_penalty(quad, x), x.square().sum(dim=(1, 2, 3)).mean())
    # a linear D (one conv over the whole image) -> grad w -> ||w||^2 for every image
    lin = nn.Conv2d(3, 1, 8, bias=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        penalty = losses.r1_penalty(lin, x.to(memory_format=torch.channels_last))
    assert penalty.dtype == torch.float32
    torch.testing.assert_close(penalty, lin.weight.square().sum(), rtol=1e-6, atol=0)
    penalty.backward()  # create_graph: the penalty trains D
    torch.testing.assert_close(lin.weight.grad, 2 * lin.weight)


def test_r1_is_lazy_every_k_steps_scaled_by_k_and_changes_d(monkeypatch):
    calls = []
    original = losses.r1_penalty
    monkeypatch.setattr(losses, "r1_penalty", lambda *a, **k: calls.append(1) or original(*a, **k))
    reals = torch.rand(5, 8, 3, 64, 64) * 2 - 1
    torch.manual_seed(0)
    a = make_trainer({**TINY_CONFIG, "r1": 10.0, "r1_every": 2}, "cpu")
    torch.manual_seed(0)
    b = make_trainer(TINY_CONFIG, "cpu")
    steps_with_r1 = []
    for i, real in enumerate(reals):
        before = len(calls)
        a.step(real)
        b.step(real)
        steps_with_r1.append(len(calls) > before)
        if i == 0:  # the penalty moved D on its first step
            assert not tensors_equal(a.netD.state_dict(), b.netD.state_dict())
    assert steps_with_r1 == [True, False, True, False, True] and a.loss.steps == 5
    assert a.state_dict()["loss"]["steps"] == 5


def test_spectral_norm_bounds_every_d_conv_and_drops_batchnorm():
    torch.manual_seed(0)
    d = network.build_discriminator({"size": 64, "ndf": 8, "sn": True})
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and all(torch.nn.utils.parametrize.is_parametrized(c, "weight") for c in convs)
    with torch.no_grad():
        for c in convs:  # make the raw weights large: SN must still bound them
            c.parametrizations.weight.original.mul_(50)
    for _ in range(20):  # power iterations run in train-mode forwards
        d(torch.randn(4, 3, 64, 64))
    for c in convs:
        raw = torch.linalg.matrix_norm(c.parametrizations.weight.original.flatten(1), ord=2)
        sigma = torch.linalg.matrix_norm(c.weight.flatten(1), ord=2)
        assert raw > 5 and sigma.item() == pytest.approx(1.0, abs=0.02)
    plain = network.build_discriminator({"size": 64, "ndf": 8})
    assert sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules()) == 3  # classic D unchanged
    assert d(torch.randn(2, 3, 64, 64)).shape == (2,)
    assert network.build_discriminator({"size": 128, "ndf": 4, "sn": True})(torch.randn(2, 3, 128, 128)).shape == (2,)


def test_lecam_values_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    # relu(D(x) - a_F)^2 with a_F = 0.5: (1.5^2 + 0 + 0) / 3; relu(a_R - D(G(z)))^2 with a_R = 0.5: (2.5^2 + 0.5^2 + 0) / 3
    assert losses.lecam_real(real, torch.tensor(0.5)).item() == pytest.approx(2.25 / 3)
    assert losses.lecam_fake(fake, torch.tensor(0.5)).item() == pytest.approx(6.5 / 3)
    x = real.clone().requires_grad_(True)
    losses.lecam_real(x, torch.tensor(0.5)).backward()  # only logits above the anchor are pulled down
    torch.testing.assert_close(x.grad, torch.tensor([2 * 1.5 / 3, 0.0, 0.0]))


def logits_seen(monkeypatch, loss: Loss, name: str):
    """Record the logits every call of ``loss.<name>`` (real_loss, fake_loss, gen_loss) gets."""
    seen, original = [], getattr(loss, name)
    monkeypatch.setattr(loss, name, lambda out: seen.append(out.detach().clone()) or original(out))
    return seen


def test_lecam_anchors_average_d_means_start_after_step_one_and_change_d(monkeypatch):
    reals = torch.rand(3, 8, 3, 64, 64) * 2 - 1
    torch.manual_seed(0)
    plain = make_trainer(TINY_CONFIG, "cpu")
    torch.manual_seed(0)
    lecam = make_trainer({**TINY_CONFIG, "lecam": 5.0}, "cpu")
    real_logits, fake_logits = logits_seen(monkeypatch, lecam.loss, "real_loss"), \
        logits_seen(monkeypatch, lecam.loss, "fake_loss")
    means = []
    for i, real in enumerate(reals):
        torch.manual_seed(i)
        plain.step(real)
        torch.manual_seed(i)
        lecam.step(real)
        means.append(torch.stack([real_logits[-1].mean(), fake_logits[-1].mean()]))  # the LeCam trainer's
        if i == 0:  # no anchors yet on the first step: the same D step as without LeCam
            assert tensors_equal(plain.netD.state_dict(), lecam.netD.state_dict())
            torch.testing.assert_close(lecam.loss.lecam_anchors, means[0])
    assert not tensors_equal(plain.netD.state_dict(), lecam.netD.state_dict())  # from step 2 on it pulls D
    expected = means[0]
    for m in means[1:]:
        expected = losses.LECAM_DECAY * expected + (1 - losses.LECAM_DECAY) * m
    torch.testing.assert_close(lecam.loss.lecam_anchors, expected)
    assert plain.loss.lecam_anchors is None and plain.state_dict()["loss"]["lecam_anchors"] is None


def test_topk_trains_g_on_the_fakes_d_scores_highest_with_k_shrinking_per_epoch(monkeypatch):
    logits = torch.tensor([0.1, 3.0, -1.0, 2.0, 0.5])
    assert sorted(losses.top_k(logits, 0.4).tolist()) == [2.0, 3.0]
    assert sorted(losses.top_k(logits.view(5, 1), 0.5).tolist()) == [0.5, 2.0, 3.0]  # ceil(2.5)
    assert losses.top_k(logits, 1.0).numel() == 5 and losses.top_k(logits, 0.01).tolist() == [3.0]
    monkeypatch.setattr(losses, "TOPK_DECAY", 0.5)  # a fast schedule, to see the floor in a few steps
    with pytest.raises(ValueError, match="steps_per_epoch"):
        make_trainer({**TINY_CONFIG, "topk": 0.3}, "cpu")
    trainer = make_trainer({**TINY_CONFIG, "topk": 0.3}, "cpu", steps_per_epoch=2)
    gen_logits, scored = logits_seen(monkeypatch, trainer.loss, "fake_loss"), \
        logits_seen(monkeypatch, trainer.loss, "gen_loss")
    fractions = []
    for _ in range(6):
        fractions.append(trainer.loss.topk_fraction())
        trainer.step(torch.rand(8, 3, 64, 64) * 2 - 1)
    assert fractions == [1.0, 1.0, 0.5, 0.5, 0.3, 0.3]  # 0.5 ** epoch, floored at --topk
    assert [s.numel() for s in scored] == [8, 8, 4, 4, 3, 3]
    assert trainer.state_dict()["loss"]["steps"] == 6  # the schedule resumes from the step count
    off = make_trainer(TINY_CONFIG, "cpu")
    scored_off = logits_seen(monkeypatch, off.loss, "gen_loss")
    off.step(torch.rand(8, 3, 64, 64) * 2 - 1)  # off: needs no epoch length, G sees every fake
    assert scored_off[-1].numel() == 8 and len(gen_logits) == 6


def test_ttur_rates_reach_the_optimizers_and_default_to_lr():
    t = make_trainer({**TINY_CONFIG, "lr_g": 1e-4, "lr_d": 4e-4}, "cpu")
    assert t.optG.param_groups[0]["lr"] == 1e-4 and t.optD.param_groups[0]["lr"] == 4e-4
    t = make_trainer({**TINY_CONFIG, "lr": 3e-4}, "cpu")
    assert t.optG.param_groups[0]["lr"] == t.optD.param_groups[0]["lr"] == 3e-4
    config = resolved(["--lr", "1e-3", "--lr-d", "5e-3"])
    assert (config["lr_g"], config["lr_d"]) == (1e-3, 5e-3)


# --------------------------------------------------------------------------- #
# EMA BatchNorm recompute
# --------------------------------------------------------------------------- #
def test_recompute_bn_stats_averages_batch_stats_and_touches_no_rng_nor_training_state():
    torch.manual_seed(0)
    trainer = make_trainer({**TINY_CONFIG, "ema": 0.9, "ema_bn_recompute": True}, "cpu")
    for _ in range(2):
        trainer.step(torch.rand(8, 3, 64, 64) * 2 - 1)
    ema_before = {k: v.clone() for k, v in trainer.netG_ema.state_dict().items()}
    g_before = {k: v.clone() for k, v in trainer.netG.state_dict().items()}
    rng = torch.get_rng_state()
    calibrated = trainer.sampling_ema()
    assert torch.equal(rng, torch.get_rng_state())
    assert tensors_equal(trainer.netG_ema.state_dict(), ema_before) and tensors_equal(trainer.netG.state_dict(), g_before)
    assert calibrated is not trainer.netG_ema and not calibrated.training and trainer.sampling_ema() is calibrated
    # first BN's running mean == mean of the first conv's output over the same 512 latents
    gen = torch.Generator().manual_seed(0)  # config seed 0
    z = torch.cat([torch.randn(64, 16, generator=gen) for _ in range(8)])
    with torch.no_grad():
        pre_bn = trainer.netG_ema.main[0](z.view(512, 16, 1, 1))
    torch.testing.assert_close(calibrated.main[1].running_mean, pre_bn.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(calibrated.main[1].running_mean, ema_before["main.1.running_mean"])
    same_weights = {k: v for k, v in calibrated.state_dict().items() if "running" not in k and "batches" not in k}
    assert all(torch.equal(v, ema_before[k]) for k, v in same_weights.items())
    trainer.step(torch.rand(8, 3, 64, 64) * 2 - 1)
    assert trainer.sampling_ema() is not calibrated  # recomputed once the EMA moved
    off = make_trainer({**TINY_CONFIG, "ema": 0.9}, "cpu")
    assert off.sampling_ema() is off.netG_ema  # off by default: exports are the EMA itself


# --------------------------------------------------------------------------- #
# Config, checkpoint, generator.params, exact resume
# --------------------------------------------------------------------------- #
def test_every_option_round_trips_and_resumes_bit_identically(tmp_path):
    """8 steps in one go == 4 steps, then --resume to 8 with no option typed
    again; R1 runs on steps 0, 3, 6 (across the resume), SN's power-iteration
    vectors, the EMA, ADA's p and the augmentation's RNG draws all continue exactly,
    and BN recompute at the extra save (step 4) changes nothing."""
    data = make_data(tmp_path)
    assert train.main(argv(tmp_path, data, *ALL_OPTIONS, "--max-steps", "8", out="a", params="a.params")) == 0
    assert train.main(argv(tmp_path, data, *ALL_OPTIONS, "--max-steps", "4", out="b", params="b.params")) == 0
    assert train.main(["--resume", "--out", str(tmp_path / "b"), "--params", str(tmp_path / "b.params"),
                       "--max-steps", "8", "--device", "cpu"]) == 0
    expected = {"augment": augment.DEFAULT_POLICY, "loss": "hinge", "sn": True, "lr_g": 1e-4, "lr_d": 4e-4,
                "r1": 1.0, "r1_every": 3, "ema": 0.9, "ema_bn_recompute": True, "recipe": "classic",
                "ada": 0.05, "ada_kimg": 0.05, "lecam": 0.3, "topk": 0.5}
    a, b = utils.torch_load(tmp_path / "a.params"), utils.torch_load(tmp_path / "b.params")
    ca, cb = utils.torch_load(tmp_path / "a/checkpoint.pt"), utils.torch_load(tmp_path / "b/checkpoint.pt")
    for config in (json.loads((tmp_path / "b/config.json").read_text()), cb["config"], b["config"]):
        assert {k: config[k] for k in expected} == expected
    assert tensors_equal(a["generator"], b["generator"]) and tensors_equal(a["generator_ema"], b["generator_ema"])
    assert tensors_equal(ca["trainer"]["netD"], cb["trainer"]["netD"])
    assert tensors_equal(ca["trainer"]["ema"], cb["trainer"]["ema"]) and cb["trainer"]["loss"]["steps"] == 8
    assert ca["trainer"]["ada"] == cb["trainer"]["ada"] and cb["trainer"]["ada"]["p"] > 0  # ADA's p moved, and resumed
    assert torch.equal(ca["trainer"]["loss"]["lecam_anchors"], cb["trainer"]["loss"]["lecam_anchors"])  # LeCam's anchors resumed
    assert any("parametrizations.weight.original" in k for k in cb["trainer"]["netD"])
    assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    # the export holds the BN-recomputed EMA; the checkpoint the training EMA
    assert not torch.equal(b["generator_ema"]["main.1.running_var"], cb["trainer"]["ema"]["main.1.running_var"])
    G, config = network.load_generator(tmp_path / "b.params")
    assert config["weights"] == "ema" and config["sn"] is True and G(torch.randn(2, 16)).shape == (2, 3, 64, 64)
    trainer = make_trainer(cb["config"], "cpu", steps_per_epoch=1)  # the checkpoint config rebuilds the right nets
    trainer.load_state_dict(cb["trainer"])
    assert (trainer.optG.param_groups[0]["lr"], trainer.optD.param_groups[0]["lr"]) == (1e-4, 4e-4)


def test_resume_refuses_an_sn_change_and_takes_typed_rates(tmp_path):
    data = make_data(tmp_path)
    assert train.main(argv(tmp_path, data, "--max-steps", "1")) == 0
    resume = ["--resume", "--out", str(tmp_path / "run"), "--params", str(tmp_path / "generator.params")]
    with pytest.raises(utils.UserError, match=r"--sn does not match the checkpoint .*\(sn False\)"):
        train.main(resume + ["--sn"])
    assert train.main(resume + ["--max-steps", "2", "--lr", "1e-3", "--lr-d", "5e-3"]) == 0
    ckpt = utils.torch_load(tmp_path / "run/checkpoint.pt")
    assert (ckpt["config"]["lr_g"], ckpt["config"]["lr_d"]) == (1e-3, 5e-3)  # lr_g followed the new --lr
    assert ckpt["trainer"]["optG"]["param_groups"][0]["lr"] == 1e-3
    assert ckpt["trainer"]["optD"]["param_groups"][0]["lr"] == 5e-3
    assert train.main(resume + ["--max-steps", "3", "--recipe", "best"]) == 0  # same D (no --sn): allowed
    config = utils.torch_load(tmp_path / "run/checkpoint.pt")["config"]
    assert (config["recipe"], config["augment"], config["ema"]) == ("best", augment.DEFAULT_POLICY, 0.999)


def test_recipe_best_sets_its_options_and_typed_flags_win(tmp_path):
    config = resolved(["--recipe", "best", "--augment", "translation", "--no-ema-bn-recompute"])
    best = {k: config["lr"] if v is None and k in ("lr_g", "lr_d") else v  # unset rates follow --lr
            for k, v in recipe_options("best").items()}
    assert best["augment"] != "translation" and best["ema_bn_recompute"] is True
    assert config["augment"] == "translation" and config["ema_bn_recompute"] is False
    assert all(config[k] == v for k, v in best.items() if k not in ("augment", "ema_bn_recompute"))
    data = make_data(tmp_path)
    assert train.main(argv(tmp_path, data, "--recipe", "best", "--max-steps", "2")) == 0
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert all(config[k] == v for k, v in best.items()) and config["recipe"] == "best"
    assert config["ema"] > 0 and config["augment"] != "none"  # what the benchmark measured
    assert (tmp_path / "run/samples/step_000002_ema.png").is_file()
    with pytest.raises(utils.UserError, match="--r1 must be >= 0"):
        train.main(argv(tmp_path, data, "--r1", "-1"))
    with pytest.raises(utils.UserError, match="--lecam must be >= 0"):
        train.main(argv(tmp_path, data, "--lecam", "-0.3"))
    with pytest.raises(utils.UserError, match=r"--topk must be in \[0, 1\]"):
        train.main(argv(tmp_path, data, "--topk", "1.5"))
    with pytest.raises(utils.UserError, match="--ada must be in"):
        train.main(argv(tmp_path, data, "--augment", "--ada", "1.5"))
    with pytest.raises(utils.UserError, match="--ada 0.6 adapts the augmentation's strength: it needs --augment"):
        train.main(argv(tmp_path, data, "--ada", "0.6", out="no-augment"))
    assert not (tmp_path / "no-augment").exists()
    assert train.main(argv(tmp_path, data, "--recipe", "best", "--ada", "0.6", "--max-steps", "1", out="ada")) == 0
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--loss", "wasserstein"])


# --------------------------------------------------------------------------- #
# bf16 and DDP with every option
# --------------------------------------------------------------------------- #
def test_every_option_runs_under_bf16_autocast():
    torch.manual_seed(0)
    config = {**TINY_CONFIG, "augment": augment.DEFAULT_POLICY, "loss": "hinge", "sn": True, "r1": 1.0,
              "r1_every": 1, "ema": 0.9, "ema_bn_recompute": True, "ada": 0.05, "ada_kimg": 0.01, "lecam": 0.3,
              "topk": 0.5}
    trainer = make_trainer(config, "cpu", precision="bf16", steps_per_epoch=1)
    for _ in range(5):
        out = trainer.step(torch.rand(8, 3, 64, 64) * 2 - 1)
    assert all(torch.isfinite(v) for v in out.values())
    assert all(p.dtype == torch.float32 for p in trainer.netD.parameters())


# the start of every torchrun worker here: repo on sys.path, Gloo joined, one thread
WORKER_HEAD = textwrap.dedent("""
    import gc, sys, torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, sys.argv[1] + "/tests")
    from conftest import make_trainer
    from training import distributed, loss
    torch.set_num_threads(1)
    device = distributed.init("cpu")
    rank, world = distributed.get_rank(), distributed.get_world_size()
""")

DDP_SCRIPT = WORKER_HEAD + textwrap.dedent("""

    def equal_on_ranks(tensor):
        gathered = [torch.zeros_like(tensor) for _ in range(world)]
        dist.all_gather(gathered, tensor)
        return torch.equal(gathered[0], gathered[1])

    def sn_vectors(trainer):
        return torch.cat([b.flatten() for net in (trainer.netG, trainer.netD)
                          for name, b in net.named_buffers() if "parametrizations" in name])

    config = {"ngf": 8, "ndf": 8, "nz": 16, "augment": "color,translation,cutout", "loss": "hinge", "sn": True,
              "r1": 10.0, "r1_every": 1, "lr_g": 1e-4, "lr_d": 4e-4, "ada": 0.05, "ada_kimg": 0.01,
              "lecam": 1.0, "topk": 0.5}
    loss.TOPK_DECAY = 0.5  # G learns from half of the global batch's fakes from step 2 on
    torch.manual_seed(rank)  # each rank its own init: wrapping must give every rank rank 0's weights and SN vectors
    trainer = make_trainer(config, device, world_size=world, rank=rank, steps_per_epoch=1)
    failures = [] if equal_on_ranks(sn_vectors(trainer)) else ["SN vectors after wrapping"]
    torch.manual_seed(100 + rank)  # each rank its own reals, noise and augmentation
    calls = {"all_reduce": 0, "all_gather": 0}
    for name in calls:  # the collectives the options make themselves (DDP's gradient buckets are not these)
        def counted(*args, name=name, original=getattr(dist, name), **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        setattr(dist, name, counted)
    for step in range(1, 6):  # ADA's p moves after step 4, from both ranks' D outputs
        trainer.step(torch.rand(4, 3, 64, 64) * 2 - 1)
        if step == 4:  # a checkpoint here resumes every rank exactly from rank 0's LeCam state
            running = trainer.loss.lecam_running.clone()
    if calls != {"all_reduce": 1 + 2, "all_gather": 5}:  # ADA at step 4, LeCam at steps 1 and 4; top-k each step
        failures.append(f"collectives {calls}")
    if not equal_on_ranks(running):
        failures.append("LeCam's running average after step 4")
    params = torch.cat([trainer.augment.ada.p.view(1), trainer.loss.lecam_anchors, sn_vectors(trainer)]
                       + [p.detach().flatten() for p in trainer.netD.parameters()]
                       + [p.detach().flatten() for p in trainer.netG.parameters()])
    if not equal_on_ranks(params):
        failures.append("after steps")

    class DDPBefore214(torch.nn.parallel.DistributedDataParallel):  # no forward_sync_buffers yet
        def __init__(self, module, device_ids=None, broadcast_buffers=True):
            super().__init__(module, device_ids=device_ids, broadcast_buffers=broadcast_buffers)

    torch.nn.parallel.DistributedDataParallel = DDPBefore214
    torch.manual_seed(rank)
    if not equal_on_ranks(sn_vectors(make_trainer(config, device, world_size=world, rank=rank, steps_per_epoch=1))):
        failures.append("SN vectors after wrapping with broadcast_buffers")
    del trainer  # free DDP before its process group (freed at exit, after it, it may abort)
    gc.collect()
    dist.destroy_process_group()
    sys.exit("ranks differ: " + ", ".join(failures) if failures else 0)
""")


def test_ddp_keeps_ranks_identical_with_every_option_including_r1(tmp_path):
    """Two Gloo processes, different init and data per rank: after wrapping, G,
    D and the spectral-norm vectors are rank 0's (with torch's
    forward_sync_buffers and with the older broadcast_buffers); after steps G
    and D (incl. the lazy R1 gradient, taken through the unwrapped D), the SN
    vectors, ADA's p and LeCam's anchors (the ranks' moving averages averaged
    every LECAM_SYNC_EVERY steps, not every step) are identical on both ranks;
    top-k makes one all_gather per step."""
    script = tmp_path / "ddp_options.py"
    script.write_text(DDP_SCRIPT)
    torchrun(script, str(ROOT), cwd=tmp_path)


GLOBAL_TOPK_SCRIPT = WORKER_HEAD + textwrap.dedent("""
    failures = []

    # Loss.g on known logits: rank r holds the r-th half of the batch
    for halves, kind in (([[3.0, 2.0, 1.0, 0.0], [-1.0, -2.0, -3.0, -4.0]], "bce"),  # rank 1 has no pick
                         ([[1.0, 1.0, 0.0, 2.0], [1.0, 0.0, 1.0, 1.0]], "hinge")):  # ties across ranks
        full = torch.tensor(halves).flatten().requires_grad_(True)
        local = torch.tensor(halves[rank]).requires_grad_(True)
        one, ranks = (loss.Loss(kind, 0, 16, 0, 0.375, steps_per_epoch=1000, world_size=w) for w in (1, world))
        one.steps = ranks.steps = 1000  # fraction 0.375: k = 3 of 8
        value, total = one.g(full)
        total.backward()
        global_value, total = ranks.g(local)
        total.backward()  # DDP averages over ranks: world_size x this rank's share of the 1-process gradient
        if not torch.equal(global_value, value) or not torch.allclose(local.grad, world * full.grad.view(world, -1)[rank]):
            failures.append(f"{kind} top-k on known logits: {global_value} {local.grad} vs {value} {full.grad}")

    # Trainer.step: 2 ranks on halves of a batch == 1 process on the whole batch (same weights, reals, noise);
    # eval-mode BatchNorm so a half batch normalises as the whole does
    loss.TOPK_DECAY = 0.5
    config = {"ngf": 8, "ndf": 8, "nz": 16, "topk": 0.3}
    trainers = []
    for w in (world, 1):
        torch.manual_seed(0)
        trainer = make_trainer(config, device, world_size=w, rank=rank, steps_per_epoch=1)
        trainer.netG.eval(), trainer.netD.eval()
        trainers.append(trainer)
    data = torch.Generator().manual_seed(1)
    picks, randn, top_k = [], torch.randn, loss.top_k
    def recording_top_k(out_gen, fraction, world_size=1):
        chosen = top_k(out_gen, fraction, world_size)
        if world_size > 1:
            picks.append(int((out_gen.view(-1) >= chosen.min()).sum()))
        return chosen
    loss.top_k = recording_top_k
    for _ in range(3):  # fractions 1, 0.5, 0.3: k = 8, 4, 3 of the global 8
        real = torch.rand(8, 3, 64, 64, generator=data) * 2 - 1
        z = torch.randn(8, 16, 1, 1, generator=data)
        losses_g = []
        for trainer, part in zip(trainers, (slice(4 * rank, 4 * rank + 4), slice(None))):
            torch.randn = lambda *args, **kwargs: z[part]
            losses_g.append(trainer.step(real[part])["loss_G"])
            torch.randn = randn
        if not torch.allclose(*losses_g, atol=1e-6):  # every rank reports the global top-k loss
            failures.append(f"loss_G {losses_g}")
    for name, net in (("G", "netG"), ("D", "netD")):
        for a, b in zip(getattr(trainers[0], net).parameters(), getattr(trainers[1], net).parameters()):
            if (a - b).abs().max() > 1e-6:
                failures.append(f"{name} differs from the 1-process step by {(a - b).abs().max():.2e}")
                break
    if rank == 0 and picks[1:] == [2, 2]:
        failures.append(f"the data split the picks evenly, so it cannot tell per-rank from global top-k: {picks}")
    del trainer, trainers  # free DDP before its process group (freed at exit, after it, it may abort)
    gc.collect()
    dist.destroy_process_group()
    sys.exit(f"rank {rank}: " + ", ".join(failures) if failures else 0)
""")


def test_topk_picks_from_the_global_batch_2_ranks_equal_1_rank_on_the_same_data(tmp_path):
    """Top-k under DDP ranks all ranks' fakes: two Gloo ranks, each with half of
    a batch, take the same G (and D) update as one process on the whole batch
    with the same weights and noise (within 1e-6), a rank with no pick included,
    ties picked alike on every rank."""
    script = tmp_path / "global_topk.py"
    script.write_text(GLOBAL_TOPK_SCRIPT)
    torchrun(script, str(ROOT), cwd=tmp_path)
