import pytest
import torch

from network import Discriminator, Generator, infer_config, load_generator, save_generator_params, strip_prefixes
from network_128 import Discriminator128, Generator128
from utils import UserError


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_equal_the_classic_pytorch_dcgan():
    # Figures printed by the PyTorch DCGAN tutorial's nets (nz 100, ngf = ndf = 64).
    assert count(Generator(64)) == 3_576_704
    assert count(Discriminator(64)) == 2_765_568


@pytest.mark.parametrize("size", [64, 128])
def test_shapes_and_ranges(size):
    torch.manual_seed(0)
    g, d = Generator(size, ngf=8), Discriminator(size, ndf=8)
    images = g(torch.randn(3, 100))
    assert images.shape == (3, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1
    assert d(images).shape == (3,)


def test_network_128_is_the_shared_builder_with_one_more_block():
    g, d = Generator128(ngf=8), Discriminator128(ndf=8)
    assert type(g) is Generator and type(d) is Discriminator
    assert len(g.main) == len(Generator(64, ngf=8).main) + 3
    assert g.main[0].out_channels == 8 * 16


def test_init_is_dcgan_normal():
    torch.manual_seed(0)
    g = Generator(64)
    w = g.main[3].weight
    assert abs(w.mean().item()) < 2e-3 and abs(w.std().item() - 0.02) < 2e-3
    bn = g.main[1].weight
    assert abs(bn.mean().item() - 1) < 0.01 and bn.std().item() < 0.05


def test_bare_state_dict_infers_config(tmp_path):
    g = Generator(128, nz=64, ngf=8)
    assert infer_config(g.state_dict()) == {"size": 128, "nz": 64, "ngf": 8, "nc": 3}
    torch.save(g.state_dict(), tmp_path / "g.params")
    loaded, config = load_generator(tmp_path / "g.params")
    z = torch.randn(2, 64)
    g.eval()
    assert torch.equal(loaded(z), g(z)) and config["size"] == 128


def test_params_roundtrip_prefers_ema(tmp_path):
    g, ema = Generator(64, ngf=8), Generator(64, ngf=8)
    config = {"size": 64, "nz": 100, "ngf": 8, "ndf": 8, "nc": 3}
    save_generator_params(tmp_path / "p", config, g.state_dict(), ema.state_dict())
    z = torch.randn(2, 100)
    loaded, info = load_generator(tmp_path / "p")
    assert torch.equal(loaded(z), ema.eval()(z)) and info["weights"] == "ema"
    raw, info = load_generator(tmp_path / "p", use_ema=False)
    assert torch.equal(raw(z), g.eval()(z)) and info["weights"] == "raw"
    save_generator_params(tmp_path / "no_ema", config, g.state_dict())  # a run without --ema
    assert load_generator(tmp_path / "no_ema")[1]["weights"] == "raw"


def test_mismatched_and_truncated_params_are_one_line_errors(tmp_path):
    path = tmp_path / "p"
    save_generator_params(path, {"size": 128, "ngf": 8}, Generator(64, ngf=8).state_dict())
    with pytest.raises(UserError, match="does not match a 128 px"):
        load_generator(path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_generator(path)


def test_strip_prefixes_unwraps_any_nesting_of_ddp_and_compile():
    g = Generator(size=32, nz=4, ngf=2)
    state = g.state_dict()
    for prefix in ("module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod.", "_orig_mod.module.module."):
        wrapped = {prefix + k: v for k, v in state.items()}
        assert list(strip_prefixes(wrapped)) == list(state), prefix
        Generator(size=32, nz=4, ngf=2).load_state_dict(strip_prefixes(wrapped))
