import pytest
import torch
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.errors import InvalidInputError
from wsipipe.models import ARCHITECTURES, build_model, parameter_count


@pytest.mark.parametrize(
    "name,args,low,high",
    [
        ("plain-unet", None, 13.0e6, 13.8e6),  # the SCLC paper's U-Net: 13.40 M
        ("msf-unet", {"blocks": 2}, 70.5e6, 72.0e6),  # paper: 71.21 M
        ("msf-unet", {"blocks": 4}, 120.5e6, 123.5e6),  # paper: 122.15 M
        ("attention-unet", None, 13.4e6, 14.5e6),  # U-Net plus the gates
        ("unet", {"encoder": "resnet34"}, 24.0e6, 25.0e6),  # smp's documented 24.4 M
        ("deeplabv3plus", None, 22.0e6, 23.0e6),
    ],
)
def test_parameter_counts(name, args, low, high):
    assert low <= parameter_count(name, 2, args) <= high


@pytest.mark.parametrize(
    "name,args",
    [
        ("unet", {"encoder": "resnet18", "decoder_channels": [32, 16, 16, 8, 8]}),
        ("plain-unet", {"base": 4}),
        ("attention-unet", {"base": 4}),
        ("msf-unet", {"blocks": 2, "base": 4, "bottleneck": 16}),
        ("msf-unet", {"blocks": 4, "base": 4, "bottleneck": 16}),
        ("deeplabv3plus", {"encoder": "resnet18"}),
    ],
)
def test_forward_shape(name, args):
    model = build_model(name, 3, args).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64)
    assert name in ARCHITECTURES


def test_attention_unet_is_plain_unet_plus_gates():
    torch.manual_seed(0)
    plain = build_model("plain-unet", 2, {"base": 4})
    gated = build_model("attention-unet", 2, {"base": 4})
    missing = gated.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(".gates." in k for k in missing)


def test_unknown_architecture_and_argument_are_usage_errors():
    with pytest.raises(InvalidInputError, match="choose one of: unet"):
        build_model("segformer", 2)
    with pytest.raises(InvalidInputError, match="unknown argument"):
        build_model("msf-unet", 2, {"width": 3})


def test_models_list_cli_prints_counts():
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert "msf-unet" in result.output and "71.28 M" in result.output and "121.60 M" in result.output
