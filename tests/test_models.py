"""Models: every name, HE and linear heads, normalization inside, the features/head contract."""
import pytest
import torch
from torch import nn

from heat_fast import HELinear
from heat_fast.models import MODEL_NAMES, build_model

FEATURE_DIMS = {"wrn-34-10": 640, "wrn-34-20": 1280, "wrn-28-10": 640, "preact-resnet18": 512,
                "resnet18": 512, "resnet50": 2048, "small-cnn": 64}
# published parameter counts (millions), body + 10-class head
PARAMS_M = {"wrn-34-10": 46.16, "wrn-34-20": 184.53, "wrn-28-10": 36.48, "preact-resnet18": 11.17,
            "resnet18": 11.17, "resnet50": 23.53, "small-cnn": 0.03}
CHEAP = ("small-cnn", "preact-resnet18", "resnet18")


def _check_contract(name, he):
    """Real forward for the cheap models; shape-only (meta device) for the big ones."""
    torch.manual_seed(0)
    channels, size = (1, 8) if name == "small-cnn" else (3, 8)
    with torch.device("cpu" if name in CHEAP else "meta"):
        model = build_model(name, 10, he, channels, size, mean=[0.5] * channels,
                            std=[0.25] * channels).eval()
        x = torch.rand(2, channels, size, size)
    assert model.he is he
    assert isinstance(model.head, HELinear if he else nn.Linear)
    if he:
        assert model.head.scale == 1.0 and not hasattr(model.head, "bias")
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(PARAMS_M[name], abs=0.01)
    with torch.no_grad():
        logits, feats = model(x), model.features(x)
    assert logits.shape == (2, 10) and feats.shape == (2, FEATURE_DIMS[name])
    if name not in CHEAP:
        return
    assert torch.allclose(logits, model.head(feats))
    if he:
        assert logits.abs().max() <= 1 + 1e-5


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_with_he_head(name):
    _check_contract(name, True)


@pytest.mark.parametrize("name", ["small-cnn", "preact-resnet18"])
def test_linear_head(name):
    _check_contract(name, False)


def test_normalization_lives_inside_the_model_as_buffers():
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, True, 1, 8, mean=[0.3], std=[0.4]).eval()
    assert "mean" in dict(model.named_buffers()) and "std" in dict(model.named_buffers())
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        expected = model.head(model.body((x - 0.3) / 0.4))
        assert torch.allclose(model(x), expected)
        model.mean.fill_(0.0)
        assert not torch.allclose(model(x), expected)


@pytest.mark.parametrize("shape", [(128, 3, 32, 32), (3, 3, 5, 7), (2, 4, 6, 6), (5, 1, 4, 4)])
def test_channels_last_normalization_is_the_broadcast_bit_for_bit(shape):
    """normalize() of a channels_last x (on image rows) equals (x - mean) / std
    in values and input gradients, in float32 and float64, and keeps the layout."""
    n, c, h, w = shape
    gen = torch.Generator().manual_seed(sum(shape))
    model = build_model("small-cnn", 10, True, c, 8, mean=torch.rand(c, generator=gen).tolist(),
                        std=(0.1 + torch.rand(c, generator=gen)).tolist())
    for dtype in (torch.float32, torch.float64):
        x = torch.rand(shape, generator=gen, dtype=dtype).contiguous(
            memory_format=torch.channels_last).requires_grad_(True)
        grad = torch.randn(shape, generator=gen, dtype=dtype)
        out = model.normalize(x)
        expected = (x - model.mean) / model.std
        assert out.dtype == expected.dtype and torch.equal(out, expected)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(torch.autograd.grad(out, x, grad)[0],
                           torch.autograd.grad(expected, x, grad)[0])


def test_unknown_model_and_bad_arguments():
    with pytest.raises(ValueError, match="valid names: wrn-34-10.*small-cnn"):
        build_model("vgg16", 10, False)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("small-cnn", 1, False)
    with pytest.raises(ValueError, match="one value per input channel"):
        build_model("small-cnn", 10, False, in_channels=3, mean=[0.5])
    with pytest.raises(ValueError, match="std must be > 0"):
        build_model("small-cnn", 10, False, in_channels=1, std=[0.0])


def test_resnet_stem_depends_on_image_size():
    small = build_model("resnet18", 10, False, 3, 32)
    large = build_model("resnet18", 10, False, 3, 224)
    assert small.body[0].kernel_size == (3, 3) and large.body[0].kernel_size == (7, 7)


def test_small_cnn_is_conv_bn_relu_stages_with_the_pool_after_the_second():
    """The small CNN computes conv-BN-ReLU, conv-BN-ReLU, max-pool, conv-BN-ReLU, average pool
    (its ReLU moved after the pool must change neither values nor input gradients), under
    the parameter names of that layout."""
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, True, 3, 16)
    assert [k for k in model.state_dict() if k.endswith("weight")] == [
        "body.0.0.weight", "body.0.1.weight", "body.1.0.weight", "body.1.1.weight",
        "body.3.0.weight", "body.3.1.weight", "head.weight"]
    body = model.body

    def reference(x):
        h = torch.relu(body[0][1](body[0][0](x)))
        h = nn.functional.max_pool2d(torch.relu(body[1][1](body[1][0](h))), 2)
        return torch.relu(body[3][1](body[3][0](h))).mean((2, 3))

    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for train in (False, True):
        model.train(train)
        got_x, want_x = (x.clone().requires_grad_() for _ in range(2))
        got, want = model.features(got_x), reference((want_x - model.mean) / model.std)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        (g_got,) = torch.autograd.grad(got.square().sum(), got_x)
        (g_want,) = torch.autograd.grad(want.square().sum(), want_x)
        torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-6)


def test_channels_last_normalization_compiles_with_dynamic_shapes():
    """normalize() traces into one graph whatever the batch and image size (as a compiled
    attack recompiled for a second shape needs) and computes the eager values."""
    gen = torch.Generator().manual_seed(3)
    model = build_model("small-cnn", 10, True, 3, 8, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25])
    compiled = torch.compile(model.normalize, dynamic=True, fullgraph=True)
    for shape in [(4, 3, 8, 8), (5, 3, 6, 10)]:
        x = torch.rand(shape, generator=gen).contiguous(memory_format=torch.channels_last)
        assert torch.equal(compiled(x), model.normalize(x))


def test_normalization_under_vmap_is_the_broadcast():
    """Per-sample inputs under torch.vmap (whose layout cannot be queried there) take the
    broadcast: the same values as normalizing the whole batch."""
    gen = torch.Generator().manual_seed(5)
    model = build_model("small-cnn", 10, True, 3, 8, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25])
    x = torch.rand(3, 2, 3, 8, 8, generator=gen)
    out = torch.vmap(model.normalize, in_dims=1)(x)
    assert torch.equal(out, model.normalize(x.transpose(0, 1)))
